"""The composed scorer: likelihood of surprises + range novelty, its warm-up and its data-only checkpoints."""

from __future__ import annotations

import json
import random

import pytest

from metaheal.streams.detectors import AnomalyLikelihood, ForecastResidual, StateError
from metaheal.streams.scorer import RED_ZONE, AnomalyScorer, Score
from metaheal.streams.scoring import ScorerRegistry

from .test_residual import FAMILIES

RED = RED_ZONE  # Numenta's red zone: NAB's best single threshold for this scorer lies here


def run(values: list[float], dt: float = 60.0, scorer: AnomalyScorer | None = None) -> list[Score]:
    scorer = scorer or AnomalyScorer(seed=0)
    return [scorer.score_then_learn(1.7e9 + i * dt, v) for i, v in enumerate(values)]


def noise(seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    return [50 + rng.gauss(0, 2) for _ in range(n)]


def test_warm_up_scores_one_half_with_rising_confidence() -> None:
    scores = run(noise(0, 400))
    assert all(s.score == 0.5 for s in scores[:50])
    assert scores[0].confidence == 0.0 and scores[25].confidence < 1.0 and scores[50].confidence == 1.0


def test_likelihood_is_calibrated_on_noise_it_was_not_measured_on() -> None:
    """The null table was measured on seeds 21-22; on seed 7 about ``1 - t`` of the samples score >= t."""
    scores: list[float] = []
    for family in FAMILIES.values():
        lik = AnomalyLikelihood(ForecastResidual())
        values = family(random.Random(7), 20_000)
        scores += [lik.score_learn_one({"ts": 60.0 * i, "value": v}) for i, v in enumerate(values)][500:]
    for t in (0.99, 0.999, RED, 0.9999):
        rate = sum(x >= t for x in scores) / len(scores)
        assert 0.4 * (1 - t) <= rate <= 2.5 * (1 - t), (t, rate)


def test_noise_rarely_reaches_the_red_zone() -> None:
    # measured: 1.5e-3 of the samples of Gaussian noise (nominal 8.1e-4: the residual's surprises cluster)
    scores = run(noise(1, 20_000))[500:]
    assert sum(s.score >= RED for s in scores) / len(scores) <= 3e-3


def test_spike_and_level_shift_alarm_once_each() -> None:
    values = noise(2, 3000)
    values[1500] = 80.0  # 15 sigma
    values[2500:] = [v + 10 for v in values[2500:]]  # 5 sigma step
    scores = run(values)
    assert scores[1500].score >= RED
    assert max(s.score for s in scores[2500:2510]) >= RED
    assert sum(s.score >= RED for s in scores[2500:2600]) <= 2  # a burst is reported once, then adapted


def test_a_value_beyond_the_seen_range_is_novel() -> None:
    rng = random.Random(3)
    values = [50 + 10 * (i % 20) / 20 + rng.gauss(0, 0.1) for i in range(1000)]  # a sawtooth
    values[800] = 62.0  # inside the residual's reach, but beyond everything seen
    assert run(values)[800].score == 1.0


def test_checkpoint_is_json_and_continues_identically() -> None:
    values = noise(4, 3000)
    a = AnomalyScorer(seed=0)
    run(values[:2000], scorer=a)
    blob = json.dumps(a.state_dict())
    assert json.loads(blob)["version"] == 3 and len(blob) < 150_000  # bounded: calibration windows as float32
    b = AnomalyScorer.from_state(json.loads(blob))
    for i, v in enumerate(values[2000:], start=2000):
        x, y = a.score_then_learn(1.7e9 + 60.0 * i, v), b.score_then_learn(1.7e9 + 60.0 * i, v)
        assert x.score == pytest.approx(y.score, abs=2e-3) and x.baseline == pytest.approx(y.baseline)


@pytest.mark.parametrize(
    "blob",
    [
        b"\x80\x04\x95 not json",  # e.g. an old pickled checkpoint: never unpickled
        b'{"model": "metaheal-tail/1", "version": 1}',
        b'{"model": "metaheal-likelihood/2", "version": 2, "seed": 0, "likelihood": {"kind": "os.system"}}',
    ],
)
def test_unreadable_checkpoint_starts_cold(blob: bytes) -> None:
    reg = ScorerRegistry({b"api/latency_ms": blob})
    scorer = reg.get("api/latency_ms", partition=0)
    assert reg.restored == 0 and reg.created == 1
    assert scorer.score_then_learn(0.0, 1.0).confidence == 0.0


def test_state_errors_name_the_problem() -> None:
    with pytest.raises(StateError, match="not a metaheal-likelihood/2 state"):
        AnomalyScorer.from_state({"model": "other", "version": 2})


def test_bad_input_changes_nothing() -> None:
    scorer = AnomalyScorer(seed=0)
    with pytest.raises(ValueError, match="value"):
        scorer.score_then_learn(0.0, float("inf"))
    with pytest.raises(ValueError, match="ts"):
        scorer.score_then_learn(float("nan"), 1.0)
    assert scorer.score_then_learn(0.0, 1.0).confidence == 0.0
    assert scorer.likelihood._n == 1 and scorer.novelty.state_dict()["state"]["min"] == 1.0
