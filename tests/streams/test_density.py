"""The window-density detector (Half-Space Trees over the last few values): calibration, detection, checkpoints."""

from __future__ import annotations

import json
import random

import pytest

from metaheal.streams.detectors import StateError, WindowDensity, detector_from_state

from .test_residual import FAMILIES


def run(det: WindowDensity, values: list[float], t0: int = 0) -> list[float]:
    return [det.score_learn_one({"ts": 60.0 * (t0 + i), "value": v}) for i, v in enumerate(values)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_calibrated_on_noise_families(family: str) -> None:
    """On noise about ``1 - t`` of the scores are >= t (the calibration is conformal)."""
    scores = run(WindowDensity(), FAMILIES[family](random.Random(7), 5000))[500:]
    for t, slack in ((0.99, 2.0), (0.9, 1.5)):
        rate = sum(s >= t for s in scores) / len(scores)
        assert rate <= slack * (1 - t), f"{family}: {rate:.4f} of scores >= {t}"
    assert sum(s >= 0.5 for s in scores) / len(scores) > 0.2  # not degenerate


def test_a_burst_in_a_region_never_visited_scores_high_each_value_alone_would_not() -> None:
    """Alternating low/high noise; then a run of values halfway between, each inside the range seen."""
    rng = random.Random(1)
    values = [(0.0 if i % 2 else 10.0) + rng.gauss(0, 0.3) for i in range(3000)]
    det = WindowDensity()
    quiet = run(det, values)
    burst = run(det, [5.0 + rng.gauss(0, 0.3) for _ in range(8)], t0=3000)
    assert sum(q >= 0.99 for q in quiet[1000:]) / 2000 < 0.02
    assert max(burst) >= 0.99


def test_checkpoint_is_json_and_continues_identically() -> None:
    rng = random.Random(2)
    values = [rng.gauss(0, 1) + (i % 50 == 0) * 6 for i in range(1200)]
    a = WindowDensity()
    run(a, values[:700])
    blob = json.dumps(a.state_dict())
    b = detector_from_state(json.loads(blob))
    assert isinstance(b, WindowDensity)
    assert run(a, values[700:], 700) == run(b, values[700:], 700)
    assert len(blob) < 9_000  # fixed size: masses of the trees, the calibration window, the last values


def test_score_one_does_not_learn() -> None:
    det = WindowDensity()
    run(det, [float(i % 7) for i in range(400)])
    before = json.dumps(det.state_dict())
    det.score_one({"ts": 0.0, "value": 3.0})
    assert json.dumps(det.state_dict()) == before


def test_malformed_state_is_refused() -> None:
    state = WindowDensity(trees=2, height=3).state_dict()
    state["state"]["trees"] = 3  # masses no longer fit the trees
    with pytest.raises(StateError, match="do not fit"):
        WindowDensity.from_state(state)


def test_trees_are_drawn_from_the_seed_and_shared_by_every_series() -> None:
    """Per series only the masses are state: 20,000 series hold one copy of the trees."""
    a, b = WindowDensity(), WindowDensity()
    assert a._node is b._node
    assert WindowDensity(seed=1)._node != a._node
