"""The executor: directive -> plan -> trust check -> (approval) -> steps -> verify -> rollback -> outcome.

This is where metaheal touches real systems, so every effect is bounded and
written down before it happens:

* **write-ahead**: a step's start is a signed ledger entry and a durable
  executor-state record *before* the actuator runs; if either write fails the
  step does not run (``LedgerUnavailable`` / ``KafkaUnavailable`` stop the plan,
  and the state left behind is picked up on the next start);
* **bounded**: each step has its own timeout, and all of them share the
  directive's time budget; rollback steps keep their own timeouts (undoing must
  stay possible after the budget is spent);
* **exactly-once effects**: a directive id seen in the durable state is never
  executed again; each mutating call carries the idempotency key ``plan_id/step``;
  on start, plans that were mid-flight are resumed where they stopped
  (:meth:`Executor._recover_run`): an acknowledged step goes on to the next step or
  to verification, a step sent without an acknowledgement is re-sent with the same
  key when the playbook declares it idempotent, otherwise it is never repeated and
  the plan's effect is verified on live telemetry before anything is compensated;
  one outcome per plan whatever crashes (:mod:`~metaheal.agents.executor.recovery`);
* **halted plans resume in place**: a ledger or Kafka outage halts a plan; it is
  retried with backoff until the outage ends, its state visible in ``metaheal status``;
* **evidence**: verification verdicts carry the query, observed values and
  threshold; missing telemetry is inconclusive, never a success — and never a
  failure either: a change whose verification cannot decide stays in place
  (``awaiting_verdict``, outcome ``inconclusive``) while a signed verdict request asks
  an operator to keep or roll it back; telemetry that returns meanwhile settles it
  (a pass: ``success``; a clear violation: rollback), and an unanswered request ends
  as the playbook's ``verdict_expiry`` (``keep`` by default). ``on_inconclusive:
  rollback`` in a playbook restores the old behaviour of rolling back at once.

Run one with ``python -m metaheal.agents.executor.service --config metaheal.yaml``.

>>> mutates([PlanStep(action="http.get"), PlanStep(action="wait_for")], upto=2)
False
>>> mutates([PlanStep(action="http.get"), PlanStep(action="http.post")], upto=2)
True
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from metaheal.agents.common.playbooks import Playbook, load_playbooks
from metaheal.agents.common.policy import Policies, TrustDecision, plan_guardrail_reasons
from metaheal.agents.executor.actuators import (
    ActuatorError,
    StepContext,
    StepResult,
    get_actuator,
)
from metaheal.agents.executor.actuators.urls import url_problem
from metaheal.agents.executor.approvals import (
    VERDICT_MEANING,
    ApprovalInbox,
    build_request,
    build_verdict_request,
    load_registry,
    plan_hash,
    rejection_reason,
    used_decisions,
)
from metaheal.agents.executor.incidents import Incident, IncidentMemory
from metaheal.agents.executor.planner import (
    NoApplicablePlaybook,
    PlanContext,
    build_plan,
    plan_id_for,
)
from metaheal.agents.executor.planner import plan as make_plan
from metaheal.agents.executor.recovery import (
    backoff,
    crash_point,
    find_outcome,
    idempotency_key,
    outcome_from_entry,
    outcome_id_for,
    outcome_published,
    published,
    verified_entry,
)
from metaheal.agents.executor.state import PlanRecord, StateStore
from metaheal.agents.executor.templating import render
from metaheal.agents.executor.verification import (
    LiveTelemetry,
    Symptom,
    Verdict,
    check_symptom,
    overall,
    run_verification,
)
from metaheal.agents.meta.leader import GuardrailFollower, tighter
from metaheal.config import ServiceSettings, Settings, load_settings
from metaheal.errors import DecodeError, RecordRefused, TemplateError
from metaheal.events import (
    AgenticPlan,
    ApprovalRequest,
    DeadLetter,
    Directive,
    LedgerEntry,
    PlanStep,
    SignedOutcome,
)
from metaheal.kafka import ConsumedMessage, Consumer, KafkaUnavailable, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger import ImmutableLog
from metaheal.ledger.authz import SUBSYSTEM
from metaheal.ledger.keys import KeyRegistry
from metaheal.ledger.signing import HEADER, RecordSigner, RecordVerifier

logger = logging.getLogger(__name__)

MUTATING = frozenset({"http.post", "command"})
#: Extra grace for an actuator to return after its own timeout before it is cancelled.
CANCEL_GRACE = 1.0
#: While awaiting a verdict, how long each look at late telemetry (or the health endpoint) may take.
RECHECK_WINDOW = 0.2
#: While awaiting an approval, how often the kill switch and freeze windows are looked at.
POLICY_RECHECK = 0.25


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")


def mutates(steps: list[PlanStep], upto: int) -> bool:
    """Whether any of the first ``upto`` steps may have changed the service."""
    return any(s.action in MUTATING for s in steps[:upto])


@dataclass
class Run:
    """One directive's journey; ``record`` is what survives a crash."""

    directive: Directive
    record: PlanRecord
    plan: AgenticPlan | None = None
    trust_decision: str = "denied"
    started: float = field(default_factory=time.monotonic)
    verdicts: list[Verdict] = field(default_factory=list)
    insights: list[str] = field(default_factory=list)
    #: a non-idempotent step sent without an acknowledgement (recovery): it may or may not have run
    in_doubt: int | None = None
    #: the incident (service + focus area) this plan is an attempt in, as it stood when the plan was made
    incident: Incident | None = None

    @property
    def symptoms(self) -> list[Symptom]:
        """What this plan must bring back to the healthy baseline (fixed at plan time, survives restarts)."""
        if not self.record.symptoms_json:
            return []
        return [Symptom.model_validate(s) for s in json.loads(self.record.symptoms_json)]

    @property
    def rationale(self) -> list[str]:
        return self.record.rationale

    def note(self, line: str) -> None:
        self.record.rationale.append(line)


class Executor:
    """A long-running executor: a consumer-group member on ``<prefix>directives``."""

    def __init__(
        self,
        settings: Settings,
        *,
        log: ImmutableLog | None = None,
        playbooks: dict[str, Playbook] | None = None,
        executor_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.id = executor_id or f"executor-{uuid.uuid4().hex[:8]}"
        self.playbooks = playbooks if playbooks is not None else load_playbooks(settings.playbooks)
        self.log = log or ImmutableLog(settings)
        self._own_log = log is None
        self.policies = Policies(settings)
        self.state = StateStore(settings)
        self.telemetry = LiveTelemetry(settings)
        self.inbox = ApprovalInbox(settings)
        #: the meta loop's signed guardrail level: a directive's level is never looser than it
        self.guardrails = GuardrailFollower(settings)
        self.producer = Producer(settings.kafka)
        self._tasks: dict[str, asyncio.Task[SignedOutcome | None]] = {}
        self._sem = asyncio.Semaphore(settings.executor.max_concurrent_plans)
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seen_decisions: set[str] = set()
        #: cycles whose ledger entries were read for used decision ids (durable replay protection)
        self._seeded_cycles: set[str] = set()
        self._ser_plan = AvroSerializer(AgenticPlan)
        self._ser_outcome = AvroSerializer(SignedOutcome)
        self._ser_request = AvroSerializer(ApprovalRequest)
        self._ser_dead = AvroSerializer(DeadLetter)
        self._de_directive = AvroDeserializer(Directive)
        # directives off the bus: signed by the meta loop and recent (each id runs once: the durable state);
        # stored ones (recovery): the signature only
        self._verify_directive = RecordVerifier.for_settings(settings, live=True)
        self._verify_stored = RecordVerifier.for_settings(settings)
        self._signer = RecordSigner(settings.keys, "executor")
        self._violations_logged: dict[tuple[str, str], float] = {}
        self._reporting: asyncio.Future[None] | None = None
        self.ready = threading.Event()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, recover: bool = True) -> None:
        """Load durable state, start the telemetry and approval readers, recover mid-flight plans.

        ``recover=False`` (what :meth:`run` uses) recovers only plans that did not come
        through the consumer group; the others are recovered by whichever executor is
        assigned their directive partition, so a scaled-out group recovers each plan once.
        """
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.state.load)
        await self._report_refused_state()
        for rec in self.state.recent_actions(time.time() - 3600):
            self.policies.record_action(rec.service, rec.execution_started_at or 0.0)
        await asyncio.to_thread(self.telemetry.start)
        await asyncio.to_thread(self.inbox.start)
        await asyncio.to_thread(self.guardrails.start)
        for rec in self.state.in_flight():
            if recover or rec.partition is None:
                self._spawn(rec.directive_id, self._recover(rec))

    def _recover_partitions(self, partitions: set[int]) -> None:
        if self.state.refused:
            self._reporting = asyncio.ensure_future(self._report_refused_state())
        for rec in self.state.in_flight():
            if rec.partition in partitions and rec.directive_id not in self._tasks:
                self._spawn(rec.directive_id, self._recover(rec))

    async def close(self) -> None:
        for t in list(self._tasks.values()):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=1.5)
        t0 = time.monotonic()
        self.telemetry.stop()
        self.inbox.stop()
        self.guardrails.stop()
        self.producer.close(2.0)
        self.state.close()
        if self._own_log:
            self.log.close()
        logger.debug("executor_closed id=%s seconds=%.2f", self.id, time.monotonic() - t0)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start(recover=False)
        group = f"{self.settings.topics.prefix}{self.settings.executor.group_id}"
        consumer = Consumer(self.settings.kafka, group_id=group)
        consumer.subscribe([self.settings.topics.name("directives")], on_assign=self._on_assign)
        logger.info("executor_started id=%s group=%s dry_run=%s", self.id, group, self.settings.executor.dry_run)
        try:
            while not stop.is_set():
                # fail closed: a reader that stopped (telemetry for verification, approvals) stops the executor
                self.telemetry.check()
                self.inbox.check()
                self.guardrails.check()
                msgs = await asyncio.to_thread(consumer.poll_batch, 20, 0.1)
                for msg in msgs:
                    await self._accept(msg)
                    await asyncio.to_thread(consumer.commit, msg)
        finally:
            await asyncio.to_thread(consumer.close)
            await self.close()

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        # Another executor may have owned these partitions: take over its durable state
        # and recover its mid-flight plans (on the event loop; this runs in the poll thread).
        self.state.load()
        assigned = {p.partition for p in partitions}
        assert self._loop is not None  # set by start(), before the consumer subscribes
        self._loop.call_soon_threadsafe(self._recover_partitions, assigned)
        self.ready.set()
        logger.info("executor_assigned id=%s partitions=%s", self.id, [p.partition for p in partitions])

    async def _accept(self, msg: ConsumedMessage) -> None:
        """A directive off the bus: acted on only once the meta loop's signature checks out."""
        try:
            signed = self._verify_directive.check("directive", msg)
            directive = self._de_directive(msg.value() or b"")
            if signed.record_id != directive.directive_id:
                raise RecordRefused(
                    "id_mismatch", f"envelope id {signed.record_id!r} is not directive {directive.directive_id!r}"
                )
        except RecordRefused as exc:
            await self._dead_letter(msg, f"untrusted directive: {exc.reason}", str(exc))
            await self._trust_violation("directive", msg, exc)
            return
        except DecodeError as exc:
            await self._dead_letter(msg, "invalid directive", str(exc))
            return
        envelope = dict(msg.headers() or []).get(HEADER)
        await self.submit(
            directive,
            partition=msg.partition(),
            signed=(msg.value() or b"", msg.key(), envelope or b""),
        )

    async def _trust_violation(self, record_type: str, msg: ConsumedMessage | DeadLetter, exc: RecordRefused) -> None:
        """A ``trust_violation`` ledger entry for a refused record: at most one per record type and reason a
        minute (a flood of forged records is dead-lettered whole but cannot flood the ledger)."""
        key = (record_type, exc.reason)
        now = time.time()
        if now - self._violations_logged.get(key, 0.0) < 60.0:
            return
        self._violations_logged[key] = now
        if isinstance(msg, DeadLetter):
            where = {"topic": msg.source_topic, "partition": msg.partition, "offset": msg.offset}
        else:
            where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
        try:
            await self.log.append(
                actor="executor",
                action="trust_violation",
                resource=f"records:{record_type}",
                subsystem=SUBSYSTEM,
                payload={"record_type": record_type, "reason": exc.reason, "detail": exc.detail, **where},
                result="refused",
                cycle_id="none",
            )
        except KafkaUnavailable as err:  # the dead letter holds the record; the log line names it
            logger.warning("trust_violation not recorded record_type=%s error=%s", record_type, err)

    async def _report_refused_state(self) -> None:
        while self.state.refused:
            dl, exc = self.state.refused.pop(0)
            await self._trust_violation("executor_state", dl, exc)

    async def submit(
        self,
        directive: Directive,
        *,
        partition: int | None = None,
        signed: tuple[bytes, bytes | None, bytes] | None = None,
    ) -> asyncio.Task[SignedOutcome | None] | None:
        """Take a directive unless it was seen before; returns its task (None for a duplicate).

        ``signed``: the record's value, key and ``metaheal-sig`` envelope as read off the bus (kept in the
        durable state so recovery re-verifies them); callers in this process submit trusted directives without.
        """
        if directive.directive_id in self._tasks or self.state.get(directive.directive_id) is not None:
            logger.info(
                "directive_duplicate directive=%s service=%s (not executed again)",
                directive.directive_id,
                directive.service,
            )
            return None
        rec = PlanRecord(
            directive_id=directive.directive_id,
            service=directive.service,
            status="accepted",
            plan_id=plan_id_for(directive.directive_id),
            directive_json=directive.model_dump_json(),
            directive_avro=signed[0].hex() if signed else None,
            directive_key=signed[1].hex() if signed and signed[1] is not None else None,
            directive_envelope=signed[2].decode("utf-8", "replace") if signed else None,
            owner=self.id,
            partition=partition,
        )
        await self.state.put(rec)
        return self._spawn(directive.directive_id, self._process(Run(directive, rec)))

    def _spawn(self, key: str, coro: Any) -> asyncio.Task[SignedOutcome | None]:
        async def guarded() -> SignedOutcome | None:
            work, attempt = coro, 0
            try:
                while True:
                    async with self._sem:
                        try:
                            return await work
                        except KafkaUnavailable as exc:
                            # Ledger or state down: halt here, then resume in place from the durable state.
                            attempt += 1
                            delay = backoff(attempt)
                            logger.error(
                                "plan_halted directive=%s attempt=%d resume_in=%.1fs error=%s", key, attempt, delay, exc
                            )
                            await self._mark_halted(key, str(exc), attempt, delay)
                    await asyncio.sleep(delay)
                    rec = self.state.get(key)
                    if rec is None or not rec.in_flight:
                        return None
                    logger.info("plan_resuming directive=%s attempt=%d status=%s", key, attempt, rec.status)
                    work = self._recover(rec.model_copy(update={"halted": None, "next_resume_at": None}))
            finally:
                self._tasks.pop(key, None)

        task = asyncio.get_running_loop().create_task(guarded(), name=f"plan-{key}")
        self._tasks[key] = task
        return task

    async def _mark_halted(self, key: str, error: str, attempt: int, delay: float) -> None:
        """Make the halt visible in the durable state (best effort: Kafka itself may be what is down)."""
        rec = self.state.get(key)
        if rec is None:
            return
        now = time.time()
        update = {
            "halted": error[:500],
            "halted_at": rec.halted_at if rec.halted else now,
            "resume_attempts": attempt,
            "next_resume_at": now + delay,
        }
        try:
            await self.state.put(rec.model_copy(update=update))
        except KafkaUnavailable as exc:
            logger.warning("plan_halted_not_recorded directive=%s error=%s", key, exc)

    async def _dead_letter(self, msg: ConsumedMessage, reason: str, error: str) -> None:
        dl = DeadLetter.of(msg, reason, error)
        logger.warning("directive_dead_letter offset=%s error=%s", msg.offset(), error)
        await asyncio.to_thread(self.producer.send, self.settings.topics.name("deadletter"), self._ser_dead(dl))

    # --- ledger and publishing -------------------------------------------------------------------

    async def _ledger(self, run: Run, actor: str, action: str, payload: dict[str, Any], result: str) -> LedgerEntry:
        pid = run.plan.plan_id if run.plan else run.record.plan_id
        payload = {
            "plan_id": pid,
            "directive_id": run.directive.directive_id,
            "service": run.directive.service,
            **payload,
        }
        return await self.log.append(
            actor=actor,
            action=action,
            # the design's execution_outcome is about the service; every other step about the plan
            resource=run.directive.service if action == "execution_outcome" else f"plan/{pid}",
            subsystem=SUBSYSTEM,
            payload=json.loads(json.dumps(payload, default=str)),
            result=result,
            cycle_id=run.directive.cycle_id,
        )

    async def _save(self, run: Run, **changes: Any) -> None:
        run.record = await self.state.put(run.record.model_copy(update=changes))

    async def _publish(self, topic: str, key: str, value: bytes) -> None:
        await asyncio.to_thread(self.producer.send, self.settings.topics.name(topic), value, key=key)

    async def _publish_outcome(self, outcome: SignedOutcome) -> None:
        """On ``<prefix>outcomes``, signed by the executor (the meta loop learns only from those)."""
        value = self._ser_outcome(outcome)
        headers = self._signer.sign("outcome", value, key=outcome.service, record_id=outcome.outcome_id)
        topic = self.settings.topics.name("outcomes")
        await asyncio.to_thread(self.producer.send, topic, value, key=outcome.service, headers=headers)

    # --- the pipeline ----------------------------------------------------------------------------

    def _service(self, name: str) -> ServiceSettings | None:
        return self.settings.service(name)

    async def _process(self, run: Run) -> SignedOutcome | None:
        d = run.directive
        causes = d.ml_advice.root_causes
        run.note(
            f"directive {d.directive_id}: {d.focus_area} on {d.service} (cycle {d.cycle_id}, "
            f"{d.guardrail_level} guardrails, confidence {d.confidence:.2f}, budget {d.time_budget_seconds}s)"
        )
        run.note(
            f"root causes: {', '.join(causes) or 'none given'}; "
            f"advised playbooks: {', '.join(d.ml_advice.recommended_playbooks) or 'none'}"
        )
        if not d.requires_verification:
            run.note("the directive says requires_verification=false: ignored, every change is verified")
        svc = self._service(d.service)
        if svc is None:
            return await self._deny(run, [f"service {d.service} is not configured"], ["unknown_service"])
        if svc.admin_url is not None:
            problem = url_problem(svc.admin_url, self.settings.executor.admin_hosts)
            if problem is not None:
                why = f"admin_url of {svc.name} refused: {problem}"
                return await self._deny(
                    run, [why], ["admin_url"], TrustDecision(verdict="deny", level=d.guardrail_level, reasons=[why])
                )
        extra = self._plan_variables(svc)
        incident = run.incident = await self._incident(d)
        excluded = incident.failed if incident is not None else {}
        symptoms = self._symptoms(d, incident)
        run.record = run.record.model_copy(
            update={
                "outputs": {**run.record.outputs, **extra},
                "symptoms_json": json.dumps([s.model_dump() for s in symptoms]) if symptoms else None,
            }
        )
        if incident is not None:
            run.note(
                f"incident {d.service}/{d.focus_area} open since {_utc(incident.opened_at)}: attempt "
                f"{incident.automatic_attempts + 1}; tried {incident.tried()}"
                + (f"; not again: {', '.join(sorted(excluded))}" if excluded else "")
            )
        for sym in symptoms:
            run.note(
                f"symptom to clear: {sym.series} on {sym.service} back to {sym.op} {sym.threshold:g} "
                f"(healthy {sym.stat} {sym.reference:g} x{sym.tolerance:g})"
                + (f": {sym.finding}" if sym.finding else "")
            )

        def allowed(service: str, name: str) -> str | None:
            return excluded.get(name) or self.policies.playbook_denied(service, name)

        exhausted = False
        try:
            plan, skipped = make_plan(d, self.playbooks, svc, policy_filter=allowed, extra=extra)
        except NoApplicablePlaybook as exc:
            if not excluded:
                return await self._deny(run, exc.reasons, ["no_playbook"])
            # every applicable playbook failed in this incident: a human decides whether the best one is tried again
            exhausted = True
            try:
                plan, skipped = make_plan(
                    d, self.playbooks, svc, policy_filter=self.policies.playbook_denied, extra=extra
                )
            except NoApplicablePlaybook as again:
                return await self._deny(run, again.reasons, ["no_playbook"])
        run.plan = plan
        if "dependency" in extra:
            run.note(f"suspect dependency {extra['dependency']} (worst error rate/latency from {d.service})")
        for s in skipped:
            run.note(f"skipped {s}")
        run.note(f"planned {plan.selected_playbook} ({len(plan.steps)} steps, risk {plan.risk_assessment.risk_score})")
        await self._ledger(
            run,
            "agentic_planner",
            "plan_created",
            {
                "playbook": plan.selected_playbook,
                "steps": [s.action for s in plan.steps],
                "skipped": skipped,
                "risk": plan.risk_assessment.model_dump(),
                "estimated_duration": plan.estimated_duration,
                "symptoms": [s.model_dump() for s in symptoms],
                "incident": incident.summary() if incident is not None else None,
            },
            "planned",
        )
        level = self._level(d)
        if level != d.guardrail_level:
            run.note(f"guardrails {level}, not the directive's {d.guardrail_level}: the meta loop's signed level")
        decision = self.policies.check(plan, level)
        limit = self.settings.executor.max_incident_attempts
        if incident is not None and (exhausted or incident.automatic_attempts >= limit) and decision.verdict != "deny":
            evidence = "; ".join(s.finding or f"{s.series} off its healthy {s.stat} {s.reference:g}" for s in symptoms)
            why = (
                f"every applicable playbook failed in this incident, {plan.selected_playbook} again"
                if exhausted
                else f"next: {plan.selected_playbook}"
            )
            decision = decision.model_copy(
                update={
                    "verdict": "needs_approval",
                    "reasons": [
                        *decision.reasons,
                        f"incident {d.service}/{d.focus_area} since {_utc(incident.opened_at)}: "
                        f"{incident.automatic_attempts} automatic attempt(s) did not fix it ({incident.tried()}); "
                        f"evidence: {evidence or 'no symptom signal known'}; {why}; "
                        f"a human decides (executor.max_incident_attempts {limit})",
                    ],
                }
            )
            run.insights.append(f"incident {d.service}/{d.focus_area}: {why}; asked a human")
        try:  # from here on the service's lock may be held: release it whatever happens
            plan.trust_approval_required = decision.verdict == "needs_approval"
            await self._save(run, plan_json=plan.model_dump_json())
            await self._publish("plans", plan.service, self._ser_plan(plan))
            if decision.verdict == "deny":
                return await self._deny(run, decision.reasons, decision.violations, decision)
            await self._ledger(run, "agentic_planner", "trust_checked", decision.model_dump(), decision.verdict)
            run.note(f"trust check ({decision.level}): {decision.verdict}: {'; '.join(decision.reasons)}")
            if decision.verdict == "needs_approval":
                request = build_request(plan, decision.reasons, self.settings.executor.approval_expiry_seconds)
                await self._save(run, status="awaiting_approval", approval_request_json=request.model_dump_json())
                await self._ledger(run, "agentic_planner", "approval_requested", request.model_dump(), "pending")
                await self._publish("approvals", plan.plan_id, self._ser_request(request))
                outcome = await self._await_approval(run, request)
                if outcome is not None:
                    return outcome
            else:
                run.trust_decision = "auto_approved"
            return await self._execute(run)
        finally:
            self.policies.unlock(plan.service, plan.plan_id)

    def _level(self, d: Directive) -> str:
        """The directive's guardrail level, tightened to the meta loop's current signed level."""
        return tighter(d.guardrail_level, self.guardrails.level)

    async def _incident(self, d: Directive) -> Incident | None:
        """The open incident of ``d``'s service and focus area, rebuilt from the signed outcomes in the ledger."""
        cfg = self.settings.executor
        entries = await self.log.get_signed_outcomes(
            subsystem=SUBSYSTEM, hours_back=max(24.0, 2 * cfg.incident_window_seconds / 3600), limit=2000
        )
        memory = IncidentMemory.from_entries(
            entries, window=cfg.incident_window_seconds, max_attempts=cfg.max_incident_attempts
        )
        return memory.current(d.service, d.focus_area, now=time.time())

    def _symptoms(self, d: Directive, incident: Incident | None, *, since: float | None = None) -> list[Symptom]:
        """The incident's symptoms (judged against the reference of its first attempt), else the live view's."""
        if incident is not None and incident.symptoms:
            out = []
            for raw in incident.symptoms:
                try:
                    out.append(Symptom.model_validate(raw))
                except ValueError as exc:
                    logger.warning("incident_symptom_skipped service=%s error=%s", d.service, exc)
            if out:
                return out
        cfg = self.settings.executor
        since = time.time() - cfg.symptom_lookback_seconds if since is None else since
        return self.telemetry.focus_symptoms(d.service, d.focus_area, since=since, tolerance=cfg.symptom_tolerance)

    def _plan_variables(self, svc: ServiceSettings) -> dict[str, Any]:
        """Values from live telemetry that playbooks may use (absent ones stay undefined)."""
        dep = self.telemetry.worst_dependency(svc.name, svc.dependencies, since=time.time() - 300)
        if dep is None and len(svc.dependencies) == 1:
            dep = svc.dependencies[0]
        return {"dependency": dep} if dep else {}

    async def _deny(
        self, run: Run, reasons: list[str], violations: list[str], decision: TrustDecision | None = None
    ) -> SignedOutcome:
        run.trust_decision = "denied"
        payload: dict[str, Any] = {"reasons": reasons, "violations": violations}
        if decision is not None:
            payload["level"] = decision.level
        actor = "agentic_planner"
        await self._ledger(
            run, actor, "trust_violation" if decision is not None else "trust_checked", payload, "denied"
        )
        run.note(f"denied: {'; '.join(reasons)}")
        run.insights.append(f"denied by policy: {', '.join(violations)}")
        return await self._finish(run, "denied", None)

    async def _seed_used_decisions(self, cycle_id: str) -> None:
        """Decision ids the ledger of ``cycle_id`` shows as taken in (a restart must not forget them)."""
        if cycle_id in self._seeded_cycles:
            return
        entries = await asyncio.to_thread(self.log.replay_cycle_sync, cycle_id)
        registry = KeyRegistry.load(self.settings.keys)
        self._seen_decisions |= used_decisions(entries, lambda e: verified_entry(e, registry))
        self._seeded_cycles.add(cycle_id)

    @contextlib.asynccontextmanager
    async def _slot_released(self) -> AsyncIterator[None]:
        """Give the plan's concurrency slot back while it waits for a human (taken again afterwards)."""
        task = asyncio.current_task()
        holds = task is not None and task.get_name().startswith("plan-")
        if holds:
            self._sem.release()
        try:
            yield
        finally:
            if holds:
                await asyncio.shield(self._sem.acquire())

    def _decision_problem(self, dec: Any, request: ApprovalRequest, run: Run, received_at: float) -> str | None:
        assert run.plan is not None
        registry = load_registry(self.settings)
        if registry is None:  # fail closed: a revocation could not be seen
            return f"unverifiable: the key registry in {self.settings.keys} cannot be read"
        return rejection_reason(
            dec,
            request,
            self.settings,
            seen=self._seen_decisions,
            received_at=received_at,
            registry=registry,
            current_hash=plan_hash(run.plan),
        )

    async def _await_approval(self, run: Run, request: ApprovalRequest) -> SignedOutcome | None:
        """Wait for a valid decision; returns an outcome for deny/expiry/a policy stop, None to go on executing.

        The wait holds no concurrency slot, and the kill switch and freeze windows are looked at
        every :data:`POLICY_RECHECK` seconds: engaging one stops the waiting plan.
        """
        assert run.plan is not None
        await self._seed_used_decisions(run.directive.cycle_id)
        async with self._slot_released():
            return await self._take_decision(run, request)

    async def _take_decision(self, run: Run, request: ApprovalRequest) -> SignedOutcome | None:
        assert run.plan is not None
        used = 0
        while True:
            remaining = request.expires_at - time.time()
            batch = await self.inbox.next_decisions(request.plan_id, used, max(0.0, min(POLICY_RECHECK, remaining)))
            if not batch:
                stop = self._waiting_stopped(run)
                if stop is not None:
                    return await stop
                if time.time() >= request.expires_at:
                    await self._ledger(
                        run,
                        "executor",
                        "approval_received",
                        {"request_id": request.request_id, "expired_at": request.expires_at},
                        "expired",
                    )
                    run.note(f"approval request {request.request_id} expired unanswered")
                    run.trust_decision = "expired"
                    return await self._finish(run, "expired", None)
                continue
            used += len(batch)
            for received_at, dec in batch:
                why = self._decision_problem(dec, request, run, received_at)
                if why is not None:
                    await self._ledger(
                        run,
                        "executor",
                        "trust_violation",
                        {
                            "reason": why,
                            "decision": dec.model_dump(),
                        },
                        "rejected",
                    )
                    run.note(f"rejected approval decision {dec.decision_id}: {why}")
                    self._seen_decisions.add(dec.decision_id)
                    if why.startswith("expired"):
                        run.trust_decision = "expired"
                        return await self._finish(run, "expired", None)
                    continue
                self._seen_decisions.add(dec.decision_id)
                await self._ledger(run, "executor", "approval_received", dec.model_dump(), dec.decision)
                crash_point("after_approval")
                if dec.decision == "approve":
                    run.trust_decision = f"approved_by:{dec.operator}"
                    run.note(f"approved by {dec.operator}: {dec.reason or 'no reason given'}")
                    return None
                run.trust_decision = "denied"
                run.note(f"denied by {dec.operator}: {dec.reason or 'no reason given'}")
                run.insights.append(f"operator {dec.operator} denied {run.plan.selected_playbook}")
                return await self._finish(run, "denied", None)

    def _waiting_stopped(self, run: Run) -> Coroutine[Any, Any, SignedOutcome] | None:
        """A coroutine finishing the plan as denied if the kill switch or a freeze began while it waited; else None."""
        assert run.plan is not None
        reasons, violations = [], []
        if self.policies.kill_switch_engaged():
            reasons.append("global kill switch engaged while the plan awaited approval")
            violations.append("kill_switch")
        freeze = self.policies.frozen(run.plan.service, time.time())
        if freeze:
            reasons.append(f"{freeze} began while the plan awaited approval")
            violations.append("change_freeze")
        if not violations:
            return None
        decision = TrustDecision(verdict="deny", level=run.directive.guardrail_level, reasons=reasons)
        return self._deny(run, reasons, violations, decision)

    async def _policy_gate(self, run: Run, index: int, *, rollback: bool, counted: bool = True) -> str | None:
        """Policies right before a mutating step (rollback and recovery included): None to go ahead, else why not.

        A refusal is a signed ``trust_violation`` naming the policy and the step that was not run.
        """
        assert run.plan is not None
        service = run.plan.service
        if self._service(service) is None:
            reasons, violations = [f"service {service} is neither configured nor registered"], ["unknown_service"]
        else:
            reasons, violations = self.policies.before_step(service, run.plan.plan_id, counted=counted)
        if not violations:
            return None
        what = f"{'rollback ' if rollback else ''}step {index}"
        await self._ledger(
            run,
            "executor",
            "trust_violation",
            {"reasons": reasons, "violations": violations, "phase": "before_step", "step": index, "rollback": rollback},
            "denied",
        )
        why = f"policy stopped {what} before it ran: {'; '.join(reasons)}"
        run.note(why)
        run.insights.append(f"stopped by policy: {', '.join(violations)}")
        return why

    # --- execution -----------------------------------------------------------------------------

    def _variables(self, run: Run) -> dict[str, Any]:
        svc = self._service(run.directive.service) or ServiceSettings(name=run.directive.service)
        return {**PlanContext(service=svc, directive=run.directive).variables(), **run.record.outputs}

    def _step_context(self, run: Run, key: str | None = None) -> StepContext:
        svc = self._service(run.directive.service)
        hosts: frozenset[str] = frozenset()
        if svc is not None and svc.admin_url:
            hosts = frozenset({httpx.URL(svc.admin_url).host})
        return StepContext(
            service=run.directive.service,
            telemetry=self.telemetry,
            allowed_hosts=hosts,
            started_at=time.time(),
            idempotency_key=key,
            admin_url=svc.admin_url if svc is not None else None,
            admin_hosts=tuple(self.settings.executor.admin_hosts),
        )

    async def _run_step(
        self, step: PlanStep, params: dict[str, Any], run: Run, timeout: float, key: str | None = None
    ) -> StepResult:
        actuator = get_actuator(step.action)
        try:
            return await asyncio.wait_for(
                actuator.run(params, self._step_context(run, key), timeout), timeout + CANCEL_GRACE
            )
        except TimeoutError:
            return StepResult(ok=False, error=f"step timed out after {timeout:.1f}s", duration_seconds=timeout)
        except ActuatorError as exc:
            return StepResult(ok=False, error=str(exc))

    async def _execute(self, run: Run) -> SignedOutcome | None:
        assert run.plan is not None
        plan, d = run.plan, run.directive
        if self.settings.executor.dry_run:
            await self._dry_run(run)
            return None
        if mutates(plan.steps, len(plan.steps)):
            stopped = await self._policy_gate(run, 0, rollback=False, counted=False)
            if stopped is not None:
                run.trust_decision = "denied"
                return await self._finish(run, "denied", None)
        await self._ledger(
            run,
            "executor",
            "execution_started",
            {
                "playbook": plan.selected_playbook,
                "trust_decision": run.trust_decision,
                "time_budget_seconds": d.time_budget_seconds,
            },
            "started",
        )
        now = time.time()
        self.policies.record_action(plan.service, now)
        await self._save(run, status="executing", execution_started_at=now, trust_decision=run.trust_decision)
        return await self._run_steps(run, time.monotonic() + d.time_budget_seconds)

    def _resume_deadline(self, run: Run) -> float:
        """The directive's time budget still left (wall clock since execution started: crashes count)."""
        started = run.record.execution_started_at or time.time()
        left = run.directive.time_budget_seconds - (time.time() - started)
        return time.monotonic() + max(0.0, left)

    async def _run_steps(self, run: Run, deadline: float) -> SignedOutcome:
        """Steps from the first one not acknowledged, then verification (or undo on failure).

        A step whose write-ahead exists without a result (``step_started == i`` here) is
        re-sent with its idempotency key; recovery sends only idempotent or read-only
        steps down this path.
        """
        assert run.plan is not None
        plan, d = run.plan, run.directive
        failure = None
        for i in range(run.record.steps_done, len(plan.steps)):
            step = plan.steps[i]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = f"time budget of {d.time_budget_seconds}s exceeded before step {i} ({step.action})"
                break
            try:
                params = render(json.loads(step.params_json), self._variables(run))
            except TemplateError as exc:
                failure = f"step {i} ({step.action}) cannot be rendered: {exc}"
                break
            timeout = min(step.timeout, remaining)
            budget_bound = timeout < step.timeout
            mutating = step.action in MUTATING
            if mutating:
                stopped = await self._policy_gate(run, i, rollback=False)
                if stopped is not None:
                    if not mutates(plan.steps, run.record.steps_done):
                        run.trust_decision = "denied"
                        return await self._finish(run, "denied", None)
                    failure = stopped
                    break
            key = idempotency_key(plan.plan_id, i) if mutating else None
            again = run.record.step_started == i  # its write-ahead exists: a re-send after a crash
            # Write-ahead: the start is durable before the actuator is called.
            await self._ledger(
                run,
                "executor",
                "step_executed",
                {
                    "step": i,
                    "phase": "resend" if again else "start",
                    "action": step.action,
                    "params": params,
                    "timeout": timeout,
                    "idempotency_key": key,
                },
                "started",
            )
            if not again:
                await self._save(run, step_started=i)
            if mutating:
                crash_point("after_write_ahead")
            res = await self._run_step(step, params, run, timeout, key)
            if mutating:
                crash_point("after_call")
            await self._ledger(
                run,
                "executor",
                "step_executed",
                {
                    "step": i,
                    "phase": "result",
                    "action": step.action,
                    "ok": res.ok,
                    "error": res.error,
                    "detail": res.detail,
                    "duration_seconds": res.duration_seconds,
                },
                "ok" if res.ok else "failed",
            )
            outputs = dict(run.record.outputs)
            if step.save_as:
                outputs[step.save_as] = res.value
            await self._save(run, steps_done=i + 1, outputs=outputs)
            run.note(
                f"step {i} {step.action}: {'ok' if res.ok else 'failed: ' + str(res.error)}"
                f" ({res.duration_seconds:.2f}s)"
            )
            if not res.ok:
                if budget_bound and time.monotonic() >= deadline - 0.05:
                    failure = f"time budget of {d.time_budget_seconds}s exceeded during step {i} ({step.action})"
                else:
                    failure = f"step {i} ({step.action}) failed: {res.error}"
                break
        if failure is not None:
            run.insights.append(failure)
            return await self._undo(run, failure, verification_passed=None)
        return await self._verify(run, deadline)

    async def _verify(self, run: Run, deadline: float | None) -> SignedOutcome:
        assert run.plan is not None
        plan = run.plan
        await self._save(run, status="verifying")
        since = time.time()
        verdicts = []
        for v in plan.verifications:
            try:
                spec = render(json.loads(v.spec_json), self._variables(run))
            except TemplateError as exc:
                verdict = Verdict(check=v.type, status="inconclusive", reason=f"cannot render: {exc}")
            else:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        verdicts.append(
                            Verdict(
                                check=v.type, status="inconclusive", reason="time budget exhausted before verification"
                            )
                        )
                        break
                    spec["within"] = min(float(spec.get("within", 60.0)), remaining)
                verdict = await run_verification(
                    spec, service=plan.service, since=since, telemetry=self.telemetry, baselines=self._baselines(run)
                )
            verdicts.append(verdict)
            await self._ledger(run, "executor", "verification_result", verdict.model_dump(), verdict.status)
            crash_point("during_verification")
            run.note(f"verify {verdict.check}: {verdict.status} ({verdict.reason or 'ok'})")
            if verdict.status != "pass":
                break  # one failing check decides; the rest would only delay the rollback
        expected = len(plan.verifications)
        if len(verdicts) == expected and all(v.status == "pass" for v in verdicts):
            # the playbook's own checks hold: now the symptom that made the meta loop act must be gone too
            symptoms, missing = await self._symptoms_to_check(run)
            expected += len(symptoms) + (missing is not None)
            if missing is not None:
                verdicts.append(missing)
                await self._ledger(run, "executor", "verification_result", missing.model_dump(), missing.status)
                run.note(f"verify symptom: {missing.status} ({missing.reason})")
            within = self._symptom_within(plan)
            for sym in symptoms if missing is None else []:
                if deadline is not None:
                    within = min(within, deadline - time.monotonic())
                if within <= 0:
                    break
                verdict = await check_symptom(sym, since=since, within=within, telemetry=self.telemetry)
                verdicts.append(verdict)
                await self._ledger(run, "executor", "verification_result", verdict.model_dump(), verdict.status)
                run.note(f"verify symptom: {verdict.status} ({verdict.reason})")
                if verdict.status != "pass":
                    break
        run.verdicts = verdicts
        passed = overall(verdicts) if verdicts else True
        if len(verdicts) < expected and passed is True:
            passed = None
        if passed:
            run.insights.append(f"{plan.selected_playbook} resolved {run.directive.focus_area} on {plan.service}")
            return await self._finish(run, "success", True)
        if passed is None:
            run.insights.append(f"{plan.selected_playbook} on {plan.service}: verification inconclusive")
            return await self._inconclusive(run, since, "verification inconclusive (missing telemetry is never a pass)")
        run.insights.append(f"{plan.selected_playbook} on {plan.service}: verification failed")
        return await self._undo(run, "verification failed", verification_passed=False)

    async def _symptoms_to_check(self, run: Run) -> tuple[list[Symptom], Verdict | None]:
        """The plan's symptoms; found now if the plan was made before any health window showed them.

        ``(symptoms, None)``, or ``([], verdict)`` with an inconclusive verdict when the service's health
        windows show no symptom signal with a healthy baseline. Without any health window of the service
        (no streams worker) only the playbook's checks can judge; the rationale says so."""
        assert run.plan is not None
        if not run.directive.requires_verification:
            return [], None
        symptoms = run.symptoms
        if not symptoms:
            started = run.record.execution_started_at or time.time()
            symptoms = self._symptoms(
                run.directive, None, since=started - self.settings.executor.symptom_lookback_seconds
            )
            if symptoms:
                await self._save(run, symptoms_json=json.dumps([s.model_dump() for s in symptoms]))
        if symptoms:
            return symptoms, None
        service, focus = run.plan.service, run.directive.focus_area
        if self.telemetry.health_seen(service):
            return [], Verdict(
                check="symptom",
                status="inconclusive",
                query={"service": service, "focus_area": focus, "source": "health"},
                reason=f"no {focus} signal of {service} with a healthy baseline in its health windows: "
                "the symptom cannot be judged",
            )
        run.note(f"no health window of {service} seen (is a streams worker running?): only the playbook's checks judge")
        return [], None

    def _symptom_within(self, plan: AgenticPlan) -> float:
        """How long the symptom may take to clear: the playbook's longest metric check, else 60 s."""
        specs = [json.loads(v.spec_json) for v in plan.verifications if v.type == "metric_threshold"]
        spans = [float(spec.get("within", 60.0)) for spec in specs]
        return max(spans, default=60.0)

    # --- inconclusive: keep the change, ask for a verdict ---------------------------------------

    def _missing_evidence(self, run: Run, since: float) -> list[str]:
        """What verification expected and what was missing since when, in words (for the operator)."""
        assert run.plan is not None
        lines = []
        for v in run.verdicts:
            if v.status != "inconclusive":
                continue
            q = v.query
            if v.check == "metric_threshold" and "metric" in q:
                service, metric = str(q.get("service", run.plan.service)), str(q["metric"])
                last = self.telemetry.last_seen(
                    service, metric, source=str(q.get("source", "telemetry")), stat=str(q.get("stat", "p95"))
                )
                seen = f"last sample at {_utc(last)}" if last is not None else "none seen since the reader started"
                lines.append(
                    f"expected {q.get('min_samples', 1)} sample(s) of {metric} {v.op} {v.threshold} from {service}; "
                    f"none since {_utc(since)} ({seen})"
                    + (f"; {self.telemetry.problem}" if self.telemetry.problem else "")
                )
            else:
                lines.append(f"expected {v.check} {v.op or ''} {v.threshold}: {v.reason} (since {_utc(since)})")
        return lines or ["verification could not decide (time budget or a check it could not run)"]

    async def _inconclusive(self, run: Run, since: float, why: str) -> SignedOutcome:
        assert run.plan is not None
        plan = run.plan
        started = run.record.step_started
        if not mutates(plan.steps, (started + 1) if started is not None else 0):
            run.note(f"{why}; no step changed the service: nothing to keep or roll back")
            return await self._finish(run, "inconclusive", None)
        pb = self.playbooks.get(plan.selected_playbook)
        policy = pb.on_inconclusive if pb else "ask"
        if policy == "rollback":
            run.note(f"{why}; the playbook says on_inconclusive: rollback")
            return await self._undo(run, why, verification_passed=None)
        now = time.time()
        expiry = (pb.verdict_expiry_seconds if pb else None) or self.settings.executor.verdict_expiry_seconds
        on_expiry = pb.verdict_expiry if pb is not None and policy == "ask" else "keep"
        evidence = self._missing_evidence(run, since)
        request = None
        if policy == "ask":
            request = build_verdict_request(plan, evidence, expires_at=now + expiry, on_expiry=on_expiry, now=now)
        run.note(
            f"{why}: the change stays in place awaiting a verdict for {expiry:g}s "
            f"({'an operator is asked' if request else 'on_inconclusive: keep'}; unanswered: {on_expiry})"
        )
        await self._save(
            run,
            status="awaiting_verdict",
            verify_since=since,
            inconclusive_at=now,
            verdict_expires_at=now + expiry,
            verdict_on_expiry=on_expiry,
            verdict_request_json=request.model_dump_json() if request else None,
        )
        await self._ledger(
            run,
            "executor",
            "verdict_requested",
            {
                "evidence": evidence,
                "verdicts": [v.model_dump() for v in run.verdicts],
                "since": since,
                "policy": policy,
                "expires_at": now + expiry,
                "on_expiry": on_expiry,
                "request": request.model_dump() if request else None,
            },
            "pending",
        )
        await self._finish(
            run, "inconclusive", None, final=False, verdict_request_id=request.request_id if request else None
        )
        if request is not None:
            await self._publish("approvals", plan.plan_id, self._ser_request(request))
        return await self._await_verdict(run)

    async def _await_verdict(self, run: Run) -> SignedOutcome:
        """Until an operator answers, late telemetry decides, or the request expires."""
        assert run.plan is not None
        plan, rec = run.plan, run.record
        request = ApprovalRequest.model_validate_json(rec.verdict_request_json) if rec.verdict_request_json else None
        since = rec.verify_since or rec.inconclusive_at or time.time()
        waiting_since = rec.inconclusive_at or time.time()
        expires_at = rec.verdict_expires_at or time.time()
        await self._seed_used_decisions(run.directive.cycle_id)
        used = 0
        while True:
            every = min(self.settings.executor.verdict_recheck_seconds, max(0.0, expires_at - time.time()))
            batch = await self.inbox.next_decisions(plan.plan_id, used, every) if request else []
            if request is None:
                await asyncio.sleep(every)
            used += len(batch)
            for received_at, dec in batch:
                if request is None or dec.request_id != request.request_id:
                    continue  # e.g. the approval that let the plan run
                why = self._decision_problem(dec, request, run, received_at)
                self._seen_decisions.add(dec.decision_id)
                if why is not None:
                    await self._ledger(
                        run, "executor", "trust_violation", {"reason": why, "decision": dec.model_dump()}, "rejected"
                    )
                    run.note(f"rejected verdict decision {dec.decision_id}: {why}")
                    continue
                meaning = VERDICT_MEANING[dec.decision]
                delay = round(time.time() - waiting_since, 3)
                await self._ledger(
                    run,
                    "executor",
                    "verdict_received",
                    {**dec.model_dump(), "verdict": meaning, "delay": delay},
                    meaning,
                )
                if meaning == "keep":
                    run.note(f"kept by {dec.operator} after {delay:.1f}s: {dec.reason or 'no reason given'}")
                    run.insights.append(f"{plan.selected_playbook} on {plan.service} confirmed by {dec.operator}")
                    return await self._finish(
                        run,
                        "success",
                        None,
                        confirmed_by=dec.operator,
                        settled_after=delay,
                        ledger_result=f"success_confirmed_by:{dec.operator}",
                    )
                run.note(f"{dec.operator} asked for a rollback after {delay:.1f}s: {dec.reason or 'no reason given'}")
                return await self._undo(
                    run, f"operator {dec.operator} asked for a rollback", verification_passed=None, settled_after=delay
                )
            verdicts, expected = await self._recheck(run, since)
            passed = (
                overall(verdicts)
                if len(verdicts) == expected
                else (False if any(v.status == "fail" for v in verdicts) else None)
            )
            if passed is not None:
                delay = round(time.time() - waiting_since, 3)
                run.verdicts = verdicts
                for v in verdicts:
                    await self._ledger(
                        run, "executor", "verification_result", {**v.model_dump(), "late": True}, v.status
                    )
                    run.note(f"verify {v.check} (late, after {delay:.1f}s): {v.status} ({v.reason or 'ok'})")
                if passed:
                    run.insights.append(
                        f"{plan.selected_playbook} resolved {run.directive.focus_area} on {plan.service}"
                    )
                    return await self._finish(run, "success", True, settled_after=delay)
                run.insights.append(f"{plan.selected_playbook} on {plan.service}: verification failed late")
                return await self._undo(run, "late verification failed", verification_passed=False, settled_after=delay)
            if time.time() >= expires_at:
                on_expiry = rec.verdict_on_expiry or "keep"
                delay = round(time.time() - waiting_since, 3)
                await self._ledger(
                    run,
                    "executor",
                    "verdict_expired",
                    {
                        "request_id": request.request_id if request else None,
                        "expired_at": expires_at,
                        "verdict": on_expiry,
                    },
                    on_expiry,
                )
                run.note(f"no verdict within {delay:.0f}s: {on_expiry} (the playbook's verdict_expiry)")
                if on_expiry == "rollback":
                    return await self._undo(
                        run, "verdict request expired", verification_passed=None, settled_after=delay
                    )
                run.insights.append(f"{plan.selected_playbook} on {plan.service} kept unverified")
                return await self._finish(run, "inconclusive", None, settled_after=delay)

    async def _recheck(self, run: Run, since: float) -> tuple[list[Verdict], int]:
        """The plan's checks, then its symptoms, on what arrived since ``since``, patiently: a pass or a clear
        violation, or nothing; plus how many verdicts a complete pass has."""
        assert run.plan is not None
        verdicts: list[Verdict] = []
        symptoms = run.symptoms if run.directive.requires_verification else []
        expected = len(run.plan.verifications) + len(symptoms)
        for v in run.plan.verifications:
            try:
                spec = render(json.loads(v.spec_json), self._variables(run))
            except TemplateError as exc:
                return [Verdict(check=v.type, status="inconclusive", reason=f"cannot render: {exc}")], expected
            spec.setdefault("settle", min(20.0, float(spec.get("within", 60.0)) / 2))
            spec["within"] = RECHECK_WINDOW
            verdict = await run_verification(
                spec,
                service=run.plan.service,
                since=since,
                telemetry=self.telemetry,
                patient=True,
                baselines=self._baselines(run),
            )
            verdicts.append(verdict)
            if verdict.status != "pass":
                return verdicts, expected
        settle = min(20.0, self._symptom_within(run.plan) / 2)
        for sym in symptoms:
            verdict = await check_symptom(
                sym, since=since, within=RECHECK_WINDOW, telemetry=self.telemetry, settle=settle, patient=True
            )
            verdicts.append(verdict)
            if verdict.status != "pass":
                break
        return verdicts, expected

    @staticmethod
    def _baselines(run: Run) -> dict[str, float]:
        """Healthy references of the plan's symptom series (what ``value: "baseline * k"`` thresholds resolve to)."""
        return {s.series: s.reference for s in run.symptoms}

    async def _undo(self, run: Run, reason: str, *, verification_passed: bool | None, **extra: Any) -> SignedOutcome:
        assert run.plan is not None
        plan = run.plan
        # Steps with a recorded result were sent; a step only written ahead may never have run.
        touched = mutates(plan.steps, run.record.steps_done)
        if run.in_doubt is not None and not touched:
            why = (
                f"step {run.in_doubt} ({plan.steps[run.in_doubt].action}) may have run and its effect did not "
                "verify; it is not idempotent, so it is neither repeated nor compensated blind"
            )
            run.note(f"{reason}; {why}: escalate")
            run.insights.append(f"{plan.selected_playbook} on {plan.service}: manual check needed ({why})")
            return await self._finish(run, "failed", verification_passed, **extra)
        if not touched:
            run.note(f"no step changed the service ({reason}); nothing to roll back")
            return await self._finish(run, "failed", verification_passed, **extra)
        if not plan.rollback_plan:
            run.note(f"{reason}; playbook has no rollback steps: escalate")
            run.insights.append(f"{plan.selected_playbook} cannot be undone automatically")
            return await self._finish(run, "failed", verification_passed, **extra)
        run.note(f"rolling back: {reason}")
        ok = await self._rollback(run, reason)
        return await self._finish(run, "rolled_back" if ok else "failed", verification_passed, **extra)

    async def _rollback(self, run: Run, reason: str) -> bool:
        assert run.plan is not None
        await self._save(run, status="rolling_back")
        for j in range(run.record.rollback_done, len(run.plan.rollback_plan)):
            step = run.plan.rollback_plan[j]
            try:
                params = render(json.loads(step.params_json), self._variables(run))
            except TemplateError as exc:
                run.note(f"rollback step {j} cannot be rendered: {exc}")
                return False
            key = idempotency_key(run.plan.plan_id, j, rollback=True) if step.action in MUTATING else None
            if step.action in MUTATING and await self._policy_gate(run, j, rollback=True) is not None:
                run.insights.append(f"rollback of {run.plan.selected_playbook} stopped by policy at step {j}: escalate")
                return False
            again = run.record.rollback_started == j  # written ahead before a crash: a re-send
            await self._ledger(
                run,
                "executor",
                "rollback_executed",
                {
                    "step": j,
                    "phase": "resend" if again else "start",
                    "action": step.action,
                    "params": params,
                    "reason": reason,
                    "idempotency_key": key,
                },
                "started",
            )
            if not again:
                await self._save(run, rollback_started=j)
            res = await self._run_step(step, params, run, step.timeout, key)
            await self._ledger(
                run,
                "executor",
                "rollback_executed",
                {
                    "step": j,
                    "phase": "result",
                    "action": step.action,
                    "ok": res.ok,
                    "error": res.error,
                    "detail": res.detail,
                    "duration_seconds": res.duration_seconds,
                },
                "ok" if res.ok else "failed",
            )
            await self._save(run, rollback_done=j + 1)
            run.note(f"rollback step {j} {step.action}: {'ok' if res.ok else 'failed: ' + str(res.error)}")
            if not res.ok:
                run.insights.append(f"rollback of {run.plan.selected_playbook} failed at step {j}: escalate")
                return False
        return True

    async def _dry_run(self, run: Run) -> None:
        assert run.plan is not None
        problems = []
        for i, step in enumerate(run.plan.steps):
            params = json.loads(step.params_json)
            if "{{" in step.params_json:
                continue  # needs a value an earlier step would produce
            try:
                get_actuator(step.action).check(params)
            except ActuatorError as exc:
                problems.append(f"step {i}: {exc}")
        logger.info(
            "dry_run plan=%s playbook=%s trust=%s problems=%s",
            run.plan.plan_id,
            run.plan.selected_playbook,
            run.trust_decision,
            problems,
        )
        run.note(f"dry run: not executed ({'; '.join(problems) or 'all steps check out'})")
        await self._save(run, status="done", result="dry_run")
        return None

    async def _finish(
        self,
        run: Run,
        result: str,
        verification_passed: bool | None,
        *,
        final: bool = True,
        confirmed_by: str | None = None,
        settled_after: float | None = None,
        verdict_request_id: str | None = None,
        ledger_result: str | None = None,
    ) -> SignedOutcome:
        """Sign, record and publish an outcome; ``final=False``: an inconclusive one that a verdict settles later
        (its own outcome id; the plan stays in flight). ``ledger_result`` words the ledger entry's result
        (``success_confirmed_by:<operator>``) where the outcome's typed ``result`` cannot."""
        d, plan = run.directive, run.plan
        duration = time.monotonic() - run.started
        key = run.record.plan_id or d.directive_id
        outcome_id = outcome_id_for(key, final=final)
        shown = f"{result} (confirmed by {confirmed_by})" if confirmed_by else result
        body = {
            "outcome_id": outcome_id,
            "plan_id": plan.plan_id if plan else run.record.plan_id,
            "directive_id": d.directive_id,
            "cycle_id": d.cycle_id,
            "service": d.service,
            "playbook": plan.selected_playbook if plan else "none",
            "focus_area": d.focus_area,
            "root_cause": d.ml_advice.root_causes[0] if d.ml_advice.root_causes else None,
            "result": result,
            "duration_seconds": round(duration, 3),
            "verification_passed": verification_passed,
            "trust_decision": run.trust_decision,
            "rationale": [*run.rationale, f"result: {shown}"],
            "learned_insights": run.insights,
            "verdicts": [v.model_dump() for v in run.verdicts],
            "symptoms": [s.model_dump() for s in run.symptoms],
            "incident": run.incident.summary() if run.incident is not None else None,
            "confirmed_by": confirmed_by,
            "settled_after_seconds": settled_after,
            "verdict_request_id": verdict_request_id,
        }
        entry = await self._ledger(run, "executor", "execution_outcome", body, ledger_result or result)
        outcome = SignedOutcome(
            **{k: v for k, v in body.items() if k not in ("verdicts", "focus_area", "symptoms", "incident")},
            actor="executor",
            actor_signature=entry.signature,
            ts=time.time(),
            ledger_sequence=entry.sequence,
        )
        crash_point("before_publish")
        # Publish, then mark done: a crash in between is found by recovery through the ledger entry,
        # which publishes the outcome only if the topic does not have it (one outcome per plan).
        await self._publish_outcome(outcome)
        if final:
            await self._save(run, status="done", result=ledger_result or result)
        logger.info(
            "outcome directive=%s plan=%s playbook=%s result=%s trust=%s duration=%.2f settled_after=%s",
            d.directive_id,
            outcome.plan_id,
            outcome.playbook,
            ledger_result or result,
            run.trust_decision,
            duration,
            settled_after,
        )
        return outcome

    # --- recovery ------------------------------------------------------------------------------

    def _trusted_directive(self, rec: PlanRecord) -> Directive:
        """The directive of a stored plan, re-verified: the meta loop's signature over the bytes it came in."""
        if rec.directive_avro is None:
            # submitted in this process (no bus record): the executor's own signed state vouches for it
            return Directive.model_validate_json(rec.directive_json or "{}")
        try:
            value = bytes.fromhex(rec.directive_avro)
            key = bytes.fromhex(rec.directive_key) if rec.directive_key else None
        except ValueError:
            raise RecordRefused("bad_envelope", "stored directive bytes are not hex") from None
        signed = self._verify_stored.verify(
            "directive", value, key, {HEADER: (rec.directive_envelope or "").encode()}, record_id=rec.directive_id
        )
        directive = self._de_directive(value)
        if directive.directive_id != rec.directive_id or directive.service != rec.service:
            raise RecordRefused("id_mismatch", f"stored directive {directive.directive_id} is not {rec.directive_id}")
        logger.debug("recovery directive verified directive=%s signed_by=%s", rec.directive_id, signed.actor)
        return directive

    def _rebuilt_plan(self, directive: Directive, rec: PlanRecord) -> AgenticPlan | None:
        """The stored plan rebuilt from the loaded playbooks and the verified directive, trust-checked again.

        The stored ``plan_json`` only names the playbook; steps, rollback and verifications come from the
        playbook as loaded now, and must render to what was stored (step progress counts refer to them).
        """
        if not rec.plan_json:
            return None
        stored = AgenticPlan.model_validate_json(rec.plan_json)
        name = stored.selected_playbook
        pb = self.playbooks.get(name)
        if pb is None:
            raise RecordRefused("unknown_playbook", f"playbook {name!r} of plan {stored.plan_id} is not loaded")
        svc = self._service(directive.service)
        if svc is None:
            raise RecordRefused("unknown_service", f"service {directive.service} is neither configured nor registered")
        denied = self.policies.playbook_denied(directive.service, name)
        if denied:
            raise RecordRefused("policy", denied)
        extra = {k: rec.outputs[k] for k in ("dependency",) if k in rec.outputs}
        try:
            plan = build_plan(directive, pb, svc, now=stored.ts, extra=extra)
        except TemplateError as exc:
            raise RecordRefused("plan_mismatch", f"{name} no longer renders for {svc.name}: {exc}") from None
        if (plan.plan_id, plan.steps, plan.rollback_plan, plan.verifications) != (
            stored.plan_id,
            stored.steps,
            stored.rollback_plan,
            stored.verifications,
        ):
            raise RecordRefused("plan_mismatch", f"plan {stored.plan_id} is not what {name} renders to now")
        level = self._level(directive)
        exceeded = plan_guardrail_reasons(self.settings, level, plan)
        approved = (rec.trust_decision or "").startswith("approved_by:") or rec.status == "awaiting_approval"
        if exceeded and not approved and rec.status != "accepted":
            raise RecordRefused(
                "needs_approval",
                f"{name} exceeds the {level} guardrails and was not approved: {'; '.join(exceeded)}",
            )
        plan.trust_approval_required = bool(exceeded)
        return plan

    async def _recover(self, rec: PlanRecord) -> SignedOutcome | None:
        try:
            directive = self._trusted_directive(rec)
            plan = self._rebuilt_plan(directive, rec)
        except (RecordRefused, DecodeError, ValueError) as exc:
            refused = exc if isinstance(exc, RecordRefused) else RecordRefused("bad_state", str(exc))
            await self._refuse_recovery(rec, refused)
            return None
        run = Run(directive, rec)
        run.trust_decision = rec.trust_decision or "auto_approved"
        if plan is not None:
            run.plan = plan
            self.policies.try_lock(run.plan.service, run.plan.plan_id)
        try:
            return await self._recover_run(run, rec)
        finally:
            if run.plan is not None:
                self.policies.unlock(run.plan.service, run.plan.plan_id)

    async def _refuse_recovery(self, rec: PlanRecord, exc: RecordRefused) -> None:
        """A stored plan that does not check out any more: nothing is run, the refusal is recorded."""
        logger.error("recovery_refused directive=%s reason=%s error=%s", rec.directive_id, exc.reason, exc)
        await self.log.append(
            actor="executor",
            action="trust_violation",
            resource=f"plan/{rec.plan_id or rec.directive_id}",
            subsystem=SUBSYSTEM,
            payload={
                "record_type": "executor_state",
                "directive_id": rec.directive_id,
                "plan_id": rec.plan_id,
                "service": rec.service,
                "status": rec.status,
                "reason": exc.reason,
                "detail": exc.detail,
                "recovery": "refused: nothing run; manual check needed",
            },
            result="refused",
            cycle_id="none",
        )
        await self.state.put(
            rec.model_copy(
                update={"status": "done", "result": f"recovery_refused:{exc.reason}", "rationale": [str(exc)]}
            )
        )
        return None

    async def _recover_run(self, run: Run, rec: PlanRecord) -> SignedOutcome | None:
        async def recovered(action: str, why: str) -> None:
            run.note(f"recovered by {self.id} after restart: {action} ({why})")
            await self._ledger(
                run,
                "executor",
                "plan_recovered",
                {
                    "recovery": action,
                    "reason": why,
                    "status": rec.status,
                    "steps_done": rec.steps_done,
                    "step_started": rec.step_started,
                    "executor": self.id,
                },
                action,
            )

        key, cycle = rec.plan_id or rec.directive_id, run.directive.cycle_id
        entry = await asyncio.to_thread(find_outcome, self.log, self.settings, cycle, outcome_id_for(key))
        if entry is not None:  # the final outcome is signed already: publish it at most once more, never redo
            return await self._complete_outcome(run, entry)
        if rec.status == "accepted" or run.plan is None:
            await recovered("replan", "no step had started")
            run.record = rec.model_copy(update={"rationale": []})
            return await self._process(run)
        plan = run.plan
        if rec.status == "awaiting_approval" and rec.approval_request_json:
            await recovered("await_approval", "approval was pending")
            request = ApprovalRequest.model_validate_json(rec.approval_request_json)
            out = await self._await_approval(run, request)
            return out if out is not None else await self._execute(run)
        if rec.status == "awaiting_verdict":
            await recovered("await_verdict", "a kept change was waiting for its verdict")
            interim = await asyncio.to_thread(
                find_outcome, self.log, self.settings, cycle, outcome_id_for(key, final=False)
            )
            if interim is not None:  # its interim (inconclusive) outcome: on the topic once
                await self._complete_outcome(run, interim, final=False)
            await self._republish_verdict_request(run)
            return await self._await_verdict(run)
        if rec.status == "rolling_back":
            j = rec.rollback_started
            if j is not None and j >= rec.rollback_done:
                step = plan.rollback_plan[j]
                if step.action in MUTATING and not step.idempotent:
                    await recovered(
                        "escalate", f"rollback step {j} was interrupted and is not idempotent; not repeated"
                    )
                    run.insights.append("rollback interrupted by a crash: manual check needed")
                    return await self._finish(run, "failed", None)
                await recovered("rollback", f"rollback step {j} was interrupted: re-sent with its idempotency key")
            else:
                await recovered("rollback", "continuing an interrupted rollback")
            ok = await self._rollback(run, "continuing after restart")
            return await self._finish(run, "rolled_back" if ok else "failed", None)
        if rec.status == "verifying" or (
            rec.status == "executing" and rec.interrupted_step() is None and rec.steps_done >= len(plan.steps)
        ):
            await recovered("resume_verification", "every step had completed")
            return await self._verify(run, deadline=None)
        interrupted = rec.interrupted_step()
        if interrupted is None:
            await recovered("resume_steps", f"{rec.steps_done} of {len(plan.steps)} steps acknowledged")
            return await self._run_steps(run, self._resume_deadline(run))
        step = plan.steps[interrupted]
        if step.action not in MUTATING:
            await recovered("resume_steps", f"step {interrupted} ({step.action}) changes nothing: run again")
            return await self._run_steps(run, self._resume_deadline(run))
        if step.idempotent:
            key = idempotency_key(plan.plan_id, interrupted)
            await recovered("resend", f"step {interrupted} was sent without an acknowledgement: re-sent with key {key}")
            return await self._run_steps(run, self._resume_deadline(run))
        # Not idempotent: it may or may not have run. Never repeat it; look at the effect instead.
        run.in_doubt = interrupted
        await recovered(
            "verify_effect",
            f"step {interrupted} ({step.action}) was sent without an acknowledgement and is not idempotent: "
            "its effect is verified on live telemetry before anything is compensated",
        )
        return await self._verify(run, deadline=None)

    async def _republish_verdict_request(self, run: Run) -> None:
        """A crash may have come between the verdict request's ledger entry and its publication: publish it once."""
        assert run.plan is not None
        if not run.record.verdict_request_json:
            return
        request = ApprovalRequest.model_validate_json(run.record.verdict_request_json)
        there = await asyncio.to_thread(
            published, self.settings, "approvals", ApprovalRequest, "request_id", request.request_id
        )
        if not there:
            logger.info("verdict_request_recovered plan=%s request=%s", run.plan.plan_id, request.request_id)
            await self._publish("approvals", run.plan.plan_id, self._ser_request(request))

    async def _complete_outcome(self, run: Run, entry: LedgerEntry, *, final: bool = True) -> SignedOutcome:
        """An ``execution_outcome`` entry that exists: publish it unless published; a final one marks the plan done."""
        outcome = outcome_from_entry(entry)
        published = await asyncio.to_thread(outcome_published, self.settings, outcome.outcome_id)
        if not published:
            await self._publish_outcome(outcome)
        logger.info(
            "outcome_recovered directive=%s plan=%s result=%s ledger_sequence=%d published_now=%s",
            outcome.directive_id,
            outcome.plan_id,
            outcome.result,
            entry.sequence,
            not published,
        )
        if final:
            await self._save(run, status="done", result=entry.result)
        return outcome


def main(argv: list[str] | None = None) -> None:
    """``python -m metaheal.agents.executor.service --config FILE``: run one executor until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings(args.config)
    if args.dry_run:
        settings.executor.dry_run = True

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await Executor(settings).run(stop)

    asyncio.run(amain())


if __name__ == "__main__":
    main()
