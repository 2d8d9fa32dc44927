"""The design's ledger API as written: its append calls, mapping entries, signed outcomes, the default handle."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from metaheal.config import Settings
from metaheal.defaults import NotConfigured
from metaheal.ledger import ImmutableLog, LedgerUnavailable, OutcomeEntry, immutable_log
from metaheal.ledger.keys import init_system_keys
from metaheal.ledger.verify import verify_ledger

pytestmark = pytest.mark.broker

CYCLE = "cycle_20250115_143000_42"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def log(settings: Settings):
    init_system_keys(settings.keys)
    lg = ImmutableLog(settings)
    yield lg
    lg.close()


async def _design_cycle(log: ImmutableLog) -> None:
    """The design's three append calls ("Immutable Log"), as written but for ``learned_insights: [...]``
    and the cycle of the advice (the design's advice payload has none; ``cycle_id=`` names it)."""
    await log.append(
        actor="meta_loop",
        action="cycle_focus_decided",
        resource="self_heal",
        subsystem="meta_coordinated_healing",
        payload={
            "cycle_id": "cycle_20250115_143000_42",
            "focus_area": "latency_drift",
            "reasoning": ["Latency drift: 150ms → 245ms"],
            "guardrail_adjustment": "loosen",
        },
        result="decided",
        signature="f4a9c8e1...",  # Cryptographic signature
    )
    await log.append(
        actor="ml_advisors",
        action="advice_provided",
        resource="self_heal",
        subsystem="meta_coordinated_healing",
        payload={"root_causes": ["database_slow_query"], "top_playbooks": ["scale_up_instances"]},
        result="advised",
        signature="b2d7e5f3...",
        cycle_id=CYCLE,
    )
    await log.append(
        actor="executor",  # the design's "agentic_planner" may not sign outcomes here (ledger/authz.py)
        action="execution_outcome",
        resource="api_cluster",
        subsystem="meta_coordinated_healing",
        payload={
            "cycle_id": CYCLE,
            "playbook": "scale_up_instances",
            "result": "success",
            "verification_passed": True,
            "learned_insights": ["Scaling effective for this load pattern"],
        },
        result="success",
        signature="c8f1a4b9...",
    )


async def test_design_appends_replay_as_mappings(log: ImmutableLog) -> None:
    await _design_cycle(log)
    replay = await log.replay_cycle(CYCLE)
    assert [e["action"] for e in replay] == ["cycle_focus_decided", "advice_provided", "execution_outcome"]
    assert [e["sequence"] for e in replay] == [0, 1, 2] == [e.sequence for e in replay]
    assert [e["result"] for e in replay] == ["decided", "advised", "success"]
    assert [e["resource"] for e in replay] == ["self_heal", "self_heal", "api_cluster"]
    for e in replay:
        assert ISO_Z.match(e["timestamp"]), e["timestamp"]
        assert e["subsystem"] == "meta_coordinated_healing" and e["cycle_id"] == CYCLE
        # the caller's placeholder signature is not what is stored: the actor's key signed the entry
        assert re.fullmatch(r"[0-9a-f]{128}", e["signature"]) and e["signature"] == e.signature
        assert isinstance(e["payload"], dict) and dict(e)["payload"] == e["payload"]
    assert replay[0]["payload"]["focus_area"] == "latency_drift"
    assert replay[1]["payload"] == {"root_causes": ["database_slow_query"], "top_playbooks": ["scale_up_instances"]}


async def test_append_needs_a_cycle_somewhere(log: ImmutableLog) -> None:
    with pytest.raises(LedgerUnavailable, match=r"cycle_id: required .*payload\['cycle_id'\]"):
        await log.append(actor="ml_advisors", action="advice_provided", payload={"root_causes": []})
    e = await log.append(actor="ml_advisors", action="advice_provided", payload={"cycle_id": "c9"}, cycle_id="c8")
    assert e.cycle_id == "c8"  # an explicit cycle_id wins


async def test_signed_outcomes_read_as_the_design_reads_them(log: ImmutableLog, settings: Settings) -> None:
    await _design_cycle(log)
    # an outcome written before the design's vocabulary (subsystem "agents", resource plan/...)
    await log.append(
        actor="executor",
        action="execution_outcome",
        resource="plan/p-old",
        subsystem="agents",
        cycle_id="cycle_20250115_142800_41",
        payload={"playbook": "warm_cache", "result": "failed", "verification_passed": False, "learned_insights": []},
        result="failed",
    )
    await log.append(
        actor="executor", action="execution_outcome", subsystem="api", cycle_id="other", payload={}, result="success"
    )
    outcomes = await log.get_signed_outcomes(subsystem="meta_coordinated_healing", hours_back=24, limit=100)
    assert all(isinstance(o, OutcomeEntry) for o in outcomes)
    assert [(o["playbook"], o["result"], o["cycle_id"], o["verification_passed"]) for o in outcomes] == [
        ("scale_up_instances", "success", CYCLE, True),
        ("warm_cache", "failed", "cycle_20250115_142800_41", False),
    ]
    assert outcomes[0]["learned_insights"] == ["Scaling effective for this load pattern"]
    assert outcomes[0]["actor_signature"] == outcomes[0].signature
    # the design's "Get Learning Data" lines
    success_count = sum(1 for o in outcomes if o["result"] == "success")
    success_rate = success_count / len(outcomes) if outcomes else 0
    training_data = [
        {"playbook": o["playbook"], "context": o["cycle_id"], "success": o["verification_passed"]} for o in outcomes
    ]
    assert success_rate == 0.5
    assert training_data[0] == {"playbook": "scale_up_instances", "context": CYCLE, "success": True}
    assert len(await log.get_signed_outcomes(subsystem="api")) == 1


async def test_verify_accepts_both_vocabularies(log: ImmutableLog, settings: Settings) -> None:
    await _design_cycle(log)
    for actor, action, resource, subsystem in (
        ("meta_loop", "cycle_focus_decided", "cycle:c-old", "meta_loop"),
        ("ml_advisors", "advice_provided", "cycle/c-old", "advisors"),
        ("executor", "execution_outcome", "plan/p-old", "agents"),
    ):
        await log.append(
            actor=actor, action=action, resource=resource, subsystem=subsystem, cycle_id="c-old", result="ok"
        )
    report = verify_ledger(settings)
    assert report.clean, [str(f) for f in report.findings]
    assert report.entries >= 6


def test_default_handle_names_the_missing_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./metaheal.yaml, no METAHEAL_* (tests/conftest.py clears them)
    immutable_log.reset()
    with pytest.raises(NotConfigured, match=r"immutable_log: kafka\.bootstrap is not set"):
        immutable_log.replay_cycle  # noqa: B018 - first use builds the log
    assert repr(immutable_log) == "<immutable_log: not built yet>"


async def test_default_handle_reads_metaheal_yaml(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_system_keys(settings.keys)
    doc = {
        "kafka": {"bootstrap": settings.kafka.bootstrap},
        "topics": {"prefix": settings.topics.prefix},
        "keys": str(settings.keys),
    }
    (tmp_path / "metaheal.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(tmp_path)
    immutable_log.reset()
    try:
        entry = await immutable_log.append(
            actor="meta_loop", action="cycle_focus_decided", payload={"cycle_id": "c1"}, result="decided"
        )
        assert immutable_log.topic == f"{settings.topics.prefix}ledger"
        assert [e["sequence"] for e in await immutable_log.replay_cycle("c1")] == [entry.sequence]
    finally:
        immutable_log.reset()
