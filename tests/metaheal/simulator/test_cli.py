from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from metaheal.broker import EmbeddedBroker
from metaheal.cli import app


def test_unknown_scenario_is_named_before_anything_starts() -> None:
    r = CliRunner().invoke(app, ["simulate", "--bootstrap", "127.0.0.1:1", "--scenario", "meltdown"])
    assert r.exit_code == 2
    assert "--scenario: unknown 'meltdown'" in r.output and "latency_drift" in r.output


def test_simulate_needs_a_bootstrap() -> None:
    r = CliRunner().invoke(app, ["simulate", "--duration", "1"])
    assert r.exit_code == 2 and "no Kafka bootstrap" in r.output


@pytest.mark.broker
def test_simulate_writes_the_services_config(broker: EmbeddedBroker, tmp_path: Path) -> None:
    out = tmp_path / "services.yaml"
    r = CliRunner().invoke(
        app,
        [
            "simulate",
            "--bootstrap",
            broker.bootstrap,
            "--duration",
            "0.5",
            "--interval",
            "0.1",
            "--services-out",
            str(out),
        ],
        env={"METAHEAL_TOPICS__PREFIX": "simcli."},
    )
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(out.read_text())
    names = [s["name"] for s in doc["services"]]
    assert names == ["web", "api_cluster", "db", "cache", "payments"]
    api = doc["services"][1]
    assert api["dependencies"] == ["cache", "db", "payments"] and api["admin_url"].startswith("http://127.0.0.1:")
    from metaheal.config import Settings

    assert Settings.model_validate(doc).service("api_cluster") is not None  # feeds straight into Settings
