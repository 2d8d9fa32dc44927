"""Guardrail rules, time budgets, learning, cycle ids, probes and the control-topic fold (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from metaheal.agents.meta.cycle_ids import CycleIds, format_cycle_id, parse_counter
from metaheal.agents.meta.guardrails import GuardrailState, time_budget
from metaheal.agents.meta.leader import ControlView
from metaheal.agents.meta.learning import Learner
from metaheal.agents.meta.probes import probe_commands
from metaheal.config import GuardrailSettings


def state(level: str = "maintain") -> GuardrailState:
    return GuardrailState(level=level, rules=GuardrailSettings(), stable_cycles_to_loosen=3, min_outcomes=3)


def test_low_success_rate_tightens_one_level_and_needs_enough_outcomes() -> None:
    g = state("loose")
    assert g.decide("latency_drift", 0.2, new_outcomes=2).adjustment == "maintain"  # 2 < min_outcomes
    c = g.decide("latency_drift", 0.2, new_outcomes=1)
    assert (c.adjustment, c.level) == ("tighten", "maintain")
    assert g.decide("latency_drift", 0.2, new_outcomes=0).adjustment == "maintain"  # needs new outcomes again


def test_high_success_rate_loosens_one_level_per_batch_of_outcomes() -> None:
    g = state("tight")
    assert g.decide("latency_drift", 0.9, new_outcomes=5).level == "maintain"
    assert g.decide("latency_drift", 0.9, new_outcomes=0).adjustment == "maintain"
    assert g.decide("latency_drift", 0.9, new_outcomes=3).level == "loose"
    assert g.decide("latency_drift", 0.9, new_outcomes=3).adjustment == "maintain"  # already loose


def test_error_spike_beats_a_good_success_rate() -> None:
    g = state("loose")
    c = g.decide("error_spike", 1.0, new_outcomes=10)
    assert (c.adjustment, c.level) == ("tighten", "tight")


def test_stable_cycles_loosen_gradually_and_any_incident_resets_the_count() -> None:
    g = state("tight")
    levels = [
        g.decide(f, None, 0).level
        for f in ["routine_maintenance"] * 2 + ["latency_drift"] + ["routine_maintenance"] * 6
    ]
    assert levels == ["tight", "tight", "tight", "tight", "tight", "maintain", "maintain", "maintain", "loose"]


def test_state_round_trips_through_json() -> None:
    g = state("tight")
    g.decide("routine_maintenance", None, 0)
    g2 = state()
    g2.restore(g.to_json())
    assert (g2.level, g2.stable_cycles) == ("tight", 1)
    g2.restore({"level": "bogus"})
    assert g2.level == "tight"


def test_time_budget_scales_with_level_and_learned_duration() -> None:
    assert time_budget("latency_drift", "maintain") == 600
    assert time_budget("latency_drift", "tight") == 300
    assert time_budget("latency_drift", "loose") == 900
    assert time_budget("latency_drift", "maintain", learned_seconds=500) == 1000
    assert time_budget("latency_drift", "maintain", learned_seconds=5000) == 1200  # capped at 2x


def test_learning_weights_recent_outcomes_more(h: Any) -> None:
    lr = Learner(half_life=100.0)
    t0 = 10_000.0
    for i in range(4):
        lr.observe(h.outcome(f"old{i}", "api", "failed", ts=t0), "capacity_strain", now=t0)
    lr.observe(h.outcome("new", "api", "success", ts=t0 + 300), "capacity_strain", now=t0 + 300)
    # unweighted 1/5 = 0.2; the old failures are three half-lives old (weight 1/8 each): 1 / (1 + 4/8) = 0.667
    assert lr.success_rate(playbook="scale_up_instances", now=t0 + 300) == pytest.approx(2 / 3, abs=1e-3)
    assert lr.success_rate(focus_area="latency_drift", now=t0) is None
    lr.observe(h.outcome("denied", "api", "denied", ts=t0), "capacity_strain", now=t0 + 300)
    assert len(lr) == 5  # denied says nothing about the playbook
    assert lr.playbook_ranking(["restart_service", "scale_up_instances"], now=t0 + 300) == [
        "scale_up_instances",
        "restart_service",
    ]
    assert lr.typical_duration("capacity_strain", now=t0 + 300) == pytest.approx(42.0)
    assert (lr.count_since(t0), lr.count_since(t0 - 1)) == (1, 5)


def test_cycle_ids_are_utc_and_monotonic() -> None:
    ids = CycleIds()
    a, b = ids.next(1736951400.0), ids.next(1736951400.0)
    assert (a, b) == ("cycle_20250115_143000_1", "cycle_20250115_143000_2")
    ids.observe("cycle_20250101_000000_77")
    ids.observe("garbage")
    assert parse_counter(ids.next(0.0)) == 78
    assert format_cycle_id(0.0, 1) == "cycle_19700101_000000_1"


def test_probe_commands_carry_ttl_and_targets() -> None:
    [a, b] = probe_commands("cycle_x_1", "error_spike", ["checkout"], 150, 5.0)
    assert (a.probe, b.probe, a.ttl_seconds, a.services, a.probe_id) == (
        "error_tracking",
        "stack_traces",
        150,
        ["checkout"],
        "cycle_x_1:error_tracking",
    )


def test_control_fold_ignores_stale_and_malformed_records() -> None:
    v = ControlView()
    v.apply("meta_loop.leader", {"holder": "a", "epoch": 3, "expires_at": 5.0})
    v.apply("meta_loop.leader", {"holder": "a", "epoch": 2, "expires_at": 99.0})  # stale epoch
    v.apply("meta_loop.leader", {"holder": "x"})  # malformed
    v.apply("meta_loop.guardrails", {"level": "tight"})
    assert (v.leader.epoch, v.leader.expires_at, v.guardrails) == (3, 5.0, {"level": "tight"})
    assert v.leader.expired(5.0) and not v.leader.expired(4.9)
