"""Per-series streaming detectors, river-compatible (``learn_one`` / ``score_one``), checkpointed as data.

- :class:`ForecastResidual`: calibrated residual of the best of several online forecasters;
- :class:`AnomalyLikelihood`: Numenta's anomaly likelihood over a detector's surprises;
- :class:`RangeNovelty`: a value beyond the range the series has ever shown;
- :class:`TransitionNovelty`: the series moved in a way it never has (a contextual detector);

:class:`metaheal.streams.scorer.AnomalyScorer` combines them.
"""

from __future__ import annotations

from metaheal.errors import StateError
from metaheal.streams.detectors.base import SeriesDetector
from metaheal.streams.detectors.likelihood import AnomalyLikelihood
from metaheal.streams.detectors.novelty import RangeNovelty
from metaheal.streams.detectors.residual import ForecastResidual, TailCalibrator
from metaheal.streams.detectors.transitions import TransitionNovelty

__all__ = [
    "AnomalyLikelihood",
    "ForecastResidual",
    "RangeNovelty",
    "SeriesDetector",
    "StateError",
    "TailCalibrator",
    "TransitionNovelty",
    "detector_from_state",
]

DETECTORS: dict[str, type[SeriesDetector]] = {
    cls.__name__: cls for cls in (AnomalyLikelihood, ForecastResidual, RangeNovelty, TransitionNovelty)
}


def detector_from_state(data: object) -> SeriesDetector:
    """Rebuild any detector of this package from its :meth:`~SeriesDetector.state_dict`.

    >>> detector_from_state(RangeNovelty(0.1).state_dict()).tolerance
    0.1
    >>> detector_from_state({"kind": "os.system"})
    Traceback (most recent call last):
    ...
    metaheal.errors.StateError: unknown detector kind 'os.system'
    """
    kind = data.get("kind") if isinstance(data, dict) else None
    cls = DETECTORS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise StateError(f"unknown detector kind {kind!r}")
    return cls.from_state(data)
