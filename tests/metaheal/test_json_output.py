"""`--json` on the commands that print state: one parseable document, the same facts as the text."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from metaheal.cli import app
from metaheal.config import Settings
from metaheal.runtime import write_settings

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout


def test_keys_list_json(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert invoke("keys", "init", "--keys", str(keys))[0] == 0
    code, out = invoke("keys", "list", "--keys", str(keys), "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and rows and all(r["state"] == "active" and len(r["public_key"]) == 64 for r in rows)
    assert {"executor", "meta_loop"} <= {r["actor"] for r in rows}


def test_topics_check_and_ledger_verify_json(topics: Settings, tmp_path: Path) -> None:
    topics.keys = tmp_path / "keys"
    cfg = write_settings(topics, tmp_path / "metaheal.yaml")
    code, out = invoke("topics", "check", "--json", "--config", str(cfg))
    assert code == 0 and json.loads(out) == {"ok": True, "drifts": []}
    assert invoke("keys", "init", "--config", str(cfg))[0] == 0
    code, out = invoke("ledger", "verify", "--json", "--config", str(cfg))
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["entries"] == 0 and doc["findings"] == []
    code, out = invoke("config", "check", str(cfg), "--json")
    assert code == 0 and json.loads(out)["ok"]
