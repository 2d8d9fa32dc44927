"""Provisional windows: an open window shown before it closes, without changing what closes."""

from __future__ import annotations

import itertools
import json

from metaheal.config import StreamSettings
from metaheal.streams.intake import Record
from metaheal.streams.pipeline import ListSink, Pipeline


def _run(early: float) -> tuple[ListSink, list[tuple[int, str, float, float]]]:
    """Error rate of api at 0.002, from t=103 at 0.2; 2 samples a second. Returns the sink and, in order of
    emission, (record index, kind, window_start, mean)."""
    sink = ListSink()
    cfg = StreamSettings(window_seconds=10.0, allowed_lateness_seconds=5.0, early_interval_seconds=early)
    p = Pipeline(cfg, sink, {}, {})
    order: list[tuple[int, str, float, float]] = []
    seen = (0, 0)
    for i in range(240):
        ts = i * 0.5
        value = 0.2 if ts >= 103.0 else 0.002 + 0.0002 * (i % 3)
        body = json.dumps({"service": "api", "metric": "error_rate", "value": value, "ts": ts}).encode()
        p.process(Record("telemetry", 0, i, b"api", body))
        for hw in sink.health_windows[seen[0] :]:
            order.append((i, "closed", hw.window_start, hw.signals[0].mean))
        for hw in sink.early_windows[seen[1] :]:
            order.append((i, "early", hw.window_start, hw.signals[0].mean))
        seen = (len(sink.health_windows), len(sink.early_windows))
    return sink, order


def test_an_open_window_is_shown_early_and_the_closed_windows_do_not_change() -> None:
    with_early, order = _run(2.0)
    without, _ = _run(0.0)
    assert without.early_windows == []
    # what closes is the same with or without the early view (no baseline learns from an open window)
    assert [w.model_dump() for w in with_early.health_windows] == [w.model_dump() for w in without.health_windows]
    # the fault began at t=103 (record 206): the window [100, 110) shows it early, at most ~2 s of event time later
    first_early = next(i for i, kind, start, mean in order if kind == "early" and start == 100.0 and mean > 0.02)
    first_closed = next(i for i, kind, start, mean in order if kind == "closed" and start == 100.0)
    assert first_early <= 206 + 5
    assert first_closed >= 230  # closes only once event time passed 110 + 5 s lateness
    early_w = next(w for w in with_early.early_windows if w.window_start == 100.0 and w.signals[0].mean > 0.02)
    closed_w = next(w for w in with_early.health_windows if w.window_start == 100.0)
    # judged against the baseline of the closed (healthy) windows, like the closed window will be
    assert early_w.signals[0].baseline_mean is not None and early_w.signals[0].baseline_mean < 0.003
    assert closed_w.signals[0].baseline_mean is not None and closed_w.signals[0].baseline_mean < 0.003
    assert early_w.signals[0].count < closed_w.signals[0].count
    # provisional windows come at most every early_interval_seconds of event time
    starts = [i for i, kind, _, _ in order if kind == "early"]
    assert all(b - a >= 4 for a, b in itertools.pairwise(starts) if a != b)
