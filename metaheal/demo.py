"""``metaheal demo``: the whole control plane against a simulated fleet, three flows, end to end.

What is shown is read back from the topics and the ledger (:class:`Timeline`), never
narrated by the components: a line appears because an event was published. The
:class:`Driver` injects each flow's scenario into the simulator, plays the operator
where a flow needs an approval (signing with a demo operator key, and saying so), and
decides pass/fail from the same events (a signed, verified outcome and a healthy
service), so a flow that did not heal fails the demo with the reason.

>>> fmt_clock(0.0)
'00:00:00.0'
>>> FLOWS[0].scenario, FLOWS[0].expect_focus, FLOWS[0].expect_playbook, FLOWS[0].expect_approval
('latency_drift', 'latency_drift', 'scale_up_instances', False)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from metaheal.agents.common.graph import related
from metaheal.agents.executor.approvals import load_signing_key, sign_for
from metaheal.agents.meta.focus import UNHEALTHY_DIRECTION
from metaheal.config import OperatorSettings, Settings
from metaheal.errors import DecodeError
from metaheal.events import (
    AgenticPlan,
    AnomalyScore,
    ApprovalDecision,
    ApprovalRequest,
    CycleFocus,
    Directive,
    Event,
    LedgerEntry,
    MLAdvice,
    ProbeCommand,
    SignedOutcome,
)
from metaheal.kafka import ConsumedMessage, Consumer, KafkaUnavailable, Producer, TopicPartition
from metaheal.kafka.serializers import (
    AvroDeserializer,
    AvroSerializer,
    EventDecoder,
)
from metaheal.kafka.tail import TopicTail
from metaheal.ledger.keys import init_operator_key, init_system_keys
from metaheal.runtime import (
    ALL_ROLES,
    Component,
    ComponentFailed,
    RoleUnavailable,
    Runtime,
    resolve_playbooks,
    run_components,
    write_settings,
)
from metaheal.simulator.faults import FAULTS, SCENARIOS
from metaheal.simulator.runner import Simulator
from metaheal.topics import ensure_topics

logger = logging.getLogger(__name__)

DEMO_OPERATOR = "demo-operator"
#: ledger actions worth a timeline line (the rest duplicate a topic line)
LEDGER_SHOWN = {
    "guardrail_changed",
    "trust_checked",
    "trust_violation",
    "approval_requested",
    "approval_decided",
    "approval_received",
    "execution_started",
    "step_executed",
    "verification_result",
    "rollback_executed",
    "execution_outcome",
    "learning_update",
    "plan_recovered",
    "verdict_requested",
    "verdict_received",
    "verdict_expired",
}
TIMELINE_TOPICS = ("anomalies", "cycles", "probes", "advice", "directives", "plans", "approvals", "outcomes", "ledger")


def fault_flow(scenario: str) -> Flow:
    """A flow for any simulator scenario: healed means a verified outcome and a healthy faulty service.

    >>> fault_flow("upstream_outage").expect_playbook
    'failover_dependency'
    """
    names = [name for name, _ in SCENARIOS[scenario]]
    fixed_by = FAULTS[names[0]].fixed_by if names else ()
    focus = {
        "traffic_surge": "capacity_strain",
        "bad_deployment": "error_spike",
        "upstream_outage": "dependency_health",
    }
    silenced = "metrics_agent_crash" in names
    return Flow(
        scenario,
        scenario,
        focus.get(names[0] if names else "", "latency_drift"),
        fixed_by[0] if fixed_by else None,
        silenced,  # an error spike tightens the guardrails: the operator approves the flag rollback
        f"Fault {scenario} -> {', '.join(fixed_by) or '?'}"
        + (": the fix's telemetry vanishes, the change is kept and an operator asked" if silenced else ""),
        expect_inconclusive=silenced,
        # the playbook's verification waits its whole window for samples that never come
        timeout=180.0 if silenced else None,
    )


def affected_services(faulty: list[str], dependencies: dict[str, list[str]]) -> set[str]:
    """Where a fault shows: the faulty services, every service that calls them (they wait on them and
    see their errors) and every service they call (the load they send: a surge at the edge strains
    what the edge calls, an eviction storm loads the database), directly or not.

    >>> deps = {"web": ["api"], "api": ["db", "cache"]}
    >>> sorted(affected_services(["db"], deps)), sorted(affected_services(["web"], deps))
    (['api', 'db', 'web'], ['api', 'cache', 'db', 'web'])
    """
    return related(faulty, dependencies)


def _detects(a: AnomalyScore, since: float) -> bool:
    """A crossed anomaly on a sample taken after ``since``, in the unhealthy direction where there is one
    (more instances after a scale-out, or latency falling after a fix, detect nothing)."""
    direction = UNHEALTHY_DIRECTION.get(a.signal or "", 0)
    return a.crossed and a.ts >= since and (not direction or (a.value - a.baseline) * direction > 0)


def fmt_clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:10]


@dataclass(frozen=True)
class Flow:
    name: str
    scenario: str | None
    expect_focus: str
    expect_playbook: str | None
    expect_approval: bool
    title: str
    #: the fix's verification is expected to be inconclusive (its telemetry vanishes) and settled by a verdict
    expect_inconclusive: bool = False
    #: at least this many seconds to heal (None: the demo's flow timeout)
    timeout: float | None = None


FLOWS: tuple[Flow, ...] = (
    Flow(
        "latency",
        "latency_drift",
        "latency_drift",
        "scale_up_instances",
        False,
        "Latency drift under rising load -> scale_up_instances, auto-approved",
    ),
    Flow(
        "errors",
        "error_spike",
        "error_spike",
        "rollback_flag",
        True,
        "Error spike after a bad deployment -> rollback_flag, with operator approval",
    ),
    Flow(
        "quiet",
        None,
        "routine_maintenance",
        None,
        False,
        "Quiet period -> routine_maintenance, guardrails maintain, no directive",
    ),
)


@dataclass
class Seen:
    """One event as the timeline saw it: wall-clock receive time, topic short name, the event."""

    at: float
    topic: str
    event: Event
    key: str | None = None


class Timeline(TopicTail):
    """Tails the demo's topics (group-less, from the beginning) and renders one line per event.

    ``emit`` gets each line (the CLI passes ``typer.echo``); ``events`` keeps everything
    for the driver and the summary. Anomalies are shown once per series per quiet spell,
    so a drifting series is one line, not one per sample.
    """

    name = "demo-timeline"
    fetch_wait_ms = None

    def __init__(self, settings: Settings, emit: Callable[[str], None], *, anomaly_quiet_seconds: float = 30.0):
        self.settings = settings
        self.emit = emit
        self.events: list[Seen] = []
        self.anomaly_quiet_seconds = anomaly_quiet_seconds
        super().__init__(settings.kafka)
        self._lock = threading.Lock()
        self._decode = EventDecoder()
        self._ledger = AvroDeserializer(LedgerEntry)
        self._anomaly_last: dict[tuple[str, str], float] = {}
        self._short = {settings.topics.name(t): t for t in TIMELINE_TOPICS}

    def start(self, timeout: float = 20.0) -> Timeline:
        try:
            super().start(timeout)
        except KafkaUnavailable:
            raise RuntimeError("timeline reader did not start") from None
        if self.error is not None:
            raise RuntimeError(f"timeline reader failed: {self.error}")
        return self

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        return consumer.topic_partitions(self._short)

    def handle(self, msg: ConsumedMessage) -> None:
        self._ingest(self._short[msg.topic()], msg.key(), msg.value())

    def _ingest(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            event: Event = self._ledger(value) if topic == "ledger" else self._decode(value)
        except DecodeError as exc:
            logger.warning("timeline skip topic=%s error=%s", topic, exc)
            return
        seen = Seen(time.time(), topic, event, key.decode("utf-8", "replace") if key else None)
        with self._lock:
            self.events.append(seen)
        line = self.render(seen)
        if line is not None:
            self.emit(line)

    # --- rendering ------------------------------------------------------------------------------

    def render(self, s: Seen) -> str | None:
        e = s.event
        text = self._text(s.topic, e, s.at)
        if text is None:
            return None
        return f"{fmt_clock(s.at)}  {text}"

    def _text(self, topic: str, e: Event, at: float) -> str | None:
        if isinstance(e, AnomalyScore):
            if not e.crossed:
                return None
            k = (e.service, e.metric + json.dumps(e.labels, sort_keys=True))
            last = self._anomaly_last.get(k)
            self._anomaly_last[k] = at
            if last is not None and at - last < self.anomaly_quiet_seconds:
                return None
            dep = f"{{dependency={e.labels['dependency']}}}" if "dependency" in e.labels else ""
            return (
                f"[streams]   anomaly  {e.service} {e.metric}{dep} = {e.value:.4g} vs baseline {e.baseline:.4g} "
                f"(score {e.score:.4f}, {e.signal or 'unknown'})"
            )
        if isinstance(e, CycleFocus):
            probes = ", ".join(e.extra_probes) or "none"
            targets = ", ".join(e.target_services) or "-"
            return (
                f"[meta]      cycle {e.cycle_id}: focus {e.focus_area} (confidence {e.confidence:.2f}), "
                f"guardrails {e.guardrail_adjustment} -> {e.guardrail_level}, probes {probes}, "
                f"budget {e.time_budget_seconds}s, targets {targets}; {e.reasoning[0] if e.reasoning else ''}"
            )
        if isinstance(e, ProbeCommand):
            return (
                f"[meta]      probe {e.probe} {'on' if e.enabled else 'off'} for {', '.join(e.services) or 'all'} "
                f"(ttl {e.ttl_seconds}s)"
            )
        if isinstance(e, MLAdvice):
            causes = ", ".join(f"{c.cause} {c.probability:.2f}" for c in e.root_cause_candidates[:3]) or "-"
            books = ", ".join(f"{p.name} {p.score:.2f}" for p in e.ranked_playbooks[:3]) or "-"
            return f"[advisors]  advice for {e.cycle_id}: root causes {causes}; playbooks {books}"
        if isinstance(e, Directive):
            return (
                f"[meta]      directive {e.directive_id} -> {e.service}: {e.focus_area}, guardrails "
                f"{e.guardrail_level}, recommended {', '.join(e.ml_advice.recommended_playbooks[:3]) or '-'} "
                f"(confidence {e.confidence:.2f})"
            )
        if isinstance(e, AgenticPlan):
            trust = "needs human approval" if e.trust_approval_required else "auto-approved by trust check"
            return (
                f"[agentic]   plan {e.plan_id}: {e.selected_playbook} on {e.service}, "
                f"{len(e.steps)} step(s), impact {e.risk_assessment.impact}, blast radius "
                f"{e.risk_assessment.blast_radius}, confidence {e.confidence:.2f} -> {trust}"
            )
        if isinstance(e, ApprovalRequest):
            if e.asks_verdict:
                return (
                    f"[executor]  verdict requested {e.request_id}: keep or roll back {e.playbook} on {e.service}? "
                    f"{e.reason}"
                )
            return f"[agentic]   approval requested {e.request_id} for {e.playbook} on {e.service}: {e.reason}"
        if isinstance(e, ApprovalDecision):
            if e.request_id.startswith(ApprovalRequest.VERDICT_PREFIX):
                verb = "keeps the change of" if e.decision == "approve" else "rolls back"
            else:
                verb = "approves" if e.decision == "approve" else "denies"
            return f"[operator]  {e.operator} {verb} plan {e.plan_id} (signed, key {e.key_id[:12]}): {e.reason}"
        if isinstance(e, SignedOutcome):
            verified = {True: "verified", False: "verification failed", None: "not verified"}[e.verification_passed]
            if e.confirmed_by:
                verified = f"confirmed by {e.confirmed_by}"
            if e.settled_after_seconds is not None:
                verified += f", settled {e.settled_after_seconds:.1f}s after the inconclusive verification"
            if e.verdict_request_id:
                verified += f", change kept awaiting verdict {e.verdict_request_id}"
            lines = (
                f"[executor]  outcome {e.result.upper()}: {e.playbook} on {e.service} in {e.duration_seconds:.1f}s, "
                f"{verified}, trust {e.trust_decision}, signed by {e.actor}"
                + (f" (ledger #{e.ledger_sequence})" if e.ledger_sequence is not None else "")
            )
            for insight in e.learned_insights[:2]:
                lines += f"\n{fmt_clock(at)}  [learning]  {insight}"
            return lines
        if isinstance(e, LedgerEntry):
            if e.action not in LEDGER_SHOWN:
                return None
            detail = _ledger_detail(e)
            return f"[ledger]    #{e.sequence} {e.actor} {e.action} {e.resource} -> {e.result}{detail}"
        return None

    # --- queries for the driver -------------------------------------------------------------------

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.events)

    async def wait_for(self, predicate: Callable[[Seen], bool], *, after: float, timeout: float) -> Seen | None:
        """The first event received at or after ``after`` matching ``predicate``, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            events = self.snapshot()
            for s in events[index:]:
                if s.at >= after and predicate(s):
                    return s
            index = len(events)
            if time.monotonic() >= deadline or self.error is not None:
                return None
            await asyncio.sleep(0.1)


def _ledger_detail(e: LedgerEntry) -> str:
    try:
        payload = json.loads(e.payload)
    except json.JSONDecodeError:
        return ""
    if not isinstance(payload, dict):
        return ""
    for key in ("reason", "insight", "sentence", "summary", "verdict", "status"):
        v = payload.get(key)
        if isinstance(v, str) and v:
            return f" ({v[:120]})"
    return ""


@dataclass
class FlowResult:
    flow: Flow
    started_at: float
    ok: bool = False
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cycle_ids: list[str] = field(default_factory=list)
    #: the cycles worth replaying: where the flow was first seen and where it was settled
    key_cycles: list[str] = field(default_factory=list)
    detected_at: float | None = None
    directive_at: float | None = None
    fixed_at: float | None = None
    playbook: str | None = None
    service: str | None = None
    #: when the fix's verification came out inconclusive (the change kept, awaiting a verdict)
    inconclusive_at: float | None = None

    def seconds(self, t: float | None) -> str:
        return "-" if t is None else f"{t - self.started_at:.1f}s"


class Driver:
    """Plays the flows against a running system and judges them from the timeline."""

    def __init__(
        self,
        settings: Settings,
        timeline: Timeline,
        inject: Callable[[str], Any],
        *,
        operator_key_path: Path,
        emit: Callable[[str], None],
        flow_timeout: float = 90.0,
    ) -> None:
        self.settings = settings
        self.timeline = timeline
        self.inject = inject
        self.operator_key_path = operator_key_path
        self.emit = emit
        self.flow_timeout = flow_timeout
        self.answered: dict[str, str] = {}
        self._producer = Producer(settings.kafka)

    def say(self, text: str) -> None:
        self.emit(f"{fmt_clock(time.time())}  [demo]      {text}")

    async def run_flow(self, flow: Flow) -> FlowResult:
        """Inject, then follow the flow's cycles until a verified outcome leaves the faulty service healthy."""
        self.emit("")
        self.say(f"=== flow: {flow.title} ===")
        if flow.scenario is None:
            return await self._quiet(flow)
        res = FlowResult(flow, started_at=time.time())
        faults = self.inject(flow.scenario) or []
        targets = sorted({getattr(f, "target", "") for f in faults} - {""})
        self.say(f"injected scenario {flow.scenario} into the simulated fleet (fault on {', '.join(targets) or '-'})")
        t0 = res.started_at
        services = {s.name for s in self.settings.services}
        affected = affected_services(targets, {s.name: list(s.dependencies) for s in self.settings.services})
        timeout = max(self.flow_timeout, flow.timeout or 0.0)
        deadline = time.monotonic() + timeout
        approved: set[str] = set()
        unexpected_approvals = 0
        off_focus: dict[str, int] = {}
        directives: dict[str, Directive] = {}
        outcomes: list[SignedOutcome] = []
        # directives and outcomes may reach the timeline before the cycle record that makes them this flow's
        # (different topics): kept until their cycle is known, then judged in arrival order
        seen_directives: dict[str, tuple[float, Directive]] = {}
        seen_outcomes: list[tuple[float, SignedOutcome]] = []
        index = 0
        while time.monotonic() < deadline:
            events = self.timeline.snapshot()
            for s in events[index:]:
                if s.at < t0:
                    continue
                e = s.event
                if (
                    isinstance(e, AnomalyScore)
                    and res.detected_at is None
                    and _detects(e, t0)
                    and (not affected or e.service in affected)
                ):
                    res.detected_at = s.at  # detected: the first crossed anomaly on a service the fault affects
                if (
                    isinstance(e, CycleFocus)
                    and e.focus_area != "routine_maintenance"
                    and e.cycle_id not in res.cycle_ids
                ):
                    res.cycle_ids.append(e.cycle_id)
                    # ... or the first cycle that puts such a service in focus
                    if res.detected_at is None and (not affected or set(e.target_services) & affected):
                        res.detected_at = s.at
                    if e.focus_area != flow.expect_focus:
                        off_focus[e.focus_area] = off_focus.get(e.focus_area, 0) + 1
                if isinstance(e, Directive):
                    seen_directives.setdefault(e.directive_id, (s.at, e))
                if (
                    isinstance(e, ApprovalRequest)
                    and not e.asks_verdict
                    and e.request_id not in approved
                    and e.cycle_id in res.cycle_ids
                ):
                    approved.add(e.request_id)  # answered by the operator task
                    unexpected_approvals += not flow.expect_approval
                if isinstance(e, SignedOutcome):
                    seen_outcomes.append((s.at, e))
            for at, d in seen_directives.values():
                if d.cycle_id in res.cycle_ids and d.directive_id not in directives:
                    directives[d.directive_id] = d
                    res.directive_at = at if res.directive_at is None else min(res.directive_at, at)
            waiting: list[tuple[float, SignedOutcome]] = []
            for at, e in seen_outcomes:
                if e.directive_id not in directives:
                    waiting.append((at, e))
                    continue
                outcomes.append(e)
                if e.result == "inconclusive" and res.inconclusive_at is None:
                    res.inconclusive_at = at
                # healed: a verified success, or one an operator confirmed where the evidence had vanished
                if e.result == "success" and (e.verification_passed is True or e.confirmed_by):
                    unhealthy = await self._unhealthy(sorted(services))  # healed = the whole fleet healthy
                    if not unhealthy:
                        res.ok, res.fixed_at, res.playbook, res.service = True, at, e.playbook, e.service
                        res.key_cycles = list(dict.fromkeys([*res.cycle_ids[:1], e.cycle_id]))
                    else:
                        logger.info(
                            "demo outcome_not_healing playbook=%s service=%s still=%s",
                            e.playbook,
                            e.service,
                            unhealthy,
                        )
            seen_outcomes = waiting
            index = len(events)
            if res.ok:
                break
            await asyncio.sleep(0.2)
        if off_focus:
            res.notes.append(
                "cycles focused elsewhere than "
                + flow.expect_focus
                + ": "
                + ", ".join(f"{k} x{n}" for k, n in off_focus.items())
            )
        services_hit = sorted({d.service for d in directives.values()} - set(targets))
        if services_hit:
            res.notes.append(f"directives also went to {', '.join(services_hit)} (fault is on {', '.join(targets)})")
        if unexpected_approvals:
            res.notes.append(f"{unexpected_approvals} approval request(s) where the design auto-approves")
        if flow.expect_approval and not approved:
            res.notes.append("no approval was requested (the design expects one)")
        if res.inconclusive_at is not None:
            res.notes.append(f"verification inconclusive at {res.seconds(res.inconclusive_at)}: change kept")
        if flow.expect_inconclusive and res.inconclusive_at is None:
            res.ok = False
            res.reasons.append("the fix's verification was never inconclusive (the design expects its evidence gone)")
        if res.ok:
            if flow.expect_playbook and res.playbook != flow.expect_playbook:
                res.notes.append(f"healed by {res.playbook}, the design expects {flow.expect_playbook}")
            return res
        stage = (
            "no anomaly or cycle focus"
            if res.detected_at is None
            else "no directive"
            if not directives
            else "no outcome"
            if not outcomes
            else "no verified fix"
        )
        res.reasons.append(f"not healed within {timeout:.0f}s: {stage}")
        tally: dict[str, int] = {}
        for o in outcomes:
            k = f"{o.playbook} on {o.service}: {o.result}"
            tally[k] = tally.get(k, 0) + 1
        if tally:
            res.reasons.append("outcomes " + ", ".join(f"{k} x{n}" if n > 1 else k for k, n in tally.items()))
        unhealthy = await self._unhealthy(sorted(services))
        if unhealthy:
            res.reasons.append(unhealthy)
        return res

    async def _unhealthy(self, services: list[str]) -> str | None:
        problems = []
        for name in services:
            problem = await self._health(name)
            if problem is not None:
                problems.append(f"{name} unhealthy: {problem}")
        return "; ".join(problems) or None

    async def operator(self, stop: asyncio.Event) -> None:
        """Play the operator for every approval request, whichever flow (or none) it belongs to.

        The rule is one a human on call would use, on what they can observe: approve
        when the plan's service is degraded (its ``/health`` says so), deny when it is
        healthy (nothing to fix there). A verdict request (a change in place whose
        telemetry vanished) is the other way round: keep the change when the service is
        healthy, roll it back when it is degraded. Every decision is signed with the demo key.
        """
        index = 0
        while not stop.is_set():
            events = self.timeline.snapshot()
            for s in events[index:]:
                if isinstance(s.event, ApprovalRequest) and s.event.request_id not in self.answered:
                    try:
                        self.answered[s.event.request_id] = await self._answer(s.event)
                    except (httpx.HTTPError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: Kafka
                        self.answered[s.event.request_id] = "error"
                        self.say(f"the demo operator could not answer {s.event.request_id}: {exc}")
            index = len(events)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    async def _answer(self, req: ApprovalRequest) -> str:
        problem = await self._health(req.service)
        decision: Literal["approve", "deny"]
        if req.asks_verdict:
            decision = "approve" if problem is None else "deny"
            verb = "KEEPS the change of" if decision == "approve" else "ROLLS BACK the change of"
            why = (
                f"{req.service} is healthy (its /health answers 200) though its telemetry is gone"
                if problem is None
                else f"{req.service} is degraded ({problem})"
            )
        else:
            decision = "approve" if problem is not None else "deny"
            verb = "APPROVES" if decision == "approve" else "DENIES"
            why = (
                f"{req.service} is degraded ({problem})"
                if problem is not None
                else f"{req.service} is healthy: nothing to fix there"
            )
        self.say(
            f"the demo plays the operator '{DEMO_OPERATOR}' and {verb} {req.request_id} "
            f"({req.playbook} on {req.service}) with the demo operator key: {why}"
        )
        key = load_signing_key(self.operator_key_path)
        signed = sign_for(
            key,
            req,
            operator=DEMO_OPERATOR,
            decision=decision,
            reason=f"demo operator: {why}"[:300],
        )
        await asyncio.to_thread(
            self._producer.send,
            self.settings.topics.name("approvals"),
            AvroSerializer(ApprovalDecision)(signed),
            req.plan_id,
        )
        return decision

    async def _health(self, service: str) -> str | None:
        svc = self.settings.service(service)
        if svc is None or svc.admin_url is None:
            return "no admin_url to check"
        async with httpx.AsyncClient(timeout=5.0) as c:
            r = await c.get(f"{svc.admin_url}/health")
        return None if r.status_code == 200 else "; ".join(r.json().get("reasons", [])) or str(r.status_code)

    async def _quiet(self, flow: Flow) -> FlowResult:
        res = FlowResult(flow, started_at=time.time())
        self.say("no fault injected: waiting for the next cycle")
        deadline = time.monotonic() + self.flow_timeout
        # the first cycle after the start may still weigh the previous flow's evidence; judge a later one
        seen_cycles = 0
        off: dict[str, int] = {}
        while time.monotonic() < deadline:
            s = await self.timeline.wait_for(
                lambda x: isinstance(x.event, CycleFocus),
                after=res.started_at,
                timeout=max(0.0, deadline - time.monotonic()),
            )
            if s is None:
                break
            e = s.event
            assert isinstance(e, CycleFocus)
            res.started_at = s.at + 1e-6
            seen_cycles += 1
            res.cycle_ids.append(e.cycle_id)
            if e.focus_area != "routine_maintenance":
                off[e.focus_area] = off.get(e.focus_area, 0) + 1
                continue
            # give the meta loop time to (not) issue a directive for this cycle
            await asyncio.sleep(self.settings.cycle.advice_wait_seconds + 2.0)
            directives = [
                x for x in self.timeline.snapshot() if isinstance(x.event, Directive) and x.event.cycle_id == e.cycle_id
            ]
            if directives:
                res.reasons.append(f"routine cycle {e.cycle_id} issued {len(directives)} directive(s)")
            if off:
                res.notes.append("cycles before it focused on " + ", ".join(f"{k} x{n}" for k, n in off.items()))
            # the design's quiet flow maintains the guardrails; the level may still be tight from a spike
            res.notes.append(
                f"guardrails {e.guardrail_adjustment} at level {e.guardrail_level}"
                + ("" if e.guardrail_adjustment == "maintain" else " (the design shows maintain)")
            )
            res.ok = not res.reasons
            res.key_cycles = [e.cycle_id]
            res.fixed_at = s.at
            res.started_at = s.at
            return res
        res.reasons.append(
            f"no routine_maintenance cycle within {self.flow_timeout:.0f}s ({seen_cycles} cycle(s): "
            + ", ".join(f"{k} x{n}" for k, n in off.items())
            + ")"
        )
        return res

    def close(self) -> None:
        self._producer.close(5.0)


def demo_settings(base: Settings, workdir: Path, prefix: str) -> Settings:
    """Short cycles and windows so three flows fit in a few minutes; keys under ``workdir``."""
    s = base.model_copy(deep=True)
    s.topics.prefix = prefix
    s.keys = workdir / "keys"
    s.cycle.cycle_seconds = 8.0
    s.cycle.min_cycle_gap_seconds = 3.0
    s.cycle.advice_wait_seconds = 3.0
    s.cycle.evidence_window_seconds = 15.0
    s.cycle.lease_seconds = 3.0
    s.streams.window_seconds = 2.0
    s.streams.allowed_lateness_seconds = 1.0
    # ~60 series at 2 samples/s: a per-sample tail probability of 0.99 is crossed by noise alone
    # about once a second; report only what noise almost never produces
    s.streams.reporting_floor = 0.9999
    s.streams.anomaly_threshold = 0.9999
    s.executor.approval_expiry_seconds = 120.0
    # the demo compresses hours into minutes; an hourly action budget would run out mid-demo
    s.executor.max_actions_per_hour = 120
    return s


def add_demo_operator(settings: Settings) -> Path:
    """Create (once) the demo operator key and register its public key; returns the private key path."""
    path, public_hex = init_operator_key(settings.keys, DEMO_OPERATOR)
    others = [o for o in settings.operators if o.name != DEMO_OPERATOR]
    settings.operators = [*others, OperatorSettings(name=DEMO_OPERATOR, public_key=public_hex, services=["*"])]
    return Path(path)


def new_prefix() -> str:
    return f"demo{uuid.uuid4().hex[:6]}."


@dataclass
class DemoReport:
    flows: list[FlowResult] = field(default_factory=list)
    verify_clean: bool | None = None
    blocked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.blocked and self.verify_clean is True and bool(self.flows) and all(f.ok for f in self.flows)


async def run_demo(
    settings: Settings,
    workdir: Path,
    emit: Callable[[str], None],
    *,
    seed: int = 0,
    warmup_seconds: float = 20.0,
    flow_timeout: float = 90.0,
    flows: tuple[Flow, ...] = FLOWS,
) -> DemoReport:
    """Everything after the broker exists: topics, keys, simulator, components, flows, audit, summary."""
    report = DemoReport()
    workdir.mkdir(parents=True, exist_ok=True)
    settings.playbooks = resolve_playbooks(settings.playbooks).resolve()
    await asyncio.to_thread(ensure_topics, settings)
    await asyncio.to_thread(init_system_keys, settings.keys)
    operator_key = await asyncio.to_thread(add_demo_operator, settings)
    sim = Simulator(
        settings, seed=seed, interval=0.5, ready_delay=3.0, restart_seconds=3.0, day_amplitude=0.03, day_seconds=600.0
    )
    await sim.start()
    settings.services = sim.services_config()
    config_path = write_settings(settings, workdir / "metaheal.yaml")
    emit(
        f"{fmt_clock(time.time())}  [demo]      topics {settings.topics.prefix}*, keys and config in {workdir} "
        f"({config_path.name}); fleet: " + ", ".join(f"{s.name}@{s.admin_url}" for s in settings.services)
    )
    runtime = Runtime(settings, list(ALL_ROLES), workdir=workdir, explicit=True, log_dir=workdir)
    try:
        await runtime.start()
    except (RoleUnavailable, ComponentFailed) as exc:
        report.blocked.append(str(exc))
        await sim.admin.stop()
        return report
    timeline = Timeline(settings, emit)
    await asyncio.to_thread(timeline.start)
    stop = asyncio.Event()

    system = asyncio.create_task(run_components([Component("simulator", sim), *runtime.components], stop))
    driver = Driver(
        settings, timeline, sim.inject, operator_key_path=operator_key, emit=emit, flow_timeout=flow_timeout
    )
    operator = asyncio.create_task(driver.operator(stop))
    try:
        driver.say(f"warming up: baselines for {warmup_seconds:.0f}s, then the first cycle")
        t0 = time.time()
        await asyncio.sleep(warmup_seconds)
        first = await timeline.wait_for(lambda s: isinstance(s.event, CycleFocus), after=t0, timeout=60.0)
        if first is None:
            report.blocked.append("no cycle was decided during warm-up (meta loop not cycling)")
        else:
            for flow in flows:
                if system.done():
                    break
                res = await driver.run_flow(flow)
                report.flows.append(res)
                verdict = "HEALED" if res.ok and flow.scenario else "OK" if res.ok else "FAILED"
                driver.say(f"flow {flow.name}: {verdict}" + (f" ({'; '.join(res.reasons)})" if res.reasons else ""))
                if not res.ok and sim.fleet.faults:
                    # an unhealed fault would confound the next flow: end it by hand, and say so
                    sim.fleet.clear_faults()
                    for name in sim.fleet.services:
                        sim.fleet.rollback_flags(name)
                    driver.say("the unhealed fault was removed by hand before the next flow")
                    await asyncio.sleep(settings.cycle.cycle_seconds)
                elif sim.fleet.faults and flow is not flows[-1]:
                    # a healed fault may only be masked (a failover routes around a slow query that is still
                    # there): a later flow's rollback would bring it back into that flow. Its root cause is
                    # repaired behind the scenes, as the owning team would; the remediation stays in place.
                    sim.fleet.clear_faults()
                    driver.say(
                        "the healed fault's root cause was repaired behind the scenes before the next flow "
                        "(the remediation stays in place)"
                    )
    finally:
        stop.set()
        await operator
        try:
            await system
        except ComponentFailed as exc:
            report.blocked.append(f"component failed: {exc}")
        timeline.stop()
        driver.close()
        runtime.close()
    await audit(settings, workdir, report, emit)
    summarize(report, emit, workdir)
    return report


async def audit(settings: Settings, workdir: Path, report: DemoReport, emit: Callable[[str], None]) -> None:
    """Replay the demo's key cycles and verify the whole ledger with the ``metaheal ledger`` CLI,
    run from ``workdir`` as an auditor would (it finds ``metaheal.yaml`` and ``keys/`` there)."""
    emit("")
    emit("=== metaheal ledger replay (from the demo folder) ===")
    for res in report.flows:
        cycles = res.key_cycles or res.cycle_ids[:2]
        for cycle_id in cycles:
            emit(f"$ metaheal ledger replay {cycle_id}    # flow {res.flow.name}")
            code, out = await _cli(workdir, "ledger", "replay", cycle_id)
            for line in out.splitlines():
                emit(f"  {line}")
            if code != 0:
                emit(f"  (exit code {code})")
    emit("")
    emit("=== metaheal ledger verify (from the demo folder) ===")
    code, out = await _cli(workdir, "ledger", "verify")
    for line in out.splitlines():
        emit(f"  {line}")
    report.verify_clean = code == 0
    emit(f"  -> {'CLEAN' if code == 0 else f'NOT CLEAN (exit code {code})'}")


async def _cli(workdir: Path, *args: str, timeout: float = 120.0) -> tuple[int, str]:
    """Run ``metaheal ARGS`` in ``workdir`` with only what is there (no METAHEAL_* from this process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAHEAL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from metaheal.cli import main; main()",
        *args,
        cwd=workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, f"timed out after {timeout:.0f}s"
    text = "\n".join(line for line in out.decode("utf-8", "replace").splitlines() if not line.startswith("%"))
    return proc.returncode or 0, text


def summarize(report: DemoReport, emit: Callable[[str], None], workdir: Path) -> None:
    emit("")
    emit("=== summary ===")
    width = max([9, *(len(r.flow.name) for r in report.flows)])
    emit(f"{'flow':<{width}} {'result':<8} {'detection':>10} {'directive':>10} {'verified fix':>13}  playbook / notes")
    for r in report.flows:
        result = "ok" if r.ok else "FAILED"
        extra = r.playbook or "-"
        if r.notes:
            extra += " | " + "; ".join(r.notes)
        if r.reasons:
            extra += " | " + "; ".join(r.reasons)
        emit(
            f"{r.flow.name:<{width}} {result:<8} {r.seconds(r.detected_at):>10} {r.seconds(r.directive_at):>10} "
            f"{r.seconds(r.fixed_at):>13}  {extra}"
        )
    emit(
        "(seconds from the fault injection to: the first crossed anomaly or cycle focus on a service the fault affects"
        " (the faulty service, its callers or what it calls), the first directive, the verified outcome after which"
        " the whole fleet is healthy)"
    )
    for b in report.blocked:
        emit(f"BLOCKED: {b}")
    if report.verify_clean is False:
        emit("ledger verify found problems (see above)")
    emit(f"audit it yourself: cd {workdir} && metaheal ledger verify")
