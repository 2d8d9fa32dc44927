"""``meta_coordinated_healing``: the design's monitoring object, read from the topics on every access."""

from __future__ import annotations

import time
from typing import Any

import pytest

from metaheal.agents.meta_coordinated_healing import MetaCoordinatedHealing, meta_coordinated_healing
from metaheal.config import Settings
from metaheal.errors import NotConfigured
from metaheal.events import CycleFocus, FocusArea, GuardrailAdjustment


def cycle(cycle_id: str, focus: str, adjustment: str, ts: float) -> CycleFocus:
    return CycleFocus(
        cycle_id=cycle_id,
        ts=ts,
        focus_area=focus,
        confidence=0.85,
        reasoning=["Latency drift: 150ms → 245ms"],
        guardrail_adjustment=adjustment,
        guardrail_level="loose",
        time_budget_seconds=120,
    )


def test_current_cycle_and_outcome_history_follow_the_topics(meta: Settings, bus: Any, h: Any) -> None:
    healing = MetaCoordinatedHealing(meta)
    assert healing.current_cycle is None and healing.outcome_history == []
    now = time.time()
    bus.publish("cycles", cycle("cycle_20250115_143000_42", "latency_drift", "loosen", now), "c42")
    bus.publish("outcomes", h.outcome(2, "api_cluster", "failed", playbook="warm_cache", ts=now + 2), "api_cluster")
    bus.publish("outcomes", h.outcome(1, "api_cluster", "success", ts=now + 1), "api_cluster")
    current = healing.current_cycle
    assert current is not None and current.focus_area is FocusArea.LATENCY_DRIFT
    assert (current.focus_area.value, current.guardrail_adjustment.value) == ("latency_drift", "loosen")
    assert current.guardrail_adjustment is GuardrailAdjustment.LOOSEN
    assert [f"{o.playbook}: {o.result}" for o in healing.outcome_history] == [
        "scale_up_instances: success",  # oldest first, by the outcome's own time
        "warm_cache: failed",
    ]
    # no refresh call: the next access reads the newer cycle
    bus.publish("cycles", cycle("cycle_20250115_143200_43", "routine_maintenance", "maintain", now + 120), "c43")
    assert healing.current_cycle.focus_area.value == "routine_maintenance"  # type: ignore[union-attr]
    assert healing.guardrail_level == meta.guardrails.initial_level  # nothing on the control topic yet


def test_the_default_handle_is_configured_from_the_environment(
    meta: Settings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    meta_coordinated_healing.reset()
    with pytest.raises(NotConfigured, match=r"meta_coordinated_healing: kafka\.bootstrap is not set"):
        meta_coordinated_healing.current_cycle  # noqa: B018 - first use builds it
    monkeypatch.setenv("METAHEAL_KAFKA__BOOTSTRAP", str(meta.kafka.bootstrap))
    monkeypatch.setenv("METAHEAL_TOPICS__PREFIX", meta.topics.prefix)
    try:
        assert meta_coordinated_healing.current_cycle is None  # this test's topics: no cycle yet
        assert meta_coordinated_healing.settings.topics.prefix == meta.topics.prefix
    finally:
        meta_coordinated_healing.reset()
