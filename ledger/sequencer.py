"""The sequencer's state machine: assign sequence and prev_hash, and cut checkpoints.

Pure (no I/O), so the writer in :mod:`metaheal.ledger.log`, the tests and the
benchmark build chains with the same code. ``copy()`` gives a scratch state for a
batch that only replaces the real one after the broker acknowledged the batch.

>>> from nacl.signing import SigningKey
>>> sk = SigningKey(bytes(32))
>>> s = Sequencer(checkpoint_every_entries=2, origin="o")
>>> out = [x for i in range(4) for x in s.add(dict(actor="executor", action="step_executed", cycle_id="c",
...        resource="", subsystem="", payload={"i": i}, result="ok"), ("k", sk), ("lk", sk))]
>>> [(e.sequence, e.action) for e in out]
[(0, 'step_executed'), (1, 'step_executed'), (2, 'checkpoint'),
 (3, 'step_executed'), (4, 'step_executed'), (5, 'checkpoint')]
>>> import json; json.loads(out[5].payload)["size"]
5
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from metaheal.events import LedgerEntry
from metaheal.ledger.chain import GENESIS, seal
from metaheal.ledger.checkpoint import sign_note
from metaheal.ledger.keys import utc_now
from metaheal.ledger.merkle import Frontier, leaf_hash

CHECKPOINT_CYCLE = "checkpoints"
Signer = tuple[str, SigningKey]  # (key_id, key)


@dataclass
class Sequencer:
    next_sequence: int = 0
    prev_hash: str = GENESIS
    last_offset: int = -1
    frontier: Frontier = field(default_factory=Frontier)
    since_checkpoint: int = 0
    checkpoint: dict[str, Any] | None = None
    checkpoint_every_entries: int = 1000
    checkpoint_every_seconds: float = 60.0
    origin: str = "metaheal.ledger"
    checkpoint_at: float = field(default_factory=time.time)
    clock: Any = field(default=time.time, repr=False)

    def copy(self) -> Sequencer:
        c = Sequencer(**{k: v for k, v in self.__dict__.items()})
        c.frontier = self.frontier.copy()
        return c

    def _push(self, e: LedgerEntry) -> None:
        self.frontier.append(leaf_hash(bytes.fromhex(e.entry_hash)))
        self.next_sequence, self.prev_hash = e.sequence + 1, e.entry_hash

    def add(
        self,
        fields: dict[str, Any],
        signer: Signer,
        checkpoint_signer: Signer | None = None,
        timestamp: str | None = None,
    ) -> list[LedgerEntry]:
        """Seal one entry; returns it, followed by a checkpoint entry when one is due."""
        key_id, sk = signer
        e = seal(
            sequence=self.next_sequence,
            timestamp=timestamp or utc_now(),
            key_id=key_id,
            prev_hash=self.prev_hash,
            signing_key=sk,
            **fields,
        )
        self._push(e)
        self.since_checkpoint += 1
        out = [e]
        due = self.since_checkpoint >= self.checkpoint_every_entries or (
            self.clock() - self.checkpoint_at >= self.checkpoint_every_seconds
        )
        if due and checkpoint_signer is not None:
            out.append(self.cut_checkpoint(checkpoint_signer, timestamp=timestamp))
        return out

    def cut_checkpoint(self, signer: Signer, resource: str = "", timestamp: str | None = None) -> LedgerEntry:
        """Seal a checkpoint entry committing to every entry so far."""
        key_id, sk = signer
        root = self.frontier.root()
        payload = {
            "origin": self.origin,
            "size": self.frontier.size,
            "root": base64.b64encode(root).decode(),
            "note": sign_note(self.origin, self.frontier.size, root, sk),
        }
        c = seal(
            sequence=self.next_sequence,
            timestamp=timestamp or utc_now(),
            cycle_id=CHECKPOINT_CYCLE,
            actor="ledger",
            action="checkpoint",
            resource=resource,
            subsystem="ledger",
            payload=payload,
            result="ok",
            key_id=key_id,
            prev_hash=self.prev_hash,
            signing_key=sk,
        )
        self._push(c)
        self.since_checkpoint, self.checkpoint_at = 0, self.clock()
        self.checkpoint = {"sequence": c.sequence, **payload}
        return c

    def follow(self, e: LedgerEntry, offset: int) -> None:
        """Chain an entry read back from the topic onto this state (resuming after a restart)."""
        self._push(e)
        self.last_offset = offset
        if e.action == "checkpoint" and e.actor == "ledger":
            self.since_checkpoint, self.checkpoint_at = 0, self.clock()
            self.checkpoint = {"sequence": e.sequence, **json.loads(e.payload)}
        else:
            self.since_checkpoint += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "next_sequence": self.next_sequence,
            "prev_hash": self.prev_hash,
            "last_offset": self.last_offset,
            "frontier": self.frontier.to_json(),
            "since_checkpoint": self.since_checkpoint,
            "checkpoint": self.checkpoint,
        }

    def load_json(self, doc: dict[str, Any]) -> None:
        self.next_sequence = int(doc["next_sequence"])
        self.prev_hash = str(doc["prev_hash"])
        self.last_offset = int(doc["last_offset"])
        self.frontier = Frontier.from_json(doc["frontier"])
        self.since_checkpoint = int(doc.get("since_checkpoint", 0))
        self.checkpoint = doc.get("checkpoint")
