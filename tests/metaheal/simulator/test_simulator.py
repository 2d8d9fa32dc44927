"""The simulator against the real broker: telemetry on the topic, probes from the topic."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from metaheal.config import Settings
from metaheal.events import DeadLetter, Metric, ProbeCommand
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import (
    AvroDeserializer,
    AvroSerializer,
    TelemetryDeserializer,
)
from metaheal.ledger.keys import init_system_keys
from metaheal.ledger.signing import RecordSigner
from metaheal.simulator.runner import Simulator

pytestmark = [pytest.mark.broker, pytest.mark.asyncio(loop_scope="session")]


def read_telemetry(settings: Settings) -> list[tuple[str, list[Metric]]]:
    decode = TelemetryDeserializer()
    with Consumer(settings.kafka) as c:
        return [(m.key().decode(), decode(m.value())) for m in c.read_to_end(settings.topics.name("telemetry"))]


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_publishes_avro_batches_keyed_by_service_with_fault_signature(topics: Settings) -> None:
    sim = Simulator(topics, seed=1, interval=0.05, scenario="bad_deployment", at=0.5, probes=False)
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    await wait_for(lambda: sim.injected and sim.ticks >= 25)
    stop.set()
    await asyncio.wait_for(task, 5.0)
    records = read_telemetry(topics)
    assert len(records) == 5 * sim.ticks  # one batch per service per tick
    for key, samples in records:
        assert {s.service for s in samples} == {key}
        assert len({s.ts for s in samples}) == 1  # a batch is one tick
    api = sorted(
        (s.ts, s.value) for key, batch in records if key == "api_cluster" for s in batch if s.metric == "error_rate"
    )
    injected_at = sim.injected[0].started_at
    before = [v for ts, v in api if ts < injected_at]
    after = [v for ts, v in api if ts >= injected_at]
    assert before and after
    assert max(before) < 0.01 < 0.1 < min(after)
    deploys = [s for key, batch in records if key == "api_cluster" for s in batch if s.metric == "deployments"]
    assert deploys[-1].value == 1.0 and deploys[-1].labels == {"version": "v2.4.1", "flag": "checkout_v2"}
    urls = {s.name: s.admin_url for s in sim.services_config()}
    assert set(urls) == {"web", "api_cluster", "db", "cache", "payments"}
    assert all(u and u.startswith("http://127.0.0.1:") for u in urls.values())


async def test_probe_commands_change_what_is_emitted(topics: Settings) -> None:
    now = time.time()
    ser = AvroSerializer(ProbeCommand)
    cmds = [
        ProbeCommand(
            probe_id="p1",
            cycle_id="c1",
            probe="latency_histograms",
            services=["api_cluster"],
            ttl_seconds=60,
            issued_at=now,
        ),
        ProbeCommand(
            probe_id="p2",
            cycle_id="c1",
            probe="error_tracking",
            services=["api_cluster"],
            ttl_seconds=60,
            issued_at=now,
        ),
        ProbeCommand(
            probe_id="p0", cycle_id="c0", probe="dependency_traces", services=["*"], ttl_seconds=5, issued_at=now - 3600
        ),  # long expired: changes nothing
    ]
    init_system_keys(topics.keys)
    signer = RecordSigner(topics.keys, "meta_loop")  # as the meta loop publishes them
    with Producer(topics.kafka) as p:
        for c in cmds:
            headers = signer.sign("probe_command", ser(c), key=c.probe_id, record_id=c.probe_id)
            p.produce(topics.topics.name("probes"), ser(c), key=c.probe_id, headers=headers)
        p.produce(topics.topics.name("probes"), b"not a probe", key=b"junk")
    sim = Simulator(topics, seed=2, interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    await wait_for(lambda: sim.probes is not None and sim.probes.applied == 2)
    ticks, applied_at = sim.ticks, time.time()
    await wait_for(lambda: sim.ticks >= ticks + 5)
    stop.set()
    await asyncio.wait_for(task, 5.0)
    metrics: dict[str, set[str]] = defaultdict(set)
    for key, batch in read_telemetry(topics):
        for s in batch:
            if s.ts > applied_at:
                metrics[key].add(s.metric)
    assert {"latency_bucket", "latency_p99_ms", "errors_by_type"} <= metrics["api_cluster"]
    assert "latency_bucket" not in metrics["web"] and "errors_by_type" not in metrics["web"]
    assert all("trace_span_ms" not in m for m in metrics.values())
    with Consumer(topics.kafka) as c:
        dead = [AvroDeserializer(DeadLetter)(m.value()) for m in c.read_to_end(topics.topics.name("deadletter"))]
    assert len(dead) == 1 and dead[0].value == b"not a probe" and "ProbeCommand" in dead[0].reason
