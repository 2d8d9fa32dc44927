"""`metaheal config check` and the example configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from metaheal.cli import core
from metaheal.cli.core import example_config
from metaheal.config import ConfigError, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "metaheal.yaml.example"

app = typer.Typer()
app.add_typer(core.config_app, name="config")


def check(path: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "metaheal.yaml"
    path.write_text(text)
    return path


def test_example_is_valid_and_holds_the_design_defaults() -> None:
    code, out, err = check(EXAMPLE)
    assert (code, err) == (0, "")
    assert "OK (2 services, 1 operators, 5 playbooks from" in out and "knowledge map built-in" in out
    loaded, defaults = load_settings(EXAMPLE), Settings()
    for section in set(Settings.model_fields) - {"services", "operators"}:
        assert getattr(loaded, section) == getattr(defaults, section), section
    assert [s.name for s in loaded.services] == ["checkout", "payments"]
    assert loaded.operators[0].services == ["*"]


def test_example_names_every_section_and_key() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    assert set(doc) == set(Settings.model_fields)
    for name in ("kafka", "topics", "cycle", "guardrails", "ml", "streams", "ledger"):
        assert set(doc[name]) == set(getattr(Settings(), name).model_dump()), name


def test_committed_example_is_the_generated_one() -> None:
    assert EXAMPLE.read_text() == example_config(), (
        "metaheal.yaml.example is stale: run `metaheal config example > metaheal.yaml.example`"
    )


def test_config_example_command_prints_it() -> None:
    result = CliRunner().invoke(app, ["config", "example"])
    assert result.exit_code == 0
    assert result.stdout == example_config()
    assert "  auto_approve_confidence: 0.95" in result.stdout


def test_every_error_names_file_field_and_expectation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
kafka:
  bootstrapp: localhost:9092
cycle:
  cycle_seconds: -1
guardrails:
  levels:
    tight: {auto_approve_confidence: 1.5, max_blast_radius: 1, max_impact: huge}
services:
  - admin_url: http://x
""",
    )
    code, out, err = check(path)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    expected = {
        "kafka.bootstrapp: Extra inputs are not permitted",
        "cycle.cycle_seconds: Input should be greater than 0 (got -1)",
        "guardrails.levels.tight.auto_approve_confidence: Input should be less than or equal to 1 (got 1.5)",
        "guardrails.levels.tight.max_impact: Input should be 'low', 'medium' or 'high' (got 'huge')",
        "services.0.name: Field required",
    }
    for want in expected:
        assert any(want in line for line in lines), (want, lines)
    assert len(lines) == len(expected)


def test_unknown_top_level_section_is_an_error(tmp_path: Path) -> None:
    code, _, err = check(write(tmp_path, "cycles:\n  cycle_seconds: 60\n"))
    assert code == 1
    assert "cycles: Extra inputs are not permitted" in err


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  bootstrap: [localhost:9092\ncycle: {}\n")
    code, out, err = check(path)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {path}: line ")
    assert "YAML syntax error" in err and "Traceback" not in err


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- kafka\n- cycle\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(path)
    assert check(path)[0] == 1


def test_missing_file_exits_2(tmp_path: Path) -> None:
    code, _, err = check(tmp_path / "nope.yaml")
    assert code == 2 and "config file not found" in err


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    code, out, _ = check(write(tmp_path, ""))
    assert code == 0 and "OK (0 services" in out


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "cycle:\n  cycle_seconds: 60\nkafka:\n  bootstrap: filehost:9092\n")
    monkeypatch.setenv("METAHEAL_CYCLE__CYCLE_SECONDS", "30")
    monkeypatch.setenv("METAHEAL_GUARDRAILS__LEVELS__TIGHT__MAX_BLAST_RADIUS", "0")
    s = load_settings(path)
    assert s.cycle.cycle_seconds == 30.0
    assert s.kafka.bootstrap == "filehost:9092"
    assert s.guardrails.levels["tight"].max_blast_radius == 0
    assert s.guardrails.levels["tight"].auto_approve_confidence == 0.95  # siblings keep defaults
    monkeypatch.setenv("METAHEAL_CYCLE__CYCLE_SECONDS", "soon")
    code, _, err = check(path)
    assert code == 1 and "cycle.cycle_seconds: Input should be a valid number" in err
