"""The cycle index: ``cycle_id -> ledger offsets``, so one cycle is read without a scan.

It lives on the compacted ``<prefix>ledger-index`` topic (key ``cycle_id``, value
the JSON list of rows ``[offset, sequence, action, subsystem, timestamp]``) in
partition ``index_partition(cycle_id, partitions)`` (1 + CRC-32 of the id modulo
the other partitions), so a process that starts on a large ledger reads only the
one small partition of the cycle it replays; partition 0 holds the ``__lease__``
records (:mod:`metaheal.ledger.lease`) and one ``__tail__`` record the sequencer
writes after each batch: the last offset, sequence, entry hash and Merkle
frontier, so a restarted sequencer reads only the ledger records after it. The
index is derived data: if it is lost or stale, the missing part is rebuilt from
the ledger (which stays the source of truth).

>>> [index_partition("cycle-7", 17), index_partition("cycle-7", 17), index_partition("cycle-7", 1)]
[3, 3, 0]
>>> ix = CycleIndex()
>>> ix.add(offset=0, sequence=0, cycle_id="c1", action="plan_created", subsystem="agents", timestamp="t")
True
>>> ix.add(offset=0, sequence=0, cycle_id="c1", action="plan_created", subsystem="agents", timestamp="t")
False
>>> CycleIndex.decode_rows(ix.encode_rows("c1"))
[[0, 0, 'plan_created', 'agents', 't']]
>>> ix.put_raw("c2", b'[[5, 3, "step_executed", "agents", "t"]]')
>>> ix.rows("c2")
[[5, 3, 'step_executed', 'agents', 't']]
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

TAIL_KEY = "__tail__"

Row = list[Any]  # [offset, sequence, action, subsystem, timestamp]


def index_partition(cycle_id: str, partitions: int) -> int:
    """Where a cycle's index record lives: stable across processes and Python versions
    (CRC-32, not ``hash()``); partition 0 is kept for the lease and the tail."""
    if partitions <= 1:
        return 0
    return 1 + zlib.crc32(cycle_id.encode("utf-8", "surrogatepass")) % (partitions - 1)


@dataclass
class CycleIndex:
    cycles: dict[str, list[Row]] = field(default_factory=dict)
    tail: dict[str, Any] | None = None
    #: newest stored record per cycle, decoded only when that cycle is asked for: a
    #: process that starts on a large ledger reads the whole index topic, but parses
    #: only what it uses (records are cumulative, so the newest one is complete).
    raw: dict[str, bytes] = field(default_factory=dict)
    corrupt: bool = False  # a stored record could not be decoded: rebuild from the ledger

    def drop(self, cycle_id: str) -> None:
        """A tombstone for the cycle's index record."""
        self.raw.pop(cycle_id, None)

    def put_raw(self, cycle_id: str, data: bytes) -> None:
        self.raw[cycle_id] = data

    def _materialise(self, cycle_id: str) -> None:
        data = self.raw.pop(cycle_id, None)
        if data is None:
            return
        try:
            self.merge_rows(cycle_id, self.decode_rows(data))
        except ValueError as exc:
            self.corrupt = True
            logger.warning("ledger_index_record_ignored cycle_id=%s error=%s", cycle_id, exc)

    def add(self, *, offset: int, sequence: int, cycle_id: str, action: str, subsystem: str, timestamp: str) -> bool:
        """Record one ledger record; False if that offset is already indexed."""
        rows = self.cycles.setdefault(cycle_id, [])
        if rows and rows[-1][0] >= offset:
            if any(r[0] == offset for r in rows):
                return False
            rows.append([offset, sequence, action, subsystem, timestamp])
            rows.sort(key=lambda r: r[0])
            return True
        rows.append([offset, sequence, action, subsystem, timestamp])
        return True

    def rows(self, cycle_id: str) -> list[Row]:
        self._materialise(cycle_id)
        return list(self.cycles.get(cycle_id, []))

    def encode_rows(self, cycle_id: str) -> bytes:
        self._materialise(cycle_id)
        return json.dumps(self.cycles.get(cycle_id, []), separators=(",", ":")).encode()

    @staticmethod
    def decode_rows(data: bytes) -> list[Row]:
        rows = json.loads(data)
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 5 for r in rows):
            raise ValueError("index record is not a list of [offset, sequence, action, subsystem, timestamp]")
        return rows

    def merge_rows(self, cycle_id: str, rows: list[Row]) -> None:
        """Take a stored index record (the newest record of a key wins, as in compaction)."""
        if cycle_id not in self.cycles:
            self.cycles[cycle_id] = sorted(rows, key=lambda r: r[0])
            return
        known = {r[0]: r for r in self.cycles[cycle_id]}
        for r in rows:
            known[r[0]] = r
        self.cycles[cycle_id] = sorted(known.values(), key=lambda r: r[0])

    def rows_with_action(self, action: str) -> list[tuple[str, Row]]:
        for cycle_id in list(self.raw):
            self._materialise(cycle_id)
        return [(c, r) for c, rows in self.cycles.items() for r in rows if r[2] == action]
