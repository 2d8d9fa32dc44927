"""Anomaly likelihood: is the *recent rate of surprises* unusual for this series?

Numenta's post-processing of raw anomaly scores (Ahmad et al. 2017, "Unsupervised real-time
anomaly detection for streaming data"), as a river wrapper around any :class:`SeriesDetector`
whose scores are calibrated (``1 - p``):

1. a sample is a *surprise* when the wrapped detector's score is at least ``surprise``;
2. the short moving average of surprises (``short`` samples) is compared against the long-run
   distribution of that average over the last ``window`` samples, a Gaussian with Numenta's lower
   bounds on its mean and spread; the score is ``1 - tail probability`` of the current average.
   Surprises are 0/1, so the window is kept as integer counts with exact running sums (no float
   drift when values leave the window, one byte a sample in checkpoints);
3. only sharp increases are kept: a score in the red zone (tail probability <= ``red``) right
   after another one is lowered to the yellow zone (``yellow``), so a burst is one alarm.

The window's distribution starts from ``prior`` pseudo-samples at the nominal surprise rate
(``1 - surprise``: the wrapped detector is calibrated, so that is what noise gives): a young series
whose calibration cannot yet produce many surprises does not look unnaturally quiet, and its first
surprise is not an alarm; the prior fades as the window fills (300 of 2300 samples).

A lone surprise on a quiet series is noise; several within a few samples, or more than the series
usually has, are an anomaly. While it learns (``learning`` samples) the score is 0.5: no evidence
either way.

Numenta's tail probability is not a p-value of the sample: its Gaussian is a rough model of a
count of rare events, and noise reaches its red zone (1e-5) on about 1e-3 of the samples. So the
score is mapped, monotonically, to the probability that *noise* gives a tail at least this small
at a given sample (:func:`null_tail`, measured once with the default parameters on six noise
families through :class:`~metaheal.streams.detectors.ForecastResidual`, whose surprises cluster
more than independent ones would; ``tests/streams/test_scorer.py`` checks it on other seeds). The
ranking of scores is unchanged; what changes is that on noise about ``1 - t`` of the samples
score ``>= t``, like any other calibrated score of this package.

>>> from metaheal.streams.detectors.residual import ForecastResidual
>>> import random
>>> rng = random.Random(0)
>>> lik = AnomalyLikelihood(ForecastResidual())
>>> quiet = [lik.score_learn_one({"ts": 60.0 * i, "value": rng.gauss(10, 1)}) for i in range(1000)]
>>> sum(q >= 0.9988 for q in quiet)  # two surprises close together happen in noise too
1
>>> burst = [lik.score_learn_one({"ts": 60.0 * i, "value": 30.0 + i % 7}) for i in range(1000, 1003)]
>>> [round(b, 4) for b in burst]  # the second surprise is the alarm, the rest of the burst is filtered
[0.9589, 0.9992, 0.9871]
"""

from __future__ import annotations

import base64
import math
from collections import deque
from operator import mul
from typing import Any

from river.base.typing import FeatureName

from metaheal.streams.detectors.base import SeriesDetector, StateError

__all__ = ["AnomalyLikelihood"]

# -log10 of the likelihood's tail -> -log10 of the fraction of noise samples with a tail at least
# that small (default parameters; Gaussian, heavy-tailed, count, sparse-count, multiplicative and
# autocorrelated noise, 2 x 25k samples each, seeds 21-22, after 500 samples of warm-up; 294k
# samples); interpolated linearly in between, the last slope beyond
_NULL_TABLE = (
    (0.0, 0.0), (0.5, 1.20), (1.5, 1.25), (2.0, 1.48), (2.5, 1.72), (3.0, 1.89), (3.25, 2.48), (3.5, 2.56),
    (4.0, 2.67), (5.0, 2.92), (6.0, 3.00), (7.0, 3.12), (8.0, 3.26), (9.0, 3.40), (10.0, 3.58), (11.0, 3.77),
    (12.0, 3.95), (14.0, 4.26), (16.0, 4.77),
)  # fmt: skip
_MIN_MEAN = 0.03  # Numenta's lower bounds on the long-run distribution of averaged raw scores
_MIN_VAR = 0.0003
_SQRT2 = math.sqrt(2.0)
_MAX_WINDOW = 1 << 19  # an upgraded state's window must still fit a checkpoint (1 MB of JSON)


def null_tail(tail: float) -> float:
    """How often calibrated noise gives a likelihood tail ``<= tail`` (the score is ``1 -`` this).

    >>> [f"{null_tail(t):.1e}" for t in (1.0, 1e-3, 1e-5, 1e-10, 1e-20)]
    ['1.0e+00', '1.3e-02', '1.2e-03', '2.6e-04', '1.6e-06']
    >>> null_tail(1e-300) > null_tail(0.0) == 0.0
    True
    """
    if tail >= 1.0:
        return 1.0
    if tail <= 0.0:
        return 0.0
    x = -math.log10(tail)
    table = _NULL_TABLE
    for i in range(1, len(table)):
        x1, y1 = table[i]
        if x <= x1:
            x0, y0 = table[i - 1]
            return float(10.0 ** -(y0 + (y1 - y0) * (x - x0) / (x1 - x0)))
    (x0, y0), (x1, y1) = table[-2], table[-1]
    return float(10.0 ** -(y1 + (y1 - y0) / (x1 - x0) * (x - x1)))


class AnomalyLikelihood(SeriesDetector):
    """The anomaly likelihood of ``detector``'s surprises (see the module doc).

    On a young quiet series one surprise is what noise does, two close together are an anomaly,
    and the burst is reported once:

    >>> lik = AnomalyLikelihood(detector=None, learning=20)
    >>> quiet = [lik.likelihood(False) for _ in range(30)]
    >>> quiet[0], round(quiet[-1], 4)
    (0.5, 0.3421)
    >>> for surprise in (True, True, True):  # score, and Numenta's own tail probability
    ...     print(round(lik.likelihood(surprise), 4), f"{lik.tail:.0e}")
    0.9667 1e-02
    0.9994 1e-08
    0.9871 1e-03
    """

    state_version = 3  # 2: the window of counts as a ring of bytes; 3: always ``window`` bytes
    read_versions = (2,)

    def __init__(
        self,
        detector: SeriesDetector | None,
        surprise: float = 0.99,
        short: int = 10,
        window: int = 2000,
        learning: int = 50,
        red: float = 1e-5,
        yellow: float = 1e-3,
        calibrated: bool = True,
        prior: int = 300,
    ) -> None:
        if not 1 <= short <= min(window, 255):
            raise ValueError(f"need 1 <= short <= window and short <= 255, got short={short} window={window}")
        if not 0.0 < red < yellow < 0.5:
            raise ValueError(f"need 0 < red < yellow < 0.5, got red={red} yellow={yellow}")
        self.detector = detector
        self.surprise = surprise
        self.short = short
        self.window = window
        self.learning = learning
        self.red = red
        self.yellow = yellow
        self.calibrated = calibrated
        self.prior = prior
        rate = 1.0 - surprise
        self._prior_k = short * rate  # mean and second moment of a binomial count at the nominal rate
        self._prior_k2 = short * rate * (1.0 - rate) + self._prior_k**2
        self._recent: deque[int] = deque()  # last ``short`` surprises (0/1)
        self._k = 0  # surprises among them
        self._history = bytearray()  # surprise counts of the last ``window`` samples (a ring once full)
        self._head = 0  # the oldest count, once the ring is full
        self._s1 = 0  # sum of the counts in the window
        self._s2 = 0  # sum of their squares
        self._n = 0
        self._was_red = False
        self.tail = 0.5  # tail probability behind the last likelihood (``1 - likelihood``, but exact)

    @property
    def ready(self) -> bool:
        return self._n >= self.learning

    def score_learn_one(self, x: dict[FeatureName, Any]) -> float:
        if self.detector is None:
            raise ValueError("AnomalyLikelihood without a detector scores surprises: call likelihood()")
        return self.likelihood(self.detector.score_learn_one(x) >= self.surprise)

    def likelihood(self, surprise: bool) -> float:
        """Learn whether this sample was a surprise; return the filtered likelihood of the recent rate."""
        short = self.short
        recent = self._recent
        k = self._k + surprise
        recent.append(surprise)
        if len(recent) > short:
            k -= recent.popleft()
        self._k = k
        history = self._history
        m = len(history)
        if self._n < self.learning or m < short:
            tail = 0.5
        else:
            # the window's counts plus ``prior`` pseudo-samples at the nominal rate (1 - surprise)
            w = self.prior
            mw = m + w
            mean = (self._s1 + w * self._prior_k) / mw
            var = ((self._s2 + w * self._prior_k2) / mw - mean * mean) / (short * short)
            mean /= short
            if mean < _MIN_MEAN:
                mean = _MIN_MEAN
            std = math.sqrt(var if var > _MIN_VAR else _MIN_VAR)
            tail = 0.5 * math.erfc((k / short - mean) / std / _SQRT2)  # exact far into the tail
        self._s1 += k
        self._s2 += k * k
        if m >= self.window:
            h = self._head
            old = history[h]
            history[h] = k
            self._head = h + 1 if h + 1 < m else 0
            self._s1 -= old
            self._s2 -= old * old
        else:
            history.append(k)
        self._n += 1
        red = tail <= self.red
        if red and self._was_red:
            tail = self.yellow
        self._was_red = red
        self.tail = tail
        if tail == 0.5 or not self.calibrated:
            return 1.0 - tail  # 0.5 while learning: no evidence either way
        return 1.0 - null_tail(tail)

    # -- checkpoints ----------------------------------------------------------------------------

    _PARAMS = ("surprise", "short", "window", "learning", "red", "yellow", "calibrated", "prior")

    def _get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self._PARAMS}
        state["detector"] = None if self.detector is None else self.detector.state_dict()
        state["recent"] = [int(v) for v in self._recent]
        # oldest first, always ``window`` bytes: zeros before the first sample (``n`` says how many are real)
        h, history = self._head, self._history
        state["history"] = base64.b64encode(bytes(self.window - len(history)) + history[h:] + history[:h]).decode()
        state["n"] = self._n
        state["was_red"] = self._was_red
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        from metaheal.streams.detectors import detector_from_state

        self.__init__(  # type: ignore[misc]
            None if state["detector"] is None else detector_from_state(state["detector"]),
            **{name: state[name] for name in self._PARAMS},
        )
        history = base64.b64decode(state["history"].encode("ascii"), validate=True)
        recent = [int(bool(v)) for v in state["recent"]]
        n = int(state["n"])
        real = min(n, self.window)  # counts of real samples, at the end
        if len(history) != self.window or history[: self.window - real].strip(b"\0"):
            raise StateError("likelihood history does not fit its window")
        history = history[self.window - real :]
        if len(recent) > self.short or max(history, default=0) > self.short:
            raise StateError("likelihood history does not fit its window")
        self._recent.extend(recent)
        self._k = sum(recent)
        self._history = bytearray(history)
        self._s1 = sum(history)
        self._s2 = sum(map(mul, history, history))
        self._n = n
        self._was_red = bool(state["was_red"])

    @classmethod
    def _upgrade_state(cls, state: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 2 kept only the counts of real samples: zeros in front make the fixed ``window`` bytes."""
        history = base64.b64decode(state["history"].encode("ascii"), validate=True)
        window = int(state["window"])
        if len(history) != min(int(state["n"]), window) or window > _MAX_WINDOW:
            raise StateError("likelihood history does not fit its window")
        return {**state, "history": base64.b64encode(bytes(window - len(history)) + history).decode()}
