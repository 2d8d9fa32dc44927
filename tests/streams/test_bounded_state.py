"""The scorer's state is bounded and compact, and a checkpoint restores it exactly (docs/scaling.md)."""

from __future__ import annotations

import copy
import json
import math
import random
import tracemalloc
import zlib
from pathlib import Path

import pytest

from metaheal.errors import DecodeError, StateError
from metaheal.streams.checkpoints import CHECKPOINT_BUDGET
from metaheal.streams.detectors import AnomalyLikelihood
from metaheal.streams.detectors.base import decode_array, encode_array
from metaheal.streams.detectors.tails import TailCalibrator, encode_code
from metaheal.streams.scorer import AnomalyScorer
from metaheal.streams.scoring import DictStore, ScorerRegistry, decode_checkpoint, encode_checkpoint

DATA = Path(__file__).parent / "data"


def daily(i: int, rng: random.Random) -> float:
    """A minute-sampled series with a daily cycle, noise, spikes and a frozen stretch."""
    if 7000 <= i < 7040:
        return 42.0  # a flat line
    v = 100 + 20 * math.sin(2 * math.pi * i / 1440) + rng.gauss(0, 5)
    return v + (80.0 if i % 997 == 0 else 0.0)


def checkpoint_sizes(counts: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """Per sample count: the checkpoint record's bytes, and the bytes of the state it holds (JSON)."""
    rng, scorer, out = random.Random(1), AnomalyScorer(), {}
    for i in range(1, max(counts) + 1):
        scorer.score_then_learn(60.0 * i, daily(i, rng))
        if i in counts:
            blob = encode_checkpoint(scorer.state_dict())
            out[i] = (len(blob), len(json.dumps(decode_checkpoint(blob), separators=(",", ":"))))
    return out


def test_checkpoint_size_does_not_depend_on_age() -> None:
    """Every array of the state has its full size from the start (calibrator blocks, the likelihood's
    window, the profiles): the state a checkpoint holds is the same size after 1,000 samples (the windows
    half full, no daily track), 10,000 (no weekly track yet) and 40,000 (everything full); compressed, the
    record stays within the budget at every age. Before: states of 7.3 / 11.0 / 12.0 KB, records 1.9 /
    3.6 / 4.0 KB."""
    sizes = checkpoint_sizes((1_000, 10_000, 40_000))
    records = [record for record, _ in sizes.values()]
    states = [state for _, state in sizes.values()]
    assert max(states) <= 1.01 * min(states), sizes
    assert max(records) <= CHECKPOINT_BUDGET, sizes


def test_restored_scorer_scores_exactly_like_the_uninterrupted_one() -> None:
    rng = random.Random(2)
    values = [daily(i, rng) for i in range(9000)]
    a = AnomalyScorer()
    for i in range(6000):  # past the windows (2,000) and into the weekly profile
        a.score_then_learn(60.0 * i, values[i])
    b = AnomalyScorer.from_state(decode_checkpoint(encode_checkpoint(a.state_dict())))
    for i in range(6000, 9000):
        assert a.score_then_learn(60.0 * i, values[i]) == b.score_then_learn(60.0 * i, values[i]), i
    assert encode_checkpoint(a.state_dict()) == encode_checkpoint(b.state_dict())


def test_a_checkpoint_of_the_previous_release_restores_exactly() -> None:
    """``scorer-state-v2.zlib``: the scorer of the test above after 6,000 samples, checkpointed by the
    previous release (plain zlib, ``ForecastResidual`` and ``AnomalyLikelihood`` state 2, no transition
    detector): its detectors restore exactly, the transition detector starts learning."""
    rng = random.Random(2)
    values = [daily(i, rng) for i in range(9000)]
    a = AnomalyScorer()
    for i in range(6000):
        a.score_then_learn(60.0 * i, values[i])
    fresh = AnomalyScorer()
    a.transitions, a.context = fresh.transitions, fresh.context
    b = AnomalyScorer.from_state(decode_checkpoint((DATA / "scorer-state-v2.zlib").read_bytes()))
    assert encode_checkpoint(a.state_dict()) == encode_checkpoint(b.state_dict())
    for i in range(6000, 9000):
        assert a.score_then_learn(60.0 * i, values[i]) == b.score_then_learn(60.0 * i, values[i]), i


@pytest.mark.parametrize("window", [2, 3, 7, 10, 33, 100, 2001])
def test_calibrator_blocks_fit_the_fixed_layout_and_restore_exactly(window: int) -> None:
    rng = random.Random(window)
    cal = TailCalibrator(window, tail=2)
    layout = {k: len(v) for k, v in cal.state().items() if isinstance(v, str)}
    for step in range(5 * window + 10):
        cal.learn(rng.expovariate(1.0) if rng.random() < 0.7 else 0.0)
        state = cal.state()
        assert {k: len(v) for k, v in state.items() if isinstance(v, str)} == layout
        back = TailCalibrator.from_state(state)
        assert back.state() == state and len(back) == len(cal)
        for d in (0.1, 1.0, 3.0, 30.0):
            assert back.p_value(d) == cal.p_value(d), (step, d)


def test_scorer_memory_is_bounded() -> None:
    """Python heap of a scorer after 12,000 samples, as a deep copy of it allocates (the issue
    measured ~295 KB a scorer at 2,500 samples)."""
    rng = random.Random(3)
    scorer = AnomalyScorer()
    for i in range(12_000):
        scorer.score_then_learn(60.0 * i, daily(i, rng))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        copies = [copy.deepcopy(scorer) for _ in range(5)]
        per_scorer = (tracemalloc.get_traced_memory()[0] - before) / len(copies)
    finally:
        tracemalloc.stop()
    assert per_scorer < 40 * 1024, per_scorer


def test_tail_counts_are_exact_where_p_values_are_small() -> None:
    """Against a brute-force conformal p-value over the same window (values as their 16-bit codes)."""
    rng = random.Random(4)
    cal, seen = TailCalibrator(window=400, tail=20), []
    for step in range(3000):
        d = 0.0 if step % 3 == 0 else rng.paretovariate(1.5) - 1.0  # heavy tail; zeros are common
        cal.learn(d)
        seen.append(d)
        if step % 97 == 0 and step > 50:
            window = seen[-len(cal) :]
            assert abs(len(cal) - 400) <= 50 or step < 450
            top = sorted(window)[-30:]
            for q in [*top[5:], top[-1] * 0.999]:
                code = encode_code(q)
                k = sum(1 for v in window if v > 0 and encode_code(v) >= code)
                if k < cal.tail:
                    assert cal.p_value(q) == (k + 1) / (len(window) + 1), (step, q, k)


def test_bad_checkpoints_are_refused_not_run(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DecodeError):
        decode_checkpoint(b"\x78\x9cnot zlib")
    blob = encode_checkpoint({"model": "m"})
    with pytest.raises(DecodeError, match="data after"):
        decode_checkpoint(blob + b"\x01")
    with pytest.raises(DecodeError, match="truncated"):
        decode_checkpoint(blob[:8])
    z = zlib.compressobj(zdict=b'{"model":')  # a dictionary this worker does not know
    with pytest.raises(DecodeError, match="unknown zlib dictionary"):
        decode_checkpoint(z.compress(b'{"model":"m"}') + z.flush())
    store = DictStore({b"api/latency_ms": encode_checkpoint({"model": "os.system", "version": 3})})
    reg = ScorerRegistry(store)
    scorer = reg.get("api/latency_ms", partition=0)
    assert reg.created == 1 and reg.restored == 0
    assert scorer.score_then_learn(0.0, 1.0).confidence == 0.0  # started cold
    assert "starting cold" in caplog.text


def test_an_old_likelihood_state_cannot_claim_a_huge_window() -> None:
    """Upgrading a version 2 state pads its window: a forged window would allocate that much."""
    state = AnomalyLikelihood(None).state_dict()
    old = {**state, "version": 2, "state": {**state["state"], "history": "", "window": 10**12}}
    with pytest.raises(StateError, match="does not fit"):
        AnomalyLikelihood.from_state(old)


def test_a_calibrator_state_holding_more_than_its_blocks_say_is_refused() -> None:
    cal = TailCalibrator(100, 5)  # blocks of 25 samples, room for 5
    for i in range(27):
        cal.learn(float(i))
    state = cal.state()  # two blocks in use: 25 samples (24 positive, 5 kept) and 2 (both kept)
    assert state["blocks"] == 2 and cal.capacity == 5
    TailCalibrator.from_state(state)
    sizes = decode_array(state["sizes"], "I", 5)
    sizes[3] = 1
    gaps = decode_array(state["tops"], "H", 5 * 5)
    gaps[5 + 2] = 7  # a third code in the second block
    hists = decode_array(state["hists"], "I", 5 * 52, keep=2)
    hists[3 * 52 + 1] = 1
    for bad, match in (
        ({"sizes": encode_array(sizes)}, "not empty"),
        ({"tops": encode_array(gaps)}, "more codes"),
        ({"hists": encode_array(hists, keep=2)}, "not empty"),
        ({"blocks": 6}, "room for"),
        ({"tops": state["tops"][:-4]}, "not 25 values"),
    ):
        with pytest.raises(StateError, match=match):
            TailCalibrator.from_state({**state, **bad})


def test_registry_writes_a_series_at_most_once_per_interval_and_forgets_by_partition() -> None:
    now = [0.0]
    store = DictStore()
    reg = ScorerRegistry(store, min_interval=120.0, clock=lambda: now[0])
    for p in range(4):
        reg.get(f"svc{p}/latency_ms", partition=p)
    reg.checkpoint("svc0/latency_ms")
    now[0] = 60.0
    reg.checkpoint("svc0/latency_ms")
    key = b"svc0/latency_ms"
    assert reg.checkpoints == 1 and reg.checkpoint_bytes == len(key) + len(store.data[key])
    now[0] = 121.0
    reg.checkpoint("svc0/latency_ms")
    assert reg.checkpoints == 2
    assert reg.forget({1, 2}) == 2 and sorted(reg.live) == ["svc0/latency_ms", "svc3/latency_ms"]


def test_a_restored_series_is_not_rewritten_before_its_interval() -> None:
    """After a restart every series is restored at once: none is written back before its interval."""
    now = [0.0]
    store = DictStore()
    first = ScorerRegistry(store, min_interval=120.0, clock=lambda: now[0])
    first.get("api/latency_ms", partition=0).score_then_learn(0.0, 1.0)
    first.checkpoint("api/latency_ms")
    now[0] = 500.0
    second = ScorerRegistry(store, min_interval=120.0, clock=lambda: now[0])
    second.get("api/latency_ms", partition=0)
    second.checkpoint("api/latency_ms")
    assert second.restored == 1 and second.checkpoints == 0
    now[0] = 621.0
    second.checkpoint("api/latency_ms")
    assert second.checkpoints == 1
