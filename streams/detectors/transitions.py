"""Transition novelty: the series moved in a way it never has before (a contextual detector).

A forecast residual judges each sample on its own; this detector judges *what follows what*, in
the spirit of CAD OSE (Contextual Anomaly Detector, NAB): each sample becomes a symbol, the
previous symbol is the context, and a sample is a surprise when the context is well known (seen
at least ``known`` times) but never led to this symbol before. So a burst of moves the series
makes every day is learnt, and a move it has never made (a jump straight from calm to far above
the level, from one extreme to the other, a calm sample where a spike always came back) is novel
even when each value alone is within its usual spread.

The symbol is the one-step prediction error of a robust exponentially weighted level (half-life
``halflife`` samples, Huber-clipped at 4 scales; the scale is the mean absolute error, half-life
``scale_halflife``, capped at 5 scales), in units of ``width`` scales, rounded and clamped to
``+-levels``: ``2 * levels + 1`` symbols. Unlike CAD OSE nothing is read from the whole series
(no min/max up front): the scale is the one seen so far. The state is fixed: the transition counts
of ``(2 * levels + 1) ** 2`` pairs, their context totals and five numbers. Counts never decay, so
a transition seen once is known for good. The first ``after`` samples only learn (300, as
:class:`~metaheal.streams.detectors.RangeNovelty`).

>>> import random
>>> rng = random.Random(1)
>>> det = TransitionNovelty()
>>> calm = [det.score_learn_one({"ts": 60.0 * t, "value": 100 + rng.gauss(0, 5)}) for t in range(1000)]
>>> sum(calm[:300]), sum(calm[300:])  # learning; then noise makes a new move rarely
(0.0, 1.0)
>>> det.score_learn_one({"ts": 60000.0, "value": 160.0}), det.symbol  # 12 sigma: never seen
(1.0, 4)
"""

from __future__ import annotations

from typing import Any

from river.base.typing import FeatureName

from metaheal.streams.detectors.base import SeriesDetector, StateError

__all__ = ["TransitionNovelty"]


class TransitionNovelty(SeriesDetector):
    """1.0 when a well-known context (the previous symbol) is followed by a symbol it never led to, else 0.0.

    ``width`` is a symbol's width in scales (2), ``levels`` the largest symbol (4: nine symbols),
    ``known`` how often a context must have been seen before its unseen successors count (5),
    ``after`` the samples that only learn (300); ``halflife`` / ``scale_halflife`` of the level
    and its scale in samples (10 / 35, as :class:`~metaheal.streams.detectors.ForecastResidual`).
    ``symbol`` is the last sample's symbol.
    """

    def __init__(
        self,
        width: float = 2.0,
        levels: int = 4,
        known: int = 5,
        after: int = 300,
        halflife: float = 10.0,
        scale_halflife: float = 35.0,
    ) -> None:
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if not 1 <= levels <= 32:
            raise ValueError(f"levels must be in 1..32, got {levels}")
        for name, hl in (("halflife", halflife), ("scale_halflife", scale_halflife)):
            if not hl > 0:
                raise ValueError(f"{name} must be > 0, got {hl}")
        self.width = width
        self.levels = levels
        self.known = known
        self.after = after
        self.halflife = halflife
        self.scale_halflife = scale_halflife
        self._alpha = 1.0 - 0.5 ** (1.0 / halflife)
        self._scale_alpha = 1.0 - 0.5 ** (1.0 / scale_halflife)
        m = 2 * levels + 1
        self._counts = [0] * (m * m)  # [previous symbol][symbol], symbols offset by ``levels``
        self._totals = [0] * m  # how often each symbol was a context
        self._level: float | None = None
        self._scale = 0.0
        self._n = 0
        self._prev = -1  # the previous symbol (offset), -1 before the first
        self.symbol = 0

    def score_learn_one(self, x: dict[FeatureName, Any]) -> float:
        return 1.0 if self.update(float(x["value"])) else 0.0

    def update(self, x: float) -> bool:
        """Learn ``x``; whether its transition was novel (the scorer's hot path)."""
        level = self._level
        n = self._n + 1
        self._n = n
        levels = self.levels
        if level is None:
            self._level = x
            self._prev = levels
            self.symbol = 0
            return False
        scale = self._scale
        e = x - level
        if scale > 0.0:
            q = e / (self.width * scale)
            s = int(q + 0.5) if q >= 0.0 else -int(0.5 - q)  # rounded half away from zero
            if s > levels:
                s = levels
            elif s < -levels:
                s = -levels
            lim = 4.0 * scale
            self._level = level + self._alpha * (lim if e > lim else (-lim if e < -lim else e))
        else:
            s = 0
            self._level = level + self._alpha * e
        ae = e if e >= 0.0 else -e
        sa = self._scale_alpha
        if n * sa < 1.0:
            sa = 1.0 / n
        if n > 10 and ae > 5.0 * scale:
            ae = 5.0 * scale
        self._scale = scale + sa * (ae - scale)
        self.symbol = s
        s += levels
        prev = self._prev
        self._prev = s
        at = prev * (levels + levels + 1) + s
        counts = self._counts
        seen = counts[at]
        counts[at] = seen + 1
        totals = self._totals
        known = totals[prev]
        totals[prev] = known + 1
        return seen == 0 and known >= self.known and n > self.after

    # -- checkpoints ----------------------------------------------------------------------------

    _PARAMS = ("width", "levels", "known", "after", "halflife", "scale_halflife")

    def _get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self._PARAMS}
        state.update(
            level=self._level, scale=self._scale, n=self._n, prev=self._prev, symbol=self.symbol,
            counts=list(self._counts),
        )  # fmt: skip
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        self.__init__(**{name: state[name] for name in self._PARAMS})  # type: ignore[misc]
        counts = [int(c) for c in state["counts"]]
        m = 2 * self.levels + 1
        if len(counts) != m * m or min(counts) < 0:
            raise StateError(f"expected {m * m} non-negative transition counts, got {len(counts)}")
        self._counts = counts
        self._totals = [sum(counts[i * m : (i + 1) * m]) for i in range(m)]
        self._level = None if state["level"] is None else float(state["level"])
        self._scale = float(state["scale"])
        self._n = int(state["n"])
        self._prev = int(state["prev"])
        self.symbol = int(state["symbol"])
        if not -1 <= self._prev < m:
            raise StateError(f"previous symbol {self._prev} is not one of {m}")
