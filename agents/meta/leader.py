"""Single active meta loop: a lease with epochs on the one-partition, compacted control topic.

Every replica folds the control topic in log order (one partition = one order that all
replicas agree on). Leadership records (key ``meta_loop.leader``) carry
``{holder, epoch, expires_at}``; the fold applies three rules:

* a record with a higher epoch than the current one is a claim and wins: the *first*
  claim of an epoch in the log is the holder, later claims of the same epoch lose;
* a record of the current epoch by the current holder is a heartbeat (extends the lease);
* anything else is stale and ignored.

A replica claims epoch ``current + 1`` only after the current lease expired, then reads
the topic back to its end: it leads only if its claim is the first of that epoch. Two
replicas claiming at the same moment therefore agree on one winner without a
coordinator. Before every externally visible decision the leader re-reads the topic
(:meth:`ControlTopic.still_leader`): a paused replica whose lease was taken over sees
the higher epoch and steps down instead of issuing a duplicate directive.

Compaction keeps only the newest ``meta_loop.leader`` record, which is the holder's
latest heartbeat (losers write one claim and never heartbeat), so the fold of a
compacted topic gives the same holder.

The same topic holds the durable meta-loop state that must survive restarts: the
guardrail level (``meta_loop.guardrails``) and the last cycle id (``meta_loop.cycle``).

Every record is signed by the meta loop's key (``control`` in
:data:`metaheal.ledger.signing.RECORD_WRITERS`); :class:`ControlTopic` folds only records
whose signature checks out and that are not older (beyond the clock skew) than the newest
one already folded under their key, so neither a forged lease with a huge epoch nor a
replayed old one can take the lease; refused records go to the dead-letter topic.

>>> v = ControlView()
>>> v.apply("meta_loop.leader", {"holder": "a", "epoch": 1, "expires_at": 10.0})
>>> v.apply("meta_loop.leader", {"holder": "b", "epoch": 1, "expires_at": 11.0})  # lost the race
>>> v.apply("meta_loop.leader", {"holder": "a", "epoch": 1, "expires_at": 20.0})  # heartbeat
>>> v.leader.holder, v.leader.epoch, v.leader.expires_at
('a', 1, 20.0)
>>> v.apply("meta_loop.leader", {"holder": "b", "epoch": 2, "expires_at": 30.0})  # takeover
>>> v.leader.holder, v.leader.epoch
('b', 2)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metaheal.config import KafkaSettings, Settings
from metaheal.errors import RecordRefused
from metaheal.events import DeadLetter
from metaheal.kafka import OFFSET_BEGINNING, ConsumedMessage, Consumer, KafkaUnavailable, Producer, TopicPartition
from metaheal.kafka.limits import loads
from metaheal.kafka.serializers import AvroSerializer
from metaheal.kafka.tail import TopicTail
from metaheal.ledger.signing import RecordSigner, RecordVerifier

logger = logging.getLogger(__name__)

LEADER_KEY = "meta_loop.leader"
GUARDRAILS_KEY = "meta_loop.guardrails"
CYCLE_KEY = "meta_loop.cycle"


#: librdkafka waits up to fetch.wait.max.ms (500 ms) for data it will never get at the end of a
#: partition; readers that must see "the end" often (fencing, status) ask for short waits instead.
FAST_READ: dict[str, Any] = {"fetch.wait.max.ms": 10}


def fast_reader(settings: KafkaSettings) -> Consumer:
    return Consumer(settings, **FAST_READ)


def read_to_end(
    consumer: Consumer, topic: str, start_offsets: dict[int, int] | None = None, timeout: float = 10.0
) -> list[ConsumedMessage]:
    """Every record from ``start_offsets`` (default: the beginning) to the partition EOF of each partition.

    One record per ``consume`` call, so it returns as soon as the last EOF arrives
    (milliseconds) instead of after a batch timeout (0.5 s).
    """
    return list(consumer.read_to_end(topic, start_offsets=start_offsets, timeout=timeout, batch=1, wait=0.05))


@dataclass(frozen=True)
class Lease:
    holder: str
    epoch: int
    expires_at: float

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


@dataclass
class ControlView:
    """The fold of the control topic (see the module docstring)."""

    leader: Lease | None = None
    guardrails: dict[str, Any] | None = None
    last_cycle: dict[str, Any] | None = None
    others: dict[str, Any] = field(default_factory=dict)

    def apply(self, key: str, doc: dict[str, Any] | None) -> None:
        if doc is None:
            return
        if key == LEADER_KEY:
            try:
                lease = Lease(str(doc["holder"]), int(doc["epoch"]), float(doc["expires_at"]))
            except (KeyError, TypeError, ValueError):
                logger.warning("control ignored malformed leader record doc=%r", doc)
                return
            cur = self.leader
            if cur is None or lease.epoch > cur.epoch or (lease.epoch == cur.epoch and lease.holder == cur.holder):
                self.leader = lease
        elif key == GUARDRAILS_KEY:
            self.guardrails = doc
        elif key == CYCLE_KEY:
            self.last_cycle = doc
        else:
            self.others[key] = doc


class ControlTopic:
    """Reads (incrementally) and writes the control topic; blocking calls, use from a thread."""

    def __init__(self, settings: Settings, replica_id: str, clock: Callable[[], float] = time.time) -> None:
        self.topic = settings.topics.name("control")
        self.replica_id = replica_id
        self.lease_seconds = settings.cycle.lease_seconds
        self.clock = clock
        self.view = ControlView()
        self._next_offset = 0
        self._consumer = fast_reader(settings.kafka)
        self._producer = Producer(settings.kafka)
        # heartbeats run in their own task while a cycle fences itself: one client user at a time
        self._lock = threading.RLock()
        self._deadletter = settings.topics.name("deadletter")
        self._signer = RecordSigner(settings.keys, "meta_loop")
        self._verifier = RecordVerifier.for_settings(settings)
        self._newest: dict[str, float] = {}  # key -> signing time of the newest record folded
        #: records refused so far: (offset, key, reason)
        self.refused: list[tuple[int, str, RecordRefused]] = []
        self._followed = False  # dead letters only for records that arrive after the first full read

    # --- reading -------------------------------------------------------------------------------

    def refresh(self, timeout: float = 10.0) -> ControlView:
        """Fold every record appended since the last refresh."""
        with self._lock:
            return self._refresh(timeout)

    def _refresh(self, timeout: float) -> ControlView:
        for m in read_to_end(self._consumer, self.topic, {0: self._next_offset}, timeout):
            self._next_offset = m.offset() + 1
            key = (m.key() or b"").decode("utf-8", "replace")
            value = m.value()
            try:
                signed = self._verifier.check("control", m, record_id=key)
                if signed.ts < self._newest.get(key, float("-inf")) - self._verifier.max_skew:
                    raise RecordRefused("replayed", f"{key} signed at {signed.ts:.3f}, before the newest one folded")
            except RecordRefused as exc:
                self._refuse(m, key, exc)
                continue
            self._newest[key] = max(signed.ts, self._newest.get(key, float("-inf")))
            try:
                doc = loads(value) if value else None
            except ValueError:  # DecodeError, including records over the size/depth limits
                logger.warning("control ignored undecodable record offset=%d key=%s", m.offset(), key)
                continue
            self.view.apply(key, doc)
        self._followed = True
        return self.view

    def _refuse(self, m: ConsumedMessage, key: str, exc: RecordRefused) -> None:
        logger.warning("control refused record offset=%d key=%s reason=%s error=%s", m.offset(), key, exc.reason, exc)
        self.refused.append((m.offset(), key, exc))
        if not self._followed:  # a restart re-reads the topic: the first reader to follow it filed this one
            return
        dl = DeadLetter.of(m, f"untrusted control record: {exc.reason}", str(exc))
        try:
            self._producer.send(self._deadletter, AvroSerializer(DeadLetter)(dl), key=m.key())
        except KafkaUnavailable as err:
            logger.warning("control dead_letter_failed offset=%d error=%s", m.offset(), err)

    # --- writing -------------------------------------------------------------------------------

    def put(self, key: str, doc: dict[str, Any]) -> None:
        with self._lock:
            value = json.dumps(doc, sort_keys=True).encode()
            headers = self._signer.sign("control", value, key=key, record_id=key)
            self._producer.send(self.topic, value, key=key, partition=0, headers=headers)

    @property
    def epoch(self) -> int:
        lease = self.view.leader
        return lease.epoch if lease is not None and lease.holder == self.replica_id else 0

    def is_leader(self, now: float | None = None) -> bool:
        lease = self.view.leader
        now = self.clock() if now is None else now
        return lease is not None and lease.holder == self.replica_id and not lease.expired(now)

    def acquire_or_renew(self) -> bool:
        """One step of the election; returns whether this replica leads after it."""
        with self._lock:
            return self._acquire_or_renew()

    def _acquire_or_renew(self) -> bool:
        view = self.refresh()
        now = self.clock()
        lease = view.leader
        if lease is not None and lease.holder == self.replica_id and not lease.expired(now):
            self.put(
                LEADER_KEY,
                {"holder": self.replica_id, "epoch": lease.epoch, "expires_at": now + self.lease_seconds, "ts": now},
            )
            self.refresh()
            return self.is_leader()
        if lease is None or lease.expired(now):
            epoch = (lease.epoch if lease else 0) + 1
            self.put(
                LEADER_KEY,
                {"holder": self.replica_id, "epoch": epoch, "expires_at": now + self.lease_seconds, "ts": now},
            )
            self.refresh()
            won = self.is_leader()
            logger.info("leader claim replica=%s epoch=%d won=%s", self.replica_id, epoch, won)
            return won
        return False

    def still_leader(self) -> bool:
        """Fence: re-read the topic and check that nobody took the lease over."""
        with self._lock:
            self.refresh()
            return self.is_leader()

    def release(self) -> None:
        """Graceful stop: expire our lease now so a standby takes over without waiting."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self.is_leader():
            lease = self.view.leader
            assert lease is not None
            now = self.clock()
            self.put(LEADER_KEY, {"holder": self.replica_id, "epoch": lease.epoch, "expires_at": now, "ts": now})
            logger.info("leader released replica=%s epoch=%d", self.replica_id, lease.epoch)

    def close(self) -> None:
        try:
            self._producer.close(2.0)
        finally:
            self._consumer.close()


#: strictest first
LEVELS: tuple[str, ...] = ("tight", "maintain", "loose")


def tighter(a: str, b: str | None) -> str:
    """The stricter of two guardrail levels (``b`` None: ``a``).

    >>> tighter("loose", "tight"), tighter("maintain", "loose"), tighter("loose", None)
    ('tight', 'maintain', 'loose')
    """
    if b not in LEVELS:
        return a
    return min(a, b, key=LEVELS.index)


class GuardrailFollower(TopicTail):
    """Follows the meta loop's signed guardrail level on the control topic, for the executor: a directive's
    level is never looser than it. Unsigned or older records are skipped (the meta loop dead-letters them)."""

    name = "control-guardrails"
    batch = 100

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.kafka)
        self._topic = settings.topics.name("control")
        self._verifier = RecordVerifier.for_settings(settings)
        self.level: str | None = None
        self.signed_at = float("-inf")

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        return [TopicPartition(self._topic, 0, OFFSET_BEGINNING)]

    def handle(self, msg: ConsumedMessage) -> None:
        value = msg.value()
        if (msg.key() or b"") != GUARDRAILS_KEY.encode() or value is None:
            return
        try:
            signed = self._verifier.check("control", msg, record_id=GUARDRAILS_KEY)
        except RecordRefused as exc:
            logger.warning("control guardrails record refused offset=%d reason=%s", msg.offset(), exc.reason)
            return
        doc = loads(value)
        level = doc.get("level") if isinstance(doc, dict) else None
        if level in LEVELS and signed.ts >= self.signed_at:
            self.level, self.signed_at = str(level), signed.ts


__all__ = [
    "CYCLE_KEY",
    "GUARDRAILS_KEY",
    "LEADER_KEY",
    "LEVELS",
    "ControlTopic",
    "ControlView",
    "GuardrailFollower",
    "Lease",
    "tighter",
]
