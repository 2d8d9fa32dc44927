"""A few files of the NAB development split (``../shared/nab-dev``): detections stay inside their windows.

Small, deterministic and fast (three files, ~8k samples): the scorer runs test-then-train over each
file exactly as ``metaheal score`` does; past NAB's probation period (the first 15 %, at most 750
rows) every sample scoring at or above Numenta's red zone (``RED_ZONE``, where NAB's best single
threshold lies for this scorer) must lie inside a labelled window, and every window must get one.
The whole split is scored by ``make bench`` (benchmarks/bench_nab.py).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from metaheal.streams.backtest import parse_timestamp
from metaheal.streams.scorer import RED_ZONE, AnomalyScorer

NAB_DEV = Path(__file__).resolve().parents[2].parent / "shared" / "nab-dev"
THRESHOLD = RED_ZONE
FILES = [
    "artificialWithAnomaly/art_increase_spike_density.csv",
    "realAdExchange/exchange-3_cpc_results.csv",
    "realTraffic/speed_t4013.csv",
]

pytestmark = pytest.mark.skipif(
    not (NAB_DEV / "combined_windows.json").is_file(),
    reason=f"NAB development split not found at {NAB_DEV} (the shared/ folder beside the clone)",
)


@pytest.mark.parametrize("rel", FILES)
def test_detections_stay_inside_the_labelled_windows(rel: str) -> None:
    labelled = json.loads((NAB_DEV / "combined_windows.json").read_text())[rel]
    windows = [(parse_timestamp(a), parse_timestamp(b)) for a, b in labelled]
    with (NAB_DEV / "data" / rel).open(newline="") as f:
        rows = [(parse_timestamp(r[0]), float(r[1])) for r in list(csv.reader(f))[1:] if r]
    scorer = AnomalyScorer(seed=0)
    scores = [scorer.score_then_learn(t, v).score for t, v in rows]
    probation = min(math.floor(0.15 * len(rows)), 750)
    detected = [rows[i][0] for i in range(probation, len(rows)) if scores[i] >= THRESHOLD]
    outside = [t for t in detected if not any(a <= t <= b for a, b in windows)]
    assert not outside, f"{rel}: {len(outside)} detections outside the windows"
    missed = [(a, b) for a, b in windows if not any(a <= t <= b for t in detected)]
    assert not missed, f"{rel}: windows without a detection: {missed}"
