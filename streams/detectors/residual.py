"""Forecast-residual detector: how surprising is this sample given the series' recent past.

Raw residuals mean different things on different series, so this detector turns every deviation
into a *tail probability under the series' own recent deviations* (a conformal p-value over a
sliding window, with a fitted peaks-over-threshold tail beyond the observed maximum). On noise the
fraction of scores >= t is about ``1 - t`` whatever the noise family.

The pipeline per sample (test-then-train):

1. preprocessing: monotonic counters are detected during warm-up and converted to a rate
   (``delta / dt``); a drop to ~0 is a counter reset, skipped rather than scored;
2. prediction: four candidate forecasters, each with its own robust scale and calibration: a
   robust exponentially weighted level (half-life 10 samples, time-aware: ``dt`` drives the
   decay, so irregular and sparse sampling work), a fast level (half-life 2: random-walk-like
   series), and at sub-hourly sampling a daily and a weekly profile (slow level + time-of-day /
   time-of-week slot), usable once they saw a period; whichever predicted best lately is used,
   with hysteresis. Six large residuals of one sign re-anchor the levels: the shift has been
   scored, now it is the new normal;
3. deviation: residual / robust scale, plus a short exponentially weighted mean of signed
   standardised residuals (small sustained shifts that no single point reveals; it counts only
   while it grows, so one excursion is one alarm rather than a burst);
4. calibration: each statistic gets a p-value from its own :class:`TailCalibrator`; a run of
   identical values gets the probability of such a run for this series (a live series that
   freezes is a failure); the p-values are combined with Bonferroni;
5. resolution: a sample within ``resolution`` x the range the series has shown of its forecast
   is no anomaly, however rare its residual or its run of repeated values is for this series (a
   very regular series has tiny residuals whose extremes mean nothing; HTM's encoders see the
   range in 130 buckets, the default here);
6. warm-up: the score is multiplied by ``confidence = min(1, n / warmup)``.

>>> det = ForecastResidual()
>>> import random
>>> rng = random.Random(1)
>>> scores = [det.score_learn_one({"ts": 60.0 * i, "value": 100 + rng.gauss(0, 5)}) for i in range(400)]
>>> max(scores[300:]) < 0.999
True
>>> det.score_learn_one({"ts": 60.0 * 400, "value": 200.0}) > 0.99, round(det.baseline / 10) * 10
(True, 100)
"""

from __future__ import annotations

import logging
import math
from array import array
from typing import Any

from river.base.typing import FeatureName

from metaheal.streams.detectors.base import SeriesDetector, StateError, decode_array, decode_floats, encode_array
from metaheal.streams.detectors.tails import TailCalibrator

__all__ = ["ForecastResidual", "TailCalibrator"]

logger = logging.getLogger(__name__)

DAY = 86400.0
WEEK = 7 * DAY
_SKIP = 10  # residuals of the first samples are not used for calibration
_BIG = 1e12  # deviations are capped here so a change after a flat line scores 1.0, never inf/nan


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

    def state(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "shift": self.shift,
            "point": self.point.state(),
            "sustained": self.sustained.state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Track:
        track = cls.__new__(cls)
        track.alpha, track.shift = float(state["alpha"]), float(state["shift"])
        track.point = TailCalibrator.from_state(state["point"])
        track.sustained = TailCalibrator.from_state(state["sustained"])
        return track

    def learn(self, d: float, shift: float, calibrate: bool = True) -> None:
        """Commit this sample; with ``calibrate=False`` only the EW state moves (a predictor not in
        use learns its tails from every 4th sample: same distribution, a quarter of the cost)."""
        if calibrate:
            self.point.learn(d)
            self.sustained.learn(shift if shift >= 0 else -shift)
        self.shift = shift


def _ew(mean: float | None, x: float, alpha: float = 0.01) -> float:
    """Exponentially weighted mean (the first value initialises it), as a plain float for checkpoints."""
    return x if mean is None else mean + alpha * (x - mean)


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
        # float32, live as in checkpoints (a restored profile predicts bit for bit the same)
        self.values = array("f", bytes(4 * slots))
        self.weights = array("f", bytes(4 * slots))  # visits seen, in units of a full slot
        self.level = level
        self.scale = 0.0
        self.err: float | None = None  # EW mean absolute error (alpha 0.01), to choose between predictors
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
            self.err = _ew(self.err, ae)
        if dt > 0:
            self.level += (1.0 - 0.5 ** (dt / (DAY / 4))) * (x - self.values[slot] - self.level)
        # a duplicate or out-of-order timestamp adds nothing new about its slot
        w = (dt / self.width if dt < self.width else 1.0) if dt > 0 else 0.0
        k += w
        # only k > 0, k >= 1 and k < 5 matter: capped at 8, a mature profile's weights are all equal
        self.weights[slot] = k if k < 8.0 else 8.0
        if k <= 0.0:
            return
        g = w / k if k < 5 else 1.0 - 0.8**w
        self.values[slot] += g * ((x - self.level) - self.values[slot])

    _FIELDS = ("err", "level", "period", "scale", "slots", "start", "width")

    def state(self) -> dict[str, Any]:
        """Scalars, and the slots as float32 byte planes (one array of ``slots`` values each)."""
        out: dict[str, Any] = {f: getattr(self, f) for f in self._FIELDS}
        out["values"], out["weights"] = encode_array(self.values), encode_array(self.weights)
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any], *, legacy: bool = False) -> _Profile:
        """The profile :meth:`state` wrote (``legacy``: as ``ForecastResidual`` version 2 wrote it)."""
        prof = cls.__new__(cls)
        for f in cls._FIELDS:
            setattr(prof, f, state[f])
        slots: object = state["slots"]
        if not isinstance(slots, int) or not 1 <= slots <= 1 << 16:
            raise StateError(f"profile has {slots!r} slots")
        for name in ("values", "weights"):
            values = array("f", decode_floats(state[name])) if legacy else decode_array(state[name], "f", prof.slots)
            if len(values) != prof.slots:
                raise StateError(f"profile of {prof.slots} slots has {len(values)} {name}")
            setattr(prof, name, values)
        return prof


class ForecastResidual(SeriesDetector):
    """Calibrated forecast-residual detector for one series; the score is ``1 - tail probability``.

    Parameters: ``warmup`` samples before full confidence (50), ``halflife`` of the level in
    samples (10), ``scale_halflife`` of the robust scale in samples (35), ``smooth_halflife`` of
    the sustained-shift statistic (4), ``window`` of the calibrators (2000), ``tail`` size for the
    extrapolated tail (20), ``resolution`` as a fraction of the observed range (1/130), and
    switches ``seasonal``, ``counters``, ``flatline`` (all True).

    After each sample, ``baseline`` is what the series was expected to be (same unit as the
    input) and ``confidence`` is 0..1 (low during warm-up). Bad input (NaN, inf) raises
    ``ValueError`` naming the field, before any state changes.

    >>> det = ForecastResidual()
    >>> det.score_learn_one({"ts": 0.0, "value": 5.0}), det.baseline, det.confidence
    (0.0, 5.0, 0.0)
    >>> det.score_learn_one({"ts": 1.0, "value": float("nan")})
    Traceback (most recent call last):
    ...
    ValueError: value must be a finite number, got nan
    """

    state_version = 3  # 2: bounded calibrators (tails.py), float32 profiles; 3: fixed-layout calibrators
    read_versions = (2,)

    def __init__(
        self,
        warmup: int = 50,
        halflife: float = 10.0,
        scale_halflife: float = 35.0,
        smooth_halflife: float = 4.0,
        window: int = 2000,
        tail: int = 20,
        resolution: float = 1 / 130,
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
        if not 0.0 <= resolution < 1.0:
            raise ValueError(f"resolution must be in [0, 1), got {resolution}")
        self.warmup = warmup
        self.halflife = halflife
        self.scale_halflife = scale_halflife
        self.smooth_halflife = smooth_halflife
        self.window = window
        self.tail = tail
        self.resolution = resolution
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
        self.baseline = 0.0
        self.confidence = 0.0

    def _reset_model(self) -> None:
        self._n = 0  # samples learned by the model
        self._level: float | None = None
        self._scale_alpha = 1.0 - 0.5 ** (1.0 / self.scale_halflife)
        self._scale = 0.0  # EW mean absolute residual of the local level (robust scale)
        self._err_local: float | None = None  # EW mean absolute error of each predictor (alpha 0.01)
        self._lo = math.inf  # range of the scored quantity (values, or rates of a counter)
        self._hi = -math.inf
        self._same_sign = 0  # +k / -k: the last k residuals were large and positive / negative
        self._recent: list[float] = []  # the last three (rate-converted) values
        alpha = 1.0 - 0.5 ** (1.0 / self.smooth_halflife)
        # calibration per predictor: local level, daily profile, weekly profile, fast level
        self._tracks = tuple(_Track(self.window, self.tail, alpha) for _ in range(4))
        # a fast level (half-life 2 samples): the better one-step predictor for random-walk-like
        # series (temperatures, CPU), where a spike is relative to the last values
        self._fast = 0.0  # set with the level, on the first sample
        self._fast_scale = 0.0
        self._err_fast: float | None = None
        self._profiles: tuple[_Profile, _Profile] | tuple[()] = ()  # daily, weekly
        self._active = 0  # predictor in use: 0 local level, 1 daily, 2 weekly profile, 3 fast level

    # -- river API ------------------------------------------------------------------------------

    def score_learn_one(self, x: dict[FeatureName, Any]) -> float:
        score, self.baseline, self.confidence = self.update(x["ts"], x["value"])
        return score

    def update(self, ts: float, value: float) -> tuple[float, float, float]:
        """Score ``value`` observed at ``ts`` (epoch seconds) against the past, then learn it;
        returns ``(score, baseline, confidence)``."""
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
                        return (0.0, value, self._confidence())
                    logger.info("scorer counter_detected=false reason=decrease")
                    self._counter_state = -1
                    self._reset_model()
                else:
                    if dt <= 0:
                        return (0.0, value, self._confidence())
                    x = (value - last_raw) / dt
        elif cs == 1 and last_raw is None:
            return (0.0, value, 0.0)

        return self._score_learn(ts, x, value, last_raw, dt, steps, p_flat)

    # -- internals ------------------------------------------------------------------------------

    def _confidence(self) -> float:
        n = self._n
        return 1.0 if n >= self.warmup else n / self.warmup

    def _score_learn(
        self, ts: float, x: float, raw: float, last_raw: float | None, dt: float, steps: float, p_flat: float
    ) -> tuple[float, float, float]:
        n = self._n
        counter = self._counter_state == 1
        level = self._level
        if level is None:
            self._level = x
            self._fast = x
            self._lo = self._hi = x
            self._n = 1
            return (0.0, raw, 0.0)

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
                self._err_local or 0.0,
                (daily.err or 0.0) if ready_d else math.inf,
                (weekly.err or 0.0) if ready_w else math.inf,
                self._err_fast or 0.0,
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
        lo, hi = self._lo, self._hi
        if hi > lo and abs(x - pred) <= self.resolution * (hi - lo):
            p = 1.0  # below the resolution: not a deviation, however rare for this series
        if x < lo:
            self._lo = x
        if x > hi:
            self._hi = x
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
        if d0 <= 3.0:
            ss = 0
        elif z0 > 0:
            ss = ss + 1 if ss >= 0 else 1
        else:
            ss = ss - 1 if ss <= 0 else -1
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
        self._err_local = _ew(self._err_local, ae)
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
        self._err_fast = _ew(self._err_fast, aef)
        if profiles:
            daily.learn(d_slot, x, e_d, dt, sa, frozen)
            weekly.learn(w_slot, x, e_w, dt, sa, frozen)
        self._n = n + 1

        base = (last_raw if last_raw is not None else raw) + pred * (dt if dt > 0 else 0.0) if counter else pred
        return (score, base, conf)

    # -- checkpoints ----------------------------------------------------------------------------

    _PARAMS = (
        "warmup", "halflife", "scale_halflife", "smooth_halflife", "window", "tail", "resolution",
        "seasonal", "counters", "flatline",
    )  # fmt: skip
    _SCALARS = (
        "_n", "_level", "_scale_alpha", "_scale", "_err_local", "_lo", "_hi", "_same_sign", "_fast",
        "_fast_scale", "_err_fast", "_active", "_n_raw", "_last_ts", "_last_raw", "_typ_dt", "_counter_state",
        "_increasing", "_run", "_p_repeat", "baseline", "confidence",
    )  # fmt: skip

    def _get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name) for name in self._PARAMS + self._SCALARS}
        for name in ("_lo", "_hi"):  # JSON has no infinities
            if not math.isfinite(state[name]):
                state[name] = None
        state["_recent"] = list(self._recent)
        state["_tracks"] = [t.state() for t in self._tracks]
        state["_profiles"] = [p.state() for p in self._profiles]
        state["_cal_run"] = self._cal_run.state()
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        for name in self._PARAMS + self._SCALARS:
            setattr(self, name, state[name])
        if self._lo is None:
            self._lo, self._hi = math.inf, -math.inf
        self._recent = [float(v) for v in state["_recent"]][-3:]
        tracks = tuple(_Track.from_state(t) for t in state["_tracks"])
        if len(tracks) != 4:
            raise StateError(f"expected 4 predictor tracks, got {len(tracks)}")
        self._tracks = tracks
        profiles = tuple(_Profile.from_state(p) for p in state["_profiles"])
        if len(profiles) not in (0, 2):
            raise StateError(f"expected 0 or 2 profiles, got {len(profiles)}")
        self._profiles = profiles  # type: ignore[assignment]
        self._cal_run = TailCalibrator.from_state(state["_cal_run"])

    @classmethod
    def _upgrade_state(cls, state: dict[str, Any], version: int) -> dict[str, Any]:
        """A version 2 state (variable-length calibrators, plain float32 profiles) as version 3: the
        same model, so a series checkpointed by the previous release restores warm and exact."""
        out = dict(state)
        out["_tracks"] = [
            {
                **t,
                "point": TailCalibrator.from_legacy_state(t["point"]).state(),
                "sustained": TailCalibrator.from_legacy_state(t["sustained"]).state(),
            }
            for t in state["_tracks"]
        ]
        out["_profiles"] = [_Profile.from_state(p, legacy=True).state() for p in state["_profiles"]]
        out["_cal_run"] = TailCalibrator.from_legacy_state(state["_cal_run"]).state()
        return out
