"""Guardrails move by the design's rules on the real broker, and the level survives a restart."""

from __future__ import annotations

import json
from typing import Any

from metaheal.agents.meta.loop import MetaLoop
from metaheal.agents.meta.status import StatusClient
from metaheal.config import Settings
from metaheal.events import CycleFocus, Directive, LedgerEntry


def ledger_entries(bus: Any, action: str) -> list[LedgerEntry]:
    return [e for e in bus.read("ledger", LedgerEntry) if e.action == action]


async def test_error_spike_tightens_at_once_and_the_level_survives_a_restart(h: Any, meta: Settings, bus: Any) -> None:
    bus.publish(
        "health", h.window("checkout", h.stats("errors", "error_count", mean=0.5, base=0.01, count=30)), "checkout"
    )
    async with h.running(MetaLoop(meta, replica_id="r1")):
        [c1] = await h.until(lambda: bus.aread("cycles", CycleFocus))
        await h.until(lambda: bus.aread("directives", Directive))
        # the incident is over: an outcome on checkout (which also makes the older evidence stale)
        bus.publish("outcomes", h.outcome(1, "checkout", "success", playbook="rollback_flag"), "checkout")
        await h.until(lambda: ledger_entries(bus, "learning_update"))
    assert (c1.focus_area, c1.guardrail_adjustment, c1.guardrail_level) == ("error_spike", "tighten", "tight")
    assert c1.time_budget_seconds == 150  # error_spike 300 s halved by tight guardrails
    [changed] = ledger_entries(bus, "guardrail_changed")
    assert json.loads(changed.payload)["level"] == "tight" and changed.cycle_id == c1.cycle_id
    assert StatusClient(meta).guardrail_level() == "tight"

    # a fresh process restores the level (and re-reads the outcome without recording its learning twice)
    meta.cycle.cycle_seconds = 1.0  # the schedule continues from the last cycle on the control topic
    async with h.running(MetaLoop(meta, replica_id="r2")):
        cycles = await h.until(lambda: [c for c in bus.read("cycles", CycleFocus) if c.cycle_id != c1.cycle_id])
    c2 = cycles[0]
    assert c2.focus_area == "routine_maintenance"
    assert (c2.guardrail_adjustment, c2.guardrail_level) == ("maintain", "tight")
    assert (
        int(c2.cycle_id.rsplit("_", 1)[1]) == int(c1.cycle_id.rsplit("_", 1)[1]) + 1
    )  # counter continues across restarts
    assert len(ledger_entries(bus, "learning_update")) == 1


async def test_failures_tighten_and_a_run_of_successes_loosens_one_level(h: Any, meta: Settings, bus: Any) -> None:
    meta.cycle.cycle_seconds = 1.0
    meta.cycle.stable_cycles_to_loosen = 1000  # isolate the success-rate rules from the stable-period rule
    loop = MetaLoop(meta, replica_id="r1")
    async with h.running(loop):
        await h.until(lambda: loop.cycles_run >= 1)
        for i in range(3):
            bus.publish("outcomes", h.outcome(f"f{i}", "api", "failed"), "api")
        tightened = await h.until(
            lambda: [c for c in bus.read("cycles", CycleFocus) if c.guardrail_adjustment == "tighten"]
        )
        for i in range(10):
            bus.publish("outcomes", h.outcome(f"s{i}", "api", "success"), "api")
        loosened = await h.until(
            lambda: [c for c in bus.read("cycles", CycleFocus) if c.guardrail_adjustment == "loosen"]
        )
        n = loop.cycles_run
        await h.until(lambda: loop.cycles_run >= n + 2)  # two more cycles: no further loosening without new outcomes
        learned = await h.until(
            lambda: len(ledger_entries(bus, "learning_update")) >= 13 and ledger_entries(bus, "learning_update")
        )
    cycles = bus.read("cycles", CycleFocus)
    assert tightened[0].guardrail_level == "tight"
    assert any("success rate 0.00 < 0.50" in r for r in tightened[0].reasoning)
    assert loosened[0].guardrail_level == "maintain"  # one level at a time, not straight to loose
    assert [c.guardrail_adjustment for c in cycles].count("loosen") == 1
    assert cycles[-1].guardrail_level == "maintain"
    insights = [json.loads(e.payload)["insight"] for e in learned]
    assert insights[0].startswith("Scaling unreliable for this pattern: 0% success over 1 run(s)")
    assert insights[-1].startswith("Scaling mixed") or insights[-1].startswith("Scaling effective")
    assert len({json.loads(e.payload)["outcome_id"] for e in learned}) == 13  # one update per outcome, none twice


async def test_strong_anomaly_starts_an_early_cycle_debounced(h: Any, meta: Settings, bus: Any) -> None:
    import time

    from metaheal.events import AnomalyScore

    meta.cycle.cycle_seconds = 120.0
    meta.cycle.min_cycle_gap_seconds = 3.0
    loop = MetaLoop(meta, replica_id="r1")

    def strong(value: float) -> AnomalyScore:
        now = time.time()
        return AnomalyScore(
            service="api",
            metric="latency_p95_ms",
            signal="latency",
            value=value,
            baseline=150.0,
            score=0.999999,
            threshold=0.99,
            crossed=True,
            confidence=1.0,
            model="t",
            ts=now,
            window_start=now - 10,
            window_end=now,
        )

    async with h.running(loop):
        await h.until(lambda: loop.cycles_run >= 1)
        [first] = await h.until(lambda: bus.aread("cycles", CycleFocus))
        assert first.focus_area == "routine_maintenance"
        sent = time.time()
        # the anomaly is corroborated by the service's own health window (anomaly scores alone are only a hint)
        bus.publish(
            "health",
            h.window(
                "api", h.stats("latency", "latency_p95_ms", mean=400, base=150, p95=400, base_p95=150), seconds=10
            ),
            "api",
        )
        bus.publish("anomalies", strong(400.0), "api")
        [d] = await h.until(lambda: bus.aread("directives", Directive))
        took = time.time() - sent
        bus.publish("anomalies", strong(420.0), "api")  # inside the gap: waits for it, then one more early cycle
        cycles = await h.until(lambda: (cs := bus.read("cycles", CycleFocus)) and len(cs) >= 3 and cs)
    second, third = cycles[1], cycles[2]
    assert (second.trigger, second.focus_area) == ("strong_anomaly", "latency_drift")
    assert any(
        r.startswith("Anomaly score 1 on api latency_p95_ms: 400 vs baseline 150 (crossed in 1 of 1")
        for r in second.reasoning
    ), second.reasoning
    assert d.cycle_id == second.cycle_id
    assert took < meta.cycle.cycle_seconds / 4, f"early cycle took {took:.1f}s"
    assert third.trigger == "strong_anomaly" and third.ts - second.ts >= meta.cycle.min_cycle_gap_seconds
    assert len(bus.read("directives", Directive)) == 1  # the open directive on api blocks a second one
