"""Behaviour of the forecast-residual detector (the scorer's per-sample p-values) on the things real metrics do."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

import pytest

from metaheal.streams.detectors import ForecastResidual, TailCalibrator
from metaheal.streams.scorer import Score

THRESHOLD = 0.99


class Residual(ForecastResidual):
    def score_then_learn(self, ts: float, value: float) -> Score:
        return Score(*self.update(ts, value))


def run(values: list[float], dt: float = 60.0, t0: float = 1_700_000_000.0, **params) -> list[Score]:
    scorer = Residual(**params)
    return [scorer.score_then_learn(t0 + i * dt, v) for i, v in enumerate(values)]


def alarms(scores: list[Score], lo: int = 0, hi: int | None = None, t: float = THRESHOLD) -> int:
    return sum(s.score >= t for s in scores[lo:hi])


def gaussian(rng: random.Random, n: int) -> list[float]:
    return [50 + rng.gauss(0, 2) for _ in range(n)]


def heavy_tailed(rng: random.Random, n: int) -> list[float]:  # Student t, 2 degrees of freedom
    return [50 + rng.gauss(0, 1) / math.sqrt(rng.gammavariate(1, 1)) for _ in range(n)]


def counts(rng: random.Random, n: int) -> list[float]:  # binomial counts, mean 3
    return [float(sum(rng.random() < 0.1 for _ in range(30))) for _ in range(n)]


def sparse_counts(rng: random.Random, n: int) -> list[float]:  # mostly zeros
    return [float(sum(rng.random() < 0.02 for _ in range(10))) for _ in range(n)]


def multiplicative(rng: random.Random, n: int) -> list[float]:
    return [100 * math.exp(rng.gauss(0, 0.5)) for _ in range(n)]


def autocorrelated(rng: random.Random, n: int) -> list[float]:
    out, v = [], 0.0
    for _ in range(n):
        v = 0.9 * v + rng.gauss(0, 1)
        out.append(10 + v)
    return out


FAMILIES: dict[str, Callable[[random.Random, int], list[float]]] = {
    "gaussian": gaussian,
    "heavy_tailed": heavy_tailed,
    "counts": counts,
    "sparse_counts": sparse_counts,
    "multiplicative": multiplicative,
    "autocorrelated": autocorrelated,
}


def test_state_roundtrip_through_json_continues_identically() -> None:
    values, dt = _business_hours(random.Random(0), 4)  # long enough for the daily profile
    scorer = Residual()
    for i, v in enumerate(values[:900]):
        s = scorer.score_then_learn(dt * i, v)
        assert 0.0 <= s.score <= 1.0 and 0.0 <= s.confidence <= 1.0
    state = json.dumps(scorer.state_dict())
    assert len(state) < 120_000  # checkpoints stay small (calibration windows as base64 float32)
    clone = Residual.from_state(json.loads(state))
    for i, v in enumerate(values[900:], start=900):
        a, b = clone.score_then_learn(dt * i, v), scorer.score_then_learn(dt * i, v)
        assert a.score == pytest.approx(b.score, abs=2e-3) and a.baseline == b.baseline and a.confidence == b.confidence


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_calibrated_on_noise_families(family: str) -> None:
    """On noise the fraction of scores >= t is about 1 - t (or lower), whatever the noise."""
    values = FAMILIES[family](random.Random(7), 5000)
    scores = run(values)[500:]
    # autocorrelated noise clusters its exceedances, hence the slack beyond the 1 - t ideal
    for t, slack in ((0.99, 1.5), (0.999, 2.0)):
        rate = alarms(scores, t=t) / len(scores)
        assert rate <= slack * (1 - t), f"{family}: {rate:.4f} of scores >= {t}"
    # and the score is not degenerate (it uses its range)
    assert alarms(scores, t=0.5) / len(scores) > 0.2


def test_irregular_sampling_stays_calibrated() -> None:
    rng = random.Random(3)
    scorer = Residual()
    ts, scores = 0.0, []
    for _ in range(5000):
        ts += rng.expovariate(1 / 30.0)
        scores.append(scorer.score_then_learn(ts, 20 + rng.gauss(0, 1)))
    assert alarms(scores[500:]) / 4500 <= 0.016


@pytest.mark.parametrize("family", ["gaussian", "heavy_tailed", "counts"])
def test_warm_up_has_low_confidence_and_no_alarms(family: str) -> None:
    scores = run(FAMILIES[family](random.Random(11), 200))
    assert all(s.confidence < 1.0 for s in scores[:50])
    assert scores[0].confidence == 0.0 and scores[60].confidence == 1.0
    assert alarms(scores, 0, 50) == 0


def test_spike_scores_high_and_baseline_is_the_normal_level() -> None:
    values = gaussian(random.Random(1), 1000)
    values[800] = 80.0  # 15 sigma
    scores = run(values)
    assert scores[800].score >= 0.999
    assert abs(scores[800].baseline - 50) < 1.5
    assert alarms(scores, 810, 1000) <= 2


def test_level_shift_alarms_then_adapts() -> None:
    values = gaussian(random.Random(2), 3000)
    values[2000:] = [v + 10 for v in values[2000:]]  # 5 sigma step
    scores = run(values)
    assert max(s.score for s in scores[2000:2005]) >= THRESHOLD
    assert alarms(scores, 2100, 3000) <= 12  # back to the calibrated rate after adapting
    assert abs(scores[2999].baseline - 60) < 1.5


def test_slow_drift_does_not_alarm_forever() -> None:
    rng = random.Random(4)
    values = [50 + 0.01 * i + rng.gauss(0, 2) for i in range(4000)]  # 20 sigma over the series
    scores = run(values)
    assert alarms(scores, 500) / 3500 <= 0.015


def _business_hours(rng: random.Random, days: int, dt: float = 300.0) -> tuple[list[float], float]:
    values = []
    n = int(days * 86400 / dt)
    for i in range(n):
        hour = (i * dt / 3600) % 24
        weekday = (i * dt // 86400) % 7 < 5
        bump = (120 if weekday else 60) if 9 <= hour < 17 else 0  # sharp daily ramp, weekly variation
        values.append(100 + bump + rng.gauss(0, 4))
    return values, dt


def test_daily_seasonality_does_not_alarm_every_day_at_the_ramp() -> None:
    values, dt = _business_hours(random.Random(5), 21)
    scores = run(values, dt=dt, t0=0.0)
    per_day = int(86400 / dt)
    late = scores[8 * per_day :]  # after a week (the weekly profile) has been learnt
    assert alarms(late) / len(late) <= 0.015
    # the ramps themselves (+-30 min around 09:00 and 17:00) alarm no more than anywhere else
    ramps = [d * per_day + h * 12 + k for d in range(8, 21) for h in (9, 17) for k in range(-6, 7)]
    assert sum(scores[i].score >= THRESHOLD for i in ramps) <= 0.02 * len(ramps) + 2


def test_missing_business_day_is_detected_by_the_daily_profile() -> None:
    values, dt = _business_hours(random.Random(6), 21)
    per_day = int(86400 / dt)
    outage = range(15 * per_day + 9 * 12, 15 * per_day + 17 * 12)  # a weekday without its bump
    for i in outage:
        values[i] -= 120
    scores = run(values, dt=dt, t0=0.0)
    assert max(s.score for s in scores[outage.start : outage.start + 6]) >= THRESHOLD


def test_flat_line_failure_is_detected() -> None:
    values = gaussian(random.Random(8), 1200)
    values[1000:] = [values[999]] * 200  # the live series freezes
    scores = run(values)
    assert max(s.score for s in scores[1000:1010]) >= THRESHOLD
    assert alarms(scores, 500, 1000) <= 10


def test_change_after_flat_line_is_anomalous_but_jitter_is_not() -> None:
    values = [5.0] * 500 + [5.0 + 1e-13, 5.0] * 50 + [5.0] * 100 + [6.0] + [5.0] * 50
    scores = run(values, flatline=False)
    assert all(math.isfinite(s.score) and math.isfinite(s.baseline) for s in scores)
    assert alarms(scores, 0, 700) == 0
    assert scores[700].score >= 0.999


def test_counter_resets_do_not_alarm_and_rates_are_scored() -> None:
    rng = random.Random(9)
    total, values = 1e6, []
    for i in range(3000):
        if i in (1000, 2000):
            total = 0.0  # process restart
        total += 6000 + rng.gauss(0, 200)  # ~100/s at 60 s sampling
        values.append(total)
    values[2500:] = [v + 60_000 * 5 for v in values[2500:]]  # one interval with 6x the traffic
    scores = run(values)
    assert alarms(scores, 1000, 1003) + alarms(scores, 2000, 2003) == 0  # the resets
    assert alarms(scores, 100, 2500) / 2400 <= 0.015  # rates stay calibrated across resets
    assert scores[2500].score >= THRESHOLD
    assert abs(scores[1500].baseline - values[1500]) / values[1500] < 0.01


def test_gauge_that_only_rises_at_first_is_not_treated_as_a_counter_forever() -> None:
    rng = random.Random(10)
    values = [float(i) + rng.random() * 0.1 for i in range(60)] + [60 + rng.gauss(0, 1) for _ in range(1000)]
    scores = run(values)
    assert alarms(scores, 200) <= 15


def test_bad_input_is_rejected_with_the_field_name() -> None:
    scorer = Residual()
    with pytest.raises(ValueError, match="value"):
        scorer.score_then_learn(0.0, float("inf"))
    with pytest.raises(ValueError, match="ts"):
        scorer.score_then_learn(float("nan"), 1.0)
    with pytest.raises(ValueError, match="value must be a number"):
        scorer.score_then_learn(0.0, "high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ts must be a number"):
        scorer.score_then_learn(None, 1.0)  # type: ignore[arg-type]
    assert scorer.score_then_learn(0.0, 1.0).confidence == 0.0  # nothing was learnt from bad input
    with pytest.raises(ValueError, match="warmup"):
        Residual(warmup=0)


def test_tail_calibrator_is_conformal_and_extrapolates() -> None:
    cal = TailCalibrator(window=200, tail=20)
    rng = random.Random(12)
    for _ in range(1000):
        cal.learn(abs(rng.gauss(0, 1)))
    assert len(cal) == 200
    assert cal.p_value(0.0) == 1.0
    assert 1 / 201 > cal.p_value(5.0) > cal.p_value(8.0) > 0.0


@pytest.mark.parametrize("mode", ["huge", "tiny", "mixed_magnitudes", "out_of_order", "duplicate_ts", "time_jumps"])
def test_no_numerical_blow_ups(mode: str) -> None:
    """Extreme magnitudes and odd timestamps never produce NaN/inf or scores outside [0, 1]."""
    for seed in range(5):
        rng = random.Random(seed)
        scorer, ts = Residual(), 1.7e9
        for _ in range(300):
            value = {
                "huge": rng.choice([1e300, -1e300, 1e200, 0.0]) * rng.random(),
                "tiny": rng.gauss(0, 1e-300),
                "mixed_magnitudes": rng.choice([0.0, 1e-12, 1e12, -5.0, rng.gauss(0, 1)]),
            }.get(mode, rng.gauss(0, 1))
            ts += {"out_of_order": rng.uniform(-100, 100), "duplicate_ts": rng.choice([0, 0, 60])}.get(
                mode, rng.choice([1, 60, 1e6]) if mode == "time_jumps" else 60
            )
            s = scorer.score_then_learn(ts, value)
            assert 0.0 <= s.score <= 1.0 and 0.0 <= s.confidence <= 1.0 and math.isfinite(s.baseline), (seed, s)


def test_small_noise_on_a_large_offset_is_still_resolved() -> None:
    """1e9 +- 1 (absolute gauges, epoch-like values): relative float tolerance must not hide it."""
    rng = random.Random(13)
    values = [1e9 + rng.gauss(0, 1) for _ in range(2000)]
    values[1500] += 20
    scores = run(values)
    assert scores[1500].score >= 0.999
    assert alarms(scores, 200) / 1800 <= 0.015
