"""Durable executor state on the compacted ``<prefix>executor-state`` topic.

Exactly-once *effects* need two facts to survive a crash: "this directive was
already taken" (so a redelivery is ignored) and "how far did its plan get" (so a
restart neither repeats a step nor forgets to undo one). Each record is the
whole latest state of one directive, keyed by directive id; compaction keeps the
last one. Every write is acknowledged by the broker before the executor goes on
(write-ahead), which is what makes the record trustworthy after SIGKILL.

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
from metaheal.kafka import Consumer, KafkaUnavailable, Producer

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

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self.settings = settings
        self.topic = settings.topics.name("executor-state")
        self._producer = producer or Producer(settings.kafka)
        self.records: dict[str, PlanRecord] = {}

    def load(self, timeout: float = 30.0) -> dict[str, PlanRecord]:
        """Read the topic to its end (blocking) and keep the last record per directive."""
        records: dict[str, PlanRecord] = {}
        # Empty partitions answer after fetch.wait.max.ms: keep start-up (and takeover) quick.
        fast: dict[str, Any] = {"fetch.wait.max.ms": 50}
        consumer = Consumer(self.settings.kafka, **fast)
        try:
            for msg in consumer.read_to_end(self.topic, timeout=timeout):
                key, value = (msg.key() or b"").decode(), msg.value()
                if value is None:
                    records.pop(key, None)
                    continue
                try:
                    records[key] = PlanRecord.model_validate_json(value)
                except ValueError as exc:
                    logger.error("executor_state_corrupt key=%s offset=%s error=%s", key, msg.offset(), exc)
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

    def get(self, directive_id: str) -> PlanRecord | None:
        return self.records.get(directive_id)

    def put_sync(self, record: PlanRecord) -> PlanRecord:
        record = record.model_copy(update={"updated_at": time.time()})
        self._producer.send(self.topic, record.model_dump_json().encode(), key=record.directive_id)
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
