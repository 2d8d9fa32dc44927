"""Tail probability of a non-negative statistic over a sliding window, in bounded, compact state.

:class:`TailCalibrator` answers "how often did this series' recent deviations reach ``d``?" as a
conformal p-value, ``(#{d_i >= d} + 1) / (n + 1)``, with a fitted tail beyond the largest one.
Only the *tail* of the window decides a p-value small enough to matter (a surprise needs
``#{d_i >= d}`` below ``tail``), so the window is not kept value by value:

- it is cut into blocks of ``window / 4`` samples; the oldest block leaves as a whole once the
  window without it still holds ``window - block / 2`` samples, so the window holds
  ``window +- block / 2`` samples, ``window`` on average (exactly the last ``n`` while young);
- each block keeps its ``tail`` largest values exactly, as 16-bit log codes (relative
  resolution 0.09 %), and a histogram of all its positive values by power of two;
- a count ``#{d_i >= d}`` is exact (from the kept values) whenever ``d`` is above every block's
  smallest kept value, i.e. in the whole region where p-values are small; below it, where the
  count is at least ``tail``, it is read from the histograms (linear within a power of two).

So the state is at most :attr:`~TailCalibrator.capacity` blocks (5 for the default window) of
``tail`` codes and 52 counts whatever the series' age. Its checkpoint (:meth:`TailCalibrator.state`)
has a fixed layout, every block of the capacity present (unused ones all zeros), and holds exactly
what the live calibrator holds: a restored calibrator answers bit for bit like the one that wrote it.

>>> cal = TailCalibrator(window=100, tail=10)
>>> for i in range(100):
...     cal.learn(float(i % 10))
>>> round(cal.p_value(9.0), 3), round(cal.p_value(0.0), 3)
(0.109, 1.0)
>>> cal.p_value(30.0) < 1e-3
True
>>> for i in range(10_000):
...     cal.learn(float(i % 10))
>>> len(cal), TailCalibrator.from_state(cal.state()).p_value(8.5) == cal.p_value(8.5)
(100, True)
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, insort
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from metaheal.errors import StateError
from metaheal.streams.detectors.base import decode_array, encode_array

__all__ = ["TailCalibrator", "decode_code", "encode_code"]

# 16-bit log codes of positive values in [_LO, _HI] (values outside are clamped to the ends)
_LO, _HI = 1e-12, 1e13
_LN_LO = math.log(_LO)
_K = 65535 / (math.log(_HI) - _LN_LO)
# histogram bins: powers of two from 2^-10 (below: bin 0) up to 2^41 (above: the last bin)
_EMIN, _NBINS = -10, 52
_BLOCKS = 4  # blocks per window


def encode_code(d: float) -> int:
    """The 16-bit log code of a positive value (monotonic: ``a <= b`` gives ``code(a) <= code(b)``)."""
    if d <= _LO:
        return 0
    if d >= _HI:
        return 65535
    return int((math.log(d) - _LN_LO) * _K + 0.5)


def decode_code(code: int) -> float:
    """The value a code stands for (``decode_code(encode_code(x))`` is within 0.045 % of ``x``)."""
    return math.exp(code / _K + _LN_LO)


def _bin(d: float) -> int:
    b = math.frexp(d)[1] - _EMIN
    return 0 if b < 0 else (_NBINS - 1 if b >= _NBINS else b)


def _from_deltas(deltas: Sequence[int]) -> array[int]:
    codes = list(accumulate(int(d) for d in deltas))
    if codes and (min(deltas) < 0 or codes[-1] > 65535):
        raise StateError("calibrator codes are not sorted 16-bit codes")
    return array("H", codes)


class TailCalibrator:
    """Sliding-window tail probability of a non-negative deviation statistic (see the module doc).

    Inside the observed range the p-value is conformal, ``(#{d_i >= d} + 1) / (n + 1)``, which is
    valid for any distribution; beyond the window maximum a tail is fitted to the ``tail``
    largest values (peaks over threshold) so scores keep growing with the deviation instead of
    saturating at ``1 - 1/(n+1)``: exponential, or Pareto (Hill estimate) when that is heavier,
    so the outliers of heavy-tailed noise are not each called a one-in-a-million event.
    """

    __slots__ = ("_cut", "_hists", "_merged", "_n", "_npos", "_pos", "_sizes", "_tops", "block", "tail", "window")

    def __init__(self, window: int = 1000, tail: int = 20) -> None:
        if window < 2 or tail < 2 or tail > window:
            raise ValueError(f"need 2 <= tail <= window, got window={window} tail={tail}")
        self.window = window
        self.tail = tail
        self.block = max(1, window // _BLOCKS)
        self._sizes: list[int] = [0]  # samples per block, oldest first; the last block is filling
        self._pos: list[int] = [0]  # positive samples per block
        self._tops: list[array[int]] = [array("H")]  # per block: codes of its ``tail`` largest values, sorted
        self._hists: list[array[int]] = [array("I", bytes(4 * _NBINS))]  # per block: positives by power of two
        self._merged = array("H")  # every block's kept codes, sorted
        self._cut = -1  # the largest code below which some block's values are not all kept
        self._n = 0
        self._npos = 0

    def __len__(self) -> int:
        return self._n

    # -- learning ------------------------------------------------------------------------------

    def learn(self, d: float) -> None:
        """Add a non-negative statistic (negative values count as 0)."""
        self._n += 1
        self._sizes[-1] += 1
        if d > 0.0:
            self._npos += 1
            self._pos[-1] += 1
            self._hists[-1][_bin(d)] += 1
            top = self._tops[-1]
            code = encode_code(d)
            if len(top) < self.tail:
                insort(top, code)
                insort(self._merged, code)
            elif code > top[0]:
                insort(top, code)
                insort(self._merged, code)
                old = top.pop(0)
                merged = self._merged
                del merged[bisect_left(merged, old)]
                if top[0] > self._cut:
                    self._cut = top[0]
            elif top[0] > self._cut:  # this block now has a value it does not keep
                self._cut = top[0]
        if self._sizes[-1] >= self.block:
            self._sizes.append(0)
            self._pos.append(0)
            self._tops.append(array("H"))
            self._hists.append(array("I", bytes(4 * _NBINS)))
        if self._n - self._sizes[0] >= self.window - self.block // 2 and len(self._sizes) > 1:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        self._n -= self._sizes.pop(0)
        self._npos -= self._pos.pop(0)
        self._hists.pop(0)
        merged = self._merged
        for code in self._tops.pop(0):
            del merged[bisect_left(merged, code)]
        self._cut = max((top[0] for top, pos in zip(self._tops, self._pos, strict=True) if pos > len(top)), default=-1)

    # -- scoring -------------------------------------------------------------------------------

    def _count_at_least(self, d: float, code: int) -> float:
        merged = self._merged
        k = len(merged) - bisect_left(merged, code)
        if code > self._cut:
            return k  # every value this large is kept
        # in the body: every block's histogram, linear within the power of two of d
        b = _bin(d)
        mant = math.frexp(d)[0]
        frac = 2.0 - 2.0 * mant if 0 < b < _NBINS - 1 else 1.0
        above = 0
        at = 0
        for h in self._hists:
            above += sum(h[b + 1 :])
            at += h[b]
        est = above + frac * at
        return est if est > k else k

    def p_value(self, d: float) -> float:
        n = self._n
        if n == 0 or d <= 0.0:
            return 1.0
        k = self._count_at_least(d, encode_code(d))
        m = self.tail
        if k > 0 or n < m:
            return (k + 1) / (n + 1)
        # Beyond the maximum: exponential tail fitted on the top ``tail`` values (zeros included).
        # The largest value is left out of the mean excess so one huge past spike does not blunt
        # the tail.
        npos = self._npos
        s = self._merged
        if npos >= m:
            top_codes = s[len(s) - m :]
            u = decode_code(top_codes[0])
            top = [decode_code(c) for c in top_codes[1:-1]]
            beta = (sum(top) + u) / (m - 1) - u
        else:  # fewer positives than ``tail``: every one of them is kept
            u = 0.0
            top = []
            beta = sum(decode_code(c) for c in s[: npos - 1]) / (m - 1) if npos > 1 else 0.0
        if beta <= 1e-12 * (u + 1.0):
            return 0.0  # the recent deviations were all equal (flat line): any excess is new
        p = (m + 1) / (n + 1) * math.exp(-(d - u) / beta)
        if u > 0.0 and top:
            # ... unless a Pareto tail (Hill estimate) says the tail is heavier: heavy-tailed
            # noise then keeps its outliers below the alarm instead of calling each one a 1e-6.
            log_u = math.log(u)
            hill = sum(math.log(v) for v in top) / len(top) - log_u
            if hill > 0.0:
                pareto = (m + 1) / (n + 1) * math.exp(-(math.log(d) - log_u) / hill)
                if pareto > p:
                    p = pareto
        return min(p, 1.0 / (n + 1))

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The most blocks the calibrator holds between two samples: every checkpoint has this many.

        >>> [TailCalibrator(w, 2).capacity for w in (2, 10, 100, 2000)]
        [3, 6, 5, 5]
        """
        block = self.block
        return -(-(self.window - block // 2) // block) + 1

    def state(self) -> dict[str, Any]:
        """The blocks in a fixed layout: :attr:`capacity` blocks whatever the series' age, unused ones
        all zeros, ``blocks`` the number in use. Per block its size, its kept codes (the first, then
        the gaps: sorted codes give small numbers; ``min(positives, tail)`` of them, zeros after)
        and its histogram; arrays as byte planes (:func:`~metaheal.streams.detectors.base.encode_array`)."""
        cap, tail, nb = self.capacity, self.tail, len(self._sizes)
        gaps = array("H", bytes(2 * cap * tail))
        for i, top in enumerate(self._tops):
            prev, j = 0, i * tail
            for code in top:
                gaps[j] = code - prev
                prev = code
                j += 1
        hists = array("I")
        for h in self._hists:
            hists.extend(h)
        hists.frombytes(bytes(4 * _NBINS * (cap - nb)))
        return {
            "window": self.window,
            "tail": tail,
            "blocks": nb,
            "sizes": encode_array(array("I", self._sizes + [0] * (cap - nb))),
            "tops": encode_array(gaps),
            "hists": encode_array(hists, keep=_count_bytes(self.block)),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TailCalibrator:
        """The calibrator :meth:`state` wrote; :class:`StateError` if the blocks do not fit together."""
        cal = cls(int(state["window"]), int(state["tail"]))
        cap, tail, nb = cal.capacity, cal.tail, int(state["blocks"])
        if not 1 <= nb <= cap:
            raise StateError(f"calibrator has {nb} blocks, room for 1..{cap}")
        sizes = decode_array(state["sizes"], "I", cap).tolist()
        gaps = decode_array(state["tops"], "H", cap * tail)
        flat = decode_array(state["hists"], "I", cap * _NBINS, keep=_count_bytes(cal.block))
        if any(sizes[nb:]) or any(flat[nb * _NBINS :]) or any(gaps[nb * tail :]):
            raise StateError("calibrator blocks beyond the ones in use are not empty")
        hists = [flat[i * _NBINS : (i + 1) * _NBINS] for i in range(nb)]
        pos = [sum(h) for h in hists]
        tops = []
        for i, p in enumerate(pos):
            kept = min(p, tail)
            if any(gaps[i * tail + kept : (i + 1) * tail]):
                raise StateError("calibrator block keeps more codes than it has positive values")
            try:
                tops.append(array("H", accumulate(gaps[i * tail : i * tail + kept])))
            except OverflowError:
                raise StateError("calibrator codes are not sorted 16-bit codes") from None
        cal._restore(sizes[:nb], pos, tops, hists)
        return cal

    @classmethod
    def from_legacy_state(cls, state: dict[str, Any]) -> TailCalibrator:
        """A calibrator from the variable-length state of ``ForecastResidual`` version 2 (lists of
        gaps, sparse histograms ``[bin, count, ...]``)."""
        cal = cls(int(state["window"]), int(state["tail"]))
        sizes = [int(s) for s in state["sizes"]]
        tops = [_from_deltas(t) for t in state["tops"]]
        hists = []
        for flat in state["hists"]:
            h = array("I", bytes(4 * _NBINS))
            for b, c in zip(flat[::2], flat[1::2], strict=True):
                h[int(b)] = int(c)
            hists.append(h)
        if not (len(sizes) == len(tops) == len(hists) >= 1) or len(sizes) > cal.capacity:
            raise StateError(f"calibrator blocks do not match: {len(sizes)} sizes, {len(tops)} tops")
        cal._restore(sizes, [sum(h) for h in hists], tops, hists)
        return cal

    def _restore(self, sizes: list[int], pos: list[int], tops: list[array[int]], hists: list[array[int]]) -> None:
        for size, p, top in zip(sizes, pos, tops, strict=True):
            if not 0 <= p <= size <= self.block or len(top) != min(p, self.tail):  # tops: sorted by construction
                raise StateError("calibrator block does not fit its size")
        self._sizes, self._pos, self._tops, self._hists = sizes, pos, tops, hists
        merged = array("H")
        for top in tops:
            merged.extend(top)
        self._merged = array("H", sorted(merged))
        self._cut = max((top[0] for top, p in zip(tops, pos, strict=True) if p > len(top)), default=-1)
        self._n, self._npos = sum(sizes), sum(pos)


def _count_bytes(block: int) -> int:
    """Histogram counts are at most a block's size: 2 bytes for the default windows."""
    return 2 if block < 1 << 16 else 4
