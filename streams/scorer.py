"""Per-series online anomaly scorer with a calibrated score: the detectors of
:mod:`metaheal.streams.detectors` combined.

``score = max(likelihood, context, novelty)`` where

- *likelihood* is the :class:`~metaheal.streams.detectors.AnomalyLikelihood` of the surprises of a
  :class:`~metaheal.streams.detectors.ForecastResidual` (a surprise: a residual with tail
  probability <= 1 %): is the recent rate of surprises unusual for this series? Numenta's tail
  probability, mapped to how often calibrated noise gets that far; a burst is reported once (its
  first red sample; later ones at most 0.987);
- *context* is the same likelihood over the surprises of a
  :class:`~metaheal.streams.detectors.TransitionNovelty` (the series moved in a way it never has:
  a well-known previous state followed by a state it never led to), counted only in its red zone
  (tail <= 1e-5) so that one novel move is no alarm and below the red zone the score is the
  residual likelihood's alone;
- *novelty* is 1.0 when the value leaves the range the series has shown by more than 5 % of its
  width (:class:`~metaheal.streams.detectors.RangeNovelty`), after its first 300 samples.

So the score is still ``1 - tail probability`` and a threshold means the same on every series,
but it is about a *rate of surprises*, not one residual: one odd sample on a noisy series no
longer crosses 0.999, two close together (or a new extreme) do. Numenta's red zone is
:data:`RED_ZONE` (~0.9988). During warm-up (``warmup`` samples, 50: the residual's scale and the
likelihood's rate are learnt) the score is 0.5 and ``confidence`` rises from 0 to 1.

>>> scorer = AnomalyScorer(seed=0)
>>> import random
>>> rng = random.Random(1)
>>> scores = [scorer.score_then_learn(60.0 * i, 100 + rng.gauss(0, 5)) for i in range(1000)]
>>> sum(s.score >= RED_ZONE for s in scores[300:])  # noise crosses too, rarely
2
>>> spike = scorer.score_then_learn(60.0 * 1000, 200.0)
>>> spike.score >= RED_ZONE, round(spike.baseline / 10) * 10, spike.confidence
(True, 100, 1.0)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from metaheal.streams.detectors import (
    AnomalyLikelihood,
    ForecastResidual,
    RangeNovelty,
    StateError,
    TransitionNovelty,
)
from metaheal.streams.detectors.likelihood import null_tail

__all__ = ["RED_ZONE", "STATE_VERSION", "AnomalyScorer", "Score"]

MODEL_NAME = "metaheal-likelihood/2"
STATE_VERSION = 3  # 3: + transition novelty and its likelihood
#: the score of Numenta's red zone (likelihood tail 1e-5), about 0.9988: where one threshold over
#: the NAB development split does best, and a sensible ``streams.anomaly_threshold``
RED_ZONE = 1.0 - null_tail(1e-5)


class Score(NamedTuple):
    """One scored sample.

    ``score`` is ``1 - tail probability`` (0..1, comparable across series), ``baseline`` what the
    series was expected to be at this point (same unit as the input), ``confidence`` 0..1 (low
    during warm-up).
    """

    score: float
    baseline: float
    confidence: float


class AnomalyScorer:
    """Calibrated online anomaly scorer for one (service, metric) series.

    ``warmup`` (50) is the warm-up of the residual detector and of the likelihood;
    other keyword arguments go to :class:`~metaheal.streams.detectors.ForecastResidual`.
    ``seed`` is accepted for the contract (every scorer is seeded); the model is deterministic.
    Checkpoints are :meth:`state_dict` (JSON types, versioned); bad input (NaN, inf) raises
    ``ValueError`` naming the field, before any state changes.

    >>> s = AnomalyScorer(seed=0)
    >>> s.model_name
    'metaheal-likelihood/2'
    >>> s.score_then_learn(0.0, 5.0)
    Score(score=0.5, baseline=5.0, confidence=0.0)
    >>> s.score_then_learn(1.0, float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: value must be a finite number, got nan
    """

    model_name = MODEL_NAME

    def __init__(self, seed: int = 0, *, warmup: int = 50, **residual: Any) -> None:
        self.seed = seed
        self.residual = ForecastResidual(warmup=warmup, **residual)
        self.likelihood = AnomalyLikelihood(self.residual, learning=warmup)
        self.novelty = RangeNovelty()
        self.transitions = TransitionNovelty()
        self.context = AnomalyLikelihood(None, learning=warmup, calibrated=False)

    def score_then_learn(self, ts: float, value: float) -> Score:
        """Score ``value`` observed at ``ts`` (epoch seconds) against the past, then learn it."""
        # the detectors' score_learn_one, unrolled (this is the worker's hot path)
        residual, likelihood = self.residual, self.likelihood
        raw, baseline, conf = residual.update(ts, value)  # validates before any state changes
        residual.baseline, residual.confidence = baseline, conf
        score = likelihood.likelihood(raw >= likelihood.surprise)
        context = self.context
        context.likelihood(self.transitions.update(float(value)))
        if context.tail <= context.red:  # only its red zone (see the module doc), mapped as the other
            c = 1.0 - null_tail(context.tail)
            if c > score:
                score = c
        if self.novelty.score_learn_one({"value": float(value)}):
            score = 1.0
        if likelihood._n < likelihood.learning:
            learnt = likelihood._n / likelihood.learning
            if learnt < conf:
                conf = learnt
        return Score(score, baseline, conf)

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The whole model as JSON types (no code), tagged with the model name and a version."""
        return {
            "model": self.model_name,
            "version": STATE_VERSION,
            "seed": self.seed,
            "likelihood": self.likelihood.state_dict(),
            "novelty": self.novelty.state_dict(),
            "transitions": self.transitions.state_dict(),
            "context": self.context.state_dict(),
        }

    @classmethod
    def from_state(cls, data: object) -> AnomalyScorer:
        """The scorer that wrote ``data``, continuing; :class:`StateError` if it is not one of ours.

        >>> a = AnomalyScorer()
        >>> _ = [a.score_then_learn(float(t), t % 5) for t in range(400)]
        >>> b = AnomalyScorer.from_state(a.state_dict())
        >>> a.score_then_learn(400.0, 3.0) == b.score_then_learn(400.0, 3.0)
        True
        """
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("model") != MODEL_NAME or version not in (2, STATE_VERSION):
            got = (data.get("model"), data.get("version")) if isinstance(data, dict) else type(data).__name__
            raise StateError(f"not a {MODEL_NAME} state version 2 or {STATE_VERSION}: {got}")
        scorer = cls.__new__(cls)
        scorer.seed = int(data["seed"])
        scorer.likelihood = AnomalyLikelihood.from_state(data["likelihood"])
        residual = scorer.likelihood.detector
        if not isinstance(residual, ForecastResidual):
            raise StateError(f"the likelihood wraps {type(residual).__name__}, not a ForecastResidual")
        scorer.residual = residual
        scorer.novelty = RangeNovelty.from_state(data["novelty"])
        if version == 2:  # the previous release's: the transition detector starts learning
            scorer.transitions = TransitionNovelty()
            scorer.context = AnomalyLikelihood(None, learning=residual.warmup, calibrated=False)
            return scorer
        scorer.transitions = TransitionNovelty.from_state(data["transitions"])
        scorer.context = AnomalyLikelihood.from_state(data["context"])
        if scorer.context.detector is not None:
            raise StateError("the transition likelihood wraps a detector, expected none")
        return scorer
