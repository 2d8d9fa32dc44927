"""The pipeline's stage logic without a broker: windows, lateness, scoring events, restart."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from metaheal.config import StreamSettings
from metaheal.events import AnomalyScore, MetricBatch
from metaheal.kafka.serializers import AvroDeserializer
from metaheal.streams.intake import Record
from metaheal.streams.pipeline import ListSink, Pipeline
from metaheal.streams.scoring import DictStore
from metaheal.streams.windows import BASELINE_ALPHA, load_state

CFG = StreamSettings(window_seconds=1.0, allowed_lateness_seconds=0.5, anomaly_threshold=0.99, reporting_floor=0.9)


def record(offset: int, samples: list[dict], partition: int = 0) -> Record:
    return Record("t.telemetry", partition, offset, b"api", json.dumps({"samples": samples}).encode())


def series(n_windows: int, per_window: int, seed: int = 0, service: str = "api") -> list[list[dict]]:
    """One record per window-fifth, latency ~ N(100, 5), event time spread evenly."""
    rng = random.Random(seed)
    out = []
    step = 1.0 / per_window
    for w in range(n_windows):
        for chunk in range(5):
            out.append(
                [
                    {"service": service, "metric": "latency_ms", "value": 100 + rng.gauss(0, 5), "ts": w + i * step}
                    for i in range(chunk * per_window // 5, (chunk + 1) * per_window // 5)
                ]
            )
    return out


def run(records: list[list[dict]], start: int = 0, pipeline: Pipeline | None = None) -> tuple[Pipeline, ListSink]:
    sink = ListSink()
    p = pipeline or Pipeline(CFG, sink, {}, {})
    p.sink = sink
    for i, samples in enumerate(records[start:], start=start):
        p.process(record(i, samples))
    return p, sink


def test_health_window_statistics_are_exact_and_baseline_is_ewma_of_previous_windows() -> None:
    recs = series(6, 100)
    _, sink = run(recs)
    # the last window stays open (nothing past its end + lateness), the others closed once each
    assert [h.window_start for h in sink.health_windows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    values = {w: [s["value"] for r in recs for s in r if w <= s["ts"] < w + 1] for w in range(6)}
    baseline = None
    for h in sink.health_windows:
        (st,) = h.signals
        v = np.array(values[int(h.window_start)])
        assert (h.service, st.signal, st.metric, st.count, h.sample_count) == ("api", "latency", "latency_ms", 100, 100)
        assert st.mean == pytest.approx(v.mean()) and st.max == pytest.approx(v.max())
        assert st.p50 == pytest.approx(np.percentile(v, 50)) and st.p95 == pytest.approx(np.percentile(v, 95))
        assert st.baseline_mean == (None if baseline is None else pytest.approx(baseline))
        baseline = v.mean() if baseline is None else baseline + BASELINE_ALPHA * (v.mean() - baseline)
        assert st.rate is None


def test_out_of_order_within_lateness_counts_and_late_samples_are_dead_lettered() -> None:
    sink = ListSink()
    p = Pipeline(CFG, sink, {}, {})

    def s(v: float, ts: float) -> dict[str, object]:
        return {"service": "api", "metric": "error_rate", "value": v, "ts": ts}

    p.process(record(0, [s(0.1, 0.2), s(0.3, 1.2)]))
    p.process(record(1, [s(0.2, 0.9)]))  # out of order, window [0,1) still open (lateness 0.5)
    p.process(record(2, [s(0.1, 1.6)]))  # event time 1.6 closes [0,1)
    p.process(record(3, [s(0.9, 0.95), s(0.1, 1.7)]))  # 0.95 is now late, 1.7 is fine
    (h,) = sink.health_windows
    assert (h.window_start, h.signals[0].count, h.signals[0].rate) == (0.0, 2, pytest.approx(0.15))
    (dead,) = sink.dead_letters
    assert (dead.reason, dead.offset, dead.partition) == ("late", 3, 0)
    late = AvroDeserializer(MetricBatch)(dead.value).samples
    assert [(m.value, m.ts) for m in late] == [(0.9, 0.95)]
    assert p.stats.late == 1 and p.stats.samples == 5


def test_every_series_gets_one_summary_per_window_and_spikes_cross() -> None:
    recs = series(8, 100)
    recs[-3].append({"service": "api", "metric": "latency_ms", "value": 400.0, "ts": 7.05})
    recs[-3].append({"service": "api", "metric": "queue_depth", "value": 3.0, "ts": 7.06})
    _, sink = run(recs)
    summaries = [a for a in sink.anomaly_events if a.kind == "summary"]
    assert sorted((a.metric, a.window_start) for a in summaries if a.metric == "latency_ms") == [
        ("latency_ms", float(w)) for w in range(7)
    ]
    quiet = [a for a in summaries if a.window_start < 7]
    assert all(a.confidence > 0 and a.model for a in quiet)
    spikes = [a for a in sink.anomaly_events if a.kind == "sample" and a.value == 400.0]
    assert len(spikes) == 1 and spikes[0].crossed and spikes[0].score >= 0.99
    assert spikes[0].baseline == pytest.approx(100, abs=10) and spikes[0].signal == "latency"
    samples = [a for a in sink.anomaly_events if a.kind == "sample"]
    assert all(a.score >= CFG.reporting_floor for a in samples)
    assert len(samples) < 0.2 * 800  # the floor keeps "sample" events to the tail


def test_restart_from_stores_resumes_without_double_counting() -> None:
    recs = series(10, 50, seed=3)
    _, reference = run(recs)
    windows, scorers = {}, {}
    first = Pipeline(CFG, ListSink(), windows, scorers)
    _, before = run(recs[:27], pipeline=first)
    # a new process: empty caches, stores recovered from the changelogs, and the consumer
    # re-reads from an older committed offset (records 20..26 are seen a second time)
    second = Pipeline(CFG, ListSink(), windows, scorers)
    _, after = run(recs, start=20, pipeline=second)
    assert second.stats.duplicates == sum(len(r) for r in recs[20:27])
    got = {h.window_start: h.signals[0].count for h in before.health_windows + after.health_windows}
    assert got == {h.window_start: h.signals[0].count for h in reference.health_windows}
    assert len(before.health_windows) + len(after.health_windows) == len(reference.health_windows)
    assert second.scorers.restored == 1 and second.scorers.created == 0
    assert min(a.confidence for a in after.anomaly_events) == 1.0  # warm: no second warm-up


def test_revoked_partitions_are_reloaded_from_the_store() -> None:
    recs = series(4, 50)
    p, _ = run(recs[:12])
    p.forget({0})
    assert len(p.scorers) == 0
    _, sink = run(recs, start=12, pipeline=p)
    assert p.stats.duplicates == 0 and p.scorers.restored == 1
    assert [h.window_start for h in sink.health_windows] == [1.0, 2.0]  # [1,2) closes at event time 2.5


class CrashingStore(DictStore):
    """Applies writes until ``crash_after`` of them, then silently drops the rest (a killed worker)."""

    def __init__(self, crash_after: int | None = None) -> None:
        super().__init__()
        self.crash_after = crash_after
        self.writes = 0
        self.chunk_bytes = 0

    def _alive(self) -> bool:
        self.writes += 1
        return self.crash_after is None or self.writes <= self.crash_after

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        if self._alive():
            if b"\x00w\x00" in key:
                self.chunk_bytes += len(value)
            super().put(key, value, partition)

    def delete(self, key: bytes, partition: int) -> None:
        if self._alive():
            super().delete(key, partition)


def test_state_flush_writes_only_new_values_and_restores_exactly() -> None:
    recs = series(6, 100, seed=5)
    store = CrashingStore()
    p = Pipeline(CFG, ListSink(), store, {})
    for i, samples in enumerate(recs):
        p.process_one(record(i, samples))
        if i % 3 == 2:
            p.flush_state()
            restored = load_state("api", store.get)
            live = p._states["api"]
            assert {s: {k: list(sw.values) for k, sw in b.items()} for s, b in restored.open.items()} == {
                s: {k: list(sw.values) for k, sw in b.items()} for s, b in live.open.items()
            }
            assert (restored.applied, restored.closed_until, restored.baselines) == (
                live.applied,
                live.closed_until,
                live.baselines,
            )
    p.flush_state()
    # every value was written once (8 bytes + a small per-chunk overhead), not once per flush
    n = sum(len(r) for r in recs)
    assert 8 * n < store.chunk_bytes < 8 * n + 200 * len(recs)
    # closed windows left only tombstones behind: the chunks still stored are the open window's
    starts = {key.split(b"\x00")[2] for key in store.data if b"\x00w\x00" in key}
    assert starts == {repr(s).encode() for s in p._states["api"].open}


@pytest.mark.parametrize("crash_after", [1, 2, 7, 12, 13, 25])
def test_crash_in_the_middle_of_a_state_flush_never_loses_or_double_counts(crash_after: int) -> None:
    recs = series(6, 60, seed=7)
    _, reference = run(recs)
    store = CrashingStore(crash_after)
    first = Pipeline(CFG, ListSink(), store, {})
    before = ListSink()
    first.sink = before
    for i, samples in enumerate(recs[:20]):
        first.process_one(record(i, samples))
        if i % 4 == 3:
            first.flush_state()
    # the restarted worker sees what the store kept, and re-reads from its progress marker + 1
    store.crash_after = None
    second = Pipeline(CFG, ListSink(), store, {})
    resume = second.progress([0]).get(0, -1) + 1
    _, after = run(recs, start=resume, pipeline=second)
    got = {h.window_start: h.signals[0].count for h in before.health_windows + after.health_windows}
    assert got == {h.window_start: h.signals[0].count for h in reference.health_windows}


def test_sample_events_equal_validated_models() -> None:
    """The hot path builds events without validation: they must be what validation would build."""
    from metaheal.events import AnomalyScore
    from metaheal.streams.scorer import Score
    from metaheal.streams.scoring import sample_event

    ev = sample_event(
        "api",
        "latency_ms",
        "latency",
        250.0,
        12.5,
        Score(0.995, 100.0, 0.5),
        threshold=0.99,
        model="m/1",
        window_start=10.0,
        window_end=20.0,
        labels={"host": "h1"},
    )
    assert ev == AnomalyScore.model_validate(ev.model_dump())
    assert (ev.crossed, ev.kind, ev.model_fields_set) == (True, "sample", set(AnomalyScore.model_fields))


@pytest.mark.parametrize("dependency", [None, "db"])
def test_summary_events_equal_validated_ones(dependency: str | None) -> None:
    from metaheal.kafka.serializers import AvroSerializer
    from metaheal.streams.pipeline import fast_summary
    from metaheal.streams.scoring import summary_event
    from metaheal.streams.windows import SeriesWindow

    sw = SeriesWindow("latency_ms", "latency", dependency, max_score=0.995, last_value=250.0, last_ts=12.5)
    sw.baseline, sw.confidence = 100.0, 0.5
    kw = {"threshold": 0.99, "model": "m/1", "window_start": 10.0, "window_end": 20.0}
    fast, validated = fast_summary("api", sw, **kw), summary_event("api", sw, **kw)
    assert fast == validated and fast.model_fields_set == set(AnomalyScore.model_fields)
    ser = AvroSerializer(AnomalyScore)
    assert ser(fast) == ser(validated)


def test_idle_service_windows_close_on_wall_time_and_later_samples_are_late() -> None:
    now = [0.0]
    sink = ListSink()
    p = Pipeline(CFG, sink, {}, {}, clock=lambda: now[0])
    quiet = series(2, 50, seed=1, service="quiet")  # then it stops sending: its window [1, 2) stays open
    busy = series(6, 50, seed=2, service="busy")
    for i, samples in enumerate(quiet):
        p.process_one(record(i, samples))
    assert [(h.service, h.window_start) for h in sink.health_windows] == [("quiet", 0.0)]
    now[0] = 1.4
    for i, samples in enumerate(busy, start=len(quiet)):
        p.process_one(record(i, samples))
    assert p.close_idle() == 0  # nobody idle for window + lateness = 1.5 s yet
    now[0] = 1.6  # quiet idle for 1.6 s, busy for 0.2 s
    before = len(sink.health_windows)
    assert p.close_idle() == 1
    (h,) = sink.health_windows[before:]
    assert (h.service, h.window_start, h.sample_count) == ("quiet", 1.0, 50)
    assert [a.window_start for a in sink.anomaly_events if a.kind == "summary" and a.service == "quiet"] == [0.0, 1.0]
    assert p.close_idle() == 0  # closed once
    # a straggler for the closed window is late, as after any close
    p.process_one(record(99, [{"service": "quiet", "metric": "latency_ms", "value": 100.0, "ts": 1.9}]))
    assert [d.reason for d in sink.dead_letters] == ["late"]


def test_metric_series_records_give_the_same_windows_and_scores_as_batches():
    from metaheal.events import Metric, MetricSeries
    from metaheal.kafka.serializers import AvroSerializer

    recs = series(6, 50, seed=3)
    recs[17] = [dict(s, value=400.0) for s in recs[17]]  # a spike, so sample events exist
    as_batch = AvroSerializer(MetricBatch)
    as_series = AvroSerializer(MetricSeries)
    outputs = []
    for encode in (
        lambda r: as_batch(MetricBatch(samples=[Metric(**s) for s in r])),
        lambda r: as_series(
            MetricSeries(service="api", metric="latency_ms", ts=[s["ts"] for s in r], values=[s["value"] for s in r])
        ),
    ):
        sink = ListSink()
        p = Pipeline(CFG, sink, DictStore(), DictStore())
        for i, r in enumerate(recs):
            p.process(Record("t.telemetry", 0, i, b"api", encode(r)))
        outputs.append(([h.model_dump() for h in sink.health_windows], [a.model_dump() for a in sink.anomaly_events]))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0]) == 5 and any(a["kind"] == "sample" and a["crossed"] for a in outputs[0][1])


def test_window_statistics_are_numpys_bit_for_bit() -> None:
    """Small windows are summarised in Python: the floats must be numpy's mean/percentile/max exactly."""
    from array import array

    from metaheal.streams.windows import SMALL, _stats

    rng = random.Random(11)
    for _ in range(3000):
        n = rng.randint(1, SMALL + 40)
        scale = 10 ** rng.uniform(-3, 6)
        values = array(
            "d", (rng.gauss(100, 30) * scale if rng.random() < 0.9 else rng.choice([0.0, 1.0]) for _ in range(n))
        )
        a = np.frombuffer(values, dtype=np.float64)
        assert _stats(values) == (float(a.mean()), *(float(x) for x in np.percentile(a, [50, 95])), float(a.max()))


def test_metadata_record_written_directly_is_the_avro_encoding() -> None:
    """``encode_meta`` assembles the Avro bytes itself: they must be what the schema's encoder writes."""
    from metaheal.streams.windows import (
        _CHUNK,
        _META,
        STATE_VERSION,
        Point,
        ServiceState,
        encode_chunk,
        encode_meta,
        meta_dict,
    )

    rng = random.Random(3)
    for t in range(200):
        st = ServiceState(f"svc{t}")
        for w in range(rng.randint(0, 4)):
            for i in range(rng.randint(1, 6)):
                for m in range(rng.randint(1, 25)):
                    signal = rng.choice([None, "latency", "errors"])
                    dep = rng.choice([None, "db", "dépendance"])
                    st.add(
                        Point(f"svc{t}/m{m}", f"m{m}", signal, dep, rng.gauss(0, 1e3), w * 5 + i * rng.random()), 5.0
                    )
            if rng.random() < 0.5:
                st.close_ready(5.0, 1.0)
        for p in range(rng.randint(0, 3)):
            st.mark_applied(p, rng.randint(0, 10**12))
        for bucket in st.open.values():
            for sw in bucket.values():
                sw.flushed, sw.max_score, sw.crossed = len(sw.values), rng.random(), rng.randint(0, 300)
                sw.confidence = rng.random()
        new = {series: sw.values.tobytes() for bucket in st.open.values() for series, sw in bucket.items()}
        assert encode_chunk(new) == _CHUNK.encode({"version": STATE_VERSION, "series": new})
        blob = encode_meta(st)
        assert blob == _META.encode(meta_dict(st))
        assert _META.decode(blob) == meta_dict(st)
        # a later window closes: the baselines (kept encoded between flushes) change with it
        st.add(Point(f"svc{t}/m0", "m0", None, None, 1.0, st.max_ts + 20.0 if st.open else 30.0), 5.0)
        st.close_ready(5.0, 1.0)
        assert encode_meta(st) == _META.encode(meta_dict(st))
