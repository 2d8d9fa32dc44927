"""The demo's timeline reads real topics; the whole demo runs against the real embedded broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from metaheal.config import Settings
from metaheal.demo import demo_settings, fault_flow, run_demo
from metaheal.events import (
    AnomalyScore,
    CycleFocus,
    Directive,
    DirectiveAdvice,
    SignedOutcome,
)
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroSerializer
from tests.metaheal.conftest import DemoRun

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="session")]


def anomaly(value: float, ts: float) -> AnomalyScore:
    return AnomalyScore(
        service="api_cluster",
        metric="latency_p95_ms",
        signal="latency",
        value=value,
        baseline=86.0,
        score=0.9995,
        threshold=0.99,
        crossed=True,
        model="test",
        ts=ts,
        window_start=ts - 2,
        window_end=ts,
    )


async def test_timeline_renders_one_line_per_event_from_the_topics(topics: Settings) -> None:
    from metaheal.demo import Timeline

    now = time.time()
    cycle = CycleFocus(
        cycle_id="cycle_1",
        ts=now,
        focus_area="latency_drift",
        confidence=0.91,
        reasoning=["Latency drift: 86ms -> 210ms on api_cluster"],
        guardrail_adjustment="loosen",
        guardrail_level="loose",
        extra_probes=["latency_histograms"],
        time_budget_seconds=120,
        target_services=["api_cluster"],
    )
    directive = Directive(
        directive_id="d1",
        cycle_id="cycle_1",
        ts=now,
        service="api_cluster",
        focus_area="latency_drift",
        guardrail_level="loose",
        ml_advice=DirectiveAdvice(recommended_playbooks=["scale_up_instances"]),
        confidence=0.8,
        time_budget_seconds=120,
    )
    outcome = SignedOutcome(
        outcome_id="o1",
        plan_id="p1",
        directive_id="d1",
        cycle_id="cycle_1",
        service="api_cluster",
        playbook="scale_up_instances",
        result="success",
        duration_seconds=8.2,
        verification_passed=True,
        trust_decision="auto_approved",
        actor="executor",
        actor_signature="ab" * 32,
        learned_insights=["scaling works"],
        ts=now,
        ledger_sequence=7,
    )
    t = topics.topics.name
    with Producer(topics.kafka) as p:
        p.produce(t("anomalies"), AvroSerializer(AnomalyScore)(anomaly(210.0, now)), key="api_cluster")
        p.produce(t("anomalies"), AvroSerializer(AnomalyScore)(anomaly(212.0, now + 1)), key="api_cluster")
        p.produce(t("cycles"), AvroSerializer(CycleFocus)(cycle), key="cycle_1")
        p.produce(t("directives"), AvroSerializer(Directive)(directive), key="api_cluster")
        p.produce(t("outcomes"), AvroSerializer(SignedOutcome)(outcome), key="api_cluster")
    lines: list[str] = []
    timeline = Timeline(topics, lines.append)
    timeline.start()
    try:
        got = await timeline.wait_for(lambda s: isinstance(s.event, SignedOutcome), after=0.0, timeout=20.0)
        assert got is not None
    finally:
        timeline.stop()
    text = "\n".join(lines)
    assert text.count("anomaly  api_cluster latency_p95_ms") == 1  # the second sample of the series is folded
    assert "cycle cycle_1: focus latency_drift (confidence 0.91), guardrails loosen -> loose" in text
    assert "directive d1 -> api_cluster: latency_drift" in text
    assert "outcome SUCCESS: scale_up_instances on api_cluster in 8.2s, verified" in text
    assert "[learning]  scaling works" in text
    assert len(timeline.snapshot()) == 5


@pytest.mark.slow
@pytest.mark.timeout(280)
async def test_demo_heals_all_three_flows_against_the_real_broker(demo_run: DemoRun) -> None:
    """The design's three flows end to end: simulator, streams worker, advisors, meta loop, executor, ledger.

    Fails (with the demo's own reasons and the tail of its timeline) when any flow does not heal."""
    report, text, workdir = demo_run.report, demo_run.text, demo_run.workdir
    assert not report.blocked, text
    assert (workdir / "metaheal.yaml").is_file() and (workdir / "keys").is_dir()
    assert [f.flow.name for f in report.flows] == ["latency", "errors", "quiet"], text[-3000:]
    for flow in report.flows:
        assert flow.ok, "\n".join([flow.flow.name, *flow.reasons, *flow.notes, text[-6000:]])
    latency, errors, quiet = report.flows
    assert latency.playbook == "scale_up_instances" and errors.playbook == "rollback_flag", text[-6000:]
    for flow in (latency, errors):  # detection counts on any service the fault shows on (its own or a caller)
        assert None not in (flow.detected_at, flow.directive_at, flow.fixed_at), flow.flow.name
        assert flow.detected_at <= flow.directive_at <= flow.fixed_at, flow.flow.name
    # the operator was asked for the bad deployment's rollback (tight guardrails) and it was signed as theirs
    assert "the demo plays the operator 'demo-operator' and APPROVES" in text
    assert "outcome SUCCESS: rollback_flag on api_cluster" in text and "trust approved_by:demo-operator" in text
    assert quiet.key_cycles, text[-3000:]
    replayed = latency.key_cycles or latency.cycle_ids[:1]
    assert f"$ metaheal ledger replay {replayed[0]}" in text  # the real CLI, run from the demo folder
    assert report.verify_clean is True and "-> CLEAN" in text, text[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_demo_evidence_vanishes_keeps_the_fix_and_asks_the_operator(settings: Settings, tmp_path: Path) -> None:
    """`metaheal demo --scenario evidence_vanishes`: the right fix, then no telemetry; the change is kept,
    not rolled back, and the demo operator's signed `keep` ends it as a success confirmed by them."""
    s = demo_settings(settings, tmp_path, settings.topics.prefix)
    lines: list[str] = []
    report = await asyncio.wait_for(run_demo(s, tmp_path, lines.append, flows=(fault_flow("evidence_vanishes"),)), 280)
    text = "\n".join(lines)
    assert not report.blocked, text
    [flow] = report.flows
    assert flow.ok, "\n".join([*flow.reasons, *flow.notes, text[-6000:]])
    assert flow.playbook == "rollback_flag" and flow.inconclusive_at is not None
    assert flow.inconclusive_at <= flow.fixed_at
    assert "outcome INCONCLUSIVE: rollback_flag on api_cluster" in text and "change kept awaiting verdict" in text
    assert "the demo plays the operator 'demo-operator' and KEEPS the change of verdict-" in text
    assert "outcome SUCCESS: rollback_flag on api_cluster" in text and "confirmed by demo-operator" in text
    assert "execution_outcome api_cluster -> success_confirmed_by:demo-operator" in text
    assert "rollback_executed" not in text and "ROLLS BACK" not in text  # the bad flag never came back
    assert report.verify_clean is True, text[-3000:]
