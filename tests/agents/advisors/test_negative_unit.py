"""Negative evidence on hand-made health windows: proportional, never from missing telemetry."""

from __future__ import annotations

from functools import partial

from metaheal.agents.advisors.negative import LR_FLOOR, absences, likelihood_ratio
from metaheal.events import HealthWindow
from tests.agents.advisors.conftest import diagnose, signal_stats, window

GRAPH = {"api": ["orders-db"]}

stats = partial(signal_stats, spread=0.05)  # a steady window: p95 and max close to the mean


def _storm(with_hit_metric: bool, hit: float = 0.92) -> list[HealthWindow]:
    """api slower, the database serving x3 the requests with api's own traffic flat (retries or misses)."""
    api = [
        stats("latency", "latency_p95_ms", 220.0, 110.0),
        stats("traffic", "requests_per_s", 400.0, 400.0),
        stats("dependency", "dependency_latency_ms", 40.0, 12.0, "orders-db"),
        stats("dependency", "dependency_error_rate", 0.003, 0.003, "orders-db"),
    ]
    if with_hit_metric:
        api.append(stats("unknown", "cache_hit_rate", hit, 0.92))
    db = [stats("traffic", "requests_per_s", 420.0, 140.0), stats("latency", "latency_p95_ms", 40.0, 12.0)]
    return [window("api", *api), window("orders-db", *db)]


def test_a_hit_rate_at_its_baseline_argues_against_cache_misses() -> None:
    blind = diagnose(_storm(with_hit_metric=False), GRAPH)
    assert blind[0].cause == "cache_miss_rate_high"  # only the database's load shows the misses
    seen = diagnose(_storm(with_hit_metric=True), GRAPH)
    cache = next(c for c in seen if c.cause == "cache_miss_rate_high")
    assert seen[0].cause != "cache_miss_rate_high"
    assert cache.probability < next(c for c in blind if c.cause == "cache_miss_rate_high").probability / 3
    assert any(e.startswith("against: cache_hit_down absent: api cache_hit_rate") for e in cache.evidence)
    # the hit rate really down: no argument against, the misses lead
    down = diagnose(_storm(with_hit_metric=True, hit=0.4), GRAPH)
    assert down[0].cause == "cache_miss_rate_high"
    assert not any(e.startswith("against:") for e in down[0].evidence)


def test_the_clearer_the_absence_the_lower_the_ratio() -> None:
    ratios = []
    for mean in (100.0, 105.0, 110.0, 115.0, 120.0, 125.0, 130.0):
        _z, lr = likelihood_ratio(stats("latency", "latency_ms", mean, 100.0), "latency", 1) or (0.0, 1.0)
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
        signals=[stats("dependency", "dependency_error_rate", 0.003, 0.003, "orders-db")],
    )
    new = window("api", stats("latency", "latency_p95_ms", 220.0, 110.0))
    assert "dep_errors_up" not in absences([old, new], "api", {"orders-db"})
    assert "dep_errors_up" in absences([old], "api", {"orders-db"})
