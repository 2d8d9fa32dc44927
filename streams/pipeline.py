"""One telemetry record in, health windows / anomaly events / dead letters out.

The stage logic of the worker, free of faust so it can be tested and benchmarked on its
own: :meth:`Pipeline.process` decodes a record (:mod:`~metaheal.streams.intake`),
skips it if this service's state already applied that offset (a restarted worker
re-reads from the last committed offset), scores every sample then learns it
(:mod:`~metaheal.streams.scoring`), adds it to its tumbling window
(:mod:`~metaheal.streams.windows`), closes the windows event time has passed and
writes the service's state back to its store (a faust table in the worker).

>>> from metaheal.config import StreamSettings
>>> sink = ListSink()
>>> p = Pipeline(StreamSettings(window_seconds=1.0, allowed_lateness_seconds=0.0), sink, {}, {})
>>> p.process(Record("telemetry", 0, 0, b"api", b'{"service": "api", "metric": "error_rate", "value": 0.1, "ts": 0.5}'))
>>> p.process(Record("telemetry", 0, 1, b"api", b'{"service": "api", "metric": "error_rate", "value": 0.2, "ts": 1.5}'))
>>> [(h.window_start, h.signals[0].signal, h.signals[0].rate) for h in sink.health_windows]
[(0.0, 'errors', 0.1)]
>>> [(a.kind, a.metric, a.window_start) for a in sink.anomaly_events]
[('summary', 'error_rate', 0.0)]
>>> p.process(Record("telemetry", 0, 2, b"api", b'{"service": "api", "metric": "error_rate", "value": 0.3, "ts": 0.7}'))
>>> sink.dead_letters[0].reason, sink.dead_letters[0].error
('late', '1 sample(s) of service api older than its closed windows (event time < 1.0): first ts=0.7')
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from metaheal.config import StreamSettings
from metaheal.events import AnomalyScore, DeadLetter, HealthWindow, Metric, MetricBatch
from metaheal.kafka.serializers import AvroSerializer
from metaheal.streams.intake import Intake, Record, SeriesBatch, dead_letter
from metaheal.streams.scorer import Score
from metaheal.streams.scoring import (
    ScorerRegistry,
    Store,
    _construct_anomaly,
    as_store,
    sample_event,
)
from metaheal.streams.signals import UNIT_SCALE, SignalMap
from metaheal.streams.windows import (
    SeriesWindow,
    ServiceState,
    load_state,
    state_writes,
)

logger = logging.getLogger(__name__)

__all__ = ["ListSink", "Pipeline", "PipelineStats", "Record", "Sink"]


def progress_key(partition: int) -> bytes:
    """State-store key of a partition's progress marker (NUL-prefixed: never a service name)."""
    return b"\x00progress/%d" % partition


class Sink(Protocol):
    def health(self, event: HealthWindow) -> None: ...
    def early(self, event: HealthWindow) -> None: ...
    def anomaly(self, event: AnomalyScore) -> None: ...
    def dead_letter(self, event: DeadLetter) -> None: ...


@dataclass
class ListSink:
    """Collects outputs in memory (tests, in-process tools)."""

    health_windows: list[HealthWindow] = field(default_factory=list)
    early_windows: list[HealthWindow] = field(default_factory=list)
    anomaly_events: list[AnomalyScore] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def health(self, event: HealthWindow) -> None:
        self.health_windows.append(event)

    def early(self, event: HealthWindow) -> None:
        self.early_windows.append(event)

    def anomaly(self, event: AnomalyScore) -> None:
        self.anomaly_events.append(event)

    def dead_letter(self, event: DeadLetter) -> None:
        self.dead_letters.append(event)


@dataclass
class PipelineStats:
    records: int = 0
    samples: int = 0
    duplicates: int = 0
    late: int = 0
    series_refused: int = 0  # samples of series over streams.max_series_per_service
    state_refused: int = 0  # stored state records that could not be decoded (state rebuilt)
    dead_letters: int = 0
    windows: int = 0
    anomaly_events: int = 0


def fast_summary(
    service: str, sw: SeriesWindow, *, threshold: float, model: str, window_start: float, window_end: float
) -> AnomalyScore:
    """:func:`~metaheal.streams.scoring.summary_event` without re-validating fields that are valid by
    construction (scorer output in 0..1, validated settings): one per series per closed window, as
    many as samples when a series sends one sample per window (tests/streams/test_pipeline.py
    checks it against the validated event)."""
    score = sw.max_score
    return _construct_anomaly(
        {
            "service": service,
            "metric": sw.metric,
            "signal": sw.signal,
            "kind": "summary",
            "value": sw.last_value,
            "baseline": sw.baseline,
            "score": score,
            "threshold": threshold,
            "crossed": score >= threshold,
            "confidence": sw.confidence,
            "model": model,
            "ts": sw.last_ts,
            "window_start": window_start,
            "window_end": window_end,
            "labels": {"dependency": sw.dependency} if sw.dependency else {},
        }
    )


def _close_segment(sw: SeriesWindow, max_score: float, crossed: int, value: float, ts: float, sc: Score) -> None:
    """Write back what the scoring loop kept in locals for one window of one series."""
    sw.max_score, sw.crossed = max_score, crossed
    sw.last_value, sw.last_ts, sw.baseline, sw.confidence = value, ts, sc[1], sc[2]


class Pipeline:
    """``process(record)``; state lives in ``state_store`` / ``scorer_store`` (bytes -> bytes)."""

    def __init__(
        self,
        settings: StreamSettings,
        sink: Sink,
        state_store: Store | dict[bytes, bytes],
        scorer_store: Store | dict[bytes, bytes],
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] | None = None,
        state_topic: str = "state",
    ) -> None:
        self.settings = settings
        self._clock = clock  # wall clock of idle closes (close_idle)
        # service -> clock() of its last record, least recently seen first (close_idle stops at the
        # first service that is not idle, instead of scanning every service on every tick)
        self._last_seen: dict[str, float] = {}
        self.sink = sink
        # event time is bounded against ``wall_clock`` (the worker's time.time); None: replays, tests
        self.intake = Intake(SignalMap(settings.signal_map), settings, wall_clock=wall_clock)
        self.state_topic = state_topic  # named in dead letters of refused state records
        self.scorers = ScorerRegistry(scorer_store, seed=seed, min_interval=settings.checkpoint_interval_seconds)
        self.state_store = as_store(state_store)
        self._dirty: dict[str, int] = {}  # services whose state changed since the last flush
        self._progress: dict[int, int] = {}  # partition -> last offset processed since the last flush
        self._states: dict[str, ServiceState] = {}
        self._early_at: dict[str, float] = {}  # service -> event time of its last provisional windows
        self._state_partition: dict[str, int] = {}
        self.stats = PipelineStats()
        self._late_ser = AvroSerializer(MetricBatch)

    # -- state -------------------------------------------------------------------------------

    def _state(self, service: str, partition: int) -> ServiceState:
        st = self._states.get(service)
        if st is None:

            def refused(key: bytes, value: bytes | None, error: str) -> None:
                self.stats.state_refused += 1
                dl = DeadLetter(
                    source_topic=self.state_topic,
                    partition=partition,
                    offset=-1,  # read from the state store, not from a consumed record
                    key=key,
                    value=value,
                    reason="state_undecodable",
                    error=f"window state of service {service} refused, service restarts from empty state: {error}",
                    ts=time.time(),
                )
                self._dead(dl)

            st = self._states[service] = load_state(service, self.state_store.get, refused)
            self._state_partition[service] = partition
        return st

    def flush_state(self) -> None:
        """Write what changed in every changed service state, then each partition's progress marker.

        The marker goes to the same changelog partition after the states, so a marker
        that survived a crash proves every state write before it did too: a restarted
        worker resumes right after the marker's offset (see :meth:`progress`), and the
        per-service applied offsets skip what a state already counted.
        """
        store = self.state_store
        for service, partition in self._dirty.items():
            st = self._states.get(service)
            if st is not None:
                for key, value in state_writes(st):
                    if value is None:
                        store.delete(key, partition)
                    else:
                        store.put(key, value, partition)
        for partition, offset in self._progress.items():
            self.state_store.put(progress_key(partition), str(offset).encode(), partition)
        self._dirty.clear()
        self._progress.clear()

    def forget(self, partitions: set[int]) -> None:
        """Partitions were revoked: drop their cached state (the table keeps the truth)."""
        for svc in [s for s, p in self._state_partition.items() if p in partitions]:
            self._states.pop(svc, None)
            self._state_partition.pop(svc, None)
        dropped = self.scorers.forget(partitions)
        logger.info("partitions revoked partitions=%s scorers_dropped=%d", sorted(partitions), dropped)

    def progress(self, partitions: Iterable[int]) -> dict[int, int]:
        """Per source partition, the last offset whose effects are all in the state store."""
        out: dict[int, int] = {}
        for p in partitions:
            blob = self.state_store.get(progress_key(p))
            if blob:
                try:
                    out[p] = int(blob.decode("ascii"))
                except (UnicodeDecodeError, ValueError):
                    logger.error(
                        "progress marker refused partition=%d value=%r: resuming from the committed offset",
                        p,
                        blob[:40],
                    )
        return out

    # -- processing --------------------------------------------------------------------------

    def process(self, record: Record) -> None:
        """One record, state written at once."""
        self._process(record)
        self.flush_state()

    def process_batch(self, records: list[Record]) -> None:
        """Many records, each changed service state written once at the end."""
        for record in records:
            self._process(record)
        self.flush_state()

    def process_one(self, record: Record) -> None:
        """One record, state written by the next :meth:`flush_state`."""
        self._process(record)

    def _process(self, record: Record) -> None:
        self.stats.records += 1
        if record.offset > self._progress.get(record.partition, -1):
            self._progress[record.partition] = record.offset
        groups, dead = self.intake.decode_series(record)
        if dead is not None:
            self._dead(dead)
            return
        by_service: dict[str, list[SeriesBatch]] = {}
        for g in groups:
            by_service.setdefault(g.service, []).append(g)
        for service, batches in by_service.items():
            self._process_service(record, service, batches)

    def _process_service(self, record: Record, service: str, batches: list[SeriesBatch]) -> None:
        st = self._state(service, record.partition)
        if st.already_applied(record.partition, record.offset):
            self.stats.duplicates += sum(len(g.values) for g in batches)
            return
        last_seen = self._last_seen
        last_seen.pop(service, None)
        last_seen[service] = self._clock()
        late: list[tuple[SeriesBatch, int]] = []
        refused: list[SeriesBatch] = []
        known, cap = st.known, self.settings.max_series_per_service
        for g in batches:
            if g.series not in known:
                if len(known) >= cap:
                    refused.append(g)
                    continue
                known.add(g.series)
            self._process_series(record.partition, st, g, late)
        cfg = self.settings
        closed = st.close_ready(cfg.window_seconds, cfg.allowed_lateness_seconds)
        st.mark_applied(record.partition, record.offset)
        self._dirty[service] = record.partition
        if late:
            self._late(record, st, late)
        if refused:
            self._refuse_series(record, st, refused)
        self._emit_closed(service, record.partition, closed)
        self._emit_early(st)

    def _emit_early(self, st: ServiceState) -> None:
        """Provisional windows of a service's open windows, every ``early_interval_seconds`` of its event time.

        A tumbling window is only published once event time passed its end plus the allowed lateness;
        for a decision that is up to ``window + lateness`` seconds after a fault began. These show what
        an open window holds so far (against the baselines of the closed ones, which they do not
        change) on ``<prefix>health-early``: evidence for the meta loop and the advisors only, never
        for verification; the closed window replaces them.
        """
        cfg = self.settings
        early = getattr(self.sink, "early", None)
        if cfg.early_interval_seconds <= 0 or early is None or not st.open:
            return
        if st.max_ts - self._early_at.get(st.service, -math.inf) < cfg.early_interval_seconds:
            return
        self._early_at[st.service] = st.max_ts
        for hw in st.provisional(cfg.window_seconds, cfg.early_min_samples):
            early(hw)

    def _emit_closed(
        self, service: str, partition: int, closed: list[tuple[HealthWindow, list[tuple[str, SeriesWindow]]]]
    ) -> None:
        threshold = self.settings.anomaly_threshold
        scorers = self.scorers
        for hw, series in closed:
            self.stats.windows += 1
            self.sink.health(hw)
            start, end = hw.window_start, hw.window_end
            for series_id, sw in series:
                scorer = scorers.live.get(series_id) or scorers.get(series_id, partition)
                self._anomaly(
                    fast_summary(
                        service, sw, threshold=threshold, model=scorer.model_name, window_start=start, window_end=end
                    )
                )
                scorers.checkpoint(series_id)

    def close_idle(self) -> int:
        """Close every open window of services that sent nothing for window + allowed lateness.

        Windows close on event time, which only a service's own samples advance: a service
        that stops sending would keep its last windows open forever, and nobody would see
        its last health window (often the interesting one). This is the processing-time
        escape hatch (``streams.idle_close``, off by default; the worker calls it on its
        flush timer): after ``window + allowed_lateness`` seconds of wall time without a
        record of the service, its open windows are published as they are, and samples that
        arrive for them later are late (dead letters), as after any close. Idle time counts
        from the last record this process applied for the service; states load lazily, so
        after a restart or rebalance a service is considered only once a record of it came
        in. An idle close changes state outside any input offset: a crash before the next
        state flush can publish those windows twice (outputs are at-least-once anyway).
        Returns the number of windows closed.
        """
        cfg = self.settings
        limit = cfg.window_seconds + cfg.allowed_lateness_seconds
        now = self._clock()
        n = 0
        while self._last_seen:
            service = next(iter(self._last_seen))
            idle = now - self._last_seen[service]
            if idle <= limit:
                break  # every later service was seen more recently
            del self._last_seen[service]  # back in when its next record comes
            st = self._states.get(service)
            if st is not None and st.open:
                partition = self._state_partition[service]
                closed = st.close_all(cfg.window_seconds)
                logger.info(
                    "idle service windows closed service=%s windows=%d idle_seconds=%.1f", service, len(closed), idle
                )
                self._emit_closed(service, partition, closed)
                self._dirty[service] = partition
                n += len(closed)
        return n

    def _process_series(
        self, partition: int, st: ServiceState, g: SeriesBatch, late: list[tuple[SeriesBatch, int]]
    ) -> None:
        """Score then window every sample of one series: the worker's innermost loop.

        The scorer, the open window and its series slot are looked up once per window, not
        per sample, and the per-window aggregates live in locals until the window changes.
        """
        cfg = self.settings
        window, floor, threshold = cfg.window_seconds, cfg.reporting_floor, cfg.anomaly_threshold
        closed_until, max_ts, open_windows = st.closed_until, st.max_ts, st.open
        series, values = g.series, g.values
        scorer = self.scorers.live.get(series) or self.scorers.get(series, partition)
        score_then_learn = scorer.score_then_learn
        floor_fn = math.floor
        cur_start: float | None = None
        sw: SeriesWindow | None = None
        append: Callable[[float], None]  # sw.values.append, bound with sw at the first sample
        max_score, crossed = 0.0, 0
        last_sc: Score | None = None  # the score of the last sample in sw, set whenever sw is
        last_i = 0
        n_ok = 0
        for i, ts in enumerate(g.ts):
            if ts < closed_until:
                late.append((g, i))
                continue
            value = values[i]
            sc = score_then_learn(ts, value)
            start = floor_fn(ts / window) * window
            if start != cur_start:
                if sw is not None:
                    assert last_sc is not None
                    _close_segment(sw, max_score, crossed, values[last_i], g.ts[last_i], last_sc)
                cur_start = start
                bucket = open_windows.get(start)
                if bucket is None:
                    bucket = open_windows[start] = {}
                sw = bucket.get(series)
                if sw is None:
                    sw = bucket[series] = SeriesWindow(g.metric, g.signal, g.dependency)
                append = sw.values.append
                max_score, crossed = sw.max_score, sw.crossed
            append(value)
            last_i, last_sc = i, sc
            score = sc[0]
            if score > max_score:
                max_score = score
            if score >= threshold:
                crossed += 1
            if ts > max_ts:
                max_ts = ts
            n_ok += 1
            if score >= floor:
                self._anomaly(
                    sample_event(
                        g.service,
                        g.metric,
                        g.signal,
                        value,
                        ts,
                        sc,
                        threshold=threshold,
                        model=scorer.model_name,
                        window_start=start,
                        window_end=start + window,
                        labels=g.labels[i],
                    )
                )
        if sw is not None:
            assert last_sc is not None
            _close_segment(sw, max_score, crossed, values[last_i], g.ts[last_i], last_sc)
        st.max_ts = max_ts
        self.stats.samples += n_ok

    def _anomaly(self, event: AnomalyScore) -> None:
        self.stats.anomaly_events += 1
        self.sink.anomaly(event)

    def _dead(self, event: DeadLetter) -> None:
        self.stats.dead_letters += 1
        self.sink.dead_letter(event)

    def _refuse_series(self, record: Record, st: ServiceState, refused: list[SeriesBatch]) -> None:
        """Samples of series over the cap: one dead letter with them (re-publishable as a MetricBatch)."""
        n = sum(len(g.values) for g in refused)
        self.stats.series_refused += n
        batch = MetricBatch(
            samples=[
                Metric(
                    service=g.service,
                    metric=g.metric,
                    value=g.values[i] / UNIT_SCALE.get(g.metric, 1.0),
                    ts=g.ts[i],
                    labels=g.labels[i],
                )
                for g in refused
                for i in range(len(g.values))
            ]
        )
        names = ", ".join(g.series for g in refused[:5])
        error = (
            f"series: service {st.service} already has {len(st.known)} series "
            f"(streams.max_series_per_service={self.settings.max_series_per_service}); "
            f"{n} sample(s) of new series refused: {names}"
        )
        logger.warning("series refused service=%s count=%d offset=%d", st.service, n, record.offset)
        self._dead(dead_letter(record, "series_limit", error, value=self._late_ser(batch)))

    def _late(self, record: Record, st: ServiceState, late: list[tuple[SeriesBatch, int]]) -> None:
        """Late samples keep their original values (re-publishable as a MetricBatch)."""
        self.stats.late += len(late)
        batch = MetricBatch(
            samples=[
                Metric(
                    service=g.service,
                    metric=g.metric,
                    value=g.values[i] / UNIT_SCALE.get(g.metric, 1.0),
                    ts=g.ts[i],
                    labels=g.labels[i],
                )
                for g, i in late
            ]
        )
        first_ts = late[0][0].ts[late[0][1]]
        error = (
            f"{len(late)} sample(s) of service {st.service} older than its closed windows "
            f"(event time < {st.closed_until}): first ts={first_ts}"
        )
        logger.warning("late samples service=%s count=%d offset=%d", st.service, len(late), record.offset)
        self._dead(dead_letter(record, "late", error, value=self._late_ser(batch)))
