"""The meta loop's view of provisional windows (<prefix>health-early): evidence now, never a reference."""

from __future__ import annotations

from metaheal.agents.meta.focus import decide_focus
from metaheal.agents.meta.learning import Learner
from metaheal.agents.meta.observations import Observations
from metaheal.config import Settings
from metaheal.events import HealthWindow, SignalStats


def _win(start: float, mean: float, base: float, count: int = 20) -> HealthWindow:
    s = SignalStats(
        signal="errors", metric="error_rate", count=count, mean=mean, p50=mean, p95=mean, max=mean, baseline_mean=base
    )
    return HealthWindow(service="api", window_start=start, window_end=start + 10.0, sample_count=count, signals=[s])


def _held(obs: Observations) -> HealthWindow:
    return obs.health[("api", "errors", "error_rate", "")]


def test_a_provisional_window_is_evidence_until_its_closed_window_replaces_it() -> None:
    settings = Settings()
    settings.cycle.evidence_window_seconds = 60.0
    obs = Observations(settings, Learner())
    obs.ingest("health", _win(100.0, 0.002, 0.002), now=112.0)
    obs.ingest("health-early", _win(110.0, 0.15, 0.002, count=6), now=114.0)
    assert _held(obs).window_start == 110.0
    decision = decide_focus(obs.evidence(114.0))
    assert decision.focus_area == "error_spike" and decision.target_services == ["api"]
    # an older window closing late (the lateness) does not hide the newer open one
    obs.ingest("health", _win(100.0, 0.002, 0.002), now=115.0)
    assert _held(obs).window_start == 110.0 and _held(obs).signals[0].count == 6
    # a later look at the same open window replaces the earlier one, and its closed window replaces both
    obs.ingest("health-early", _win(110.0, 0.16, 0.002, count=12), now=116.0)
    assert _held(obs).signals[0].count == 12
    obs.ingest("health", _win(110.0, 0.16, 0.002), now=121.0)
    assert _held(obs).signals[0].count == 20
    # ... and no provisional view of that window displaces it afterwards
    obs.ingest("health-early", _win(110.0, 0.1, 0.002, count=18), now=121.5)
    assert _held(obs).signals[0].count == 20


def test_a_provisional_window_never_becomes_the_healthy_reference() -> None:
    obs = Observations(Settings(), Learner())
    obs.ingest("health", _win(100.0, 0.002, 0.002), now=112.0)
    ref = dict(obs.reference)
    # an open window whose baseline has drifted up (a streams baseline learning a fault) and looks healthy
    obs.ingest("health-early", _win(110.0, 0.02, 0.02, count=6), now=114.0)
    assert obs.reference == ref
