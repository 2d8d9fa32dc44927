"""``ImmutableLog``: append signed entries, replay a cycle, read verified outcomes.

One in-process sequencer assigns ``sequence`` and ``prev_hash``: every ``append``
puts a request on a queue and one writer task drains it in batches (sign, produce
all, one flush, resolve), so any number of coroutines can append concurrently and
the chain stays linear; batching is also what makes thousands of acknowledged
appends per second possible. On start (and after any failure) the sequencer
resumes from the tail of the topic (``__tail__`` in the index topic, then every
ledger record after it), so a sequence is never reused.

Several processes: one ``ImmutableLog`` per process (share it between the
components of a process). Processes take turns through the writer lease
(:mod:`metaheal.ledger.lease`): a writer appends only while it holds the lease,
gives it back after ``ledger.lease_idle_release_seconds`` of idleness, and a new
holder first reads the entries the previous one wrote. A process that cannot get
the lease within the append timeout gets :class:`LedgerUnavailable`.

Fail closed: any failure to sign (missing key, actor not allowed) or to get the
broker's acknowledgement raises :class:`LedgerUnavailable`; callers must then not
act.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import fastavro

from metaheal.config import Settings
from metaheal.errors import DecodeError, LedgerKeyError, LedgerUnavailable
from metaheal.events import LedgerEntry
from metaheal.kafka import (
    ConsumedMessage,
    KafkaError,
    KafkaException,
    KafkaUnavailable,
    Message,
    PartitionReader,
    Producer,
    RawProducer,
)
from metaheal.kafka.admin import Admin
from metaheal.kafka.limits import loads
from metaheal.kafka.serializers import (
    HEADER_LEN,
    AvroDeserializer,
    AvroSerializer,
    check_header,
)
from metaheal.ledger.authz import allowed, subsystems, valid_actor
from metaheal.ledger.canonical import canonical_json
from metaheal.ledger.chain import entry_hash, message, record_headers, record_key
from metaheal.ledger.index import TAIL_KEY, CycleIndex, index_partition
from metaheal.ledger.keys import KeyRegistry
from metaheal.ledger.lease import LEASE_KEY, LeaseState
from metaheal.ledger.outcomes import OutcomeEntry
from metaheal.ledger.sequencer import Sequencer, Signer
from metaheal.observability import LEDGER_APPEND_SECONDS, LEDGER_APPENDS
from metaheal.topics import declared_topics

logger = logging.getLogger(__name__)

MAX_BATCH = 2000


@dataclass
class _Request:
    fields: dict[str, Any]
    future: asyncio.Future[LedgerEntry]


class ImmutableLog:
    """The signed, hash-chained ledger on ``<prefix>ledger``.

    ``append`` returns only after the broker acknowledged the entry (idempotent
    producer, ``acks=all``). Reads use the cycle index so that a replay touches
    only the records of that cycle.
    """

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        self.settings = settings
        self.topic = settings.topics.name("ledger")
        self.index_topic = settings.topics.name("ledger-index")
        self.timeout = timeout if timeout is not None else settings.ledger.append_timeout_seconds
        self._decode = AvroDeserializer(LedgerEntry)
        self._encode = AvroSerializer(LedgerEntry)
        self._io = threading.Lock()  # one thread at a time touches clients, tail and index
        self._producer: RawProducer | None = None
        self._reader: PartitionReader | None = None
        self._tail: Sequencer | None = None
        self._index = CycleIndex()
        self._index_pos: dict[int, int] = {}  # index partition -> next offset to read (key present: loaded)
        self._index_parts = 0  # partitions of the index topic (0: not known yet)
        self._ledger_pos = 0  # next ledger offset not yet indexed
        self._dirty: set[str] = set()
        self._queue: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._topics_ok = False
        self._lease = LeaseState()
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held_until = 0.0  # our own claim's expiry (wall clock) while we hold the lease
        self._release_handle: asyncio.TimerHandle | None = None

    # -- public API -----------------------------------------------------------------------------

    async def append(
        self,
        *,
        actor: str,
        action: str,
        resource: str = "",
        subsystem: str = "",
        payload: dict[str, Any] | None = None,
        result: str = "",
        cycle_id: str = "",
        signature: str | None = None,
    ) -> LedgerEntry:
        """Sign and durably append one entry; raises :class:`LedgerUnavailable` on any failure.

        The design's call shape works as written: without ``cycle_id`` the entry belongs to
        ``payload["cycle_id"]``. ``signature`` is accepted for that shape and not used: the
        entry is signed with the actor's registered key, and the returned entry carries it.
        """
        if not cycle_id and isinstance(payload, dict) and isinstance(payload.get("cycle_id"), str):
            cycle_id = payload["cycle_id"]
        if signature:
            logger.warning(
                "ledger_append_signature_ignored actor=%s action=%s (signed with the actor's key)", actor, action
            )
        if self._closed:
            raise LedgerUnavailable("ledger is closed")
        if not valid_actor(actor):
            raise LedgerUnavailable(f"actor: {actor!r} is not a known actor")
        if not allowed(actor, action):
            raise LedgerUnavailable(f"action: actor {actor!r} may not sign {action!r}")
        if actor == "ledger":
            raise LedgerUnavailable("actor: 'ledger' entries (checkpoints) are cut by the sequencer itself")
        if not cycle_id or not isinstance(cycle_id, str):
            raise LedgerUnavailable("cycle_id: required (a non-empty string, as cycle_id= or payload['cycle_id'])")
        for name, value in (("resource", resource), ("subsystem", subsystem), ("result", result)):
            if not isinstance(value, str):
                raise LedgerUnavailable(f"{name}: must be a string, got {type(value).__name__}")
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise LedgerUnavailable(f"payload: must be a JSON object (dict), got {type(payload).__name__}")
        try:
            payload_text = canonical_json(payload)
        except (TypeError, ValueError) as exc:
            raise LedgerUnavailable(f"payload: {exc}") from None
        fields = {
            "actor": actor,
            "action": action,
            "resource": resource,
            "subsystem": subsystem,
            "payload": payload_text,
            "result": result,
            "cycle_id": cycle_id,
        }
        loop = asyncio.get_running_loop()
        req = _Request(fields, loop.create_future())
        self._queue.append(req)
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._drain())
        started = time.perf_counter()
        entry = await req.future
        LEDGER_APPENDS.inc()
        LEDGER_APPEND_SECONDS.observe(time.perf_counter() - started)
        return entry

    async def replay_cycle(self, cycle_id: str) -> list[LedgerEntry]:
        """That cycle's entries in sequence order (read through the index, not a scan)."""
        return await asyncio.to_thread(self.replay_cycle_sync, cycle_id)

    async def get_signed_outcomes(
        self, subsystem: str | None = None, hours_back: float = 24, limit: int = 100
    ) -> list[OutcomeEntry]:
        """The newest ``limit`` verified ``execution_outcome`` entries, oldest first.

        ``subsystem="meta_coordinated_healing"`` also selects the loop's entries written under
        its earlier names (:func:`~metaheal.ledger.authz.subsystems`).
        """
        return await asyncio.to_thread(self.get_signed_outcomes_sync, subsystem, hours_back, limit)

    def close(self) -> None:
        self._closed = True
        if self._release_handle is not None:
            self._release_handle.cancel()
        with self._io:
            self._release_locked()
            if self._producer is not None:
                self._producer.flush(5.0)
                self._producer = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- writer ---------------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._release_handle is not None:
            self._release_handle.cancel()
            self._release_handle = None
        try:
            await self._drain_queue()
        finally:
            idle = self.settings.ledger.lease_idle_release_seconds
            if self._held_until and not self._closed:
                loop = asyncio.get_running_loop()
                self._release_handle = loop.call_later(idle, lambda: loop.create_task(self._idle_release()))

    async def _idle_release(self) -> None:
        if self._queue or (self._writer is not None and not self._writer.done()) or self._closed:
            return
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with self._io:
            if not self._queue:
                self._release_locked()

    def _release_locked(self) -> None:
        """Give the lease back so another process can append without waiting for expiry."""
        if not self._held_until or self._producer is None:
            return
        self._held_until = 0.0
        try:
            self._produce_lease("release", 0.0)
            logger.debug("ledger_lease_released owner=%s", self._owner)
        except (KafkaException, KafkaUnavailable, BufferError) as exc:
            logger.warning("ledger_lease_release_failed error=%s (it expires on its own)", exc)

    async def _drain_queue(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                entries = await asyncio.to_thread(self._write_batch, [r.fields for r in batch])
            except BaseException as exc:  # every waiter learns of the failure
                err = exc if isinstance(exc, LedgerUnavailable) else LedgerUnavailable(f"append failed: {exc!r}")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(err)
                if not isinstance(exc, Exception):
                    raise
                continue
            for r, e in zip(batch, entries, strict=True):
                if r.future.done():
                    continue
                if isinstance(e, LedgerEntry):
                    r.future.set_result(e)
                else:
                    r.future.set_exception(e)

    def _write_batch(self, requests: list[dict[str, Any]]) -> list[LedgerEntry | LedgerUnavailable]:
        with self._io:
            try:
                return self._write_batch_locked(requests)
            except LedgerUnavailable:
                self._tail = None  # unknown what was written: resync from the topic next time
                raise
            except KafkaUnavailable as exc:
                self._tail = None
                raise LedgerUnavailable(str(exc)) from exc

    def _write_batch_locked(self, requests: list[dict[str, Any]]) -> list[LedgerEntry | LedgerUnavailable]:
        """Sign and produce a batch; a request whose key is missing fails alone (without a sequence)."""
        try:
            registry = KeyRegistry.load(self.settings.keys)
        except LedgerKeyError as exc:
            raise LedgerUnavailable(str(exc)) from None
        signers: dict[str, Signer | LedgerUnavailable] = {}
        for actor in [f["actor"] for f in requests] + ["ledger"]:
            if actor not in signers:
                try:
                    signers[actor] = registry.signing_key(actor)
                except LedgerKeyError as exc:
                    signers[actor] = LedgerUnavailable(str(exc))
        ledger_key = signers["ledger"]
        ledger_signer = None if isinstance(ledger_key, LedgerUnavailable) else ledger_key
        if ledger_signer is None:  # no checkpoints without the ledger key; entries still go out
            logger.warning("ledger_checkpoint_skipped reason=no_ledger_key")
        self._hold_lease()
        if self._tail is None:
            self._sync()
        assert self._tail is not None
        work = self._tail.copy()
        entries: list[LedgerEntry] = []
        results: list[LedgerEntry | LedgerUnavailable] = []
        for fields in requests:
            signer = signers[fields["actor"]]
            if isinstance(signer, LedgerUnavailable):
                results.append(signer)
                continue
            sealed = work.add(fields, signer, ledger_signer)
            results.append(sealed[0])
            entries += sealed
        if not entries:
            return results
        offsets = self._produce_and_ack(entries)
        # Acknowledged: the scratch state becomes the tail; index the new records.
        work.last_offset = max(offsets)
        self._tail = work
        for e, off in zip(entries, offsets, strict=True):
            self._index_entry(e, off)
        self._ledger_pos = max(self._ledger_pos, work.last_offset + 1)
        self._write_index()
        logger.debug("ledger_appended count=%d next_sequence=%d", len(entries), work.next_sequence)
        return results

    def _produce_and_ack(self, entries: list[LedgerEntry]) -> list[int]:
        producer = self._get_producer()
        offsets: list[int | None] = [None] * len(entries)
        errors: list[str] = []

        def report(i: int) -> Callable[[KafkaError | None, Message], None]:
            def cb(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    errors.append(str(err))
                else:
                    offsets[i] = msg.offset()

            return cb

        try:
            for i, e in enumerate(entries):
                while True:
                    try:
                        producer.produce(
                            self.topic,
                            value=self._encode(e),
                            key=record_key(e).encode(),
                            headers=[(k, v.encode()) for k, v in record_headers(e).items()],
                            partition=0,
                            on_delivery=report(i),
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
            remaining = producer.flush(self.timeout)
        except KafkaException as exc:
            raise LedgerUnavailable(f"cannot produce to {self.topic}: {exc}") from exc
        acked = [o for o in offsets if o is not None]
        if remaining or errors or len(acked) < len(offsets):
            self._producer = None  # its queue may hold records: never reuse it
            why = errors[0] if errors else f"{remaining} record(s) unacknowledged after {self.timeout}s"
            raise LedgerUnavailable(f"ledger append not acknowledged by the broker: {why}")
        return acked

    def _write_index(self) -> None:
        """Best effort: the index is derived data, rebuilt from the ledger if stale."""
        tail = self._tail
        assert tail is not None
        acked_at: dict[int, list[int]] = {}
        failed: list[str] = []

        def acked(err: KafkaError | None, msg: Message) -> None:
            partition, offset = msg.partition(), msg.offset()
            if err is None and partition is not None and offset is not None:  # both set once delivered
                acked_at.setdefault(partition, []).append(offset)
            elif err is not None:
                failed.append(str(err))

        try:
            producer = self._get_producer()
            parts = self._partitions()
            if self._dirty:
                for cycle in self._dirty:
                    producer.produce(
                        self.index_topic,
                        value=self._index.encode_rows(cycle),
                        key=cycle.encode(),
                        partition=index_partition(cycle, parts),
                        on_delivery=acked,
                    )
                # The tail says "indexed up to here": it goes out only after every cycle record was
                # acknowledged (they are on other partitions, so their order is not kept for us).
                if producer.flush(self.timeout) or failed:
                    raise KafkaUnavailable(failed[0] if failed else "index records unacknowledged")
            producer.produce(
                self.index_topic,
                value=json.dumps(tail.to_json()).encode(),
                key=TAIL_KEY.encode(),
                partition=0,
                on_delivery=acked,
            )
            if producer.flush(self.timeout) or failed:
                raise KafkaUnavailable(failed[0] if failed else "index tail unacknowledged")
            self._dirty.clear()
            for part, offsets in acked_at.items():
                pos = self._index_pos.get(part)
                if pos is not None and min(offsets) == pos and len(offsets) == max(offsets) - min(offsets) + 1:
                    self._index_pos[part] = max(offsets) + 1  # nothing foreign in between: no need to re-read
        except (KafkaException, KafkaUnavailable, BufferError) as exc:
            logger.warning("ledger_index_write_failed error=%s (rebuilt from the ledger later)", exc)

    def _produce_lease(self, op: str, expires: float) -> None:
        rec = {"op": op, "owner": self._owner, "ts": time.time(), "expires": expires}
        producer = self._get_producer()
        producer.produce(self.index_topic, value=json.dumps(rec).encode(), key=LEASE_KEY.encode(), partition=0)
        if producer.flush(self.timeout):
            raise LedgerUnavailable("lease record not acknowledged by the broker")

    def _read_index(self) -> None:
        """Partition 0 of the index topic: the lease and the tail."""
        self._ensure_topics()
        for m in self._read_to_end(self.index_topic, self._index_pos.get(0, 0)):
            self._take_index_record(m)

    def _hold_lease(self) -> None:
        """Hold the writer lease (claim or renew it); wait while another process holds it."""
        lease_s = self.settings.ledger.writer_lease_seconds
        if lease_s <= 0:
            return
        if self._held_until - time.time() > lease_s / 2:
            return  # held, with time to spare: no I/O on the hot path
        was_holder = self._held_until > time.time()
        deadline = time.monotonic() + self.timeout
        while True:
            self._read_index()
            now = time.time()
            if self._lease.free_for(self._owner, now):
                expires = now + lease_s
                self._produce_lease("claim", expires)
                self._read_index()
                if self._lease.owner == self._owner:
                    self._held_until = expires
                    if not was_holder and self._tail is not None:
                        self._resume_after_handover()
                    return
            if time.monotonic() > deadline:
                self._held_until = 0.0
                raise LedgerUnavailable(
                    f"ledger writer lease held by {self._lease.owner} (another process) "
                    f"for {max(0.0, self._lease.expires - time.time()):.1f}s more; not appended"
                )
            time.sleep(0.05)

    def _resume_after_handover(self) -> None:
        """Another process may have appended since we last held the lease: continue after its entries."""
        assert self._tail is not None
        before = self._tail.next_sequence
        self._catch_up(self._tail)
        if self._tail.next_sequence != before:
            logger.info("ledger_lease_handover resumed_from=%d next_sequence=%d", before, self._tail.next_sequence)

    def _get_producer(self) -> RawProducer:
        if self._producer is None:
            overrides = {"linger.ms": 2, "message.timeout.ms": int(self.timeout * 1000)}
            producer = Producer(self.settings.kafka, idempotent=True, **overrides).raw
            try:  # metadata first: an unknown topic would wait for librdkafka's 1 s refresh timer
                for topic in (self.topic, self.index_topic):
                    producer.list_topics(topic, timeout=self.timeout)
            except KafkaException as exc:
                raise LedgerUnavailable(f"cannot reach the broker for {self.topic}: {exc}") from exc
            self._producer = producer
        return self._producer

    # -- reading the tail and the index ---------------------------------------------------------

    def _get_reader(self) -> PartitionReader:
        if self._reader is None:
            self._reader = PartitionReader(self.settings.kafka)
        return self._reader

    def _partitions(self) -> int:
        """Partition count of the index topic (1 for a ledger made before it had several)."""
        if not self._index_parts:
            self._ensure_topics()
            try:
                self._index_parts = self._get_reader().partitions(self.index_topic, timeout=self.timeout)
            except LedgerUnavailable:
                raise
            except KafkaUnavailable as exc:
                raise LedgerUnavailable(str(exc)) from exc
        return self._index_parts

    def _ensure_topics(self) -> None:
        if self._topics_ok:
            return
        wanted = {self.topic, self.index_topic}
        specs = [s for s in declared_topics(self.settings) if s.name in wanted]
        Admin(self.settings.kafka, timeout=self.timeout).ensure(specs)
        self._topics_ok = True

    def _read_to_end(self, topic: str, start: int) -> Iterable[ConsumedMessage]:
        try:
            yield from self._get_reader().read(topic, start, timeout=self.timeout)
        except LedgerUnavailable:
            raise
        except KafkaUnavailable as exc:
            raise LedgerUnavailable(str(exc)) from exc

    def _catch_up(self, tail: Sequencer | None = None, cycles: Iterable[str] | None = None) -> None:
        """Load the index records needed, then index the ledger records after them.

        ``cycles``: the index partitions of these cycles are loaded (``None``: all of
        them, which a writer (``tail``) and a whole-index query need). Partition 0
        (lease, ``__tail__``) is always read, and read *before* a partition is loaded
        for the first time: index records are acknowledged before the tail that
        covers them, so a partition read after the tail holds everything the tail
        claims is indexed. Ledger records after the stored tail are indexed here
        directly, which is why a loaded cycle partition never needs re-reading.
        Steady state is one round trip for partition 0 and the ledger.
        """
        try:
            self._ensure_topics()
            parts = self._partitions()
            want = set(range(parts)) if cycles is None else {index_partition(c, parts) for c in cycles}
            new = sorted(p for p in want if p not in self._index_pos and p != 0)
            fresh = 0 not in self._index_pos or tail is not None
            if fresh:  # the tail decides where the ledger read starts: read it first, alone
                for m in self._read_to_end(self.index_topic, self._index_pos.get(0, 0)):
                    self._take_index_record(m)
                self._index_pos.setdefault(0, 0)
                stored = self._index.tail
                if tail is not None and stored is not None and int(stored["next_sequence"]) > tail.next_sequence:
                    tail.load_json(stored)
                if stored is not None and self._ledger_pos == 0:
                    self._ledger_pos = int(stored["last_offset"]) + 1
            starts = {(self.index_topic, p): self._index_pos.get(p, 0) for p in new}
            if not fresh:
                starts[(self.index_topic, 0)] = self._index_pos[0]
            for p in new:
                self._index_pos[p] = 0
            if new:  # newly loaded partitions first: a long ledger read next to many idle partitions is slow
                for m in self._get_reader().read_parts(starts, timeout=self.timeout):
                    self._take_index_record(m)
                starts = {}
            starts[(self.topic, 0)] = self._ledger_pos
            for m in self._get_reader().read_parts(starts, timeout=self.timeout):
                if m.topic() == self.index_topic:
                    self._take_index_record(m)
                else:
                    self._take_ledger_record(m, tail)
        except KafkaException as exc:
            raise LedgerUnavailable(f"cannot read the ledger: {exc}") from exc
        except LedgerUnavailable:
            raise
        except KafkaUnavailable as exc:
            raise LedgerUnavailable(str(exc)) from exc

    def _take_index_record(self, m: ConsumedMessage) -> None:
        offset, value = m.offset(), m.value()
        self._index_pos[m.partition()] = offset + 1
        key = (m.key() or b"").decode()
        if value is None:  # a tombstone: forget what the record said
            if key == TAIL_KEY:
                self._index.tail = None
            elif key != LEASE_KEY:
                self._index.drop(key)
            return
        try:
            if key == LEASE_KEY:
                self._lease.apply(loads(value))
            elif key == TAIL_KEY:
                self._index.tail = loads(value)
            else:
                self._index.put_raw(key, value)
        except ValueError as exc:
            logger.warning("ledger_index_record_ignored offset=%d error=%s", offset, exc)

    def _take_ledger_record(self, m: ConsumedMessage, tail: Sequencer | None) -> None:
        offset, value = m.offset(), m.value()
        self._ledger_pos = max(self._ledger_pos, offset + 1)
        if value is None:
            return
        try:
            e = self._decode_fast(value)
        except DecodeError as exc:
            logger.warning("ledger_record_undecodable offset=%d error=%s", offset, exc)
            return
        self._index_entry(e, offset)
        if tail is not None:
            _advance(tail, e, offset)

    def _decode_fast(self, value: bytes) -> Any:
        """Decode to a plain attribute object, for indexing and chaining only (never returned to
        callers): the Avro schema already fixes every field's type, and even ``model_construct``
        costs more than the Avro decode on a large rebuild."""
        check_header(value, self._decode.fingerprint, "LedgerEntry")
        try:
            datum = fastavro.schemaless_reader(io.BytesIO(value[HEADER_LEN:]), self._decode.parsed_schema, None)
            d = cast(dict[str, Any], datum)  # a record schema decodes to a dict
        except Exception as exc:
            raise DecodeError(f"corrupt LedgerEntry datum: {exc!r}") from None
        return SimpleNamespace(**d)

    def _sync(self) -> None:
        """Resume the sequencer: from the stored tail, then every ledger record after it."""
        self._index = CycleIndex()
        self._lease = LeaseState()  # re-derived from the whole index topic below
        self._index_pos = {}
        self._ledger_pos = 0
        self._tail = None
        tail = self._new_sequencer()
        self._catch_up(tail)
        self._tail = tail
        if self._dirty:  # records the stored index did not know: write them (and the tail) now
            self._write_index()
        logger.info("ledger_sequencer_resumed next_sequence=%d topic=%s", self._tail.next_sequence, self.topic)

    def _new_sequencer(self) -> Sequencer:
        ls = self.settings.ledger
        return Sequencer(
            checkpoint_every_entries=ls.checkpoint_every_entries,
            checkpoint_every_seconds=ls.checkpoint_every_seconds,
            origin=ls.origin,
        )

    def _index_entry(self, e: LedgerEntry, offset: int) -> None:
        if self._index.add(
            offset=offset,
            sequence=e.sequence,
            cycle_id=e.cycle_id,
            action=e.action,
            subsystem=e.subsystem,
            timestamp=e.timestamp,
        ):
            self._dirty.add(e.cycle_id)

    def _fetch(self, offsets: list[int]) -> list[ConsumedMessage]:
        """Read exactly the records at ``offsets`` (runs of nearby offsets in one fetch)."""
        wanted = sorted(set(offsets))
        if not wanted:
            return []
        runs: list[list[int]] = [[wanted[0]]]
        for o in wanted[1:]:
            if o - runs[-1][-1] <= 64:
                runs[-1].append(o)
            else:
                runs.append([o])
        reader = self._get_reader()
        consumer = reader.consumer
        out: list[ConsumedMessage] = []
        try:
            for run in runs:
                need = set(run)
                reader.assign(self.topic, run[0], timeout=self.timeout)
                deadline = time.monotonic() + self.timeout
                while need:
                    if time.monotonic() > deadline:
                        raise LedgerUnavailable(f"timed out fetching ledger offsets {sorted(need)[:5]}")
                    for m in consumer.consume(500, 0.005):
                        err = m.error()
                        if err is None:
                            rec = cast(ConsumedMessage, m)
                            offset = rec.offset()
                            if offset in need:
                                need.discard(offset)
                                out.append(rec)
                            if offset >= run[-1]:
                                need.clear()
                                break
                        elif err.code() == KafkaError._PARTITION_EOF:
                            need.clear()  # compacted away or not there: nothing more to read
                            break
                        else:
                            raise LedgerUnavailable(f"cannot read {self.topic}: {err}")
        finally:
            consumer.unassign()
        return out

    def _decoded(self, msgs: Iterable[ConsumedMessage]) -> list[LedgerEntry]:
        out = []
        for m in msgs:
            value = m.value()
            if value is None:
                continue
            try:
                out.append(self._decode(value))
            except DecodeError as exc:
                logger.warning("ledger_record_undecodable offset=%d error=%s", m.offset(), exc)
        return sorted(out, key=lambda e: e.sequence)

    def _rows(self, cycle_id: str) -> list[list[Any]]:
        rows = self._index.rows(cycle_id)
        if self._index.corrupt:  # the index cannot be trusted: re-index every ledger record
            logger.warning("ledger_index_rebuild reason=corrupt_index_record topic=%s", self.index_topic)
            self._index.corrupt = False
            self._ledger_pos = 0
            self._catch_up(cycles=[cycle_id])
            rows = self._index.rows(cycle_id)
        return rows

    def replay_cycle_sync(self, cycle_id: str) -> list[LedgerEntry]:
        with self._io:
            self._catch_up(cycles=[cycle_id])
            rows = self._rows(cycle_id)
            msgs = self._fetch([r[0] for r in rows])
        return [e for e in self._decoded(msgs) if e.cycle_id == cycle_id]

    def get_signed_outcomes_sync(
        self, subsystem: str | None = None, hours_back: float = 24, limit: int = 100
    ) -> list[OutcomeEntry]:
        cutoff = (datetime.now(UTC) - timedelta(hours=hours_back)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        names = None if subsystem is None else subsystems(subsystem)
        with self._io:
            self._catch_up()
            rows = [
                r
                for _, r in self._index.rows_with_action("execution_outcome")
                if r[4] >= cutoff and (names is None or r[3] in names)
            ]
            rows.sort(key=lambda r: r[1])
            msgs = self._fetch([r[0] for r in rows[-limit:]] if limit > 0 else [])
        registry = KeyRegistry.load(self.settings.keys).with_operators(self.settings.operators)
        out = []
        for e in self._decoded(msgs):
            rec = registry.get(e.key_id)
            ok = (
                rec is not None
                and rec.actor == e.actor
                and not rec.revoked
                and rec.valid_at(e.timestamp)
                and e.action == "execution_outcome"
                and allowed(e.actor, e.action)
                and entry_hash(e) == e.entry_hash
                and rec.verify(message(e), e.signature)
            )
            if ok:
                out.append(OutcomeEntry.of(e))
            else:
                logger.warning("ledger_outcome_unverified sequence=%d (excluded)", e.sequence)
        return out


def _advance(t: Sequencer, e: LedgerEntry, offset: int) -> None:
    """Chain a record found after the stored tail onto the resumed state; never reuse a sequence."""
    if e.sequence < t.next_sequence:
        logger.debug("ledger_record_behind_tail sequence=%d next=%d offset=%d", e.sequence, t.next_sequence, offset)
        return
    if e.sequence > t.next_sequence or e.prev_hash != t.prev_hash or entry_hash(e) != e.entry_hash:
        logger.error(
            "ledger_chain_break sequence=%d expected=%d offset=%d (run metaheal ledger verify)",
            e.sequence,
            t.next_sequence,
            offset,
        )
    t.follow(e, offset)
