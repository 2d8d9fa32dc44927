"""Labelled synthetic metric series for evaluating streaming anomaly scorers.

Families mimic what operations metrics do (and what public labelled corpora such as NAB contain):
spikes, level shifts, drifts (a leak), variance changes, daily seasonality with weekly variation,
flat-line failures, count data, heavy tails, missing samples, counters with resets, plus
noise-only and slow-trend negatives. Every family draws its level, noise, autocorrelation,
sampling interval and anomaly size at random, so a detector cannot be tuned to one shape.
``anomalies`` are onset indices; windows follow NAB (10 % of the series, centred on the onsets).

Everything is seeded: ``make_corpus(seed)`` returns the same series every time.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

DAY = 86400.0
T0 = 1_700_006_400.0  # a Wednesday 00:00 UTC


@dataclass
class LabelledSeries:
    name: str
    family: str
    ts: list[float]
    values: list[float]
    anomalies: list[int] = field(default_factory=list)


class _Noise:
    """Stationary noise: Gaussian, Student-t or Laplace innovations through an AR(1) filter."""

    def __init__(self, rng: random.Random, sigma: float, kind: str | None = None, phi: float | None = None) -> None:
        self.rng = rng
        self.sigma = sigma
        self.kind = kind or rng.choice(["gauss", "gauss", "laplace", "t3"])
        self.phi = rng.choice([0.0, 0.0, 0.5, 0.8]) if phi is None else phi
        self.state = 0.0

    def draw(self) -> float:
        r = self.rng
        if self.kind == "gauss":
            x = r.gauss(0, 1)
        elif self.kind == "laplace":
            x = r.expovariate(1) * (1 if r.random() < 0.5 else -1) / math.sqrt(2)
        else:  # Student t with 3 dof, unit variance
            x = r.gauss(0, 1) / math.sqrt(r.gammavariate(1.5, 2) / 3) / math.sqrt(3)
        self.state = self.phi * self.state + math.sqrt(1 - self.phi**2) * x
        return self.sigma * self.state


def _base(rng: random.Random, n: int) -> tuple[list[float], float, float, float]:
    level = 10 ** rng.uniform(0.5, 3)
    sigma = level * rng.uniform(0.01, 0.1)
    dt = rng.choice([60.0, 300.0, 300.0, 600.0])
    return [T0 + i * dt for i in range(n)], level, sigma, dt


def _onsets(rng: random.Random, n: int, k: int, gap: int = 400) -> list[int]:
    lo = int(0.2 * n)  # after the probationary period
    for _ in range(1000):
        picks = sorted(rng.randrange(lo, n - 150) for _ in range(k))
        if all(b - a >= gap for a, b in itertools.pairwise(picks)):
            return picks
    return [lo + (n - lo) // 2]


def spikes(rng: random.Random, n: int) -> LabelledSeries:
    ts, level, sigma, _ = _base(rng, n)
    noise = _Noise(rng, sigma)
    values = [level + noise.draw() for _ in range(n)]
    anomalies = _onsets(rng, n, rng.randint(1, 3))
    for a in anomalies:
        values[a] += rng.choice([-1, 1, 1]) * rng.uniform(6, 12) * sigma
    return LabelledSeries("", "spikes", ts, values, anomalies)


def level_shift(rng: random.Random, n: int) -> LabelledSeries:
    ts, level, sigma, _ = _base(rng, n)
    noise = _Noise(rng, sigma)
    a = _onsets(rng, n, 1)[0]
    jump = rng.choice([-1, 1]) * rng.uniform(3, 8) * sigma
    values = [level + (jump if i >= a else 0.0) + noise.draw() for i in range(n)]
    return LabelledSeries("", "level_shift", ts, values, [a])


def leak(rng: random.Random, n: int) -> LabelledSeries:
    """A drift that is a failure: memory grows from the onset until a restart."""
    ts, level, sigma, _ = _base(rng, n)
    noise = _Noise(rng, sigma, phi=rng.choice([0.0, 0.5]))
    a = _onsets(rng, n, 1)[0]
    slope = rng.uniform(6, 15) * sigma / 100
    end = min(n, a + rng.randint(200, 400))
    values = [level + (slope * (i - a) if a <= i < end else 0.0) + noise.draw() for i in range(n)]
    return LabelledSeries("", "leak", ts, values, [a])


def trend_negative(rng: random.Random, n: int) -> LabelledSeries:
    """A slow, harmless drift (organic growth): no anomaly."""
    ts, level, sigma, _ = _base(rng, n)
    noise = _Noise(rng, sigma)
    total = rng.uniform(5, 20) * sigma * rng.choice([-1, 1])
    return LabelledSeries("", "trend_negative", ts, [level + total * i / n + noise.draw() for i in range(n)])


def variance_change(rng: random.Random, n: int) -> LabelledSeries:
    ts, level, sigma, _ = _base(rng, n)
    noise = _Noise(rng, sigma, kind="gauss", phi=0.0)
    a = _onsets(rng, n, 1)[0]
    factor = rng.uniform(3, 6)
    end = a + rng.randint(150, 400)
    values = [level + noise.draw() * (factor if a <= i < end else 1.0) for i in range(n)]
    return LabelledSeries("", "variance_change", ts, values, [a])


def _daily(rng: random.Random) -> Callable[[float], float]:
    shape = rng.choice(["sine", "business", "two_peaks"])
    phase = rng.uniform(0, 2 * math.pi)
    weekend = rng.uniform(0.3, 1.0)  # weekend amplitude relative to weekdays

    def profile(t: float) -> float:
        hour = (t % DAY) / 3600
        dow = int((t // DAY + 3) % 7)  # T0 is a Wednesday; 5, 6 = Saturday, Sunday
        amp = weekend if dow >= 5 else 1.0
        if shape == "sine":
            base = 0.5 * (1 + math.sin(2 * math.pi * hour / 24 + phase))
        elif shape == "business":
            base = 1 / (1 + math.exp(-3 * (hour - 9))) - 1 / (1 + math.exp(-3 * (hour - 18)))
        else:
            base = math.exp(-((hour - 10) ** 2) / 4) + 0.8 * math.exp(-((hour - 20) ** 2) / 3)
        return amp * base

    return profile


def seasonal(rng: random.Random, n: int) -> LabelledSeries:
    dt = rng.choice([300.0, 600.0])
    ts = [T0 + i * dt for i in range(n)]
    level = 10 ** rng.uniform(1, 3)
    amp = level * rng.uniform(0.5, 2)
    sigma = amp * rng.uniform(0.03, 0.1)
    noise = _Noise(rng, sigma, phi=rng.choice([0.0, 0.5]))
    profile = _daily(rng)
    values = [level + amp * profile(t) + noise.draw() for t in ts]
    per_day = int(DAY / dt)
    kind = rng.choice(["missing_peak", "night_spike", "shift"])
    start = max(4 * per_day, int(0.3 * n))
    if kind == "missing_peak":  # e.g. an outage or a holiday: the daily peak does not come
        day0 = (start // per_day + 1) * per_day
        peak = max(range(day0, day0 + per_day), key=lambda i: profile(ts[i]))
        onset = next(i for i in range(day0, peak) if profile(ts[i]) > 0.3 * profile(ts[peak]))
        end = day0 + per_day
        for i in range(onset, min(end, n)):
            values[i] -= 0.8 * amp * profile(ts[i])
        anomalies = [onset]
    elif kind == "night_spike":
        day0 = (start // per_day + 1) * per_day
        trough = min(range(day0, day0 + per_day), key=lambda i: profile(ts[i]))
        for i in range(trough, trough + 6):
            values[i] += rng.uniform(0.5, 1.0) * amp
        anomalies = [trough]
    else:
        onset = _onsets(rng, n, 1)[0]
        jump = rng.choice([-1, 1]) * rng.uniform(0.4, 0.8) * amp
        values[onset:] = [v + jump for v in values[onset:]]
        anomalies = [onset]
    return LabelledSeries("", "seasonal", ts, values, anomalies)


def flatline(rng: random.Random, n: int) -> LabelledSeries:
    """The exporter hangs and the last value repeats, then it recovers."""
    ts, level, sigma, _ = _base(rng, n)
    noise = _Noise(rng, sigma)
    digits = rng.choice([1, 2, 3])
    values = [round(level + noise.draw(), digits) for _ in range(n)]
    a = _onsets(rng, n, 1)[0]
    end = min(n, a + rng.randint(50, 300))
    values[a:end] = [values[a - 1]] * (end - a)
    return LabelledSeries("", "flatline", ts, values, [a])


def noise_negative(rng: random.Random, n: int) -> LabelledSeries:
    ts, level, sigma, _ = _base(rng, n)
    noise = _Noise(rng, sigma, kind=rng.choice(["gauss", "laplace", "t3"]), phi=rng.choice([0.0, 0.5, 0.9]))
    return LabelledSeries("", "noise_negative", ts, [level + noise.draw() for _ in range(n)])


def _poisson(rng: random.Random, lam: float) -> float:
    if lam > 30:
        return float(max(0, round(rng.gauss(lam, math.sqrt(lam)))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return float(k)
        k += 1


def counts(rng: random.Random, n: int) -> LabelledSeries:
    """Event counts per interval (errors, tweets, requests): Poisson, sometimes seasonal."""
    ts, _, _, _ = _base(rng, n)
    lam0 = 10 ** rng.uniform(-0.3, 2)
    profile = _daily(rng) if rng.random() < 0.5 else (lambda t: 0.5)
    a = _onsets(rng, n, 1)[0]
    burst = rng.uniform(3, 6)
    end = a + rng.randint(10, 60)
    values = [_poisson(rng, lam0 * (0.5 + profile(t)) * (burst if a <= i < end else 1.0)) for i, t in enumerate(ts)]
    return LabelledSeries("", "counts", ts, values, [a])


def heavy_tail(rng: random.Random, n: int) -> LabelledSeries:
    """Latency-like: lognormal body with occasional unlabelled slow requests; the failure is a shift."""
    ts, level, _, _ = _base(rng, n)
    s = rng.uniform(0.1, 0.4)
    a = _onsets(rng, n, 1)[0]
    factor = math.exp(rng.uniform(4, 7) * s)
    values = [level * math.exp(rng.gauss(0, s)) * (factor if i >= a else 1.0) for i in range(n)]
    return LabelledSeries("", "heavy_tail", ts, values, [a])


def missing_samples(rng: random.Random, n: int) -> LabelledSeries:
    """Irregular sampling: random drops and a few long gaps; a spike and a shift to find."""
    dt = rng.choice([60.0, 300.0])
    t, ts = T0, []
    while len(ts) < n:
        t += dt * (rng.randint(20, 100) if rng.random() < 0.005 else 1)
        if rng.random() > 0.3:
            ts.append(t)
    level = 10 ** rng.uniform(0.5, 3)
    sigma = level * rng.uniform(0.01, 0.1)
    noise = _Noise(rng, sigma)
    values = [level + noise.draw() for _ in range(n)]
    a, b = _onsets(rng, n, 2)
    values[a] += rng.uniform(6, 12) * sigma
    jump = rng.choice([-1, 1]) * rng.uniform(4, 8) * sigma
    values[b:] = [v + jump for v in values[b:]]
    return LabelledSeries("", "missing_samples", ts, values, [a, b])


def counter(rng: random.Random, n: int) -> LabelledSeries:
    """A monotonic request counter with process restarts (not anomalies) and one traffic surge."""
    ts, _, _, dt = _base(rng, n)
    rate = 10 ** rng.uniform(0, 3)
    noise = _Noise(rng, 0.05 * rate, kind="gauss", phi=0.5)
    resets = set(rng.sample(range(int(0.2 * n), n), 3))
    a = _onsets(rng, n, 1)[0]
    end = a + rng.randint(20, 60)
    total, values = rng.uniform(0, 1e6), []
    for i in range(n):
        if i in resets:
            total = 0.0
        r = rate * (rng.uniform(3, 5) if a <= i < end else 1.0) + noise.draw()
        total += max(0.0, r) * dt
        values.append(total)
    return LabelledSeries("", "counter", ts, values, [a])


FAMILIES: dict[str, Callable[[random.Random, int], LabelledSeries]] = {
    "spikes": spikes,
    "level_shift": level_shift,
    "leak": leak,
    "variance_change": variance_change,
    "seasonal": seasonal,
    "flatline": flatline,
    "counts": counts,
    "heavy_tail": heavy_tail,
    "missing_samples": missing_samples,
    "counter": counter,
    "noise_negative": noise_negative,
    "trend_negative": trend_negative,
}


def make_corpus(seed: int = 0, per_family: int = 3, length: int = 4000) -> list[LabelledSeries]:
    corpus = []
    for fam_index, (family, make) in enumerate(FAMILIES.items()):
        for k in range(per_family):
            rng = random.Random(seed * 1_000_003 + fam_index * 1009 + k)
            series = make(rng, length)
            series.name = f"{family}-{k}"
            corpus.append(series)
    return corpus
