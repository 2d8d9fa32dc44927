"""``metaheal ledger ...`` and ``metaheal keys ...`` end to end against the broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from metaheal.cli import app
from metaheal.config import Settings
from metaheal.ledger import ImmutableLog
from tests.ledger.conftest import Rec, write_raw

pytestmark = pytest.mark.broker
runner = CliRunner()


@pytest.fixture
def cfg(settings: Settings, tmp_path: Path) -> Path:
    path = tmp_path / "metaheal.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap": settings.kafka.bootstrap},
                "topics": {"prefix": settings.topics.prefix},
                "keys": str(settings.keys),
                "ledger": {"checkpoint_every_entries": 4},
            }
        )
    )
    return path


def run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.output


async def test_keys_and_ledger_commands(cfg: Path, settings: Settings) -> None:
    code, out = run("keys", "init", "--config", str(cfg))
    assert code == 0 and "executor key_id=" in out
    code, out = run("keys", "init", "--operator", "alice", "--config", str(cfg))
    assert code == 0 and "operator:alice public_key=" in out
    private = Path(out.split("private_key=")[1].strip())
    assert private.stat().st_mode & 0o777 == 0o600 and private.read_text().strip() not in out

    settings.ledger.checkpoint_every_entries = 4
    log = ImmutableLog(settings)
    await log.append(
        actor="meta_loop",
        action="cycle_focus_decided",
        cycle_id="c1",
        resource="cycle:c1",
        payload={"focus_area": "latency_drift", "confidence": 0.9, "reasoning": ["p95 up"]},
    )
    await log.append(
        actor="ml_advisors",
        action="advice_provided",
        cycle_id="c1",
        payload={"root_cause_candidates": [{"cause": "cache_miss", "probability": 0.8}]},
    )
    await log.append(
        actor="agentic_planner",
        action="plan_created",
        cycle_id="c1",
        payload={"plan_id": "p1", "directive_id": "d1", "playbook": "warm_cache"},
    )
    await log.append(
        actor="operator:alice",
        action="approval_decided",
        cycle_id="c1",
        payload={"plan_id": "p1", "decision": "approve"},
        result="approve",
    )
    await log.append(
        actor="executor",
        action="execution_outcome",
        cycle_id="c1",
        subsystem="agents",
        payload={"plan_id": "p1", "outcome_id": "o1", "result": "success"},
        result="success",
    )
    await log.append(actor="meta_loop", action="cycle_focus_decided", cycle_id="c2", payload={})
    log.close()

    code, out = run("ledger", "verify", "--config", str(cfg))
    assert code == 0, out
    assert out.startswith("OK: 7 entries, last sequence 6, 1 checkpoints")

    code, out = run("ledger", "replay", "c1", "--json", "--config", str(cfg))
    assert code == 0
    assert [json.loads(line)["sequence"] for line in out.splitlines()] == [0, 1, 2, 3, 5]
    code, out = run("ledger", "replay", "c1", "--config", str(cfg))
    assert code == 0 and "operator:alice" in out and "execution_outcome" in out
    code, out = run("ledger", "replay", "nope", "--config", str(cfg))
    assert code == 1 and "no entries for cycle 'nope'" in out

    code, out = run("ledger", "outcomes", "--json", "--config", str(cfg))
    assert code == 0 and json.loads(json.loads(out.splitlines()[0])["payload"])["outcome_id"] == "o1"

    proof = cfg.parent / "proof.json"
    code, out = run("ledger", "prove", "2", "--out", str(proof), "--config", str(cfg))
    assert code == 0, out
    code, out = run("ledger", "check-proof", str(proof), "--registry", str(settings.keys))
    assert code == 0 and "OK: sequence 2 is included" in out
    doc = json.loads(proof.read_text())
    doc["entry"]["result"] = "forged"
    proof.write_text(json.dumps(doc))
    code, out = run("ledger", "check-proof", str(proof))
    assert code == 1 and "sequence 2: entry content does not match" in out
    code, out = run("ledger", "prove", "6", "--config", str(cfg))
    assert code == 1 and "no checkpoint covers sequence 6" in out

    code, out = run("ledger", "explain", "o1", "--config", str(cfg))
    assert code == 0, out
    assert "ML root cause: cache_miss (score 0.8)  [seq 1]" in out and "outcome o1: success  [seq 5]" in out

    code, note = run("ledger", "checkpoint", "--config", str(cfg))
    assert code == 0 and note.splitlines()[1] == "4"

    # rotation keeps old entries verifiable; revocation flags every entry of the key
    code, out = run("keys", "rotate", "executor", "--config", str(cfg))
    assert code == 0
    log = ImmutableLog(settings)
    await log.append(actor="executor", action="execution_started", cycle_id="c3", payload={})
    log.close()
    code, out = run("ledger", "verify", "--config", str(cfg))
    assert code == 0, out
    code, out = run("keys", "list", "--config", str(cfg))
    assert "retired" in out and "active" in out
    old = next(line.split()[1] for line in out.splitlines() if line.startswith("executor") and "retired" in line)
    run("keys", "revoke", old, "--config", str(cfg))
    code, out = run("ledger", "verify", "--config", str(cfg))
    assert code == 1 and "sequence 5: revoked key" in out

    # an attacker's tombstone
    write_raw(settings, [Rec("c1/0", None, {})])
    code, out = run("ledger", "verify", "--since", "0", "--cycle", "c1", "--config", str(cfg))
    assert code == 1 and "sequence 0: tombstone" in out and "revoked" in out


def test_verify_without_broker_exits_with_message(tmp_path: Path) -> None:
    code, out = run("ledger", "verify", "--keys", str(tmp_path))
    assert code == 2 and "no Kafka bootstrap" in out
