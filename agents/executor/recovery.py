"""What recovery needs to know about a plan a crash interrupted, and the test-only crash points.

* **idempotency keys**: every mutating call carries ``plan_id/step`` (rollback steps
  ``plan_id/rollback/j``) to the actuator, so a re-send after a crash is the *same*
  request to the service, which applies it once;
* **one outcome per plan**: the signed ``execution_outcome`` ledger entry is the source
  of truth; recovery looks for it first and, when it exists, only publishes it if the
  outcomes topic does not have it yet (never a second outcome, never none). A plan
  whose verification was inconclusive has one interim outcome as well (its own id,
  :func:`outcome_id_for`), which recovery publishes the same way;
* **halted plans**: a plan stopped by a ledger or Kafka outage is resumed in place after
  :func:`backoff` seconds, until the outage ends;
* **crash points**: ``METAHEAL_TEST_CRASH_AT=<point>`` makes the executor SIGKILL its whole
  process group at that point (:data:`CRASH_POINTS`), so tests can kill ``metaheal up``
  deterministically at each step of a plan. Unset, it does nothing.

>>> idempotency_key("plan-1", 1), idempotency_key("plan-1", 0, rollback=True)
('plan-1/1', 'plan-1/rollback/0')
>>> [backoff(n) for n in range(1, 9)]
[0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from typing import Any

from metaheal.config import Settings
from metaheal.errors import DecodeError
from metaheal.events import Event, LedgerEntry, SignedOutcome
from metaheal.kafka import Consumer
from metaheal.kafka.limits import loads
from metaheal.kafka.serializers import AvroDeserializer
from metaheal.ledger import ImmutableLog
from metaheal.ledger.authz import allowed
from metaheal.ledger.chain import entry_hash, message
from metaheal.ledger.keys import KeyRegistry

logger = logging.getLogger(__name__)

CRASH_ENV = "METAHEAL_TEST_CRASH_AT"
#: where a test may kill the executor: after a mutating step's write-ahead entry, after its call
#: returned (before the result is recorded), between two verification checks, and between the
#: ``execution_outcome`` entry and the outcome's publication, and after an approval was taken in (its
#: ``approval_received`` entry) before the plan's state says it is executing
CRASH_POINTS = ("after_write_ahead", "after_call", "during_verification", "before_publish", "after_approval")
MAX_BACKOFF = 30.0


def idempotency_key(plan_id: str, step: int, *, rollback: bool = False) -> str:
    """The key a step's call carries; the same on every re-send of that step."""
    return f"{plan_id}/rollback/{step}" if rollback else f"{plan_id}/{step}"


def backoff(attempt: int, *, first: float = 0.5, cap: float = MAX_BACKOFF) -> float:
    """Seconds before the ``attempt``-th resume of a halted plan (doubling, capped)."""
    return min(cap, first * 2 ** max(0, attempt - 1))


def crash_point(point: str) -> None:
    """Test hook: SIGKILL this process's whole group when ``METAHEAL_TEST_CRASH_AT`` names ``point``."""
    if os.environ.get(CRASH_ENV) != point:
        return
    logger.critical("test crash point reached point=%s action=sigkill_process_group pid=%d", point, os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.killpg(os.getpgid(0), signal.SIGKILL)


def verified_entry(entry: LedgerEntry, registry: KeyRegistry) -> bool:
    """The entry's hash and signature check out against a key valid for its actor at its time."""
    rec = registry.get(entry.key_id)
    return (
        rec is not None
        and rec.actor == entry.actor
        and not rec.revoked
        and rec.valid_at(entry.timestamp)
        and allowed(entry.actor, entry.action)
        and entry_hash(entry) == entry.entry_hash
        and rec.verify(message(entry), entry.signature)
    )


def outcome_id_for(key: str, *, final: bool = True) -> str:
    """A plan's outcome id (``key``: its plan id): one final outcome, and at most one interim inconclusive one.

    >>> outcome_id_for("plan-1") == outcome_id_for("plan-1")
    True
    >>> outcome_id_for("plan-1") == outcome_id_for("plan-1", final=False)
    False
    """
    return f"out-{uuid.uuid5(uuid.NAMESPACE_URL, key if final else key + ':inconclusive').hex[:16]}"


def find_outcome(log: ImmutableLog, settings: Settings, cycle_id: str, outcome_id: str) -> LedgerEntry | None:
    """The verified ``execution_outcome`` ledger entry with this outcome id, if one was appended (blocking)."""
    # matched on the payload: the entry's resource is the service (the design's vocabulary)
    entries = [
        e
        for e in log.replay_cycle_sync(cycle_id)
        if e.action == "execution_outcome" and _payload(e).get("outcome_id") == outcome_id
    ]
    if not entries:
        return None
    registry = KeyRegistry.load(settings.keys).with_operators(settings.operators)
    good = [e for e in entries if verified_entry(e, registry)]
    if len(good) < len(entries):
        logger.error("outcome entry does not verify outcome=%s sequences=%s", outcome_id, [e.sequence for e in entries])
    return good[0] if good else None


def _payload(entry: LedgerEntry) -> dict[str, Any]:
    try:
        doc = loads(entry.payload)
    except DecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def outcome_from_entry(entry: LedgerEntry) -> SignedOutcome:
    """The :class:`SignedOutcome` an ``execution_outcome`` entry stands for (what was or will be published)."""
    body = _payload(entry)
    fields = {k: v for k, v in body.items() if k in SignedOutcome.model_fields}
    return SignedOutcome(
        **fields,
        actor=entry.actor,
        actor_signature=entry.signature,
        ts=time.time(),
        ledger_sequence=entry.sequence,
    )


def published(
    settings: Settings, short: str, model: type[Event], field: str, value: str, timeout: float = 30.0
) -> bool:
    """Whether ``<prefix><short>`` holds a ``model`` record whose ``field`` is ``value`` (read to its end; blocking).

    Records of other types on the same topic (decisions next to requests) are skipped.
    """
    de = AvroDeserializer(model)
    fast: dict[str, Any] = {"fetch.wait.max.ms": 50}  # empty partitions answer after it
    with Consumer(settings.kafka, **fast) as c:
        for msg in c.read_to_end(settings.topics.name(short), timeout=timeout):
            raw = msg.value()
            try:
                if raw and getattr(de(raw), field) == value:
                    return True
            except DecodeError:
                continue
    return False


def outcome_published(settings: Settings, outcome_id: str, timeout: float = 30.0) -> bool:
    """Whether ``<prefix>outcomes`` holds the outcome with this id."""
    return published(settings, "outcomes", SignedOutcome, "outcome_id", outcome_id, timeout)


__all__ = [
    "CRASH_ENV",
    "CRASH_POINTS",
    "backoff",
    "crash_point",
    "find_outcome",
    "idempotency_key",
    "outcome_from_entry",
    "outcome_id_for",
    "outcome_published",
    "published",
    "verified_entry",
]
