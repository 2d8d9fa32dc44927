"""Small deterministic labelled evaluation with minimum bars (the full run: benchmarks/eval_scorer.py).

The corpus is the same generator as the benchmark (every family, seeded), only smaller; the bars
are set well below what the scorer measures (see the README) so they catch regressions, not noise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_scorer.py"


def _load() -> ModuleType:
    name = "metaheal_bench_eval_scorer"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def evaluation() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def corpus(evaluation: ModuleType) -> list:
    return evaluation.synthetic.make_corpus(seed=1, per_family=1, length=3000)


@pytest.fixture(scope="module")
def ours(evaluation: ModuleType, corpus: list):
    return evaluation.evaluate("metaheal", corpus)


def test_corpus_is_deterministic_and_covers_every_family(evaluation: ModuleType, corpus: list) -> None:
    again = evaluation.synthetic.make_corpus(seed=1, per_family=1, length=3000)
    assert [s.values for s in again] == [s.values for s in corpus]
    assert {s.family for s in corpus} == set(evaluation.synthetic.FAMILIES)
    assert sum(len(s.anomalies) for s in corpus) >= 10


def test_metaheal_scorer_meets_the_minimum_bars(evaluation: ModuleType, ours) -> None:
    _, best_standard = ours.best("standard")
    _, best_low_fp = ours.best("reward_low_FP")
    # measured on this corpus: 58 / 40, recall 0.82 at the red zone, negatives 0.010 / 0.0006
    assert best_standard >= 45.0
    assert best_low_fp >= 30.0
    events = ours.events[evaluation.DEFAULT]
    assert events.recall >= 0.7
    # false alarms on the noise-only negatives
    assert ours.negatives_rate[0.999] <= 0.02
    assert ours.negatives_rate[0.9999] <= 0.003


def test_metaheal_beats_the_baselines_in_the_same_run(evaluation: ModuleType, corpus: list, ours) -> None:
    for name in ("zscore", "hst"):
        other = evaluation.evaluate(name, corpus)
        # measured on this corpus: metaheal 58 / 40, z-score 42 / 6, HalfSpaceTrees 0 / 0
        assert ours.best("standard")[1] > other.best("standard")[1] + 5, name
        assert ours.best("reward_low_FP")[1] > other.best("reward_low_FP")[1] + 10, name
