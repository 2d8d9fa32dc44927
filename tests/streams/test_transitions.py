"""TransitionNovelty: moves the series has made before are learnt, a move it never made is novel."""

from __future__ import annotations

import json
import random

import pytest

from metaheal.streams.detectors import StateError, TransitionNovelty, detector_from_state


def spiky(seed: int, n: int) -> list[float]:
    """Noise around 50 with an upward spike every 37 samples (a move the series makes all the time)."""
    rng = random.Random(seed)
    return [50 + rng.gauss(0, 1) + (12.0 if i % 37 == 0 else 0.0) for i in range(n)]


def run(det: TransitionNovelty, values: list[float]) -> list[float]:
    return [det.score_learn_one({"ts": 60.0 * i, "value": v}) for i, v in enumerate(values)]


def test_a_move_made_before_is_learnt_a_new_one_is_novel() -> None:
    values = spiky(0, 1200)
    values[1000] = 38.0  # a downward spike as large as the usual upward ones: never seen
    scores = run(TransitionNovelty(), values)
    assert scores[1000] == 1.0
    assert scores[999 - 999 % 37] == 0.0 and scores[1036] == 0.0  # the usual spikes, before and after
    assert sum(scores[600:1000]) == 0.0


def test_nothing_is_novel_while_it_learns() -> None:
    values = spiky(1, 300)
    values[200] = 0.0  # a move never made, but the detector is still learning
    assert sum(run(TransitionNovelty(after=300), values)) == 0.0
    assert run(TransitionNovelty(after=150), values)[200] == 1.0  # armed: the same move is novel


def test_checkpoint_is_json_and_continues_identically() -> None:
    values = spiky(2, 1500)
    a = TransitionNovelty()
    run(a, values[:800])
    b = detector_from_state(json.loads(json.dumps(a.state_dict())))
    assert isinstance(b, TransitionNovelty)
    assert run(a, values[800:]) == run(b, values[800:])
    assert a.state_dict() == b.state_dict()


@pytest.mark.parametrize(
    "change",
    [{"counts": [1, 2]}, {"counts": [-1] * 81}, {"prev": 81}, {"levels": "x"}],
)
def test_malformed_state_is_refused(change: dict[str, object]) -> None:
    data = TransitionNovelty().state_dict()
    data["state"].update(change)
    with pytest.raises(StateError):
        TransitionNovelty.from_state(data)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="width"):
        TransitionNovelty(width=0.0)
    with pytest.raises(ValueError, match="levels"):
        TransitionNovelty(levels=0)
