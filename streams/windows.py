"""Tumbling per-service health windows, closed on event time with allowed lateness.

A window ``[start, start + W)`` of a service closes once that service's event time
(the largest ``ts`` seen) passes ``start + W + allowed_lateness``; samples that arrive
for a window already closed are *late* and returned to the caller (who dead-letters
them) instead of silently changing a published window. Each closed window yields one
:class:`~metaheal.events.HealthWindow` with per-series count/mean/p50/p95/max, the
rate for error signals, and the EWMA of previous windows' mean and p95 as baseline, so
a reader sees "latency p95 150 ms -> 245 ms" without recomputing.

:class:`ServiceState` is the whole state of one service: it is pickled into a faust
table (changelog-backed) after every record, together with the last applied offset of
each source partition, so a restarted worker skips records it already counted.

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

import math
from array import array
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from metaheal.events import HealthWindow, SignalStats

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
    values: array = field(default_factory=lambda: array("d"))
    max_score: float = 0.0
    crossed: int = 0
    last_value: float = 0.0
    last_ts: float = 0.0
    baseline: float = 0.0
    confidence: float = 0.0


@dataclass
class ServiceState:
    service: str
    open: dict[float, dict[str, SeriesWindow]] = field(default_factory=dict)
    closed_until: float = -math.inf
    max_ts: float = -math.inf
    baselines: dict[str, tuple[float, float]] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)

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
                (mean, p95) if prev is None
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
