"""Offline backtest: score a ``timestamp,value`` CSV with the streaming scorer, and grade it.

Users tune ``streams.anomaly_threshold`` on their own history, so the CSV path must be the very
code the streams worker runs: one :class:`~metaheal.streams.scorer.AnomalyScorer` per series,
``score_then_learn`` row by row, nothing fitted on the whole file. Rows are streamed, so
``metaheal score - < big.csv`` works in constant memory.

The grading half (:func:`nab_score`, :func:`event_metrics`) implements the window rules of
public streaming-anomaly benchmarks (NAB): a detection inside a labelled window earns a reward
that decays with a sigmoid from the window start to its end, only the first detection of a
window counts, detections outside windows cost a false-positive weight (lighter just after a
window), missed windows cost a false-negative weight.

>>> import io
>>> src = io.StringIO("timestamp,value\\n2024-01-01T00:00:00Z,1.5\\n1704067260,2.0\\n")
>>> dst = io.StringIO()
>>> score_csv(src, dst).rows
2
>>> print(dst.getvalue().strip())
timestamp,value,anomaly_score
2024-01-01T00:00:00Z,1.5,0.5000000000
1704067260,2.0,0.5000000000
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from metaheal.errors import BacktestError
from metaheal.streams.scorer import AnomalyScorer, Score

__all__ = [
    "PROFILES",
    "BacktestError",
    "BacktestSummary",
    "EventMetrics",
    "NabProfile",
    "event_metrics",
    "nab_score",
    "nab_windows",
    "parse_timestamp",
    "score_csv",
    "score_series",
]

logger = logging.getLogger(__name__)

_MS_THRESHOLD = 1e11  # epoch numbers above this are milliseconds (1e11 s is the year 5138)


@dataclass(frozen=True)
class BacktestSummary:
    rows: int
    skipped: int
    alarms: int


def parse_timestamp(text: str) -> float:
    """Epoch seconds (or milliseconds, if > 1e11) or ISO-8601 (naive means UTC) to epoch seconds.

    >>> parse_timestamp("1704067200"), parse_timestamp("1704067200000")
    (1704067200.0, 1704067200.0)
    >>> parse_timestamp("2024-01-01 00:00:00"), parse_timestamp("2024-01-01T01:00:00+01:00")
    (1704067200.0, 1704067200.0)
    """
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"not a finite time: {text!r}")
        return number / 1000.0 if abs(number) > _MS_THRESHOLD else number
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"not epoch seconds or ISO-8601: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _parse_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _looks_like_header(row: Sequence[str]) -> bool:
    try:
        parse_timestamp(row[0])
        return False
    except (ValueError, IndexError):
        return True


def score_csv(
    src: TextIO,
    dst: TextIO,
    *,
    skip_bad: bool = False,
    details: bool = False,
    threshold: float = 0.99,
    scorer: AnomalyScorer | None = None,
) -> BacktestSummary:
    """Copy ``src`` to ``dst`` adding ``anomaly_score`` (and ``baseline``, ``confidence`` if ``details``).

    The header is optional; with one, the ``timestamp`` and ``value`` columns are found by name
    and other columns are kept. A bad row raises :class:`BacktestError` naming its line and
    field, or with ``skip_bad`` is written with empty score columns and logged (nothing is lost).
    """
    scorer = scorer if scorer is not None else AnomalyScorer(seed=0)
    reader = csv.reader(src)
    writer = csv.writer(dst, lineterminator="\n")
    extra = ["anomaly_score", "baseline", "confidence"] if details else ["anomaly_score"]
    ts_col, value_col = 0, 1
    rows = skipped = alarms = 0
    first = True
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if first:
            first = False
            if _looks_like_header(row):
                names = [c.strip().lower() for c in row]
                ts_col = names.index("timestamp") if "timestamp" in names else 0
                value_col = names.index("value") if "value" in names else 1
                if ts_col == value_col or len(row) < 2:
                    raise BacktestError(f"line {line}: header needs 'timestamp' and 'value' columns, got {row}")
                writer.writerow(row + extra)
                continue
        try:
            field = "timestamp"
            ts = parse_timestamp(row[ts_col])
            field = "value"
            value = _parse_value(row[value_col])
        except (ValueError, IndexError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) else "missing column"
            message = f"line {line}: field {field!r}: {reason}"
            if not skip_bad:
                raise BacktestError(message) from None
            logger.warning("backtest skipped_row %s", message)
            skipped += 1
            writer.writerow(row + [""] * len(extra))
            continue
        s = scorer.score_then_learn(ts, value)
        rows += 1
        alarms += s.score >= threshold
        out = [f"{s.score:.10f}"]  # scores near 1 differ in the 6th to 10th decimal
        if details:
            out += [f"{s.baseline:.6g}", f"{s.confidence:.3f}"]
        writer.writerow(row + out)
    return BacktestSummary(rows=rows, skipped=skipped, alarms=alarms)


def score_series(
    timestamps: Iterable[float], values: Iterable[float], factory: Callable[[], AnomalyScorer] | None = None
) -> list[Score]:
    """Score one series test-then-train (what the worker does per series)."""
    scorer = factory() if factory is not None else AnomalyScorer(seed=0)
    return [scorer.score_then_learn(t, v) for t, v in zip(timestamps, values, strict=True)]


# --- grading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NabProfile:
    tp: float
    fp: float
    fn: float


PROFILES = {
    "standard": NabProfile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP": NabProfile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN": NabProfile(tp=1.0, fp=0.11, fn=2.0),
}


def _sigmoid(x: float) -> float:
    """NAB's scaled sigmoid: +0.987 at the window start (x=-1), 0 at its end, towards -1 after."""
    if x > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def nab_windows(length: int, anomalies: Sequence[int], fraction: float = 0.1) -> list[tuple[int, int]]:
    """NAB labelling: windows totalling ``fraction`` of the series, centred on each anomaly onset.

    >>> nab_windows(1000, [500])
    [(450, 549)]
    """
    if not anomalies:
        return []
    width = max(2, int(fraction * length / len(anomalies)))
    windows: list[tuple[int, int]] = []
    for a in sorted(anomalies):
        start = max(0, a - width // 2)
        end = min(length - 1, start + width - 1)
        if windows and start <= windows[-1][1]:  # merge overlapping windows
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


@dataclass(frozen=True)
class NabResult:
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int

    def __add__(self, other: NabResult) -> NabResult:
        return NabResult(
            self.raw + other.raw,
            self.null + other.null,
            self.perfect + other.perfect,
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
        )

    @property
    def normalized(self) -> float:
        """0 = the detector that never fires, 100 = a detection at the start of every window."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span else 0.0


def _probation(length: int) -> int:
    return min(int(0.15 * length), 750)


def nab_score(
    alarms: Sequence[bool], windows: Sequence[tuple[int, int]], profile: NabProfile = PROFILES["standard"]
) -> NabResult:
    """NAB's per-file score for boolean detections; sum results over files, then ``normalized``.

    Detections inside the probationary period (first 15 %, at most 750 samples) are ignored.

    >>> alarms = [False] * 1000
    >>> alarms[460] = True  # early in the window: nearly full reward
    >>> r = nab_score(alarms, [(450, 549)])
    >>> r.tp, r.fp, r.fn, round(r.normalized, 1)
    (1, 0, 0, 99.6)
    >>> alarms[900] = True  # far after the window: a full false positive
    >>> round(nab_score(alarms, [(450, 549)]).raw, 3)
    0.868
    """
    n = len(alarms)
    probation = _probation(n)
    raw = 0.0
    tp = fp = 0
    detected = [False] * len(windows)
    w = 0
    prev_end: int | None = None
    prev_len = 1
    for i in range(probation, n):
        while w < len(windows) and windows[w][1] < i:
            prev_end, prev_len = windows[w][1], windows[w][1] - windows[w][0] + 1
            w += 1
        if not alarms[i]:
            continue
        if w < len(windows) and windows[w][0] <= i:
            if not detected[w]:
                start, end = windows[w]
                detected[w] = True
                tp += 1
                raw += profile.tp * _sigmoid(-(end - i + 1) / (end - start + 1))
        else:
            fp += 1
            if prev_end is None:
                raw -= profile.fp
            else:
                raw += profile.fp * _sigmoid((i - prev_end) / prev_len)
    fn = detected.count(False)
    raw -= profile.fn * fn
    null = -profile.fn * len(windows)
    perfect = profile.tp * _sigmoid(-1.0) * len(windows)
    return NabResult(raw=raw, null=null, perfect=perfect, tp=tp, fp=fp, fn=fn)


@dataclass(frozen=True)
class EventMetrics:
    true_events: int
    detected_events: int
    alarm_events: int
    false_alarm_events: int

    def __add__(self, other: EventMetrics) -> EventMetrics:
        return EventMetrics(
            self.true_events + other.true_events,
            self.detected_events + other.detected_events,
            self.alarm_events + other.alarm_events,
            self.false_alarm_events + other.false_alarm_events,
        )

    @property
    def precision(self) -> float:
        return (self.alarm_events - self.false_alarm_events) / self.alarm_events if self.alarm_events else 1.0

    @property
    def recall(self) -> float:
        return self.detected_events / self.true_events if self.true_events else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def event_metrics(alarms: Sequence[bool], windows: Sequence[tuple[int, int]], merge_gap: int = 10) -> EventMetrics:
    """Event-level counts: alarms closer than ``merge_gap`` samples form one alarm event; an alarm
    event is a true one if it touches a labelled window; a window is detected if any alarm is in it.

    >>> alarms = [False] * 1000
    >>> for i in (460, 461, 465, 900):
    ...     alarms[i] = True
    >>> m = event_metrics(alarms, [(450, 549), (700, 750)])
    >>> m.alarm_events, m.false_alarm_events, m.precision, m.recall
    (2, 1, 0.5, 0.5)
    """
    probation = _probation(len(alarms))
    detected = [any(alarms[max(s, probation) : e + 1]) for s, e in windows]
    events: list[tuple[int, int]] = []
    for i in range(probation, len(alarms)):
        if alarms[i]:
            if events and i - events[-1][1] <= merge_gap:
                events[-1] = (events[-1][0], i)
            else:
                events.append((i, i))
    false = sum(1 for a, b in events if not any(s <= b and a <= e for s, e in windows))
    return EventMetrics(
        true_events=len(windows), detected_events=sum(detected), alarm_events=len(events), false_alarm_events=false
    )
