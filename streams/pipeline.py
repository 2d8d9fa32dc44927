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
import pickle
from collections import defaultdict
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Protocol

from metaheal.config import StreamSettings
from metaheal.events import AnomalyScore, DeadLetter, HealthWindow, Metric, MetricBatch
from metaheal.kafka.serializers import AvroSerializer
from metaheal.streams.intake import Intake, Record, Sample, dead_letter
from metaheal.streams.scoring import ScorerRegistry, Store, as_store, sample_event, summary_event
from metaheal.streams.signals import SignalMap, UNIT_SCALE
from metaheal.streams.windows import SeriesWindow, ServiceState

logger = logging.getLogger(__name__)

__all__ = ["ListSink", "Pipeline", "PipelineStats", "Record", "Sink"]


def progress_key(partition: int) -> bytes:
    """State-store key of a partition's progress marker (NUL-prefixed: never a service name)."""
    return b"\x00progress/%d" % partition


class Sink(Protocol):
    def health(self, event: HealthWindow) -> None: ...
    def anomaly(self, event: AnomalyScore) -> None: ...
    def dead_letter(self, event: DeadLetter) -> None: ...


@dataclass
class ListSink:
    """Collects outputs in memory (tests, in-process tools)."""

    health_windows: list[HealthWindow] = field(default_factory=list)
    anomaly_events: list[AnomalyScore] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def health(self, event: HealthWindow) -> None:
        self.health_windows.append(event)

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
    dead_letters: int = 0
    windows: int = 0
    anomaly_events: int = 0


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
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.intake = Intake(SignalMap(settings.signal_map))
        self.scorers = ScorerRegistry(scorer_store, seed=seed, min_interval=settings.checkpoint_interval_seconds)
        self.state_store = as_store(state_store)
        self._dirty: dict[str, int] = {}  # services whose state changed since the last flush
        self._progress: dict[int, int] = {}  # partition -> last offset processed since the last flush
        self._states: dict[str, ServiceState] = {}
        self._state_partition: dict[str, int] = {}
        self.stats = PipelineStats()
        self._late_ser = AvroSerializer(MetricBatch)

    # -- state -------------------------------------------------------------------------------

    def _state(self, service: str, partition: int) -> ServiceState:
        st = self._states.get(service)
        if st is None:
            blob = self.state_store.get(service.encode())
            st = pickle.loads(blob) if blob else ServiceState(service)
            self._states[service] = st
            self._state_partition[service] = partition
        return st

    def flush_state(self) -> None:
        """Write every changed service state, then each partition's progress marker.

        The marker goes to the same changelog partition after the states, so a marker
        that survived a crash proves every state write before it did too: a restarted
        worker resumes right after the marker's offset (see :meth:`progress`), and the
        per-service applied offsets skip what a state already counted.
        """
        for service, partition in self._dirty.items():
            st = self._states.get(service)
            if st is not None:
                self.state_store.put(service.encode(), pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL), partition)
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
                out[p] = int(blob)
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
        samples, dead = self.intake.decode(record)
        if dead is not None:
            self._dead(dead)
            return
        by_service: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            by_service[s.service].append(s)
        for service, group in by_service.items():
            self._process_service(record, service, group)

    def _process_service(self, record: Record, service: str, samples: list[Sample]) -> None:
        st = self._state(service, record.partition)
        if st.already_applied(record.partition, record.offset):
            self.stats.duplicates += len(samples)
            return
        cfg = self.settings
        window, floor, threshold = cfg.window_seconds, cfg.reporting_floor, cfg.anomaly_threshold
        late: list[Sample] = []
        closed_until, max_ts, open_windows = st.closed_until, st.max_ts, st.open
        live, get_scorer, partition = self.scorers.live, self.scorers.get, record.partition
        floor_fn = math.floor
        cur_start, bucket = None, None
        for s in samples:
            ts, value, series = s.ts, s.value, s.series
            if ts < closed_until:
                late.append(s)
                continue
            scorer = live.get(series) or get_scorer(series, partition)
            sc = scorer.score_then_learn(ts, value)
            start = floor_fn(ts / window) * window
            if start != cur_start:
                cur_start = start
                bucket = open_windows.get(start)
                if bucket is None:
                    bucket = open_windows[start] = {}
            sw = bucket.get(series)  # type: ignore[union-attr]
            if sw is None:
                sw = bucket[series] = SeriesWindow(s.metric, s.signal, s.dependency)  # type: ignore[index]
            sw.values.append(value)
            score = sc.score
            if score > sw.max_score:
                sw.max_score = score
            if score >= threshold:
                sw.crossed += 1
            sw.last_value, sw.last_ts, sw.baseline, sw.confidence = value, ts, sc.baseline, sc.confidence
            if ts > max_ts:
                max_ts = ts
            if score >= floor:
                self._anomaly(
                    sample_event(
                        service, s.metric, s.signal, value, ts, sc, threshold=threshold,
                        model=scorer.model_name, window_start=start, window_end=start + window, labels=s.labels,
                    )
                )
        st.max_ts = max_ts
        self.stats.samples += len(samples) - len(late)
        closed = st.close_ready(window, cfg.allowed_lateness_seconds)
        st.mark_applied(record.partition, record.offset)
        self._dirty[service] = record.partition
        if late:
            self._late(record, st, late)
        for hw, series in closed:
            self.stats.windows += 1
            self.sink.health(hw)
            for series_id, sw in series:
                self._anomaly(
                    summary_event(
                        service, sw, threshold=threshold, model=self.scorers.get(series_id, record.partition).model_name,
                        window_start=hw.window_start, window_end=hw.window_end,
                    )
                )
                self.scorers.checkpoint(series_id)

    def _anomaly(self, event: AnomalyScore) -> None:
        self.stats.anomaly_events += 1
        self.sink.anomaly(event)

    def _dead(self, event: DeadLetter) -> None:
        self.stats.dead_letters += 1
        self.sink.dead_letter(event)

    def _late(self, record: Record, st: ServiceState, late: list[Sample]) -> None:
        """Late samples keep their original values (re-publishable as a MetricBatch)."""
        self.stats.late += len(late)
        batch = MetricBatch(
            samples=[
                Metric(service=s.service, metric=s.metric, value=s.value / UNIT_SCALE.get(s.metric, 1.0), ts=s.ts,
                       labels=s.labels)
                for s in late
            ]
        )
        error = (
            f"{len(late)} sample(s) of service {st.service} older than its closed windows "
            f"(event time < {st.closed_until}): first ts={late[0].ts}"
        )
        logger.warning("late samples service=%s count=%d offset=%d", st.service, len(late), record.offset)
        self._dead(dead_letter(record, "late", error, value=self._late_ser(batch)))
