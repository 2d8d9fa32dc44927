"""The writer lease: at most one process assigns sequences at a time.

Lease records live in partition 0 of the index topic under key ``__lease__``
(cycle records are on the other partitions, so lease reads stay small). Every
process evaluates the same records in the same log order with the same rule, so
all agree on the holder without any compare-and-set:

* ``claim`` by X (written at X's wall-clock ``ts``) wins if there is no holder,
  the holder is X (a renewal), or the holder's lease expired before ``ts``;
  otherwise it is ignored.
* ``release`` by the holder clears the lease.

A writer claims, reads the topic back to its end and appends only if its claim
won. Another process that wants to append waits (polling) until the lease is
released or expires, takes it, and resumes from the ledger's tail, so writers in
several processes take turns instead of forking the chain. Limits: holders must
have roughly synchronised clocks, and a holder paused for longer than its lease
in the middle of a produce could still write once after losing it; the verifier
reports the resulting fork.

>>> s = LeaseState()
>>> s.apply({"op": "claim", "owner": "a", "ts": 0.0, "expires": 5.0}).owner
'a'
>>> s.apply({"op": "claim", "owner": "b", "ts": 1.0, "expires": 6.0}).owner  # a still holds it
'a'
>>> s.apply({"op": "claim", "owner": "b", "ts": 5.5, "expires": 10.5}).owner  # a's lease expired
'b'
>>> s.apply({"op": "release", "owner": "b", "ts": 6.0, "expires": 0.0}).owner is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEASE_KEY = "__lease__"


@dataclass
class LeaseState:
    owner: str | None = None
    expires: float = 0.0

    def apply(self, rec: dict[str, Any]) -> LeaseState:
        op, who, ts = rec.get("op"), rec.get("owner"), float(rec.get("ts", 0.0))
        if op == "claim" and (self.owner is None or self.owner == who or self.expires <= ts):
            self.owner, self.expires = who, float(rec.get("expires", 0.0))
        elif op == "release" and self.owner == who:
            self.owner, self.expires = None, 0.0
        return self

    def free_for(self, who: str, now: float) -> bool:
        return self.owner is None or self.owner == who or self.expires <= now
