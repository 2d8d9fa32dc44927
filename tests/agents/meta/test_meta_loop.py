"""The meta loop against the real broker: evidence in on the topics, decisions out on the topics and the ledger."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from metaheal.agents.meta.loop import MetaLoop
from metaheal.config import Settings
from metaheal.events import (
    AnomalyScore,
    ApprovalDecision,
    ApprovalRequest,
    CycleFocus,
    Directive,
    MLAdvice,
    ProbeCommand,
    RankedPlaybook,
    RootCauseCandidate,
)
from metaheal.ledger import ImmutableLog

EVIDENCE = {
    "latency_drift": (
        "api_cluster",
        lambda h: h.window(
            "api_cluster", h.stats("latency", "latency_p95_ms", mean=240, base=150, p95=245, base_p95=150)
        ),
    ),
    "error_spike": (
        "checkout",
        lambda h: h.window("checkout", h.stats("errors", "error_count", mean=0.5, base=0.01, count=30)),
    ),
    "capacity_strain": (
        "search",
        lambda h: h.window("search", h.stats("saturation", "cpu_utilization", mean=0.96, base=0.45)),
    ),
    "dependency_health": (
        "orders",
        lambda h: h.window(
            "orders",
            h.stats(
                "dependency", "dependency_latency_ms", mean=380, base=40, p95=420, base_p95=50, dependency="payments_db"
            ),
        ),
    ),
}


async def first_cycle(h: Any, bus: Any) -> CycleFocus:
    return (await h.until(lambda: bus.aread("cycles", CycleFocus)))[0]


@pytest.mark.parametrize("area", sorted(EVIDENCE))
async def test_each_focus_area_is_chosen_for_its_evidence(h: Any, meta: Settings, bus: Any, area: str) -> None:
    service, make = EVIDENCE[area]
    bus.publish("health", make(h), service)
    loop = MetaLoop(meta, replica_id="r1")
    async with h.running(loop):
        cycle = await first_cycle(h, bus)
        directives = await h.until(lambda: bus.aread("directives", Directive))
    assert cycle.focus_area == area
    assert cycle.confidence >= meta.cycle.focus_decision_min_confidence
    assert cycle.target_services == [service]
    assert any(service in r for r in cycle.reasoning)
    [d] = directives
    assert (d.service, d.focus_area, d.cycle_id) == (service, area, cycle.cycle_id)
    # no advisor runs here: the directive says so and carries the lower, evidence-only confidence
    assert d.confidence < cycle.confidence
    assert any(s.probe in cycle.extra_probes for s in await bus.aread("probes", ProbeCommand))


async def test_trust_violation_focus_from_denied_outcome_and_operator_denial(h: Any, meta: Settings, bus: Any) -> None:
    bus.publish("outcomes", h.outcome(1, "billing", "denied"), "billing")
    req = ApprovalRequest(
        request_id="req1",
        plan_id="plan9",
        cycle_id="c0",
        service="billing",
        playbook="restart_service",
        reason="high impact",
        plan_summary="restart billing",
        requested_at=time.time(),
        expires_at=time.time() + 600,
    )
    bus.publish("approvals", req, "plan9")
    bus.publish(
        "approvals",
        ApprovalDecision(
            decision_id="dec1",
            request_id="req1",
            plan_id="plan9",
            operator="alice",
            decision="deny",
            reason="not during peak",
            decided_at=time.time(),
            key_id="k",
            signature="00",
        ),
        "plan9",
    )
    loop = MetaLoop(meta, replica_id="r1")
    async with h.running(loop):
        cycle = await first_cycle(h, bus)
        await h.until(lambda: loop.cycles_run >= 1)
    assert cycle.focus_area == "trust_violations"
    assert await bus.aread("directives", Directive) == []  # no playbook applies to trust violations: nobody is directed
    assert cycle.target_services == ["billing"]
    assert any("2 trust violation(s) on billing" in r for r in cycle.reasoning), cycle.reasoning


async def test_quiet_system_is_routine_maintenance_without_directive(h: Any, meta: Settings, bus: Any) -> None:
    bus.publish(
        "health",
        h.window("api", h.stats("latency", "latency_p95_ms", mean=152, base=150, p95=153, base_p95=150)),
        "api",
    )
    # an anomaly the service's own health window does not corroborate is a hint, stated as the reason
    now = time.time()
    bus.publish(
        "anomalies",
        AnomalyScore(
            service="api",
            metric="latency_p95_ms",
            signal="latency",
            value=170,
            baseline=150,
            score=0.99999,
            threshold=0.99,
            crossed=True,
            confidence=0.6,
            model="t",
            ts=now,
            window_start=now - 10,
            window_end=now,
        ),
        "api",
    )
    loop = MetaLoop(meta, replica_id="r1")
    async with h.running(loop):
        cycle = await first_cycle(h, bus)
        # give the loop the full advice wait it would use for a directive before concluding there is none
        await h.until(lambda: loop.cycles_run >= 1)
    assert cycle.focus_area == "routine_maintenance"
    assert "below the 0.70 needed" in cycle.reasoning[0]
    assert cycle.extra_probes == [] and cycle.target_services == []
    assert await bus.aread("directives", Directive) == []


async def test_every_decision_is_in_the_ledger_before_it_is_published(h: Any, meta: Settings, bus: Any) -> None:
    service, make = EVIDENCE["capacity_strain"]
    bus.publish("health", make(h), service)
    async with h.running(MetaLoop(meta, replica_id="r1")):
        cycle = await first_cycle(h, bus)
        # advice from an advisor arrives within the wait: the directive combines it
        bus.publish(
            "advice",
            MLAdvice(
                cycle_id=cycle.cycle_id,
                ts=time.time(),
                root_cause_candidates=[
                    RootCauseCandidate(cause="traffic_surge", probability=0.9, service=service),
                    RootCauseCandidate(cause="noise", probability=0.2),
                ],
                ranked_playbooks=[
                    RankedPlaybook(name="scale_up_instances", score=0.9, confidence=0.85),
                    RankedPlaybook(name="restart_service", score=0.3, confidence=0.4),
                ],
            ),
            cycle.cycle_id,
        )
        [d] = await h.until(lambda: bus.aread("directives", Directive))
    ml = meta.ml
    # the playbook term: the ranker's score, trusted as far as its confidence goes, the declared prior (0.7) the rest
    playbook = 0.85 * 0.9 + 0.15 * 0.7
    expected = (
        ml.ml_anomaly_weight * cycle.confidence + ml.ml_root_cause_weight * 0.9 + ml.ml_playbook_weight * playbook
    ) / (ml.ml_anomaly_weight + ml.ml_root_cause_weight + ml.ml_playbook_weight)
    assert d.confidence == pytest.approx(expected, abs=1e-3)
    assert d.ml_advice.root_causes == ["traffic_surge"]  # below ml_min_confidence is dropped
    assert d.ml_advice.recommended_playbooks == ["scale_up_instances"]
    log = ImmutableLog(meta)
    try:
        entries = await log.replay_cycle(cycle.cycle_id)
    finally:
        log.close()
    actions = [e.action for e in entries]
    assert actions[:3] == ["cycle_focus_decided", "probes_enabled", "directive_issued"]
    assert all(e.actor == "meta_loop" and e["subsystem"] == "meta_coordinated_healing" for e in entries)
    assert (entries[0]["resource"], entries[0]["result"]) == ("self_heal", "decided")  # the design's vocabulary
    assert entries[0]["payload"]["focus_area"] == cycle.focus_area.value
    assert json.loads(entries[2].payload)["directive_id"] == d.directive_id
    # signed (and acknowledged) before published: each record's create time is after its entry's signing time
    from datetime import datetime

    from metaheal.agents.meta.leader import fast_reader, read_to_end

    signed = {e.action: datetime.fromisoformat(e.timestamp.replace("Z", "+00:00")).timestamp() for e in entries}
    with fast_reader(meta.kafka) as c:
        created = {
            short: read_to_end(c, meta.topics.name(short))[0].timestamp()[1] / 1000
            for short in ("cycles", "probes", "directives")
        }
    assert signed["cycle_focus_decided"] <= created["cycles"] + 0.001
    assert signed["probes_enabled"] <= created["probes"] + 0.001
    assert signed["directive_issued"] <= created["directives"] + 0.001


async def test_no_directive_when_the_ledger_is_unavailable(h: Any, meta: Settings, bus: Any, tmp_path) -> None:
    # broker reachable, meta_loop's signing key missing: it can sign neither its lease nor a ledger entry
    meta.keys = tmp_path / "no-keys"
    service, make = EVIDENCE["error_spike"]
    bus.publish("health", make(h), service)
    loop = MetaLoop(meta, replica_id="r1")
    async with h.running(loop):
        await h.until(lambda: getattr(loop, "_inputs", None) is not None and loop._inputs.caught_up)
        await asyncio.sleep(2 * meta.cycle.lease_seconds)
        assert not loop._leading and loop.cycles_run == 0
    assert loop.directives_issued == []
    assert await bus.aread("cycles", CycleFocus) == []
    assert await bus.aread("directives", Directive) == []
    assert await bus.aread("probes", ProbeCommand) == []


async def test_a_service_with_a_plan_still_running_gets_no_second_directive(h: Any, meta: Settings, bus: Any) -> None:
    from metaheal.events import AgenticPlan, RiskAssessment

    meta.cycle.cycle_seconds = 1.0
    meta.cycle.advice_wait_seconds = 0.0  # no advisor here; keeps each cycle's view of the topics atomic
    service, make = EVIDENCE["latency_drift"]
    bus.publish(
        "plans",
        AgenticPlan(
            plan_id="plan-running",
            directive_id="dir-old",
            cycle_id="cycle_20250101_000000_1",
            ts=time.time(),
            service=service,
            selected_playbook="warm_cache",
            steps=[],
            verifications=[],
            rollback_plan=[],
            trust_approval_required=False,
            estimated_duration=60.0,
            risk_assessment=RiskAssessment(impact="low", blast_radius=1, risk_score=0.1),
            confidence=0.9,
        ),
        service,
    )
    bus.publish("health", make(h), service)
    loop = MetaLoop(meta, replica_id="r1")
    async with h.running(loop):
        await h.until(lambda: loop.cycles_run >= 2)
        assert await bus.aread("directives", Directive) == []
        focus = [c.focus_area for c in await bus.aread("cycles", CycleFocus)]
        assert focus[:2] == ["latency_drift", "latency_drift"]
        # the plan finishes; the drift is seen again afterwards: now the service gets a directive
        out = h.outcome("done", service, "failed", playbook="warm_cache", directive_id="dir-old")
        out.plan_id = "plan-running"
        bus.publish("outcomes", out, service)
        await h.until(lambda: loop.obs.busy(service, time.time()) is None)
        # a window that began after the outcome (one that straddles it mixes in the system before the change)
        bus.publish(
            "health", h.window(service, *make(h).signals, end=max(time.time(), out.ts + 0.2), seconds=0.1), service
        )
        [d] = await h.until(lambda: bus.aread("directives", Directive))
    assert d.service == service and d.focus_area == "latency_drift"
    # learning fed the directive: warm_cache failed once, so it is not first any more, and the playbook term is learned
    assert d.ml_advice.recommended_playbooks[-1] == "warm_cache", d.ml_advice.recommended_playbooks


async def test_a_change_awaiting_its_verdict_gets_no_new_directive_until_settled(
    h: Any, meta: Settings, bus: Any
) -> None:
    meta.cycle.cycle_seconds = 1.0
    meta.cycle.advice_wait_seconds = 0.0
    service, make = EVIDENCE["latency_drift"]
    # the executor kept a change whose telemetry vanished, and asked an operator
    kept = h.outcome("wait", service, "inconclusive", playbook="warm_cache", directive_id="dir-old")
    kept.verdict_request_id = "verdict-planwait"
    bus.publish("outcomes", kept, service)
    now = time.time()
    request = ApprovalRequest(
        request_id="verdict-planwait",
        plan_id="planwait",
        cycle_id="c0",
        service=service,
        playbook="warm_cache",
        reason="verification inconclusive: expected 3 sample(s) of latency_p95_ms <= 200.0",
        plan_summary="warm_cache on api_cluster is in place and unverified",
        requested_at=now,
        expires_at=now + 600,
    )
    bus.publish("approvals", request, service)
    # evidence from after the change: the drift is seen again while the change waits for its verdict
    bus.publish(
        "health", h.window(service, *make(h).signals, end=max(time.time(), kept.ts + 0.2), seconds=0.1), service
    )
    loop = MetaLoop(meta, replica_id="r1")
    async with h.running(loop):
        await h.until(lambda: loop.cycles_run >= 2)
        assert await bus.aread("directives", Directive) == []
        cycles = await bus.aread("cycles", CycleFocus)
        assert cycles[0].focus_area == "latency_drift"  # the evidence counted; only the directive waits
        assert any(f"Verdicts pending on {service}" in r for r in cycles[-1].reasoning), cycles[-1].reasoning
        assert not any("Approvals pending" in r for r in cycles[-1].reasoning)
        assert len(loop.learner) == 0  # an inconclusive outcome is no evidence against the playbook
        # an operator keeps the change: the plan's settling outcome frees the service and counts as a success
        settled = h.outcome("wait-settled", service, "success", playbook="warm_cache", directive_id="dir-old")
        settled.plan_id, settled.confirmed_by, settled.settled_after_seconds = "planwait", "alice", 12.0
        bus.publish("outcomes", settled, service)
        await h.until(lambda: loop.obs.busy(service, time.time()) is None)
        assert loop.learner.success_rate(playbook="warm_cache", now=time.time()) == 1.0 and len(loop.learner) == 1
        bus.publish(
            "health", h.window(service, *make(h).signals, end=max(time.time(), settled.ts + 0.2), seconds=0.1), service
        )
        [d] = await h.until(lambda: bus.aread("directives", Directive))
    assert d.service == service and d.focus_area == "latency_drift"
