"""Which advice is most accurate: advisors' records against verified outcomes move the combination weights."""

from __future__ import annotations

import json
import time
from typing import Any

from metaheal.agents.meta.learning import Learner
from metaheal.agents.meta.loop import MetaLoop
from metaheal.agents.meta.observations import Observations
from metaheal.config import Settings
from metaheal.events import (
    Directive,
    DirectiveAdvice,
    LedgerEntry,
    MLAdvice,
    RootCauseCandidate,
)

FIXES = {
    "failover_dependency": frozenset({"upstream_outage", "database_slow_query"}),
    "rollback_flag": frozenset({"bad_deployment"}),
}


def _advice(cycle: str, cause: str) -> MLAdvice:
    return MLAdvice(
        cycle_id=cycle,
        ts=0.0,
        root_cause_candidates=[
            RootCauseCandidate(cause="unknown", probability=0.5),
            RootCauseCandidate(cause=cause, probability=0.4, service="api"),
        ],
    )


def _directive(i: int, cycle: str, playbooks: list[str]) -> Directive:
    return Directive(
        directive_id=f"d{i}",
        cycle_id=cycle,
        ts=0.0,
        service="api",
        focus_area="error_spike",
        guardrail_level="maintain",
        ml_advice=DirectiveAdvice(recommended_playbooks=playbooks),
        confidence=0.8,
        time_budget_seconds=60,
    )


def _obs() -> Observations:
    s = Settings()
    s.cycle.learning_half_life_seconds = 3600.0
    obs = Observations(s, Learner())
    obs.fixes = dict(FIXES)
    return obs


def test_wrong_advice_loses_weight_right_advice_gains_it_within_bounds(h: Any) -> None:
    obs = _obs()
    base = obs.accuracy.weights(0.0)
    assert base == {"anomaly": 0.3, "root_cause": 0.25, "playbook": 0.45}
    # the advisors said upstream outage / fail over; the failover was rolled back
    obs.ingest("advice", _advice("c1", "upstream_outage"), now=10.0)
    obs.ingest("directives", _directive(1, "c1", ["failover_dependency", "rollback_flag"]), now=10.0)
    obs.ingest("outcomes", h.outcome(1, "api", "rolled_back", "failover_dependency", "c1", "d1", ts=20.0), now=20.0)
    obs.judge_advice(20.0)
    [u] = obs.weight_updates
    assert u.hits == {"playbook": False, "root_cause": False}
    assert u.after["playbook"] < u.before["playbook"] == 0.45 and u.after["root_cause"] < 0.25
    assert u.payload()["picks"] == {"root_cause": "upstream_outage", "playbook": "failover_dependency"}
    # the same outcome read again (a replay) changes nothing
    obs.ingest("outcomes", h.outcome(1, "api", "rolled_back", "failover_dependency", "c1", "d1", ts=20.0), now=21.0)
    obs.judge_advice(21.0)
    assert len(obs.weight_updates) == 1
    # then a run of advice that was right: bad_deployment diagnosed, rollback_flag first, and it fixed it
    for i in range(2, 40):
        obs.ingest("advice", _advice(f"c{i}", "bad_deployment"), now=30.0 + i)
        obs.ingest("directives", _directive(i, f"c{i}", ["rollback_flag"]), now=30.0 + i)
        obs.ingest(
            "outcomes", h.outcome(i, "api", "success", "rollback_flag", f"c{i}", f"d{i}", ts=30.0 + i), now=31 + i
        )
        obs.judge_advice(31.0 + i)
    w = obs.accuracy.weights(80.0)
    assert w["anomaly"] == 0.3  # verified outcomes do not judge detection
    assert 0.45 < w["playbook"] <= 0.45 * 1.5 and 0.25 < w["root_cause"] <= 0.25 * 1.5
    # recency: a day later the record has faded and the weights are back near the configuration
    later = obs.accuracy.weights(80.0 + 24 * 3600.0)
    assert abs(later["playbook"] - 0.45) < 0.01 and abs(later["root_cause"] - 0.25) < 0.01


def test_the_outcome_may_be_read_before_its_directive_and_advice(h: Any) -> None:
    obs = _obs()
    obs.ingest("outcomes", h.outcome(1, "api", "success", "rollback_flag", "c1", "d1", ts=20.0), now=20.0)
    obs.judge_advice(20.0)  # nothing to judge yet: the directive is unknown
    assert not obs.weight_updates
    obs.ingest("directives", _directive(1, "c1", ["rollback_flag"]), now=21.0)
    obs.ingest("advice", _advice("c1", "bad_deployment"), now=21.0)
    obs.judge_advice(21.0)
    [u] = obs.weight_updates
    assert u.hits == {"playbook": True, "root_cause": True}


def test_an_outcome_without_its_directive_or_judging_nothing_moves_nothing(h: Any) -> None:
    obs = _obs()
    obs.ingest("outcomes", h.outcome(1, "api", "rolled_back", "failover_dependency", "c1", "d-unknown"), now=1.0)
    obs.ingest("directives", _directive(2, "c2", ["failover_dependency"]), now=1.0)
    obs.ingest("outcomes", h.outcome(2, "api", "denied", "failover_dependency", "c2", "d2"), now=2.0)
    obs.ingest("outcomes", h.outcome(3, "api", "inconclusive", "failover_dependency", "c2", "d2"), now=2.0)
    obs.judge_advice(3.0)
    assert not obs.weight_updates and obs.accuracy.weights(3.0) == {
        "anomaly": 0.3,
        "root_cause": 0.25,
        "playbook": 0.45,
    }


def _weights_entries(bus: Any) -> list[dict[str, Any]]:
    out = []
    for e in bus.read("ledger", LedgerEntry):
        if e.action == "learning_update":
            p = json.loads(e.payload)
            if p.get("kind") == "advice_weights":
                out.append(p)
    return out


async def test_weight_changes_are_ledgered_once_and_used_by_the_next_directive(
    h: Any, meta: Settings, bus: Any
) -> None:
    meta.cycle.cycle_seconds = 1.0
    meta.cycle.min_cycle_gap_seconds = 0.0
    spike = h.stats("errors", "error_rate", mean=0.3, base=0.002, count=30)
    bus.publish("health", h.window("checkout", spike, seconds=10.0), "checkout")
    loop = MetaLoop(meta, replica_id="r1")
    async with h.running(loop):
        [d1] = await h.until(lambda: bus.read("directives", Directive))
        first = d1.ml_advice.recommended_playbooks[0]
        assert d1.ml_advice.confidence_scores["weight.playbook"] == 0.45
        bus.publish(
            "outcomes", h.outcome(1, "checkout", "rolled_back", first, d1.cycle_id, d1.directive_id), "checkout"
        )
        [entry] = await h.until(lambda: _weights_entries(bus))
        # the fault persists: evidence from after the outcome (older is stale), and the next directive uses the
        # moved weight
        time.sleep(0.5)
        bus.publish("health", h.window("checkout", spike, seconds=0.4), "checkout")
        d2 = await h.until(lambda: [d for d in bus.read("directives", Directive) if d.cycle_id != d1.cycle_id])
    assert entry["hits"] == {"playbook": False} and entry["for_outcome"] == "out1"
    assert entry["weights_before"]["playbook"] == 0.45 > entry["weights_after"]["playbook"]
    assert entry["accuracy"]["playbook"] < 0.5 and entry["judged_weight"]["playbook"] > 0.99
    assert d2[0].ml_advice.confidence_scores["weight.playbook"] == entry["weights_after"]["playbook"]
    # a restarted loop rebuilds the record from the topics and does not ledger it again
    meta.cycle.cycle_seconds = 1.0
    loop2 = MetaLoop(meta, replica_id="r2")
    async with h.running(loop2):
        await h.until(lambda: loop2.cycles_run >= 1)
    assert loop2.obs.accuracy.weights(time.time()) == loop.obs.accuracy.weights(time.time())
    assert len(_weights_entries(bus)) == 1
