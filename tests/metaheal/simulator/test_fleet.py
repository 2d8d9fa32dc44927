from __future__ import annotations

import math

import pytest

from metaheal.simulator.fleet import Fleet, ServiceSpec, default_topology

from .conftest import ManualClock


def by_metric(samples, metric, **labels):
    return [s for s in samples if s.metric == metric and all(s.labels.get(k) == v for k, v in labels.items())]


def test_quiet_telemetry_is_plausible(fleet: Fleet) -> None:
    sample = fleet.sample()
    assert set(sample) == {"web", "api_cluster", "db", "cache", "payments"}
    api = sample["api_cluster"]
    names = {s.metric for s in api}
    assert {
        "latency_p50_ms",
        "latency_p95_ms",
        "error_rate",
        "cpu_utilization",
        "requests_per_s",
        "instances",
        "cache_hit_rate",
        "dependency_latency_ms",
        "dependency_error_rate",
        "deployments",
    } <= names
    assert {s.labels["dependency"] for s in by_metric(api, "dependency_latency_ms")} == {"db", "cache", "payments"}
    for service, samples in sample.items():
        v = {s.metric: s.value for s in samples if not s.labels or s.metric == "deployments"}
        assert 0 < v["latency_p50_ms"] <= v["latency_p95_ms"] < 500, service
        assert 0 <= v["error_rate"] < 0.01, service
        assert 0 < v["cpu_utilization"] < 0.8, service
        assert v["requests_per_s"] > 0 and v["instances"] >= 1
    # callers pay for their dependencies
    web_p50 = by_metric(sample["web"], "latency_p50_ms")[0].value
    api_p50 = by_metric(api, "latency_p50_ms")[0].value
    assert web_p50 > api_p50
    assert all(fleet.health(n) == [] for n in fleet.services)


def test_noise_is_seeded_and_varies_sample_to_sample(clock: ManualClock) -> None:
    a, b = Fleet(seed=3, clock=clock), Fleet(seed=3, clock=clock)
    first = [s.value for s in a.sample()["api_cluster"]]
    assert first == [s.value for s in b.sample()["api_cluster"]]
    second = [s.value for s in a.sample()["api_cluster"]]
    assert first != second
    assert [s.value for s in Fleet(seed=4, clock=clock).sample()["api_cluster"]] != first


def test_daily_load_variation_is_compressed_into_day_seconds(clock: ManualClock) -> None:
    fleet = Fleet(clock=clock, day_seconds=60.0, day_amplitude=0.3)
    rps = []
    for _ in range(12):
        rps.append(fleet.view()["web"].rps)
        clock.advance(5.0)
    assert max(rps) / min(rps) > 1.6  # peak vs trough within one compressed day
    assert math.isclose(rps[0], 200.0, rel_tol=1e-9)  # starts at the mean


def test_new_instances_take_time_to_become_ready(fleet: Fleet, clock: ManualClock) -> None:
    assert fleet.scale("api_cluster", 3) == 11
    assert fleet.capacity("api_cluster") == {"instances": 11, "ready_instances": 8}
    clock.advance(4.9)
    assert fleet.capacity("api_cluster")["ready_instances"] == 8
    clock.advance(0.2)
    assert fleet.capacity("api_cluster")["ready_instances"] == 11
    assert fleet.scale("api_cluster", -20) == 1  # never below one


def test_restart_takes_half_the_instances_out_for_a_while(fleet: Fleet, clock: ManualClock) -> None:
    fleet.restart("api_cluster")
    assert fleet.capacity("api_cluster")["ready_instances"] == 4
    assert fleet.view()["api_cluster"].utilization > 1.0  # half the capacity for the same traffic
    clock.advance(fleet.restart_seconds)
    assert fleet.capacity("api_cluster")["ready_instances"] == 8


def test_topology_errors_name_the_service() -> None:
    with pytest.raises(ValueError, match="service a: calls unknown dependencies"):
        Fleet([ServiceSpec("a", 1, 10, 1, calls={"ghost": 1.0})])
    with pytest.raises(KeyError, match="unknown service 'nope'"):
        Fleet(default_topology()).capacity("nope")
