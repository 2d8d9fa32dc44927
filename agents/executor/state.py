"""Durable executor state on the compacted ``<prefix>executor-state`` topic.

Exactly-once *effects* need two facts to survive a crash: "this directive was
already taken" (so a redelivery is ignored) and "how far did its plan get" (so a
restart neither repeats a step nor forgets to undo one). Each record is the
whole latest state of one directive, keyed by directive id; compaction keeps the
last one. Every write is acknowledged by the broker before the executor goes on
(write-ahead), which is what makes the record trustworthy after SIGKILL.

Every record is signed by the executor's key (``executor_state`` in
:data:`metaheal.ledger.signing.RECORD_WRITERS`) and verified on load: an unsigned,
mis-signed or foreign record, or an older signed record replayed after a newer one, is
refused (dead letter with the reason, listed in :attr:`StateStore.refused` for the
executor's ``trust_violation`` entry) and never recovered.

>>> r = PlanRecord(directive_id="d1", service="api", status="executing", step_started=1, steps_done=1)
>>> r.interrupted_step()
1
>>> r.model_copy(update={"steps_done": 2}).interrupted_step() is None
True
>>> PlanRecord(directive_id="d1", service="api", status="done").in_flight
False
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from metaheal.config import Settings
from metaheal.errors import LedgerKeyError, RecordRefused
from metaheal.events import DeadLetter
from metaheal.kafka import ConsumedMessage, Consumer, KafkaUnavailable, Producer
from metaheal.kafka.serializers import AvroSerializer
from metaheal.ledger.signing import RecordSigner, RecordVerifier

logger = logging.getLogger(__name__)

Status = Literal["accepted", "awaiting_approval", "executing", "verifying", "awaiting_verdict", "rolling_back", "done"]
IN_FLIGHT: frozenset[str] = frozenset(
    {"accepted", "awaiting_approval", "executing", "verifying", "awaiting_verdict", "rolling_back"}
)


class PlanRecord(BaseModel):
    directive_id: str
    service: str
    status: Status
    plan_id: str | None = None
    directive_json: str | None = None
    #: the directive exactly as it came off the bus (Avro, hex) and its ``metaheal-sig`` envelope, so that
    #: recovery re-verifies the meta loop's signature (None: submitted in process, not from the bus)
    directive_avro: str | None = None
    directive_envelope: str | None = None
    directive_key: str | None = None
    plan_json: str | None = None
    approval_request_json: str | None = None
    trust_decision: str | None = None
    #: Index of the step whose start was recorded last (None: none started yet).
    step_started: int | None = None
    #: How many steps completed (their results are recorded).
    steps_done: int = 0
    rollback_started: int | None = None
    rollback_done: int = 0
    outputs: dict[str, Any] = Field(default_factory=dict)
    rationale: list[str] = Field(default_factory=list)
    result: str | None = None
    execution_started_at: float | None = None
    #: when verification started: only samples from then on judge the change (also while awaiting a verdict)
    verify_since: float | None = None
    #: when verification came out inconclusive and the change was kept, awaiting a verdict
    inconclusive_at: float | None = None
    verdict_request_json: str | None = None
    #: the symptoms (``Symptom`` dumps) this plan must bring back to their healthy baseline, fixed at plan time
    symptoms_json: str | None = None
    verdict_expires_at: float | None = None
    #: what the change ends with if no verdict arrives in time ("keep" or "rollback")
    verdict_on_expiry: str | None = None
    updated_at: float = Field(default_factory=time.time)
    owner: str | None = None
    #: Partition of ``<prefix>directives`` the directive came from: whoever owns it recovers the plan.
    partition: int | None = None
    #: Why the plan is halted (a ledger or Kafka outage), while it waits to resume in place.
    halted: str | None = None
    halted_at: float | None = None
    #: Resume attempts so far, and when the next one is due (wall clock).
    resume_attempts: int = 0
    next_resume_at: float | None = None

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT

    def interrupted_step(self) -> int | None:
        """The step that started but has no recorded result: it may or may not have run."""
        if self.step_started is not None and self.step_started >= self.steps_done:
            return self.step_started
        return None


class StateStore:
    """Latest :class:`PlanRecord` per directive, mirrored in memory, written through to Kafka."""

    RECORD = "executor_state"

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self.settings = settings
        self.topic = settings.topics.name("executor-state")
        self._producer = producer or Producer(settings.kafka)
        self.records: dict[str, PlanRecord] = {}
        self._signer = RecordSigner(settings.keys, "executor")
        self._verifier = RecordVerifier.for_settings(settings)
        #: refused records not yet reported: (dead letter, reason); the executor drains it into the ledger
        self.refused: list[tuple[DeadLetter, RecordRefused]] = []
        self._refused_at: set[tuple[int, int]] = set()
        self._ser_dead = AvroSerializer(DeadLetter)

    def load(self, timeout: float = 30.0) -> dict[str, PlanRecord]:
        """Read the topic to its end (blocking) and keep the last record per directive."""
        records: dict[str, PlanRecord] = {}
        # Empty partitions answer after fetch.wait.max.ms: keep start-up (and takeover) quick.
        fast: dict[str, Any] = {"fetch.wait.max.ms": 50}
        consumer = Consumer(self.settings.kafka, **fast)
        try:
            signed_at: dict[str, float] = {}
            for msg in consumer.read_to_end(self.topic, timeout=timeout):
                key, value = (msg.key() or b"").decode("utf-8", "replace"), msg.value()
                try:
                    env = self._verifier.check(self.RECORD, msg, record_id=key)
                    if env.ts < signed_at.get(key, float("-inf")):
                        raise RecordRefused(
                            "replayed", f"state of {key} signed at {env.ts:.3f}, older than the one already read"
                        )
                except RecordRefused as exc:
                    self._refuse(msg, exc)
                    continue
                signed_at[key] = env.ts
                if value is None:
                    records.pop(key, None)
                    continue
                try:
                    rec = PlanRecord.model_validate_json(value)
                except ValueError as exc:
                    logger.error("executor_state_corrupt key=%s offset=%s error=%s", key, msg.offset(), exc)
                    continue
                if rec.directive_id != key:
                    self._refuse(msg, RecordRefused("id_mismatch", f"state of {rec.directive_id} stored under {key}"))
                    continue
                records[key] = rec
        finally:
            consumer.close()
        for key, rec in records.items():
            # A write acknowledged while we were reading may be newer than what we read.
            current = self.records.get(key)
            if current is None or current.updated_at <= rec.updated_at:
                self.records[key] = rec
        logger.info(
            "executor_state_loaded records=%d in_flight=%d", len(records), sum(r.in_flight for r in records.values())
        )
        return records

    def _refuse(self, msg: ConsumedMessage, exc: RecordRefused) -> None:
        where = (msg.partition(), msg.offset())
        if where in self._refused_at:  # read again on a later load (rebalance): reported once
            return
        self._refused_at.add(where)
        logger.error(
            "executor_state_refused key=%r partition=%d offset=%d reason=%s error=%s",
            msg.key(),
            msg.partition(),
            msg.offset(),
            exc.reason,
            exc,
        )
        dl = DeadLetter.of(msg, f"untrusted executor_state: {exc.reason}", str(exc))
        self.refused.append((dl, exc))
        try:
            self._producer.send(self.settings.topics.name("deadletter"), self._ser_dead(dl), key=msg.key())
        except KafkaUnavailable as err:
            logger.warning("executor_state dead_letter_failed offset=%d error=%s", msg.offset(), err)

    def get(self, directive_id: str) -> PlanRecord | None:
        return self.records.get(directive_id)

    def put_sync(self, record: PlanRecord) -> PlanRecord:
        record = record.model_copy(update={"updated_at": time.time()})
        value = record.model_dump_json().encode()
        try:
            headers = self._signer.sign(self.RECORD, value, key=record.directive_id, record_id=record.directive_id)
        except LedgerKeyError as exc:  # unsigned state would be refused on load: as good as not written
            raise KafkaUnavailable(f"executor state not written: cannot sign it: {exc}") from exc
        self._producer.send(self.topic, value, key=record.directive_id, headers=headers)
        self.records[record.directive_id] = record
        return record

    async def put(self, record: PlanRecord) -> PlanRecord:
        """Write and wait for the broker's ack; raises ``KafkaUnavailable`` if it did not."""
        return await asyncio.to_thread(self.put_sync, record)

    def close(self) -> None:
        self._producer.close(2.0)

    def in_flight(self) -> list[PlanRecord]:
        return [r for r in self.records.values() if r.in_flight]

    def recent_actions(self, since: float) -> list[PlanRecord]:
        """Records whose execution started after ``since`` (to re-seed rate limits)."""
        return [r for r in self.records.values() if r.execution_started_at and r.execution_started_at >= since]


__all__ = ["IN_FLIGHT", "KafkaUnavailable", "PlanRecord", "StateStore"]
