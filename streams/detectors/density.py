"""Window density: is the *shape of the last few samples* rare for this series?

A forecast residual judges one sample against a prediction; a burst of moderately high values, or a
pattern of spikes that is new for the series, can stay within the expected error of every single
step. This detector looks at the last ``width`` values together, as a point in ``[0, 1]^width``
(each value scaled to the range the series has shown), and asks how crowded that region of the
space has been lately: Half-Space Trees (Tan, Ting & Liu 2011, "Fast anomaly detection for
streaming data"; :class:`river.anomaly.HalfSpaceTrees`), with flat arrays instead of node
objects so it fits a per-sample budget of a few microseconds, and trees drawn from a seed so a
checkpoint holds the masses only (fixed size: ``trees x (2^(height+1) - 1)`` counts twice).

Each tree splits random coordinates at random points (river's padding of 15 %); the *reference*
masses are the counts of the previous ``size`` windows in each node, the *latest* masses count the
current ones and replace the reference every ``size`` samples. The raw score is river's, before
its normalisation: the most a path can weigh minus the depth-weighted reference mass along the
window's path (an integer, so it survives a float32 checkpoint exactly); it is then
calibrated against its own recent values (:class:`~metaheal.streams.detectors.TailCalibrator`), so
the output is ``1 - p`` like the other detectors of this package: on a stationary series about
``1 - t`` of the samples score ``>= t``. Until the first reference is complete (``size`` samples)
and the calibration has ``warmup`` values, the score is 0.

A series that alternates between 0 and 10, then lingers halfway (each value well inside the range):

>>> import random
>>> rng = random.Random(1)
>>> det = WindowDensity()
>>> values = [(0.0 if i % 2 else 10.0) + rng.gauss(0, 0.3) for i in range(3000)]
>>> quiet = [det.score_learn_one({"ts": 60.0 * i, "value": v}) for i, v in enumerate(values)]
>>> sum(q >= 0.99 for q in quiet[1000:]) / 2000 < 0.02
True
>>> burst = [det.score_learn_one({"ts": 60.0 * (3000 + i), "value": 5.0 + rng.gauss(0, 0.3)}) for i in range(8)]
>>> max(burst) >= 0.99
True
"""

from __future__ import annotations

import base64
import functools
import random
from array import array
from collections import deque
from typing import Any

from river.base.typing import FeatureName

from metaheal.streams.detectors.base import SeriesDetector, StateError
from metaheal.streams.detectors.residual import TailCalibrator

__all__ = ["WindowDensity"]


@functools.lru_cache(maxsize=16)
def _trees(width: int, trees: int, height: int, seed: int) -> tuple[tuple[int, float, int] | None, ...]:
    """The trees, flat: node ``i`` of tree ``t`` is ``t * (2^(height+1) - 1) + i``; an inner node is
    (coordinate, split point, left child; the right child is next to it), a leaf is None. Each split
    point is drawn inside the node's box, 15 % from its edges, as in river."""
    rng = random.Random(seed)
    nodes, inner = (1 << (height + 1)) - 1, (1 << height) - 1
    out: list[tuple[int, float, int] | None] = [None] * (trees * nodes)
    for t in range(trees):
        base = t * nodes
        lims = {0: [(0.0, 1.0)] * width}
        for node in range(inner):
            f = rng.randrange(width)
            a, b = lims[node][f]
            at = rng.uniform(a + 0.15 * (b - a), b - 0.15 * (b - a))
            out[base + node] = (f, at, base + 2 * node + 1)
            for child, bounds in ((2 * node + 1, (a, at)), (2 * node + 2, (at, b))):
                if child < inner:
                    lims[child] = [*lims[node][:f], bounds, *lims[node][f + 1 :]]
    return tuple(out)


class WindowDensity(SeriesDetector):
    """Calibrated Half-Space-Trees rarity of the last ``width`` values (see the module doc)."""

    def __init__(
        self,
        width: int = 8,
        trees: int = 3,
        height: int = 6,
        size: int = 250,
        window: int = 1000,
        warmup: int = 50,
        seed: int = 42,
    ) -> None:
        if width < 1 or trees < 1 or height < 1 or not 2 <= size <= 65535:
            raise ValueError(f"need width, trees, height >= 1, 2 <= size <= 65535: {width}, {trees}, {height}, {size}")
        self.width = width
        self.trees = trees
        self.height = height
        self.size = size
        self.window = window
        self.warmup = warmup
        self.seed = seed
        nodes = (1 << (height + 1)) - 1
        self._nodes = nodes
        total = trees * nodes
        self._node = _trees(width, trees, height, seed)  # shared by every detector with these parameters
        self._roots = range(0, total, nodes)
        self._zeros = [0] * total
        self._limit = 0.1 * size  # river's size limit: a node this sparse ends the walk
        self._max = trees * size * ((1 << (height + 1)) - 1)
        if self._max >= 1 << 24:
            raise ValueError("trees x size x 2^(height + 1) must stay below 2^24 (exact in float32)")
        self._r = [0] * (trees * nodes)  # reference masses
        self._l = [0] * (trees * nodes)  # latest masses
        self._count = 0  # windows counted into the latest masses
        self._ready = False  # a complete reference exists
        self._buf: deque[float] = deque(maxlen=width)
        self._lo = float("inf")
        self._hi = float("-inf")
        self._cal = TailCalibrator(window, 20)

    def score_learn_one(self, x: dict[FeatureName, Any]) -> float:
        return self.update(float(x["value"]))

    def update(self, value: float) -> float:
        """Score the window ending at ``value`` (a finite float) against the recent ones, then learn it."""
        buf = self._buf
        buf.append(value)
        lo, hi = self._lo, self._hi
        if value < lo:
            self._lo = lo = value
        if value > hi:
            self._hi = hi = value
        if len(buf) < self.width or hi <= lo:
            return 0.0
        inv = 1.0 / (hi - lo)
        point = [(v - lo) * inv for v in buf]
        node, r, lm = self._node, self._r, self._l
        limit = self._limit
        mass = 0
        for i in self._roots:
            weight = 1
            while True:  # down the tree while the reference masses are dense enough to score ...
                lm[i] += 1
                rm = r[i]
                mass += rm * weight
                nd = node[i]
                if nd is None:
                    break
                i = nd[2] + (point[nd[0]] >= nd[1])
                if rm < limit:
                    while True:  # ... then on to the leaf, counting the window into the latest masses
                        lm[i] += 1
                        nd = node[i]
                        if nd is None:
                            break
                        i = nd[2] + (point[nd[0]] >= nd[1])
                    break
                weight += weight
        ready = self._ready  # scored against a complete reference
        count = self._count + 1
        if count == self.size:
            self._r, self._l = lm, r
            r[:] = self._zeros
            count = 0
            self._ready = True
        self._count = count
        return self._p(self._max - mass) if ready else 0.0

    def _p(self, raw: int) -> float:
        cal = self._cal
        p = cal.p_value(raw) if len(cal) >= self.warmup else 1.0
        cal.learn(raw)
        return 1.0 - p

    # -- checkpoints ----------------------------------------------------------------------------

    _PARAMS = ("width", "trees", "height", "size", "window", "warmup", "seed")

    def _get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self._PARAMS}
        finite = self._hi >= self._lo
        state.update(
            r=_encode_masses(self._r),
            l=_encode_masses(self._l),
            count=self._count,
            ready=self._ready,
            buf=list(self._buf),
            lo=self._lo if finite else None,
            hi=self._hi if finite else None,
            cal=self._cal.state(),
        )
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        self.__init__(**{name: int(state[name]) for name in self._PARAMS})  # type: ignore[misc]
        n = self.trees * self._nodes
        r, lm = _decode_masses(state["r"]), _decode_masses(state["l"])
        if len(r) != n or len(lm) != n or len(state["buf"]) > self.width:
            raise StateError("window density masses do not fit its trees")
        self._r, self._l = r, lm
        self._count = int(state["count"])
        self._ready = bool(state["ready"])
        self._buf.extend(float(v) for v in state["buf"])
        if state["lo"] is not None:
            self._lo, self._hi = float(state["lo"]), float(state["hi"])
        self._cal = TailCalibrator.from_state(state["cal"])


def _encode_masses(masses: list[int]) -> str:
    """Node masses (at most ``size`` <= 65535 each) as base64 uint16, two bytes a node."""
    return base64.b64encode(array("H", masses).tobytes()).decode("ascii")


def _decode_masses(text: str) -> list[int]:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) % 2:
        raise StateError(f"node masses of {len(raw)} bytes are not whole uint16 values")
    return array("H", raw).tolist()
