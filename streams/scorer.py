"""Per-series online anomaly scorer with a calibrated score.

Raw detector outputs (z-scores, HalfSpaceTrees masses) mean different things on different series,
so one threshold cannot serve a CPU gauge, a request counter and a latency at once. This scorer
turns every deviation into a *tail probability under the series' own recent deviations* (a
conformal p-value over a sliding window, with a fitted peaks-over-threshold tail beyond the
observed maximum), which is what HTM's "anomaly likelihood" does with a Gaussian. On noise the
fraction of scores >= t is about ``1 - t`` whatever the noise family, so
``settings.streams.anomaly_threshold`` means the same on every series.

The pipeline per sample (test-then-train):

1. preprocessing: monotonic counters are detected during warm-up and converted to a rate
   (``delta / dt``); a drop to ~0 is a counter reset, skipped rather than scored;
2. prediction: four candidates, each with its own robust scale and calibration: a robust
   exponentially weighted level (half-life 10 samples, time-aware: ``dt`` drives the decay, so
   irregular and sparse sampling work), a fast level (half-life 2: random-walk-like series),
   and at sub-hourly sampling a daily and a weekly profile (slow level + time-of-day / time-of-
   week slot), usable once they saw a period; whichever predicted best lately (river
   ``EWMean`` of absolute errors) is used, with hysteresis. Six large residuals of one sign
   re-anchor the levels: the shift has been scored, now it is the new normal;
3. deviation: residual / robust scale, plus a short exponentially weighted mean of signed
   standardised residuals (small sustained shifts that no single point reveals; it counts only
   while it grows, so one excursion is one alarm rather than a burst);
4. calibration: each statistic gets a p-value from its own :class:`TailCalibrator`; a run of
   identical values gets the probability of such a run for this series (a live series that
   freezes is a failure); the p-values are combined with Bonferroni;
5. warm-up: the score is multiplied by ``confidence = min(1, n / warmup)``.

>>> scorer = AnomalyScorer(seed=0)
>>> import random
>>> rng = random.Random(1)
>>> scores = [scorer.score_then_learn(60.0 * i, 100 + rng.gauss(0, 5)) for i in range(400)]
>>> max(s.score for s in scores[300:]) < 0.999
True
>>> spike = scorer.score_then_learn(60.0 * 400, 200.0)
>>> spike.score > 0.99, round(spike.baseline / 10) * 10, spike.confidence
(True, 100, 1.0)
"""

from __future__ import annotations

import logging
import math
from array import array
from bisect import bisect_left, insort
from typing import NamedTuple

import numpy as np
from river import stats

__all__ = ["AnomalyScorer", "Score", "TailCalibrator"]

logger = logging.getLogger(__name__)

MODEL_NAME = "metaheal-tail/1"
DAY = 86400.0
WEEK = 7 * DAY
_SKIP = 10  # residuals of the first samples are not used for calibration
_BIG = 1e12  # deviations are capped here so a change after a flat line scores 1.0, never inf/nan


class Score(NamedTuple):
    """One scored sample.

    ``score`` is ``1 - tail probability`` (0..1, comparable across series), ``baseline`` what the
    series was expected to be at this point (same unit as the input), ``confidence`` 0..1 (low
    during warm-up).
    """

    score: float
    baseline: float
    confidence: float


class TailCalibrator:
    """Sliding-window tail probability of a non-negative deviation statistic.

    Inside the observed range the p-value is conformal, ``(#{d_i >= d} + 1) / (n + 1)``, which is
    valid for any distribution; beyond the window maximum a tail is fitted to the ``tail``
    largest values (peaks over threshold) so scores keep growing with the deviation instead of
    saturating at ``1 - 1/(n+1)``: exponential, or Pareto (Hill estimate) when that is heavier,
    so the outliers of heavy-tailed noise are not each called a one-in-a-million event.

    >>> cal = TailCalibrator(window=100, tail=10)
    >>> for i in range(100):
    ...     cal.learn(float(i % 10))
    >>> round(cal.p_value(9.0), 3), round(cal.p_value(0.0), 3)
    (0.109, 1.0)
    >>> cal.p_value(30.0) < 1e-3
    True
    """

    __slots__ = ("_fifo", "_head", "_sorted", "tail", "window")

    def __init__(self, window: int = 1000, tail: int = 20) -> None:
        if window < 2 or tail < 2 or tail > window:
            raise ValueError(f"need 2 <= tail <= window, got window={window} tail={tail}")
        self.window = window
        self.tail = tail
        self._fifo = array("d")  # ring buffer of the window; _head is the oldest once it is full
        self._head = 0
        self._sorted: list[float] = []  # the positive values only: zeros (the common case of a
        # quiet statistic, e.g. no repeated value) are just counted by the fifo, which is cheaper

    def __len__(self) -> int:
        return len(self._fifo)

    def p_value(self, d: float) -> float:
        n = len(self._fifo)
        if n == 0 or d <= 0.0:
            return 1.0
        s = self._sorted
        npos = len(s)
        k = npos - bisect_left(s, d)  # how many recent deviations were at least this large
        m = self.tail
        if k > 0 or n < m:
            return (k + 1) / (n + 1)
        # Beyond the maximum: exponential tail fitted on the top ``tail`` values (zeros included).
        # The largest value is left out of the mean excess so one huge past spike does not blunt
        # the tail.
        if npos >= m:
            u = s[npos - m]
            top = s[npos - m + 1 : npos - 1]
            beta = (sum(top) + u) / (m - 1) - u
        else:
            u = 0.0
            top = []
            beta = sum(s[: npos - 1]) / (m - 1) if npos > 1 else 0.0
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

    def __getstate__(self) -> tuple[int, int, bytes]:
        # Checkpoints carry only the window in arrival order, as float32 (4 bytes a value: p-values
        # do not need more); the sorted list is rebuilt on restore.
        h, buf = self._head, np.frombuffer(self._fifo, dtype=np.float64)
        ordered = np.concatenate((buf[h:], buf[:h])) if h else buf
        return self.window, self.tail, ordered.astype(np.float32).tobytes()

    def __setstate__(self, state: tuple[int, int, bytes]) -> None:
        self.window, self.tail, raw = state
        values = np.frombuffer(raw, dtype=np.float32).astype(np.float64)
        self._fifo = array("d", values.tobytes())
        self._head = 0
        self._sorted = sorted(values[values > 0.0].tolist())

    def learn(self, d: float) -> None:
        """Add a non-negative statistic (negative values count as 0)."""
        if d < 0.0:
            d = 0.0
        fifo = self._fifo
        if len(fifo) < self.window:
            fifo.append(d)
        else:
            h = self._head
            old = fifo[h]
            fifo[h] = d
            h += 1
            self._head = 0 if h == self.window else h
            if old > 0.0:
                s = self._sorted
                del s[bisect_left(s, old)]
        if d > 0.0:
            insort(self._sorted, d)


class _Track:
    """Calibration of one predictor: tails of its standardised residual and of their short EW mean.

    Each predictor keeps its own, so switching from the local level to a daily profile does not
    judge profile residuals against the (larger) residuals the level made at the daily ramps.
    """

    __slots__ = ("alpha", "point", "shift", "sustained")

    def __init__(self, window: int, tail: int, alpha: float) -> None:
        self.point = TailCalibrator(window, tail)
        self.sustained = TailCalibrator(window, tail)
        self.shift = 0.0  # EW mean of signed standardised residuals
        self.alpha = alpha

    def measure(self, r: float, sc: float, tol: float) -> tuple[float, float, float]:
        """Standardised residual ``z``, then ``|z|`` and ``|EW mean of z|`` including this sample."""
        if -tol <= r <= tol:
            z = 0.0
        elif sc > tol:
            z = r / sc
            if z > _BIG:
                z = _BIG
            elif z < -_BIG:
                z = -_BIG
        else:
            z = _BIG if r > 0 else -_BIG
        shift = self.shift + self.alpha * (z - self.shift)
        return z, (z if z >= 0 else -z), shift

    def p_value(self, d: float, shift: float) -> float:
        p1 = self.point.p_value(d)
        ds = shift if shift >= 0 else -shift
        old = self.shift if self.shift >= 0 else -self.shift
        if ds <= old:  # the sustained statistic counts while it grows: one alarm per excursion
            return p1
        p2 = self.sustained.p_value(ds)
        return p1 if p1 < p2 else p2

    def learn(self, d: float, shift: float, calibrate: bool = True) -> None:
        """Commit this sample; with ``calibrate=False`` only the EW state moves (a predictor not in
        use learns its tails from every 4th sample: same distribution, a quarter of the cost)."""
        if calibrate:
            self.point.learn(d)
            self.sustained.learn(shift if shift >= 0 else -shift)
        self.shift = shift


class _Profile:
    """A periodic baseline: a slow level plus one offset per slot of the period (Holt-Winters-like).

    The level moves with a quarter-day half-life so the slots, not the level, carry the daily
    shape. A slot learns per *visit*, not per sample (an hour-long slot sampled every minute
    would otherwise copy an ongoing anomaly within the hour): a running mean over its first
    visits, then a gain of 0.2 per visit.
    """

    __slots__ = ("err", "level", "period", "scale", "slots", "start", "values", "weights", "width")

    def __init__(self, period: float, slots: int, level: float, start: float) -> None:
        self.period = period
        self.slots = slots
        self.width = period / slots
        self.values = [0.0] * slots
        self.weights = [0.0] * slots  # visits seen, in units of a full slot
        self.level = level
        self.scale = 0.0
        self.err = stats.EWMean(0.01)  # recent absolute error, to choose between predictors
        self.start = start

    def residual(self, ts: float, x: float) -> tuple[int, float]:
        slot = int((ts % self.period) * self.slots / self.period)
        return slot, x - (self.level + self.values[slot])

    def ready(self, ts: float, slot: int) -> bool:
        return self.weights[slot] > 0 and ts - self.start >= self.period + DAY / 2

    def learn(self, slot: int, x: float, e: float, dt: float, gain: float, frozen: bool) -> None:
        ae = e if e >= 0 else -e
        k = self.weights[slot]
        if not frozen:
            scale = self.scale
            cap = 5.0 * scale if k >= 1 and scale > 0 else ae
            self.scale = scale + gain * ((ae if ae < cap else cap) - scale)
        if k > 0:
            self.err.update(ae)
        if dt > 0:
            self.level += (1.0 - 0.5 ** (dt / (DAY / 4))) * (x - self.values[slot] - self.level)
        # a duplicate or out-of-order timestamp adds nothing new about its slot
        w = (dt / self.width if dt < self.width else 1.0) if dt > 0 else 0.0
        k += w
        self.weights[slot] = k
        if k <= 0.0:
            return
        g = w / k if k < 5 else 1.0 - 0.8**w
        self.values[slot] += g * ((x - self.level) - self.values[slot])


class AnomalyScorer:
    """Calibrated online anomaly scorer for one (service, metric) series.

    Parameters (all optional): ``warmup`` samples before full confidence (50), ``halflife`` of
    the level in samples (10), ``scale_halflife`` of the robust scale in samples (35),
    ``smooth_halflife`` of the sustained-shift statistic (4), ``window`` of the calibrators
    (2000), ``tail`` size for the extrapolated tail (20), and switches ``seasonal``,
    ``counters``, ``flatline`` (all True).

    ``seed`` is accepted for the contract (every scorer is seeded); this model is deterministic.
    Instances pickle (checkpoints, ~80 KB for a long-lived series); bad input (NaN, inf) raises
    ``ValueError`` naming the field, before any state changes.

    >>> s = AnomalyScorer(seed=0)
    >>> s.model_name
    'metaheal-tail/1'
    >>> first = s.score_then_learn(0.0, 5.0)
    >>> first.score, first.baseline, first.confidence
    (0.0, 5.0, 0.0)
    >>> s.score_then_learn(1.0, float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: value must be a finite number, got nan
    """

    model_name = MODEL_NAME

    def __init__(
        self,
        seed: int = 0,
        *,
        warmup: int = 50,
        halflife: float = 10.0,
        scale_halflife: float = 35.0,
        smooth_halflife: float = 4.0,
        window: int = 2000,
        tail: int = 20,
        seasonal: bool = True,
        counters: bool = True,
        flatline: bool = True,
    ) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        for name, hl in (
            ("halflife", halflife),
            ("scale_halflife", scale_halflife),
            ("smooth_halflife", smooth_halflife),
        ):
            if not hl > 0:
                raise ValueError(f"{name} must be > 0, got {hl}")
        self.seed = seed
        self.warmup = warmup
        self.halflife = halflife
        self.scale_halflife = scale_halflife
        self.smooth_halflife = smooth_halflife
        self.window = window
        self.tail = tail
        self.seasonal = seasonal
        self.counters = counters
        self.flatline = flatline
        self._reset_model()
        # Raw-input state survives a model reset (counter detection needs it).
        self._n_raw = 0
        self._last_ts: float | None = None
        self._last_raw: float | None = None
        self._typ_dt = 0.0
        self._counter_state = 0 if counters else -1  # 0 undecided, 1 counter, -1 gauge
        self._increasing = 0
        self._run = 0  # consecutive identical raw values
        self._cal_run = TailCalibrator(window, tail)  # recent run lengths of repeated values
        self._p_repeat = 0.0  # how often the series repeats its previous value (EW)

    def _reset_model(self) -> None:
        self._n = 0  # samples learned by the model
        self._level: float | None = None
        self._scale_alpha = 1.0 - 0.5 ** (1.0 / self.scale_halflife)
        self._scale = 0.0  # EW mean absolute residual of the local level (robust scale)
        self._err_local = stats.EWMean(0.01)
        self._same_sign = 0  # +k / -k: the last k residuals were large and positive / negative
        self._recent: list[float] = []  # the last three (rate-converted) values
        alpha = 1.0 - 0.5 ** (1.0 / self.smooth_halflife)
        # calibration per predictor: local level, daily profile, weekly profile, fast level
        self._tracks = tuple(_Track(self.window, self.tail, alpha) for _ in range(4))
        # a fast level (half-life 2 samples): the better one-step predictor for random-walk-like
        # series (temperatures, CPU), where a spike is relative to the last values
        self._fast = 0.0  # set with _level by the first sample
        self._fast_scale = 0.0
        self._err_fast = stats.EWMean(0.01)
        self._profiles: tuple[_Profile, _Profile] | tuple[()] = ()  # daily, weekly
        self._active = 0  # predictor in use: 0 local level, 1 daily, 2 weekly profile, 3 fast level

    # -- public API -----------------------------------------------------------------------------

    def score_then_learn(self, ts: float, value: float) -> Score:
        """Score ``value`` observed at ``ts`` (epoch seconds) against the past, then learn it."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"value must be a number, got {value!r}") from None
        try:
            ts = float(ts)
        except (TypeError, ValueError):
            raise ValueError(f"ts must be a number, got {ts!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"value must be a finite number, got {value}")
        if not math.isfinite(ts):
            raise ValueError(f"ts must be a finite number, got {ts}")

        # ---- sampling interval (robust running estimate, used to make decays time-aware) ----
        last_ts = self._last_ts
        if last_ts is None:
            dt = 0.0
        else:
            dt = ts - last_ts
            if dt > 0:
                typ = self._typ_dt
                if typ <= 0:
                    self._typ_dt = dt
                else:
                    self._typ_dt = typ + 0.05 * (min(max(dt, 0.25 * typ), 4.0 * typ) - typ)
        steps = dt / self._typ_dt if self._typ_dt > 0 and dt > 0 else 1.0  # dt in "typical samples"
        if steps > 1000.0:
            steps = 1000.0
        if ts > (last_ts if last_ts is not None else -math.inf):
            self._last_ts = ts

        # ---- flat-line run (a frozen live series) ----
        last_raw = self._last_raw
        p_flat = 1.0
        if last_raw is not None and value == last_raw:
            self._run += 1
        else:
            self._run = 0
        if self.flatline and last_raw is not None:
            run = self._run
            if run:
                # How unusual is a run this long *for this series* (conformal over its own recent
                # run lengths), but never more alarming than a geometric run at the largest
                # per-value repeat probability the repeat rate allows (P(repeat) = sum f_v^2 >=
                # f_max^2, so f_max <= sqrt(rate)), and at least 0.3: a continuous series needs a
                # handful of identical values before it counts as frozen, a count series that is
                # mostly 0 needs a long run.
                p_run = self._cal_run.p_value(run)
                rate = math.sqrt(self._p_repeat)
                p_geo = (rate if rate > 0.3 else 0.3) ** run
                p_flat = p_run if p_run > p_geo else p_geo
            self._cal_run.learn(run)
            # running mean at first, then exponentially weighted (about 70 samples)
            g = 1.0 / self._n_raw if self._n_raw < 100 else 0.01
            self._p_repeat += g * ((1.0 if run else 0.0) - self._p_repeat)
        self._last_raw = value
        self._n_raw += 1

        # ---- counters: detect during warm-up, then score the rate ----
        x = value
        cs = self._counter_state
        if cs >= 0 and last_raw is not None:
            if cs == 0:
                if value < last_raw:
                    self._counter_state = -1
                else:
                    self._increasing += value > last_raw
                    if self._n_raw >= self.warmup:
                        if self._increasing >= 0.8 * (self._n_raw - 1):
                            self._counter_state = 1
                            logger.info("scorer counter_detected=true samples=%d", self._n_raw)
                            self._reset_model()
                        else:
                            self._counter_state = -1
            if self._counter_state == 1:
                if value < last_raw:
                    if value <= 0.1 * last_raw:
                        # counter reset: the delta is unknown, so skip rather than score a fake drop
                        return Score(0.0, value, self._confidence())
                    logger.info("scorer counter_detected=false reason=decrease")
                    self._counter_state = -1
                    self._reset_model()
                else:
                    if dt <= 0:
                        return Score(0.0, value, self._confidence())
                    x = (value - last_raw) / dt
        elif cs == 1 and last_raw is None:
            return Score(0.0, value, 0.0)

        return self._score_learn(ts, x, value, last_raw, dt, steps, p_flat)

    # -- internals ------------------------------------------------------------------------------

    def _confidence(self) -> float:
        n = self._n
        return 1.0 if n >= self.warmup else n / self.warmup

    def _score_learn(
        self, ts: float, x: float, raw: float, last_raw: float | None, dt: float, steps: float, p_flat: float
    ) -> Score:
        n = self._n
        counter = self._counter_state == 1
        level = self._level
        if level is None:
            self._level = x
            self._fast = x
            self._n = 1
            return Score(0.0, raw, 0.0)

        # ---- predictions: local level, daily and weekly profiles once they have seen a period ----
        e = x - level
        scale = self._scale
        tol = 1e-12 * (abs(level) + 1e-12)  # float jitter, not a deviation
        tracks = self._tracks
        z0, d0, sh0 = tracks[0].measure(e, scale, tol)
        fast = self._fast
        e_f = x - fast
        _, d3, sh3 = tracks[3].measure(e_f, self._fast_scale, tol)
        active = self._active
        profiles = self._profiles
        ready_d = ready_w = False
        if profiles:
            daily, weekly = profiles
            d_slot, e_d = daily.residual(ts, x)
            w_slot, e_w = weekly.residual(ts, x)
            ready_d = daily.ready(ts, d_slot)
            ready_w = weekly.ready(ts, w_slot)
        if n > _SKIP:
            # Pick the predictor that did best lately, with hysteresis so the choice is stable.
            errs = (
                self._err_local.get(),
                daily.err.get() if ready_d else math.inf,
                weekly.err.get() if ready_w else math.inf,
                self._err_fast.get(),
            )
            best = min(range(4), key=errs.__getitem__)
            if errs[active] == math.inf or errs[best] < 0.8 * errs[active]:
                active = self._active = best
        if profiles:
            if ready_d:
                _, d1, sh1 = tracks[1].measure(e_d, daily.scale, tol)
            if ready_w:
                _, d2, sh2 = tracks[2].measure(e_w, weekly.scale, tol)
        elif self.seasonal and n >= 20 and 0 < self._typ_dt <= 3600.0:
            slots = max(24, min(96, int(DAY / self._typ_dt)))
            profiles = self._profiles = (_Profile(DAY, slots, level, ts), _Profile(WEEK, 168, level, ts))
            daily, weekly = profiles
            d_slot, e_d = daily.residual(ts, x)
            w_slot, e_w = weekly.residual(ts, x)

        if active == 0:
            pred = level
            p = tracks[0].p_value(d0, sh0)
        elif active == 1:
            pred = x - e_d
            p = tracks[1].p_value(d1, sh1)
        elif active == 2:
            pred = x - e_w
            p = tracks[2].p_value(d2, sh2)
        else:
            pred = fast
            p = tracks[3].p_value(d3, sh3)
        p = 2.0 * p  # Bonferroni: point and sustained statistics
        if p_flat * 3.0 < p:  # ... and the flat-line run
            p = p_flat * 3.0
        score = 1.0 - p if p < 1.0 else 0.0
        conf = 1.0 if n >= self.warmup else n / self.warmup
        score *= conf

        # ---- learn ----
        frozen = p_flat < 0.05
        sparse = n % 4 == 0
        if n >= _SKIP:  # the first residuals are measured with an immature scale
            tracks[0].learn(d0, sh0, active == 0 or sparse)
            tracks[3].learn(d3, sh3, active == 3 or sparse)
        if ready_d:
            tracks[1].learn(d1, sh1, active == 1 or sparse)
        if ready_w:
            tracks[2].learn(d2, sh2, active == 2 or sparse)
        a = 1.0 - 0.5 ** (steps / self.halflife)
        # Huber-style update so spikes barely move the level; but three large residuals of the
        # same sign in a row are a level shift: it has been scored (alarm), now re-anchor the
        # levels on the recent values (adapt) instead of alarming until an EW mean catches up.
        recent = self._recent
        recent.append(x)
        if len(recent) > 3:
            del recent[0]
        ss = self._same_sign
        if d0 > 3.0:
            ss = (ss + 1 if ss >= 0 else 1) if z0 > 0 else (ss - 1 if ss <= 0 else -1)
        else:
            ss = 0
        shifted = ss >= 6 or ss <= -6
        self._same_sign = 0 if shifted else ss
        if shifted:
            self._level = sum(recent) / len(recent)
        else:
            step = e
            if scale > 0:
                lim = 4.0 * scale
                if step > lim:
                    step = lim
                elif step < -lim:
                    step = -lim
            self._level = level + a * step
        ae = e if e >= 0 else -e
        sa = self._scale_alpha if n * self._scale_alpha >= 1.0 else 1.0 / n
        if not frozen:
            cap = 5.0 * scale if n > _SKIP else ae
            self._scale = scale + sa * ((ae if ae < cap else cap) - scale)
        self._err_local.update(ae)
        # the fast level: same robust update, half-life 2 samples
        fs = self._fast_scale
        step = e_f
        if fs > 0:
            lim = 4.0 * fs
            if step > lim:
                step = lim
            elif step < -lim:
                step = -lim
        self._fast = x if shifted else fast + (1.0 - 0.5 ** (steps / 2.0)) * step
        aef = e_f if e_f >= 0 else -e_f
        if not frozen:
            cap = 5.0 * fs if n > _SKIP else aef
            self._fast_scale = fs + sa * ((aef if aef < cap else cap) - fs)
        self._err_fast.update(aef)
        if profiles:
            daily.learn(d_slot, x, e_d, dt, sa, frozen)
            weekly.learn(w_slot, x, e_w, dt, sa, frozen)
        self._n = n + 1

        if counter:
            base = (last_raw if last_raw is not None else raw) + pred * (dt if dt > 0 else 0.0)
        else:
            base = pred
        return Score(score, base, conf)
