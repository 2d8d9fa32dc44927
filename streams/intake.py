"""Decode and validate telemetry records; everything else becomes a dead letter.

The worker must never crash on input and never drop a record silently, so decoding is
a total function: a record yields samples, or a :class:`~metaheal.events.DeadLetter`
carrying the original bytes, where it came from and why it was refused (the message
names the field, as :class:`~metaheal.kafka.serializers.DecodeError` does).

>>> intake = Intake(SignalMap())
>>> body = b'{"service": "api", "metric": "http.server.request.duration", "value": 0.2, "ts": 10}'
>>> rec = Record("t", 0, 7, b"api", body)
>>> samples, dead = intake.decode(rec)
>>> samples[0].value, samples[0].signal, dead
(200.0, 'latency', None)
>>> samples, dead = intake.decode(Record("t", 0, 8, None, b'{"service": "api", "metric": "x", "value": "hi", "ts": 1}'))
>>> samples, dead.reason, dead.offset
([], 'invalid', 8)
>>> dead.error
'invalid Metric: value: Input should be a valid number, unable to parse string as a number'
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from metaheal.config import StreamSettings
from metaheal.errors import DecodeError, LimitExceeded
from metaheal.events import DeadLetter, Metric, MetricBatch, MetricSeries
from metaheal.kafka.serializers import (
    HEADER_LEN,
    MAGIC,
    AvroDeserializer,
    TelemetryDeserializer,
)
from metaheal.streams.signals import DEPENDENCY_LABEL, UNIT_SCALE, SignalMap, series_id

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record, whatever client consumed it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    from_otlp: bool = False  # written by the worker's OTLP stage (its samples are counted there)


class Sample(NamedTuple):
    """A validated, unit-normalised sample with its series identity."""

    service: str
    metric: str
    series: str
    signal: str | None
    dependency: str | None
    value: float
    ts: float
    labels: dict[str, str]


class SeriesBatch:
    """The samples of one series from one record, as columns (the pipeline's unit of work).

    Scoring and windowing walk a series' samples in a tight loop with its scorer and
    window looked up once, and no per-sample object is built: profiled in the worker,
    building a :class:`Sample` per value cost about half of decoding.
    """

    __slots__ = ("dependency", "labels", "metric", "series", "service", "signal", "ts", "values")

    def __init__(self, service: str, metric: str, series: str, signal: str | None, dependency: str | None) -> None:
        self.service, self.metric, self.series, self.signal, self.dependency = (
            service,
            metric,
            series,
            signal,
            dependency,
        )
        self.values: list[float] = []  # unit-normalised
        self.ts: list[float] = []
        self.labels: list[dict[str, str]] = []


def dead_letter(record: Record, reason: str, error: str, value: bytes | None = None) -> DeadLetter:
    """``value`` defaults to the record's original bytes."""
    return DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value if value is None else value,
        reason=reason,
        error=error,
        ts=time.time(),
    )


#: the widest finite range: a bound that still refuses inf and NaN
_FINITE = sys.float_info.max


class Intake:
    """``Record -> (samples, dead letter or None)``; never raises on input.

    Bounds from ``settings`` (:class:`~metaheal.config.StreamSettings`): record size and
    JSON depth, ``|value| <= max_abs_value`` (so window statistics cannot overflow), and,
    with a ``wall_clock`` (the worker's ``time.time``), event time within
    ``[now - max_event_age_seconds, now + max_future_skew_seconds]``. Without a wall clock
    (replays, tests, in-process tools) event time is only required to be finite. A record
    with any sample out of bounds is a dead letter whose error names the sample and field.
    """

    def __init__(
        self,
        signals: SignalMap,
        settings: StreamSettings | None = None,
        *,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        cfg = settings or StreamSettings()
        self.signals = signals
        self.max_abs_value = cfg.max_abs_value
        self.max_future_skew = cfg.max_future_skew_seconds
        self.max_age = cfg.max_event_age_seconds
        self.wall_clock = wall_clock
        self._decode = TelemetryDeserializer(max_bytes=cfg.max_record_bytes, max_depth=cfg.max_json_depth)
        self._batch = AvroDeserializer(MetricBatch, max_bytes=cfg.max_record_bytes)
        batch_header = MAGIC + self._batch.fingerprint
        self._series_avro = AvroDeserializer(MetricSeries, max_bytes=cfg.max_record_bytes)
        # record header -> fast path; anything else (or a fast path's ``None``) takes the validating path
        self._fast_samples = {batch_header: self._fast_batch}
        self._fast_groups = {
            batch_header: self._fast_series,
            MAGIC + self._series_avro.fingerprint: self._fast_columns,
        }
        # (service, metric, dependency) -> (series id, signal, unit scale): computed once per series
        self._series: dict[tuple[str, str, str | None], tuple[str, str | None, float]] = {}

    def ts_bounds(self) -> tuple[float, float]:
        """The event times accepted now (finite ones only without a wall clock)."""
        if self.wall_clock is None:
            return -_FINITE, _FINITE
        now = self.wall_clock()
        lo = -_FINITE if self.max_age is None else now - self.max_age
        hi = _FINITE if self.max_future_skew is None else now + self.max_future_skew
        return lo, hi

    def out_of_bounds(self, metrics: list[Metric]) -> str | None:
        """The first bound a sample breaks, naming sample and field; ``None`` if all are within bounds."""
        vmax = self.max_abs_value
        now = self.wall_clock() if self.wall_clock is not None else None
        for i, m in enumerate(metrics):
            where = f"samples[{i}]" if len(metrics) > 1 else "sample"
            if not -vmax <= m.value <= vmax:
                return f"{where}.value: |{m.value:g}| exceeds streams.max_abs_value={vmax:g} (service {m.service})"
            if now is None:
                continue
            if self.max_future_skew is not None and m.ts > now + self.max_future_skew:
                return (
                    f"{where}.ts: {m.ts:.3f} is {m.ts - now:.0f} s ahead of the wall clock "
                    f"(streams.max_future_skew_seconds={self.max_future_skew:g}, service {m.service})"
                )
            if self.max_age is not None and m.ts < now - self.max_age:
                return (
                    f"{where}.ts: {m.ts:.3f} is {now - m.ts:.0f} s behind the wall clock "
                    f"(streams.max_event_age_seconds={self.max_age:g}, service {m.service})"
                )
        return None

    def _sample(self, service: str, metric: str, value: float, ts: float, labels: dict[str, str]) -> Sample:
        dep, series, signal, scale = self._meta(service, metric, labels)
        return Sample(service, metric, series, signal, dep, value * scale if scale != 1.0 else value, ts, labels)

    def to_sample(self, m: Metric) -> Sample:
        return self._sample(m.service, m.metric, m.value, m.ts, m.labels)

    def _meta(self, service: str, metric: str, labels: dict[str, str]) -> tuple[str | None, str, str | None, float]:
        dep = labels.get(DEPENDENCY_LABEL) or None if labels else None
        meta = self._series.get((service, metric, dep))
        if meta is None:
            meta = self._series[(service, metric, dep)] = (
                series_id(service, metric, dep),
                self.signals.signal_of(metric, labels),
                UNIT_SCALE.get(metric, 1.0),
            )
        return dep, *meta

    def _fast_series(self, data: bytes) -> list[SeriesBatch] | None:
        """Avro MetricBatch straight into per-series columns; ``None`` = let the full path judge."""
        vmax = self.max_abs_value
        lo, hi = self.ts_bounds()
        groups: dict[tuple[str, str, str | None], SeriesBatch] = {}
        for m in self._batch.decode_dict(data)["samples"]:
            service, metric, value, ts, labels = m["service"], m["metric"], m["value"], m["ts"], m["labels"]
            if not (service and metric and -vmax <= value <= vmax and lo <= ts <= hi):
                return None
            dep = labels.get(DEPENDENCY_LABEL) or None if labels else None
            g = groups.get((service, metric, dep))
            if g is None:
                _, series, signal, _ = self._meta(service, metric, labels)
                g = groups[(service, metric, dep)] = SeriesBatch(service, metric, series, signal, dep)
            g.values.append(value)
            g.ts.append(ts)
            g.labels.append(labels)
        if not groups:
            return None
        for g in groups.values():
            scale = UNIT_SCALE.get(g.metric, 1.0)
            if scale != 1.0:
                g.values = [v * scale for v in g.values]
        return list(groups.values())

    def _fast_columns(self, data: bytes) -> list[SeriesBatch] | None:
        """Avro MetricSeries: its columns are the series batch; ``None`` = let the full path judge."""
        d = self._series_avro.decode_dict(data)
        service, metric, labels, ts, values = d["service"], d["metric"], d["labels"], d["ts"], d["values"]
        isfinite = math.isfinite
        vmax = self.max_abs_value
        lo, hi = self.ts_bounds()
        if not (
            service
            and metric
            and values
            and len(ts) == len(values)
            and all(map(isfinite, values))
            and all(map(isfinite, ts))
            and -vmax <= min(values)
            and max(values) <= vmax
            and lo <= min(ts)
            and max(ts) <= hi
        ):
            return None
        dep, series, signal, scale = self._meta(service, metric, labels)
        g = SeriesBatch(service, metric, series, signal, dep)
        g.values = values if scale == 1.0 else [v * scale for v in values]
        g.ts = ts
        g.labels = [labels] * len(ts)
        return [g]

    def decode_series(self, record: Record) -> tuple[list[SeriesBatch], DeadLetter | None]:
        """Like :meth:`decode`, grouped by series (first-seen order; a series keeps its samples' order)."""
        fast = self._fast(record.value, self._fast_groups)
        if fast is not None:
            return fast, None
        samples, dead = self.decode(record)
        groups: dict[str, SeriesBatch] = {}
        for s in samples:
            g = groups.get(s.series)
            if g is None:
                g = groups[s.series] = SeriesBatch(s.service, s.metric, s.series, s.signal, s.dependency)
            g.values.append(s.value)
            g.ts.append(s.ts)
            g.labels.append(s.labels)
        return list(groups.values()), dead

    def _fast_batch(self, data: bytes) -> list[Sample] | None:
        """Avro MetricBatch without building pydantic models; ``None`` = let the full path judge."""
        sample, vmax = self._sample, self.max_abs_value
        lo, hi = self.ts_bounds()
        out = []
        for m in self._batch.decode_dict(data)["samples"]:
            service, metric, value, ts = m["service"], m["metric"], m["value"], m["ts"]
            if not (service and metric and -vmax <= value <= vmax and lo <= ts <= hi):
                return None
            out.append(sample(service, metric, value, ts, m["labels"]))
        return out or None

    def _fast(self, value: bytes | None, paths: Mapping[bytes, Callable[[bytes], T | None]]) -> T | None:
        """An Avro record through the fast path for its header; ``None`` = let the validating path judge it."""
        if value is None:
            return None
        decode = paths.get(value[:HEADER_LEN])
        if decode is None:
            return None
        try:
            return decode(value)
        except DecodeError:
            return None

    def decode(self, record: Record) -> tuple[list[Sample], DeadLetter | None]:
        fast = self._fast(record.value, self._fast_samples)
        if fast is not None:
            return fast, None
        try:
            metrics = self._decode(record.value)
        except LimitExceeded as exc:
            logger.warning(
                "telemetry rejected topic=%s partition=%d offset=%d reason=over_limit error=%s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            return [], dead_letter(record, "over_limit", str(exc))
        except DecodeError as exc:
            reason = "undecodable" if _is_framing_error(str(exc)) else "invalid"
            logger.warning(
                "telemetry rejected topic=%s partition=%d offset=%d reason=%s error=%s",
                record.topic,
                record.partition,
                record.offset,
                reason,
                exc,
            )
            return [], dead_letter(record, reason, str(exc))
        except Exception as exc:
            logger.exception("telemetry decode failed offset=%d", record.offset)
            return [], dead_letter(record, "undecodable", f"{type(exc).__name__}: {exc}")
        if not metrics:
            return [], dead_letter(record, "invalid", "samples: empty batch")
        bad = self.out_of_bounds(metrics)
        if bad is not None:
            logger.warning(
                "telemetry rejected topic=%s partition=%d offset=%d reason=out_of_bounds error=%s",
                record.topic,
                record.partition,
                record.offset,
                bad,
            )
            return [], dead_letter(record, "out_of_bounds", bad)
        return [self.to_sample(m) for m in metrics], None


def _is_framing_error(message: str) -> bool:
    return not message.startswith("invalid ")
