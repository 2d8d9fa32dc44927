"""OTLP through the real worker and broker: SDK-encoded exports (protobuf and JSON) -> health windows."""

from __future__ import annotations

import asyncio
import random

from metaheal.config import Settings
from metaheal.kafka import Consumer, Producer
from metaheal.streams.otlp_bridge import key_partition
from metaheal.streams.worker import run_worker

from .conftest import T0, await_for, outputs
from .otlp_sdk import encode, gauge, histogram, histogram_point, metrics_data

WINDOWS = 5  # 1 s windows 0..4 get data; 0..3 close
SERVICES = {"checkout": "otlp_proto", "payments": "otlp_json"}


def export(service: str, second: int, half: int, rng: random.Random) -> metrics_data:
    """What a collector batch of half a second holds: request durations (s), CPU utilisation, a DB client."""
    start = T0 + second + half / 2
    end = start + 0.5
    durations = [rng.uniform(0.08, 0.12) for _ in range(40)]
    db = [rng.uniform(0.002, 0.004) for _ in range(10)]
    return metrics_data(
        {"service.name": service, "service.version": "1.2.3"},
        [
            histogram(
                "http.server.request.duration",
                [histogram_point(durations, start, end, **{"http.response.status_code": 200})],
            ),
            histogram("db.client.operation.duration", [histogram_point(db, start, end, **{"db.system": "postgresql"})]),
            gauge("system.cpu.utilization", [(end - 0.01, 0.4 + rng.random() / 10)]),
        ],
    )


async def test_sdk_encoded_otlp_yields_health_windows_for_its_service(stream_topics: Settings) -> None:
    s = stream_topics
    otlp_topic = f"{s.topics.prefix}otlp_metrics"  # the collector's topic: not prefixed by metaheal
    s.streams.otlp_topics = [otlp_topic]
    rng = random.Random(11)
    garbage = b"\x0a\x05not otlp at all"
    no_service = encode(metrics_data({}, [gauge("system.cpu.utilization", [(T0, 0.5)])]), "otlp_json")
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))  # creates the OTLP topic
    try:
        await await_for(lambda: _topic_exists(s, otlp_topic), 60, "the OTLP topic")
        with Producer(s.kafka) as p:
            for second in range(WINDOWS):
                for half in range(2):
                    for service, fmt in SERVICES.items():
                        # keyed per resource, as the collector's partition_metrics_by_resource_attributes does:
                        # one service's exports stay in order
                        p.produce(otlp_topic, encode(export(service, second, half, rng), fmt), key=service)
            p.produce(otlp_topic, garbage)
            p.produce(otlp_topic, no_service)
            p.flush()

        def done() -> bool:
            health, _, dead = outputs(s)
            return len(health) >= len(SERVICES) * (WINDOWS - 1) and len(dead) >= 2

        await await_for(done, 90, "health windows of the OTLP services and two dead letters")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    health, anomalies, dead = outputs(s)
    assert {h.service for h in health} == set(SERVICES)
    for service in SERVICES:
        windows = sorted((h for h in health if h.service == service), key=lambda h: h.window_start)
        assert [h.window_start - T0 for h in windows][: WINDOWS - 1] == [float(w) for w in range(WINDOWS - 1)]
        for h in windows[: WINDOWS - 1]:
            by = {st.metric: st for st in h.signals}
            p95 = by["http.server.request.duration.p95"]
            # a point's time is its interval's end: window 0 holds the export ending at 0.5 s, the others two
            assert p95.signal == "latency" and p95.count == (1 if h.window_start == T0 else 2)
            assert 75 <= p95.p95 <= 125  # 80-120 ms requests, reported in seconds, windowed in ms
            assert by["http.server.request.duration.count"].signal == "traffic"
            assert by["http.server.request.duration.count"].mean == 40
            assert by["http.server.request.duration.error_ratio"].signal == "errors"
            assert by["http.server.request.duration.error_ratio"].max == 0.0
            assert by["system.cpu.utilization"].signal == "saturation"
            assert 0.4 <= by["system.cpu.utilization"].mean <= 0.5  # a ratio (unit "1") stays a ratio
            db = by["db.client.operation.duration.p95"]
            assert db.signal == "dependency" and db.dependency == "postgresql"
    assert {a.service for a in anomalies} == set(SERVICES)
    assert sorted(d.reason for d in dead) == ["invalid", "undecodable"]
    assert all(d.source_topic == otlp_topic for d in dead)
    assert next(d for d in dead if d.reason == "invalid").error.endswith(
        "resource_metrics[0].resource.attributes: service.name missing"
    )
    assert next(d for d in dead if d.reason == "undecodable").value == garbage

    # the re-keyed records sit in the partition a native producer's default partitioner picks
    telemetry = s.topics.name("telemetry")
    with Consumer(s.kafka) as c:
        placed = {(m.key(), m.partition()) for m in c.read_to_end(telemetry)}
    with Producer(s.kafka) as p:
        for service in SERVICES:
            p.produce(telemetry, b"{}", key=service)  # invalid on purpose: only its partition matters
        p.flush()
    with Consumer(s.kafka) as c:
        native = {(m.key(), m.partition()) for m in c.read_to_end(telemetry) if m.value() == b"{}"}
    assert placed == native == {(k.encode(), key_partition(k.encode(), 4)) for k in SERVICES}


def _topic_exists(s: Settings, name: str) -> bool:
    from metaheal.kafka.admin import Admin

    return name in Admin(s.kafka).topics()
