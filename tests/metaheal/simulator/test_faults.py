"""Each fault shows its signature; the right remediation through the real admin HTTP API
fixes it and a wrong one does not. The fleet runs on a manual clock, so "actions take
time" is checked exactly, without sleeping."""

from __future__ import annotations

import httpx
import pytest

from metaheal.simulator.faults import make_fault, scenario_faults
from metaheal.simulator.fleet import Fleet

from .conftest import ManualClock

pytestmark = pytest.mark.asyncio(loop_scope="session")


def metric(fleet: Fleet, service: str, name: str, **labels: str) -> float:
    """The emitted (noisy) sample, as a consumer of the telemetry topic would see it."""
    samples = fleet.sample()[service]
    hits = [s.value for s in samples if s.metric == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


async def status(client: httpx.AsyncClient) -> int:
    return (await client.get("/health")).status_code


async def test_traffic_surge_is_fixed_by_scaling_once_instances_are_ready(
    fleet: Fleet, clock: ManualClock, admin: dict[str, httpx.AsyncClient]
) -> None:
    api = admin["api_cluster"]
    before = metric(fleet, "api_cluster", "latency_p95_ms")
    fleet.inject(make_fault("traffic_surge"))
    assert metric(fleet, "api_cluster", "requests_per_s") > 1.7 * 200
    assert metric(fleet, "api_cluster", "cpu_utilization") > 0.9
    assert metric(fleet, "api_cluster", "latency_p95_ms") > 2 * before
    assert await status(api) == 503
    # wrong: warming the cache or restarting adds no capacity (a restart makes it worse meanwhile)
    await api.post("/cache/warm")
    r = await api.post("/restart")
    assert r.json() == {"ok": True}
    clock.advance(fleet.restart_seconds + fleet.warm_seconds)
    assert await status(api) == 503
    # right: scale up; capacity arrives only when the instances are ready
    r = await api.post("/scale", json={"delta": 4})
    assert r.json() == {"instances": 12}
    assert (await api.get("/capacity")).json() == {"instances": 12, "ready_instances": 8}
    assert await status(api) == 503
    clock.advance(fleet.ready_delay)
    assert (await api.get("/capacity")).json() == {"instances": 12, "ready_instances": 12}
    assert await status(api) == 200, (await api.get("/health")).json()
    assert metric(fleet, "api_cluster", "latency_p95_ms") < 1.6 * before


async def test_db_slow_query_partial_fixes_and_failover(
    fleet: Fleet, clock: ManualClock, admin: dict[str, httpx.AsyncClient]
) -> None:
    base_db = fleet.view()["db"].latency_p50_ms
    base_api = fleet.view()["api_cluster"].latency_p50_ms
    fleet.inject(make_fault("db_slow_query"))
    assert metric(fleet, "db", "latency_p50_ms") > 4 * base_db
    assert metric(fleet, "api_cluster", "dependency_latency_ms", dependency="db") > 4 * base_db
    assert fleet.view()["api_cluster"].latency_p50_ms > 1.5 * base_api  # drift on the caller
    assert await status(admin["api_cluster"]) == 503
    # wrong: restarting or scaling the caller does nothing for a slow query on the db
    await admin["api_cluster"].post("/restart")
    await admin["api_cluster"].post("/scale", json={"delta": 2})
    clock.advance(fleet.ready_delay + fleet.restart_seconds)
    assert fleet.view()["db"].latency_p50_ms > 4 * base_db
    # partial: a warm cache halves the excess, more db instances spread what is left
    await admin["db"].post("/cache/warm")
    clock.advance(fleet.warm_seconds)
    warmed = fleet.view()["db"].latency_p50_ms
    assert 2 * base_db < warmed < 4 * base_db
    await admin["db"].post("/scale", json={"delta": 3})
    clock.advance(fleet.ready_delay)
    scaled = fleet.view()["db"].latency_p50_ms
    assert base_db * 1.2 < scaled < warmed
    # right: fail the caller over to the replica
    r = await admin["api_cluster"].post("/failover", json={"dependency": "db"})
    assert r.json() == {"ok": True}
    clock.advance(fleet.switch_seconds)
    assert await status(admin["api_cluster"]) == 200, (await admin["api_cluster"].get("/health")).json()
    assert fleet.view()["api_cluster"].latency_p50_ms < 1.2 * base_api


async def test_bad_deployment_is_fixed_only_by_flag_rollback(
    fleet: Fleet, clock: ManualClock, admin: dict[str, httpx.AsyncClient]
) -> None:
    api = admin["api_cluster"]
    assert metric(fleet, "api_cluster", "deployments", version="v1.0.0") == 0.0
    fleet.inject(make_fault("bad_deployment"))
    assert metric(fleet, "api_cluster", "deployments", version="v2.4.1", flag="checkout_v2") == 1.0
    assert metric(fleet, "api_cluster", "error_rate") > 0.1
    assert (await api.get("/health")).json()["status"] == "degraded"
    # wrong: restart and scale keep the bad code path
    await api.post("/restart")
    await api.post("/scale", json={"delta": 2})
    clock.advance(fleet.ready_delay + fleet.restart_seconds)
    assert metric(fleet, "api_cluster", "error_rate") > 0.1
    # right: roll the flag back; it takes a moment to propagate
    r = await api.post("/flags/rollback", json={"flag": None})
    assert r.json() == {"ok": True, "rolled_back": ["checkout_v2"]}
    assert await status(api) == 503
    clock.advance(fleet.switch_seconds)
    assert metric(fleet, "api_cluster", "error_rate") < 0.01
    assert await status(api) == 200
    # and the flag is the cause: restoring it brings the errors back
    r = await api.post("/flags/restore", json={"flag": "checkout_v2"})
    assert r.json() == {"ok": True, "restored": ["checkout_v2"]}
    assert metric(fleet, "api_cluster", "error_rate") > 0.1


async def test_evidence_vanishes_the_fix_silences_telemetry_while_the_service_is_healthy(
    fleet: Fleet, clock: ManualClock, admin: dict[str, httpx.AsyncClient]
) -> None:
    api = admin["api_cluster"]
    for fault in scenario_faults("evidence_vanishes"):
        fleet.inject(fault)
    assert metric(fleet, "api_cluster", "error_rate") > 0.1  # the agent reports until the fix
    await api.post("/flags/rollback", json={"flag": None})
    clock.advance(fleet.switch_seconds)
    assert "api_cluster" not in fleet.sample() and "db" in fleet.sample()  # only its own agent died
    assert await status(api) == 200  # the service is healed; only its evidence is gone
    clock.advance(240.0)
    assert metric(fleet, "api_cluster", "error_rate") < 0.01  # the agent is back, reporting the healthy service


async def test_cache_eviction_storm_is_fixed_by_warm_cache(
    fleet: Fleet, clock: ManualClock, admin: dict[str, httpx.AsyncClient]
) -> None:
    api = admin["api_cluster"]
    base = fleet.view()["api_cluster"]
    fleet.inject(make_fault("cache_eviction_storm"))
    assert metric(fleet, "api_cluster", "cache_hit_rate") < 0.45
    assert metric(fleet, "api_cluster", "latency_p95_ms") > 2 * base.latency_p95_ms
    assert fleet.view()["db"].rps > 2.5 * fleet._baseline("db").rps  # misses land on the database
    # wrong: more api instances do not bring keys back
    await api.post("/scale", json={"delta": 4})
    clock.advance(fleet.ready_delay)
    assert await status(api) == 503
    assert fleet.view()["api_cluster"].cache_hit_rate < 0.45
    # right: warm the cache
    await api.post("/cache/warm")
    assert await status(api) == 503
    clock.advance(fleet.warm_seconds)
    assert metric(fleet, "api_cluster", "cache_hit_rate") > 0.85
    assert await status(api) == 200


async def test_upstream_outage_is_fixed_by_failover(
    fleet: Fleet, clock: ManualClock, admin: dict[str, httpx.AsyncClient]
) -> None:
    api = admin["api_cluster"]
    fleet.inject(make_fault("upstream_outage"))
    assert metric(fleet, "api_cluster", "dependency_error_rate", dependency="payments") > 0.4
    assert metric(fleet, "api_cluster", "error_rate") > 0.05
    # wrong: restart and cache warm
    await api.post("/restart")
    await api.post("/cache/warm")
    clock.advance(fleet.restart_seconds + fleet.warm_seconds)
    assert await status(api) == 503
    # right: fail over to the standby provider
    await api.post("/failover", json={"dependency": "payments"})
    clock.advance(fleet.switch_seconds)
    assert metric(fleet, "api_cluster", "dependency_error_rate", dependency="payments") < 0.01
    assert await status(api) == 200
    assert fleet.view()["payments"].rps == 0.0  # the failed upstream no longer gets traffic
    await api.post("/failback", json={"dependency": "payments"})
    assert metric(fleet, "api_cluster", "error_rate") > 0.05


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/scale", {}, "delta: field required"),
        ("/scale", {"delta": "2"}, "delta: expected int"),
        ("/scale", {"delta": True}, "delta: expected int"),
        ("/failover", {"dependency": "ghost"}, "dependency: api_cluster does not call 'ghost'"),
        ("/failover", {"dependency": "cache"}, "dependency: cache has no standby to fail over to"),
        ("/failback", {}, "dependency: field required"),
        ("/flags/rollback", {"flag": 3}, "flag: expected str"),
    ],
)
async def test_bad_requests_get_400_naming_the_field(
    fleet: Fleet, admin: dict[str, httpx.AsyncClient], path: str, body: dict, message: str
) -> None:
    before = fleet.capacity("api_cluster")
    r = await admin["api_cluster"].post(path, json=body)
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert fleet.capacity("api_cluster") == before


async def test_non_json_body_is_rejected(admin: dict[str, httpx.AsyncClient]) -> None:
    r = await admin["api_cluster"].post("/scale", content=b"delta=2")
    assert r.status_code == 400 and "body: not JSON" in r.json()["error"]


async def test_latency_drift_scenario_ramps(fleet: Fleet, clock: ManualClock) -> None:
    base = fleet.view()["api_cluster"].latency_p95_ms
    for f in scenario_faults("latency_drift"):
        fleet.inject(f)
    series = []
    for _ in range(4):
        series.append(fleet.view()["api_cluster"].latency_p95_ms)
        clock.advance(5.0)
    assert series == sorted(series) and series[0] == pytest.approx(base)
    assert series[-1] > 1.3 * base


async def test_instance_slowdown_drifts_latency_and_only_capacity_fixes_it(
    fleet: Fleet, clock: ManualClock, admin: dict[str, httpx.AsyncClient]
) -> None:
    api = admin["api_cluster"]
    base = fleet.view()["api_cluster"]
    fleet.inject(make_fault("instance_slowdown", capacity=0.6, ramp_seconds=10.0))
    clock.advance(10.0)
    assert metric(fleet, "api_cluster", "latency_p95_ms") > 2 * base.latency_p95_ms
    assert metric(fleet, "api_cluster", "requests_per_s") == pytest.approx(base.rps, rel=0.15)  # same traffic
    assert metric(fleet, "web", "dependency_latency_ms", dependency="api_cluster") > 1.4 * base.latency_p50_ms
    # wrong: restart (slow instances stay slow) and scaling the caller
    await api.post("/restart")
    await admin["web"].post("/scale", json={"delta": 2})
    clock.advance(fleet.restart_seconds + fleet.ready_delay)
    assert await status(api) == 503
    # right: more instances
    await api.post("/scale", json={"delta": 2})
    clock.advance(fleet.ready_delay)
    assert await status(api) == 200
    assert await status(admin["web"]) == 200


async def test_a_standby_saturates_like_the_primary(
    fleet: Fleet, clock: ManualClock, admin: dict[str, httpx.AsyncClient]
) -> None:
    """Failing over does not make an overload disappear: cache misses overload the replica too."""
    fleet.inject(make_fault("cache_eviction_storm"))
    await admin["api_cluster"].post("/failover", json={"dependency": "db"})
    clock.advance(fleet.switch_seconds)
    assert fleet.view()["db"].rps == 0.0  # the primary is out of the path ...
    assert await status(admin["api_cluster"]) == 503  # ... but the replica drowns in the same misses
    await admin["api_cluster"].post("/cache/warm")
    clock.advance(fleet.warm_seconds)
    assert await status(admin["api_cluster"]) == 200
