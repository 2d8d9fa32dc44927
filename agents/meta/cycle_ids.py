"""Cycle ids: ``cycle_<UTC yyyymmdd_hhmmss>_<counter>``.

The time makes an id readable in a ledger dump; the counter makes it unique even when
two cycles start in the same second or a restarted replica's clock is behind. The
counter is never reset: a new leader restores it from the last id it finds on the
control/cycles topics (:func:`parse_counter`) and continues from there.

>>> gen = CycleIds(last_counter=41)
>>> gen.next(1736951400.0)
'cycle_20250115_143000_42'
>>> parse_counter("cycle_20250115_143000_42")
42
>>> gen.observe("cycle_20250115_150000_99"); gen.next(1736951401.0)
'cycle_20250115_143001_100'
>>> parse_counter("nonsense")
Traceback (most recent call last):
...
ValueError: not a cycle id: 'nonsense' (expected cycle_YYYYMMDD_HHMMSS_N)
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime

_PATTERN = re.compile(r"^cycle_(\d{8})_(\d{6})_(\d+)$")


def parse_counter(cycle_id: str) -> int:
    m = _PATTERN.match(cycle_id)
    if m is None:
        raise ValueError(f"not a cycle id: {cycle_id!r} (expected cycle_YYYYMMDD_HHMMSS_N)")
    return int(m.group(3))


def format_cycle_id(ts: float, counter: int) -> str:
    return f"cycle_{datetime.fromtimestamp(ts, UTC):%Y%m%d_%H%M%S}_{counter}"


class CycleIds:
    """Monotonic counter; ``observe`` any id seen elsewhere so ours stay above it."""

    def __init__(self, last_counter: int = 0) -> None:
        self.last_counter = last_counter

    def observe(self, cycle_id: str) -> None:
        with contextlib.suppress(ValueError):
            self.last_counter = max(self.last_counter, parse_counter(cycle_id))

    def next(self, ts: float) -> str:
        self.last_counter += 1
        return format_cycle_id(ts, self.last_counter)
