"""The faust worker in-process against the real broker: intake, dead letters, windows, scores."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

from metaheal.config import Settings
from metaheal.events import Metric, MetricBatch
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroSerializer
from metaheal.streams.worker import run_worker

from .conftest import T0, await_for, outputs

SERVICES = ("api", "db")
WINDOWS = 6  # 0..5 get data, 0..4 close (5 has nothing after it)
PER_WINDOW = 60


def telemetry(rng: random.Random) -> dict[str, list[MetricBatch]]:
    """Per service: one Avro batch per half window with latency_ms, error_rate and a dependency metric."""
    out: dict[str, list[MetricBatch]] = {s: [] for s in SERVICES}
    for svc in SERVICES:
        for half in range(WINDOWS * 2):
            samples = []
            for i in range(PER_WINDOW // 2):
                ts = T0 + half * 0.5 + i / PER_WINDOW
                samples += [
                    Metric(service=svc, metric="latency_ms", value=100 + rng.gauss(0, 5), ts=ts),
                    Metric(service=svc, metric="error_rate", value=min(1.0, abs(rng.gauss(0.01, 0.003))), ts=ts),
                    Metric(
                        service=svc,
                        metric="dependency_latency_ms",
                        value=20 + rng.gauss(0, 1),
                        ts=ts,
                        labels={"dependency": "cache"},
                    ),
                ]
            out[svc].append(MetricBatch(samples=samples))
    return out


async def test_worker_windows_scores_and_dead_letters(stream_topics: Settings) -> None:
    s = stream_topics
    topic = s.topics.name("telemetry")
    rng = random.Random(7)
    batches = telemetry(rng)
    # a spike on api in window 4
    spike = Metric(service="api", metric="latency_ms", value=900.0, ts=T0 + 4.5)
    garbage, invalid = b"\x00\x01 not telemetry", b'{"service": "api", "metric": "latency_ms", "value": "x", "ts": 1}'
    ser = AvroSerializer(MetricBatch)
    with Producer(s.kafka) as p:
        for svc, bs in batches.items():
            for i, b in enumerate(bs):
                p.produce(topic, ser(b), key=svc)
                if svc == "api" and i == 9:  # while window 4 is open: a JSON single metric
                    p.produce(topic, json.dumps(spike.model_dump()).encode(), key="api")
        p.produce(topic, garbage, key="api")
        p.produce(topic, invalid, key="api")
        # window 0 of api closed long ago: late
        p.produce(
            topic,
            ser(MetricBatch(samples=[Metric(service="api", metric="latency_ms", value=1.0, ts=T0 + 0.1)])),
            key="api",
        )
        p.flush()

    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))
    expected_windows = len(SERVICES) * (WINDOWS - 1)

    def done() -> bool:
        health, _, dead = outputs(s)
        return len(health) >= expected_windows and len(dead) >= 3

    try:
        await await_for(done, 60, "health windows and dead letters")
    finally:
        stop.set()
        t = time.monotonic()
        stats = await asyncio.wait_for(task, 30)
        stop_seconds = time.monotonic() - t
    assert stop_seconds < 5, f"worker took {stop_seconds:.1f}s to stop"
    health, anomalies, dead = outputs(s)

    # health: one window per service per closed window, exact counts, every signal present
    assert sorted((h.service, h.window_start - T0) for h in health) == sorted(
        (svc, float(w)) for svc in SERVICES for w in range(WINDOWS - 1)
    )
    for h in health:
        by = {(st.signal, st.metric): st for st in h.signals}
        extra = 1 if (h.service == "api" and h.window_start == T0 + 4) else 0
        assert by["latency", "latency_ms"].count == PER_WINDOW + extra
        assert by["errors", "error_rate"].rate is not None and 0 < by["errors", "error_rate"].rate < 0.05
        assert by["dependency", "dependency_latency_ms"].dependency == "cache"
        assert h.sample_count == 3 * PER_WINDOW + extra
        if h.window_start > T0:
            assert by["latency", "latency_ms"].baseline_p95 is not None
    spiked = next(h for h in health if h.service == "api" and h.window_start == T0 + 4)
    assert {st.metric: st.max for st in spiked.signals}["latency_ms"] == 900.0

    # dead letters: original bytes, offsets, reasons
    reasons = Counter(d.reason for d in dead)
    assert reasons == {"undecodable": 1, "invalid": 1, "late": 1}
    by_reason = {d.reason: d for d in dead}
    assert by_reason["undecodable"].value == garbage and by_reason["invalid"].value == invalid
    assert "value" in by_reason["invalid"].error
    assert by_reason["undecodable"].offset + 1 == by_reason["invalid"].offset == by_reason["late"].offset - 1
    assert all(d.source_topic == s.topics.name("telemetry") for d in dead)

    # anomalies: one summary per series per closed window, the spike crossed, quiet series quiet
    summaries = Counter((a.service, a.metric, a.window_start) for a in anomalies if a.kind == "summary")
    assert set(summaries.values()) == {1}
    assert len(summaries) == len(SERVICES) * 3 * (WINDOWS - 1)
    crossed = [a for a in anomalies if a.kind == "sample" and a.crossed]
    assert any(a.value == 900.0 and a.service == "api" and a.signal == "latency" for a in crossed)
    spike_summary = next(
        a
        for a in anomalies
        if a.kind == "summary" and a.service == "api" and a.metric == "latency_ms" and a.window_start == T0 + 4
    )
    assert spike_summary.crossed and spike_summary.score >= s.streams.anomaly_threshold
    assert stats.dead_letters == 3 and stats.late == 1


async def test_idle_close_publishes_the_last_window_of_a_service_that_stopped(stream_topics: Settings) -> None:
    """Event time alone would keep this window open forever: nothing after it ever arrives."""
    s = stream_topics
    s.streams.idle_close = True
    samples = [Metric(service="quiet", metric="latency_ms", value=100.0 + i % 7, ts=T0 + i / 20) for i in range(20)]
    with Producer(s.kafka) as p:
        p.produce(s.topics.name("telemetry"), AvroSerializer(MetricBatch)(MetricBatch(samples=samples)), key="quiet")
        p.flush()
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))
    try:
        await await_for(lambda: len(outputs(s)[0]) >= 1, 60, "the idle service's window")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    health, anomalies, _ = outputs(s)
    assert [(h.service, h.window_start, h.sample_count) for h in health] == [("quiet", T0, 20)]
    assert [(a.service, a.window_start) for a in anomalies if a.kind == "summary"] == [("quiet", T0)]
