"""``metaheal score`` and the backtest grading (NAB window rules, event metrics)."""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metaheal.cli import app
from metaheal.streams.backtest import (
    PROFILES,
    BacktestError,
    event_metrics,
    nab_score,
    nab_windows,
    parse_timestamp,
    score_csv,
    score_series,
)

runner = CliRunner()


def _series(n: int = 600, spike: int = 500) -> tuple[list[float], list[float]]:
    rng = random.Random(0)
    ts = [1_700_000_000.0 + 300 * i for i in range(n)]
    values = [round(20 + rng.gauss(0, 1), 4) for _ in range(n)]
    values[spike] += 25
    return ts, values


def test_cli_scores_with_the_streaming_code_path(tmp_path: Path) -> None:
    ts, values = _series()
    src = tmp_path / "in.csv"
    src.write_text("timestamp,value\n" + "".join(f"{t:.0f},{v}\n" for t, v in zip(ts, values, strict=True)))
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["score", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["timestamp", "value", "anomaly_score"]
    assert len(rows) == len(values) + 1
    expected = score_series(ts, values)
    assert [float(r[2]) for r in rows[1:]] == pytest.approx([s.score for s in expected], abs=1e-6)
    assert [r[:2] for r in rows[1:]] == [[f"{t:.0f}", str(v)] for t, v in zip(ts, values, strict=True)]
    assert float(rows[501][2]) >= 0.99  # the spike
    assert "scored 600 rows" in result.output


def test_cli_stdin_to_stdout_without_header_and_iso_timestamps() -> None:
    ts, values = _series(200, 150)
    lines = [
        f"{datetime.fromtimestamp(t, tz=UTC).strftime('%Y-%m-%d %H:%M:%S')},{v}"
        for t, v in zip(ts, values, strict=True)
    ]
    result = runner.invoke(app, ["score", "-"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    body = [line for line in result.stdout.splitlines() if line and not line.startswith("scored")]
    assert len(body) == 200 and body[0].startswith(lines[0] + ",")
    scores = [float(line.rsplit(",", 1)[1]) for line in body]
    assert scores == pytest.approx([s.score for s in score_series(ts, values)], abs=1e-6)


def test_header_columns_found_by_name_and_extra_columns_kept() -> None:
    src = io.StringIO("value,host,timestamp\n1.0,a,1000\n2.0,a,1060\n")
    dst = io.StringIO()
    score_csv(src, dst, details=True)
    rows = list(csv.reader(io.StringIO(dst.getvalue())))
    assert rows[0] == ["value", "host", "timestamp", "anomaly_score", "baseline", "confidence"]
    assert rows[1][:3] == ["1.0", "a", "1000"] and len(rows[2]) == 6


def test_bad_row_exits_non_zero_naming_line_and_field(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("timestamp,value\n1000,1\n1060,oops\n1120,3\n")
    result = runner.invoke(app, ["score", str(src)])
    assert result.exit_code == 1
    assert "line 3" in result.output and "'value'" in result.output and "oops" in result.output
    with pytest.raises(BacktestError, match=r"line 2: field 'timestamp'"):
        score_csv(io.StringIO("1000,1\nyesterday,2\n"), io.StringIO())
    with pytest.raises(BacktestError, match=r"line 1: field 'value': missing column"):
        score_csv(io.StringIO("1000\n"), io.StringIO())
    with pytest.raises(BacktestError, match=r"field 'value': not a finite number"):
        score_csv(io.StringIO("1000,nan\n"), io.StringIO())


def test_skip_bad_keeps_every_row() -> None:
    dst = io.StringIO()
    summary = score_csv(io.StringIO("1000,1\n1060,oops\n1120,3\n"), dst, skip_bad=True)
    assert (summary.rows, summary.skipped) == (2, 1)
    assert dst.getvalue().splitlines()[1] == "1060,oops,"


def test_missing_input_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["score", str(tmp_path / "nope.csv")])
    # the error names the file; the console may wrap a long path, so compare without line breaks
    assert result.exit_code == 2 and "nope.csv" in result.output.replace("\n", "")


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp("2024-01-01T00:00:00Z") == 1704067200.0
    assert parse_timestamp("1704067200.5") == 1704067200.5
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_timestamp("01/02/2024")


def test_nab_score_rewards_early_detection_and_penalises_false_positives() -> None:
    windows = nab_windows(2000, [1000, 1500])
    assert windows == [(950, 1049), (1450, 1549)]
    nothing = nab_score([False] * 2000, windows)
    assert nothing.normalized == 0.0 and nothing.fn == 2
    early, late = [False] * 2000, [False] * 2000
    early[960] = early[1460] = True
    late[1040] = late[1540] = True
    assert nab_score(early, windows).normalized > 95 > nab_score(late, windows).normalized > 50
    noisy = list(early)
    for i in range(400, 900, 50):  # 10 false positives before the first window
        noisy[i] = True
    std = nab_score(noisy, windows)
    low_fp = nab_score(noisy, windows, PROFILES["reward_low_FP"])
    assert std.fp == 10 and low_fp.normalized < std.normalized < nab_score(early, windows).normalized
    probation = [False] * 2000
    probation[100] = True  # inside the probationary period: ignored
    assert nab_score(probation, windows).fp == 0


def test_event_metrics_merge_alarm_runs() -> None:
    alarms = [False] * 2000
    for i in (960, 961, 962, 1200, 1201):
        alarms[i] = True
    m = event_metrics(alarms, [(950, 1049), (1450, 1549)])
    assert (m.alarm_events, m.false_alarm_events, m.detected_events) == (2, 1, 1)
    assert m.precision == 0.5 and m.recall == 0.5 and m.f1 == 0.5
