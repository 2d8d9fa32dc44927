"""Negative evidence on hand-made health windows: proportional, never from missing telemetry."""

from __future__ import annotations

from metaheal.agents.advisors.anomaly import AnomalyAdvisor
from metaheal.agents.advisors.base import CycleContext
from metaheal.agents.advisors.negative import LR_FLOOR, absences, likelihood_ratio
from metaheal.agents.advisors.root_cause import RootCauseSuggester
from metaheal.events import CycleFocus, HealthWindow, RootCauseCandidate, SignalStats

GRAPH = {"api": ["orders-db"]}


def _sig(signal: str, metric: str, mean: float, base: float, dependency: str | None = None) -> SignalStats:
    return SignalStats(
        signal=signal,
        metric=metric,
        count=20,
        mean=mean,
        p50=mean,
        p95=mean * 1.05,
        max=mean * 1.1,
        baseline_mean=base,
        dependency=dependency,
    )


def _win(service: str, *signals: SignalStats) -> HealthWindow:
    return HealthWindow(service=service, window_start=80.0, window_end=90.0, sample_count=100, signals=list(signals))


def _diagnose(windows: list[HealthWindow]) -> list[RootCauseCandidate]:
    focus = CycleFocus(
        cycle_id="c1",
        ts=100.0,
        focus_area="latency_drift",
        confidence=0.9,
        reasoning=[],
        guardrail_adjustment="maintain",
        guardrail_level="maintain",
        time_budget_seconds=60,
        target_services=["api"],
    )
    ctx = CycleContext(focus=focus, services=["api"], health=windows)
    AnomalyAdvisor().advise(ctx)
    RootCauseSuggester(graph=GRAPH).advise(ctx)
    return ctx.candidates


def _storm(with_hit_metric: bool, hit: float = 0.92) -> list[HealthWindow]:
    """api slower, the database serving x3 the requests with api's own traffic flat (retries or misses)."""
    api = [
        _sig("latency", "latency_p95_ms", 220.0, 110.0),
        _sig("traffic", "requests_per_s", 400.0, 400.0),
        _sig("dependency", "dependency_latency_ms", 40.0, 12.0, "orders-db"),
        _sig("dependency", "dependency_error_rate", 0.003, 0.003, "orders-db"),
    ]
    if with_hit_metric:
        api.append(_sig("unknown", "cache_hit_rate", hit, 0.92))
    db = [_sig("traffic", "requests_per_s", 420.0, 140.0), _sig("latency", "latency_p95_ms", 40.0, 12.0)]
    return [_win("api", *api), _win("orders-db", *db)]


def test_a_hit_rate_at_its_baseline_argues_against_cache_misses() -> None:
    blind = _diagnose(_storm(with_hit_metric=False))
    assert blind[0].cause == "cache_miss_rate_high"  # only the database's load shows the misses
    seen = _diagnose(_storm(with_hit_metric=True))
    cache = next(c for c in seen if c.cause == "cache_miss_rate_high")
    assert seen[0].cause != "cache_miss_rate_high"
    assert cache.probability < next(c for c in blind if c.cause == "cache_miss_rate_high").probability / 3
    assert any(e.startswith("against: cache_hit_down absent: api cache_hit_rate") for e in cache.evidence)
    # the hit rate really down: no argument against, the misses lead
    down = _diagnose(_storm(with_hit_metric=True, hit=0.4))
    assert down[0].cause == "cache_miss_rate_high"
    assert not any(e.startswith("against:") for e in down[0].evidence)


def test_the_clearer_the_absence_the_lower_the_ratio() -> None:
    ratios = []
    for mean in (100.0, 105.0, 110.0, 115.0, 120.0, 125.0, 130.0):
        _z, lr = likelihood_ratio(_sig("latency", "latency_ms", mean, 100.0), "latency", 1) or (0.0, 1.0)
        ratios.append(lr)
    assert ratios == sorted(ratios) and ratios[0] == LR_FLOOR and ratios[-1] == 1.0
    assert LR_FLOOR < ratios[3] < 1.0  # a third of the way to the symptom: some evidence against, not full


def test_no_telemetry_is_no_evidence_and_a_stale_series_says_nothing() -> None:
    assert absences([], "api", {"orders-db"}) == {}
    old = HealthWindow(
        service="api",
        window_start=60.0,
        window_end=70.0,
        sample_count=20,
        signals=[_sig("dependency", "dependency_error_rate", 0.003, 0.003, "orders-db")],
    )
    new = _win("api", _sig("latency", "latency_p95_ms", 220.0, 110.0))
    assert "dep_errors_up" not in absences([old, new], "api", {"orders-db"})
    assert "dep_errors_up" in absences([old], "api", {"orders-db"})
