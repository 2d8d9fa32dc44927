"""Hostile telemetry against the running streams worker: every bad record is a dead letter naming the field,
and the services it aimed at keep their windows closing.

One worker run plays every input case (group joins on tansu take seconds): the attack records are
interleaved with the victims' normal telemetry, so "the pipeline keeps running" is checked on the
same stream.
"""

from __future__ import annotations

import asyncio
import json
import time

from metaheal.config import Settings
from metaheal.events import Metric, MetricBatch
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.streams.worker import run_worker

from .conftest import T0, attack, await_for, dead_letters, health

WINDOWS = 4  # windows 0..3 get normal data; 0..2 close


def normal(service: str, window: int, n: int = 10) -> bytes:
    samples = [
        {"service": service, "metric": "latency_ms", "value": 100.0 + i, "ts": T0 + window + i / n} for i in range(n)
    ]
    return json.dumps({"samples": samples}).encode()


def one(service: str, value: float, ts: float, metric: str = "latency_ms") -> dict[str, object]:
    return {"service": service, "metric": metric, "value": value, "ts": ts}


async def test_hostile_telemetry_is_dead_lettered_and_the_pipeline_keeps_running(stream_topics: Settings) -> None:
    s = stream_topics
    topic = s.topics.name("telemetry")
    now = time.time()
    avro = AvroSerializer(MetricBatch)
    attacks: dict[str, bytes] = {
        # two finite samples near the float limit in one window: their mean overflowed, the window state was
        # saved and the service's windows never closed again (every restart failed on the next sample)
        "overflow": json.dumps({"samples": [one("victim", 1.7e308, T0 + t) for t in (0.2, 0.3)]}).encode(),
        # the same through the Avro fast path (finite, but far beyond any real measurement)
        "overflow_avro": avro(MetricBatch(samples=[Metric(service="victim", metric="m", value=1e300, ts=T0 + 0.4)])),
        # ten days ahead: pushed the service's event time past every real sample (all of them late from then on)
        "future": json.dumps(one("victim", 1.0, now + 10 * 86400)).encode(),
        # 1970: a window opened in the distant past
        "ancient": json.dumps(one("victim", 1.0, 1.0)).encode(),
        # nested 1,500 deep: RecursionError in json.loads
        "deep": b"[" * 1500 + b"]" * 1500,
        "deep_in_batch": b'{"samples": ' + b"[" * 1500 + b"]" * 1500 + b"}",
        # larger than streams.max_record_bytes (64 KiB in this test)
        "huge": json.dumps({"samples": [one("victim", 1.0, T0 + 0.5)] * 2000}).encode(),
        # 8 series for a service allowed 5: the 3 new ones are refused, the 5 first are counted
        "sprawl": json.dumps({"samples": [one("sprawl", 1.0, T0 + 0.5, metric=f"m{i}") for i in range(8)]}).encode(),
    }
    assert len(attacks["huge"]) > s.streams.max_record_bytes
    records: list[tuple[bytes | None, bytes | None]] = []
    for w in range(WINDOWS):
        records += [(b"victim", normal("victim", w)), (b"bystander", normal("bystander", w))]
        if w == 0:  # while the victim's first window is open
            records += [(b"victim", v) for v in attacks.values()]
        else:  # sprawl's accepted series go on (and close its window 0)
            records.append((b"sprawl", json.dumps(one("sprawl", 1.0, T0 + w + 0.5, metric="m0")).encode()))
    attack(s, topic, records)

    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))

    def done() -> bool:
        closed = {(h.service, h.window_start) for h in health(s)}
        return len(dead_letters(s)) >= len(attacks) and all(
            (svc, T0 + w) in closed for svc in ("victim", "bystander", "sprawl") for w in range(WINDOWS - 1)
        )

    try:
        await await_for(done, 90, "dead letters and the victims' health windows")
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 30)

    all_dead = dead_letters(s)
    dead = {d.value: d for d in all_dead}
    got = {name: dead[value] for name, value in attacks.items() if value in dead}
    # the series cap dead-letters only the refused samples (below); every other attack record whole
    got["sprawl"] = next(d for d in all_dead if d.reason == "series_limit")
    assert set(got) == set(attacks), f"not dead-lettered: {set(attacks) - set(got)}"
    assert len(all_dead) == len(attacks)
    assert all(d.source_topic == topic for d in got.values())

    expect = {
        "overflow": ("out_of_bounds", ["samples[0].value", "streams.max_abs_value"]),
        "overflow_avro": ("out_of_bounds", ["sample.value", "streams.max_abs_value"]),
        "future": ("out_of_bounds", ["sample.ts", "ahead of the wall clock", "streams.max_future_skew_seconds"]),
        "ancient": ("out_of_bounds", ["sample.ts", "behind the wall clock", "streams.max_event_age_seconds"]),
        "deep": ("over_limit", ["max_json_depth=32"]),
        "deep_in_batch": ("over_limit", ["max_json_depth=32"]),
        "huge": ("over_limit", ["max_record_bytes=65536"]),
    }
    for name, (reason, needles) in expect.items():
        assert got[name].reason == reason, (name, got[name])
        for needle in needles:
            assert needle in got[name].error, (name, needle, got[name].error)

    # the series cap: the dead letter carries only the refused samples, re-publishable as a batch
    sprawl = got["sprawl"]
    assert sprawl.reason == "series_limit"
    assert "streams.max_series_per_service=5" in sprawl.error and "series" in sprawl.error
    kept_out = AvroDeserializer(MetricBatch)(sprawl.value or b"").samples
    assert sorted(m.metric for m in kept_out) == ["m5", "m6", "m7"]
    assert stats.series_refused == 3

    # the victim's windows close with exactly its normal samples: nothing of the attacks got in
    windows = {(h.service, h.window_start): h for h in health(s)}
    for w in range(WINDOWS - 1):
        h = windows["victim", T0 + w]
        assert h.sample_count == 10, (w, h)
        assert all(abs(st.mean) < 1e3 for st in h.signals)
    assert {st.metric for st in windows["sprawl", T0].signals} == {f"m{i}" for i in range(5)}
