"""Diagnosis when one symptom causes another: cache misses loading the database, edge surges, slow queries.

The health windows here are what an operator's dashboards would show for each incident (numbers
picked by hand, in the ranges a cache-backed API and its database show), not the simulator's
output; they go through the anomaly advisor (unscored health moves) into the suggester, as
in a cycle.
"""

from __future__ import annotations

import pytest

from metaheal.agents.advisors.anomaly import health_strength, move_size
from metaheal.events import HealthWindow
from tests.agents.advisors.conftest import diagnose, signal_stats, window

GRAPH = {"web": ["api"], "api": ["orders-db", "cache", "payments"]}


def _api(latency: float, hit: float, rps: float, db_latency: float, db_errors: float = 0.003) -> HealthWindow:
    return window(
        "api",
        signal_stats("latency", "latency_p95_ms", latency, 110.0),
        signal_stats("unknown", "cache_hit_rate", hit, 0.95),
        signal_stats("traffic", "requests_per_s", rps, 400.0),
        signal_stats("errors", "error_rate", 0.004 + db_errors / 2, 0.004),
        signal_stats("dependency", "dependency_latency_ms", db_latency, 12.0, "orders-db"),
        signal_stats("dependency", "dependency_error_rate", db_errors, 0.003, "orders-db"),
    )


def _db(latency: float, rps: float, cpu: float, errors: float = 0.003) -> HealthWindow:
    return window(
        "orders-db",
        signal_stats("latency", "latency_p95_ms", latency, 12.0),
        signal_stats("traffic", "requests_per_s", rps, 140.0),
        signal_stats("saturation", "cpu_utilization", cpu, 0.35),
        signal_stats("errors", "error_rate", errors, 0.003),
    )


def test_a_hit_rate_drop_is_measured_on_its_misses() -> None:
    assert move_size(0.45, 0.95) == pytest.approx(10.0)  # misses 5 % -> 55 %
    assert move_size(0.9, 0.95) == pytest.approx(1.0)  # misses doubled: a real but smaller move
    assert health_strength(move_size(0.45, 0.95)) == 0.8 > health_strength(move_size(0.9, 0.95))


def test_cache_misses_that_overload_the_database_are_the_cause_not_the_database() -> None:
    # hit rate 0.95 -> 0.45: the database gets ~3x the queries at the same api traffic and slows down, sheds a little
    cands = diagnose(
        [
            _api(latency=420.0, hit=0.45, rps=405.0, db_latency=95.0, db_errors=0.04),
            _db(latency=95.0, rps=430.0, cpu=0.97, errors=0.04),
        ],
        GRAPH,
    )
    top = cands[0]
    assert (top.cause, top.service) == ("cache_miss_rate_high", "api")
    assert top.probability >= 0.35  # above unknown_below: a diagnosis, not a guess
    assert "cache_hit_down=0.80" in top.evidence and any(e.startswith("dep_load_up") for e in top.evidence)
    # the database's latency and errors are the misses' consequence: slow query and outage trail clearly
    assert all(top.probability > 1.5 * c.probability for c in cands[1:])


def test_a_slow_database_at_unchanged_load_is_still_a_slow_query() -> None:
    cands = diagnose(
        [_api(latency=420.0, hit=0.95, rps=405.0, db_latency=95.0), _db(latency=95.0, rps=141.0, cpu=0.4)], GRAPH
    )
    assert (cands[0].cause, cands[0].service) == ("database_slow_query", "api")


def test_an_edge_surge_reaching_a_failing_provider_is_still_an_upstream_outage() -> None:
    # twice the traffic everywhere, and payments failing: its load rose only as much as ours did
    api = window(
        "api",
        signal_stats("traffic", "requests_per_s", 800.0, 400.0),
        signal_stats("errors", "error_rate", 0.2, 0.004),
        signal_stats("dependency", "dependency_error_rate", 0.5, 0.003, "payments"),
    )
    pay = window(
        "payments",
        signal_stats("traffic", "requests_per_s", 160.0, 80.0),
        signal_stats("errors", "error_rate", 0.5, 0.003),
    )
    cands = diagnose([api, pay], GRAPH)
    assert (cands[0].cause, cands[0].service) == ("upstream_outage", "api")


def test_a_dependency_its_callers_routed_away_from_is_not_down() -> None:
    # the api failed over from orders-db to its replica: the primary serves nothing, which is no outage
    api = window(
        "api",
        signal_stats("latency", "latency_p95_ms", 420.0, 110.0),
        signal_stats("traffic", "requests_per_s", 760.0, 400.0),
        signal_stats("saturation", "cpu_utilization", 0.97, 0.5),
    )
    db = window("orders-db", signal_stats("traffic", "requests_per_s", 0.0, 140.0))
    cands = diagnose([api, db], GRAPH)
    assert (cands[0].cause, cands[0].service) == ("traffic_surge", "api")
    assert all(c.cause != "upstream_outage" or c.probability < 0.05 for c in cands)
