"""`metaheal playbooks list|check|render|schema`, `config check` with playbooks, the shipped defaults."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from metaheal.cli import app

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = sorted(p.stem for p in (ROOT / "playbooks").glob("*.yaml"))
runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def config(tmp_path: Path, **extra) -> Path:
    doc = {
        "services": [{"name": "checkout", "admin_url": "http://127.0.0.1:8081", "dependencies": ["payments"]}],
        **extra,
    }
    path = tmp_path / "metaheal.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_list_finds_the_shipped_playbooks_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no playbooks/ here: the shipped defaults
    code, out, _ = run("playbooks", "list", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [p["name"] for p in doc["playbooks"]] == DEFAULTS
    assert all(p["steps"] >= 1 for p in doc["playbooks"])


def test_check_names_file_line_and_field(tmp_path: Path) -> None:
    good = ROOT / "playbooks" / "rollback_flag.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("impact: medium", "impact: huge").replace("timeout: 30", "timeout: -1", 1))
    code, out, err = run("playbooks", "check", str(good), str(bad))
    assert code == 1
    assert f"{good}: OK (rollback_flag)" in out
    lines = bad.read_text().splitlines()
    impact = next(i for i, line in enumerate(lines, 1) if "impact: huge" in line)
    timeout = next(i for i, line in enumerate(lines, 1) if "timeout: -1" in line)
    assert f"{bad}:{impact}: impact: Input should be 'low', 'medium' or 'high' (got 'huge')" in err
    assert f"{bad}:{timeout}: steps.0.timeout:" in err
    code, out, _ = run("playbooks", "check", "--json", str(bad))
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and len(doc["results"][0]["errors"]) == 2


def test_render_for_a_configured_service(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    code, out, err = run(
        "playbooks", "render", "failover_dependency", "--service", "checkout", "--var", "dependency=payments",
        "--json", "--config", str(cfg),
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    urls = [s["params"].get("url") for s in doc["steps"]]
    assert "http://127.0.0.1:8081/failover" in urls, urls
    assert any(s["params"].get("json", {}).get("dependency") == "payments" for s in doc["steps"]), doc["steps"]
    assert doc["rollback"] and doc["risk"]["impact"] == "medium"
    code, _, err = run("playbooks", "render", "nope", "--service", "checkout", "--config", str(cfg))
    assert code == 2 and "no playbook 'nope'" in err


def test_schema_describes_a_playbook() -> None:
    code, out, _ = run("playbooks", "schema")
    doc = json.loads(out)
    assert code == 0 and doc["title"] == "metaheal playbook"
    assert {"name", "applies_to", "impact", "steps", "verifications", "rollback"} <= set(doc["properties"])
    assert set(doc["required"]) >= {"name", "steps", "impact"}


def test_config_check_loads_playbooks_and_the_knowledge_map(tmp_path: Path) -> None:
    cfg = config(tmp_path, playbooks=str(ROOT / "playbooks"))
    code, out, _ = run("config", "check", str(cfg), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["playbooks"] == DEFAULTS and doc["causes"] > 0
    broken = tmp_path / "books"
    broken.mkdir()
    (broken / "x.yaml").write_text("name: x\n")
    km = tmp_path / "km.yaml"
    km.write_text("causes: {}\n")
    cfg = config(tmp_path, playbooks=str(broken), ml={"knowledge_map": str(km)})
    code, out, _ = run("config", "check", str(cfg), "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"]
    assert any(e.startswith(f"{broken / 'x.yaml'}:1: description: Field required") for e in doc["errors"]), doc
    assert any(e.startswith("ml.knowledge_map: knowledge map") and "causes" in e for e in doc["errors"]), doc


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_ships_the_default_playbooks(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("metaheal-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        sorted(Path(n).stem for n in names if n.startswith("metaheal/playbooks/") and n.endswith(".yaml")) == DEFAULTS
    )
