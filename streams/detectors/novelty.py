"""Range novelty: a value beyond everything the series has shown is anomalous in itself.

A predictive detector adapts to where the series is going, so a slow climb to a level never seen
before (a leak, a runaway temperature) can stay within its expected error. This detector scores 1
when the value leaves the range seen so far by more than ``tolerance`` x its width (Numenta's
"spatial anomaly" next to HTM in NAB), else 0. The range comes from :class:`river.stats.Min` and
:class:`river.stats.Max`; the state is three numbers. The first ``after`` samples only learn the
range (300, about Numenta's learning period): early on, every few samples set a new extreme.

>>> det = RangeNovelty(after=2)
>>> [det.score_learn_one({"ts": float(t), "value": v}) for t, v in enumerate([1.0, 3.0, 2.0, 3.05, 3.2])]
[0.0, 0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

import math
from typing import Any

from river import stats
from river.base.typing import FeatureName

from metaheal.streams.detectors.base import SeriesDetector

__all__ = ["RangeNovelty"]


class RangeNovelty(SeriesDetector):
    """1.0 for a value outside ``[min - tolerance * width, max + tolerance * width]``, else 0.0."""

    def __init__(self, tolerance: float = 0.05, after: int = 300) -> None:
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = tolerance
        self.after = after
        self._min = stats.Min()
        self._max = stats.Max()
        self._n = 0

    def score_learn_one(self, x: dict[FeatureName, Any]) -> float:
        value = x["value"]
        lo, hi = self._min.get(), self._max.get()
        novel = 0.0
        self._n += 1
        if self._n > self.after and hi > lo:
            margin = self.tolerance * (hi - lo)
            if value > hi + margin or value < lo - margin:
                novel = 1.0
        self._min.update(value)
        self._max.update(value)
        return novel

    def _get_state(self) -> dict[str, Any]:
        lo, hi = self._min.get(), self._max.get()
        finite = math.isfinite(lo)
        return {
            "tolerance": self.tolerance,
            "after": self.after,
            "n": self._n,
            "min": lo if finite else None,
            "max": hi if finite else None,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.__init__(float(state["tolerance"]), int(state["after"]))  # type: ignore[misc]
        self._n = int(state["n"])
        if state["min"] is not None:
            self._min.update(float(state["min"]))
            self._max.update(float(state["max"]))
