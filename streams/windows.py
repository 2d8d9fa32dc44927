"""Tumbling per-service health windows, closed on event time with allowed lateness.

A window ``[start, start + W)`` of a service closes once that service's event time
(the largest ``ts`` seen) passes ``start + W + allowed_lateness``; samples that arrive
for a window already closed are *late* and returned to the caller (who dead-letters
them) instead of silently changing a published window. Each closed window yields one
:class:`~metaheal.events.HealthWindow` with per-series count/mean/p50/p95/max, the
rate for error signals, and the EWMA of previous windows' mean and p95 as baseline, so
a reader sees "latency p95 150 ms -> 245 ms" without recomputing.

:class:`ServiceState` is the whole state of one service, including the last applied
offset of each source partition, so a restarted worker skips records it already counted.
It is persisted incrementally (:func:`state_writes`, :func:`load_state`): re-pickling
the raw values of every open window at each state flush made the flush cost grow with
the window (at 5,000 samples/s it was the worker's periodic latency spike), so each
flush writes only the values added since the previous one, as one append-only *chunk*
per open window, then a small metadata record (offsets, baselines, per-series
aggregates, how many chunks each open window has). A closed window's chunks get
tombstones so the compacted changelog forgets them.

>>> st = ServiceState("api")
>>> for i in range(20):
...     _ = st.add(Point("api/latency_ms", "latency_ms", "latency", None, 100.0 + i, float(i) / 10), window=1.0)
>>> st.add(Point("api/latency_ms", "latency_ms", "latency", None, 500.0, 3.0), window=1.0)
True
>>> [hw.window_start for hw, _ in st.close_ready(window=1.0, lateness=0.5)]
[0.0, 1.0]
>>> st.add(Point("api/latency_ms", "latency_ms", "latency", None, 1.0, 0.5), window=1.0)  # window [0, 1) is closed
False
>>> hw = st.close_all(window=1.0)[0][0]
>>> hw.signals[0].max, hw.signals[0].baseline_mean  # baseline: EWMA of the means 104.5 and 114.5
(500.0, 107.5)
"""

from __future__ import annotations

import logging
import math
import pickle
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from metaheal.events import HealthWindow, SignalStats

logger = logging.getLogger(__name__)

BASELINE_ALPHA = 0.3  # weight of the newest window in the EWMA baseline
UNMAPPED = "unknown"  # SignalStats.signal of metrics no signal kind claims


class Point(NamedTuple):
    series: str
    metric: str
    signal: str | None
    dependency: str | None
    value: float
    ts: float


@dataclass
class SeriesWindow:
    """One series inside one open window: raw values (exact percentiles) plus scorer output."""

    metric: str
    signal: str | None
    dependency: str | None
    values: array[float] = field(default_factory=lambda: array("d"))
    max_score: float = 0.0
    crossed: int = 0
    last_value: float = 0.0
    last_ts: float = 0.0
    baseline: float = 0.0
    confidence: float = 0.0
    flushed: int = 0  # values[:flushed] are already in the state store (see state_writes)


@dataclass
class ServiceState:
    service: str
    open: dict[float, dict[str, SeriesWindow]] = field(default_factory=dict)
    closed_until: float = -math.inf
    max_ts: float = -math.inf
    baselines: dict[str, tuple[float, float]] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)
    chunks: dict[float, int] = field(default_factory=dict)  # open window start -> chunks written
    gone: list[tuple[float, int]] = field(default_factory=list)  # closed windows whose chunks need tombstones

    def already_applied(self, partition: int, offset: int) -> bool:
        return offset <= self.applied.get(partition, -1)

    def mark_applied(self, partition: int, offset: int) -> None:
        self.applied[partition] = max(offset, self.applied.get(partition, -1))

    def window_of(self, ts: float, window: float) -> float:
        return math.floor(ts / window) * window

    def is_late(self, ts: float) -> bool:
        return ts < self.closed_until

    def add(self, p: Point, window: float) -> bool:
        """Add a sample; ``False`` (nothing changed) if its window already closed."""
        if p.ts < self.closed_until:
            return False
        sw = self.series_window(p, window)
        sw.values.append(p.value)
        return True

    def series_window(self, p: Point, window: float) -> SeriesWindow:
        start = math.floor(p.ts / window) * window
        if p.ts > self.max_ts:
            self.max_ts = p.ts
        bucket = self.open.get(start)
        if bucket is None:
            bucket = self.open[start] = {}
        sw = bucket.get(p.series)
        if sw is None:
            sw = bucket[p.series] = SeriesWindow(p.metric, p.signal, p.dependency)
        return sw

    def close_ready(self, window: float, lateness: float) -> list[tuple[HealthWindow, list[tuple[str, SeriesWindow]]]]:
        """Close every window whose end + lateness the service's event time has passed."""
        horizon = self.max_ts - lateness
        return self._close([s for s in self.open if s + window <= horizon], window)

    def close_all(self, window: float) -> list[tuple[HealthWindow, list[tuple[str, SeriesWindow]]]]:
        return self._close(list(self.open), window)

    def _close(self, starts: list[float], window: float) -> list[tuple[HealthWindow, list[tuple[str, SeriesWindow]]]]:
        out = []
        for start in sorted(starts):
            bucket = self.open.pop(start)
            written = self.chunks.pop(start, 0)
            if written:
                self.gone.append((start, written))
            out.append((self._health(start, window, bucket), list(bucket.items())))
            self.closed_until = max(self.closed_until, start + window)
        return out

    def _health(self, start: float, window: float, bucket: dict[str, SeriesWindow]) -> HealthWindow:
        signals = []
        total = 0
        for series, sw in sorted(bucket.items()):
            vals = np.frombuffer(sw.values, dtype=np.float64) if len(sw.values) else np.zeros(1)
            n = len(sw.values)
            total += n
            mean = float(vals.mean())
            p50, p95 = (float(x) for x in np.percentile(vals, [50, 95]))
            prev = self.baselines.get(series)
            self.baselines[series] = (
                (mean, p95)
                if prev is None
                else (prev[0] + BASELINE_ALPHA * (mean - prev[0]), prev[1] + BASELINE_ALPHA * (p95 - prev[1]))
            )
            signals.append(
                SignalStats(
                    signal=sw.signal or UNMAPPED,
                    metric=sw.metric,
                    count=n,
                    mean=mean,
                    p50=p50,
                    p95=p95,
                    max=float(vals.max()),
                    rate=mean if sw.signal == "errors" else None,
                    baseline_mean=prev[0] if prev else None,
                    baseline_p95=prev[1] if prev else None,
                    dependency=sw.dependency,
                )
            )
        return HealthWindow(
            service=self.service, window_start=start, window_end=start + window, sample_count=total, signals=signals
        )


# -- persistence: incremental, O(new samples) per flush -----------------------------------------

STATE_FORMAT = 2


def chunk_key(service: str, start: float, k: int) -> bytes:
    """Store key of chunk ``k`` of one open window (NUL-separated: never a service name)."""
    return b"%s\x00w\x00%s\x00%d" % (service.encode(), repr(start).encode(), k)


def state_writes(st: ServiceState) -> list[tuple[bytes, bytes | None]]:
    """The store writes (``None`` = delete) that persist what changed since the last call, in order.

    Order is the crash-safety argument (all keys of a service share a changelog partition,
    which keeps write order): chunks first, then the metadata that references them, then
    tombstones of closed windows. A crash between chunk and metadata leaves a chunk
    nobody references, overwritten by the next flush (chunk numbers come from the
    metadata); a crash before the tombstones leaves unreferenced chunks, never a
    reference to a deleted one.
    """
    writes: list[tuple[bytes, bytes | None]] = []
    for start, bucket in st.open.items():
        new: dict[str, bytes] = {}
        for series, sw in bucket.items():
            n = len(sw.values)
            if n > sw.flushed:
                new[series] = sw.values[sw.flushed :].tobytes()
                sw.flushed = n
        if new:
            k = st.chunks.get(start, 0)
            writes.append((chunk_key(st.service, start, k), pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL)))
            st.chunks[start] = k + 1
    meta = {
        "format": STATE_FORMAT,
        "closed_until": st.closed_until,
        "max_ts": st.max_ts,
        "baselines": st.baselines,
        "applied": st.applied,
        "open": {
            start: (
                st.chunks.get(start, 0),
                {
                    series: (
                        sw.metric,
                        sw.signal,
                        sw.dependency,
                        sw.flushed,
                        sw.max_score,
                        sw.crossed,
                        sw.last_value,
                        sw.last_ts,
                        sw.baseline,
                        sw.confidence,
                    )
                    for series, sw in bucket.items()
                },
            )
            for start, bucket in st.open.items()
        },
    }
    writes.append((st.service.encode(), pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL)))
    for start, n in st.gone:
        writes.extend((chunk_key(st.service, start, k), None) for k in range(n))
    st.gone.clear()
    return writes


def load_state(service: str, get: Callable[[bytes], bytes | None]) -> ServiceState:
    """Rebuild a service's state from the store (``get(key) -> bytes | None``) as written by
    :func:`state_writes`; a whole pickled :class:`ServiceState` (the previous format) is
    accepted too and is rewritten in full by the next flush."""
    blob = get(service.encode())
    if not blob:
        return ServiceState(service)
    obj = pickle.loads(blob)
    if isinstance(obj, ServiceState):
        st = ServiceState(
            service, closed_until=obj.closed_until, max_ts=obj.max_ts, baselines=obj.baselines, applied=obj.applied
        )
        for start, bucket in obj.open.items():
            st.open[start] = {
                series: SeriesWindow(
                    sw.metric,
                    sw.signal,
                    sw.dependency,
                    sw.values,
                    sw.max_score,
                    sw.crossed,
                    sw.last_value,
                    sw.last_ts,
                    sw.baseline,
                    sw.confidence,
                )
                for series, sw in bucket.items()
            }
        return st
    st = ServiceState(
        service,
        closed_until=obj["closed_until"],
        max_ts=obj["max_ts"],
        baselines=obj["baselines"],
        applied=obj["applied"],
    )
    for start, (n_chunks, series_meta) in obj["open"].items():
        values: dict[str, array[float]] = {series: array("d") for series in series_meta}
        for k in range(n_chunks):
            chunk = get(chunk_key(service, start, k))
            if chunk is None:
                logger.error("window state chunk missing service=%s window_start=%s chunk=%d", service, start, k)
                continue
            for series, raw in pickle.loads(chunk).items():
                if series in values:
                    values[series].frombytes(raw)
        bucket = st.open[start] = {}
        for series, (
            metric,
            signal,
            dep,
            count,
            max_score,
            crossed,
            last_value,
            last_ts,
            baseline,
            conf,
        ) in series_meta.items():
            vals = values[series]
            if len(vals) != count:
                logger.error(
                    "window state count mismatch service=%s window_start=%s series=%s expected=%d got=%d",
                    service,
                    start,
                    series,
                    count,
                    len(vals),
                )
                del vals[count:]
            bucket[series] = SeriesWindow(
                metric, signal, dep, vals, max_score, crossed, last_value, last_ts, baseline, conf, flushed=len(vals)
            )
        st.chunks[start] = n_chunks
    return st
