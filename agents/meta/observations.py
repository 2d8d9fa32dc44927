"""What the meta loop has read: every input topic replayed from its start into the state decisions need.

All replicas build the same state from the same topics, which is what lets a standby take over warm.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from metaheal.agents.common.baselines import against_reference
from metaheal.agents.common.graph import ServiceGraph, related
from metaheal.agents.meta.advice_accuracy import AdviceAccuracy, WeightUpdate
from metaheal.agents.meta.focus import Evidence, TrustViolation
from metaheal.agents.meta.learning import Insight, Learner
from metaheal.config import Settings
from metaheal.errors import DecodeError, RecordRefused
from metaheal.events import (
    AgenticPlan,
    AnomalyScore,
    ApprovalDecision,
    ApprovalRequest,
    CycleFocus,
    DeadLetter,
    Directive,
    Event,
    HealthWindow,
    LedgerEntry,
    MLAdvice,
    SignedOutcome,
)
from metaheal.kafka import Consumer, KafkaError, KafkaUnavailable, Producer
from metaheal.kafka.serializers import (
    AvroDeserializer,
    AvroSerializer,
    EventDecoder,
)
from metaheal.ledger.signing import RecordVerifier

logger = logging.getLogger(__name__)

ACTOR = "meta_loop"

#: input topics (short names) and what they carry
INPUTS: dict[str, tuple[type[Event], ...]] = {
    "health": (HealthWindow,),
    "health-early": (HealthWindow,),  # provisional windows of still-open windows (streams early_interval_seconds)
    "anomalies": (AnomalyScore,),
    "outcomes": (SignedOutcome,),
    "approvals": (ApprovalRequest, ApprovalDecision),
    "plans": (AgenticPlan,),
    "directives": (Directive,),
    "advice": (MLAdvice,),
    "cycles": (CycleFocus,),
    "ledger": (LedgerEntry,),
}
#: input topics whose records must be signed (record type in ``metaheal.ledger.signing.RECORD_WRITERS``)
SIGNED_INPUTS: dict[str, str] = {"outcomes": "outcome", "directives": "directive"}
OPEN_WORK_MAX_SECONDS = 3600.0  # a plan without outcome older than this is considered lost, not running
#: after a verdict request expires, how long its executor has to publish the settling outcome before the
#: service is considered free again (the executor settles it at expiry; this only covers a lost executor)
VERDICT_GRACE_SECONDS = 120.0
MAX_REMEMBERED = 10_000  # cycles, advice and directives remembered for lookups (oldest dropped first)


def _bounded_put(d: dict[Any, Any], key: Any, value: Any) -> None:
    d[key] = value
    while len(d) > MAX_REMEMBERED:
        d.pop(next(iter(d)))


@dataclass
class _Open:
    service: str
    directive_id: str | None
    plan_id: str | None
    since: float
    until: float
    #: ``open_work`` (a directive or plan without outcome) or ``awaiting_verdict`` (a change kept unverified)
    kind: str = "open_work"


def _verdict_key(plan_id: str) -> str:
    return f"verdict:{plan_id}"


class Observations:
    """Everything read from the topics, pruned to what decisions need.

    All replicas build the same state from the same topics, which is what lets a
    standby take over without duplicating work.
    """

    def __init__(self, settings: Settings, learner: Learner) -> None:
        self.window = settings.cycle.evidence_window_seconds
        self._services = ServiceGraph(settings)
        self.strong = settings.cycle.strong_anomaly_score
        self.learner = learner
        self.health: dict[tuple[str, str, str, str], HealthWindow] = {}
        #: per signal: (baseline_mean, baseline_p95) of its last window that did not deviate
        self.reference: dict[tuple[str, str, str, str], tuple[float | None, float | None]] = {}
        self.anomalies: deque[AnomalyScore] = deque(maxlen=20_000)
        self.violations: dict[str, TrustViolation] = {}
        self.last_outcome_ts: dict[str, float] = {}
        self.outcome_read_at: dict[str, float] = {}  # service -> when we read its latest outcome (our clock)
        self.advice: dict[str, MLAdvice] = {}
        self.cycle_focus: dict[str, str] = {}
        self.directive_focus: dict[str, str] = {}
        self.directed: set[tuple[str, str]] = set()  # (cycle_id, service)
        self.open: dict[str, _Open] = {}  # directive_id or plan_id -> open work
        self.closed: set[str] = set()  # directive/plan ids with an outcome
        self.requests: dict[str, ApprovalRequest] = {}
        self.decided: set[str] = set()
        self.cycle_ids: deque[str] = deque(maxlen=MAX_REMEMBERED)
        self.learned_in_ledger: set[str] = set()
        self.last_cycle: CycleFocus | None = None
        #: signals whose newest window in ``health`` is a provisional one (``<prefix>health-early``)
        self.early_keys: set[tuple[str, str, str, str]] = set()
        ml = settings.ml
        #: each advisor's record against verified outcomes, and the combination weights it earns
        self.accuracy = AdviceAccuracy(
            {"anomaly": ml.ml_anomaly_weight, "root_cause": ml.ml_root_cause_weight, "playbook": ml.ml_playbook_weight},
            half_life=settings.cycle.learning_half_life_seconds,
        )
        self.fixes: dict[str, frozenset[str]] = {}  # playbook -> the causes it declares it fixes (set by the loop)
        self.directives: dict[str, Directive] = {}
        self.weight_updates: deque[WeightUpdate] = deque(maxlen=1000)  # not yet in the ledger
        self.weights_in_ledger: set[str] = set()  # outcome ids whose weight update the ledger holds
        self._to_judge: deque[SignedOutcome] = deque(maxlen=1000)  # outcomes whose advice is not judged yet

    @property
    def dependencies(self) -> dict[str, list[str]]:
        """Read from ``settings.services`` as it is now: services registered after start join the graph."""
        return self._services.graph

    # evidence -------------------------------------------------------------------------------

    def evidence(self, now: float) -> Evidence:
        start = now - self.window
        changed: dict[str, float] = {}  # service -> last_change, once per call (thousands of anomalies)

        def fresh(service: str, ts: float, dependency: str | None = None, began: float | None = None) -> bool:
            # evidence older than the last outcome on a service, on the dependency it speaks about, on
            # anything it calls (a fixed dependency changes its callers too) or on anything that calls it
            # (a caller's failover or cache warm changes what reaches it) describes a system that has since changed
            if service not in changed:
                changed[service] = self.last_change(service)
            since = max(changed[service], self.last_outcome_ts.get(dependency or "", 0.0))
            return ts >= start and (ts if began is None else began) >= since

        health = []
        # a window (or a summary's max) that started before a change mixes the old system into the new one
        for w in {id(w): w for w in self.health.values()}.values():
            if not fresh(w.service, w.window_end, began=w.window_start):
                continue
            signals = [s for s in w.signals if fresh(w.service, w.window_end, s.dependency, w.window_start)]
            health.append(w if len(signals) == len(w.signals) else w.model_copy(update={"signals": signals}))
        anomalies = [
            a for a in self.anomalies if fresh(a.service, a.ts, a.labels.get("dependency"), min(a.ts, a.window_start))
        ]
        violations = [v for v in self.violations.values() if v.ts >= start]
        return Evidence(
            health=health,
            anomalies=anomalies,
            trust_violations=violations,
            window_seconds=self.window,
            dependencies=dict(self.dependencies),
        )

    def related(self, service: str) -> set[str]:
        """The services whose remediation changes ``service``: itself, what it calls, what calls it."""
        return related(service, self.dependencies)

    def last_change(self, service: str, *, read: bool = False) -> float:
        """When the last outcome on a related service happened (``read``: or was read, on our clock).

        A fix on a caller is a fix of its dependency too (a failover of db's callers is db's
        remediation), so evidence about ``service`` from before it is stale.
        """
        near = self.related(service)
        times = [self.last_outcome_ts.get(s, 0.0) for s in near]
        if read:
            times += [self.outcome_read_at.get(s, 0.0) for s in near]
        return max(times, default=0.0)

    def busy(self, service: str, now: float) -> _Open | None:
        """Open work (directive or plan without an outcome, within its budget) on ``service``."""
        for key, o in list(self.open.items()):
            if key in self.closed or (o.directive_id and o.directive_id in self.closed):
                del self.open[key]
                continue
            if now > o.until:
                continue
            if o.service == service:
                return o
        return None

    def pending_approvals(self, now: float) -> list[ApprovalRequest]:
        return [r for r in self.requests.values() if r.request_id not in self.decided and r.expires_at > now]

    def awaiting_verdict(self, now: float) -> list[str]:
        """Services whose last change is in place unverified, waiting for a verdict (an operator, late telemetry)."""
        return sorted({o.service for o in self.open.values() if o.kind == "awaiting_verdict" and now <= o.until})

    # ingest ---------------------------------------------------------------------------------

    def ingest(self, short: str, event: Event, now: float) -> tuple[str | None, Insight | None]:
        """Apply one event; returns (early-cycle trigger reason or None, learning insight or None)."""
        trigger: str | None = None
        insight: Insight | None = None
        if isinstance(event, HealthWindow):
            early = short == "health-early"
            # a provisional window is judged against the reference but never becomes one (it is still filling)
            event = (
                against_reference(dict(self.reference), event, self.window) if early else self._against_reference(event)
            )
            for s in event.signals:
                key = (event.service, s.signal, s.metric, s.dependency or "")
                held = self.health.get(key)
                # the newest window per signal; a closed window replaces the provisional one of the same start,
                # never a newer one (a window closes only after the lateness, when the next one is shown early)
                if (
                    held is None
                    or held.window_start < event.window_start
                    or (held.window_start == event.window_start and (not early or key in self.early_keys))
                ):
                    self.health[key] = event
                    if early:
                        self.early_keys.add(key)
                    else:
                        self.early_keys.discard(key)
        elif isinstance(event, AnomalyScore):
            self.anomalies.append(event)
            if event.score >= self.strong and event.ts >= now - self.window:
                trigger = f"strong_anomaly: score {event.score:.4f} on {event.service} {event.metric}"
        elif isinstance(event, SignedOutcome):
            insight, trigger = self._outcome(event, now)
        elif isinstance(event, ApprovalRequest):
            self.requests[event.request_id] = event
            waiting = self.open.get(_verdict_key(event.plan_id))
            if waiting is not None and waiting.kind == "awaiting_verdict":
                waiting.until = event.expires_at + VERDICT_GRACE_SECONDS
        elif isinstance(event, ApprovalDecision):
            self.decided.add(event.request_id)
            if event.decision == "deny":
                req = self.requests.get(event.request_id)
                service = req.service if req else "unknown"
                trigger = self._violation(
                    event.plan_id,
                    TrustViolation(
                        service,
                        "approval",
                        f"operator {event.operator} denied plan {event.plan_id}: {event.reason or 'no reason'}",
                        event.decided_at,
                    ),
                    now,
                )
        elif isinstance(event, AgenticPlan):
            if event.plan_id not in self.closed:
                budget = max(event.estimated_duration * 3, 600.0)
                self.open[event.plan_id] = _Open(
                    event.service,
                    event.directive_id,
                    event.plan_id,
                    event.ts,
                    event.ts + min(budget, OPEN_WORK_MAX_SECONDS),
                )
        elif isinstance(event, Directive):
            _bounded_put(self.directives, event.directive_id, event)
            self._directive(
                event.directive_id, event.cycle_id, event.service, event.focus_area, event.ts, event.time_budget_seconds
            )
        elif isinstance(event, MLAdvice):
            _bounded_put(self.advice, event.cycle_id, event)
        elif isinstance(event, CycleFocus):
            _bounded_put(self.cycle_focus, event.cycle_id, event.focus_area)
            self.cycle_ids.append(event.cycle_id)
            self.last_cycle = event
        elif isinstance(event, LedgerEntry):
            trigger = self._ledger(event, now)
        return trigger, insight

    def _against_reference(self, w: HealthWindow) -> HealthWindow:
        """Judge each signal against the baseline it had while it was last healthy
        (:func:`~metaheal.agents.meta.focus.against_reference`)."""
        return against_reference(self.reference, w, self.window)

    def _directive(self, directive_id: str, cycle_id: str, service: str, focus: str, ts: float, budget: float) -> None:
        _bounded_put(self.directive_focus, directive_id, focus)
        self.directed.add((cycle_id, service))
        if directive_id not in self.closed:
            self.open[directive_id] = _Open(
                service, directive_id, None, ts, ts + min(max(budget, 60.0), OPEN_WORK_MAX_SECONDS)
            )

    def _outcome(self, o: SignedOutcome, now: float) -> tuple[Insight | None, str | None]:
        self.closed.update({o.plan_id, o.directive_id})
        self.open.pop(o.plan_id, None)
        self.open.pop(o.directive_id, None)
        self.open.pop(_verdict_key(o.plan_id), None)  # a later outcome on the plan settles its verdict
        if o.result == "inconclusive" and o.verdict_request_id:
            # the change stays and a human is asked: the incident is not over, so no new directive for the service
            req = self.requests.get(o.verdict_request_id)
            until = req.expires_at + VERDICT_GRACE_SECONDS if req else o.ts + OPEN_WORK_MAX_SECONDS
            self.open[_verdict_key(o.plan_id)] = _Open(o.service, None, o.plan_id, o.ts, until, "awaiting_verdict")
        self.last_outcome_ts[o.service] = max(self.last_outcome_ts.get(o.service, 0.0), o.ts)
        self.outcome_read_at[o.service] = now
        trigger = None
        if o.result == "denied":
            trigger = self._violation(
                o.plan_id,
                TrustViolation(
                    o.service, "outcome", f"plan {o.plan_id} ({o.playbook}) denied: {o.trust_decision}", o.ts
                ),
                now,
            )
        focus = self.directive_focus.get(o.directive_id) or self.cycle_focus.get(o.cycle_id)
        self._to_judge.append(o)
        return self.learner.observe(o, focus, now), trigger

    def judge_advice(self, now: float) -> None:
        """Score the advice behind each outcome read since the last call, once its directive is known.

        Called by the loop once it has caught up with its topics, so a replay after a restart (topics
        read in any interleaving) judges exactly what the live run judged: the directive and the advice
        it was issued on are read by then. An outcome whose directive never shows up (an hour) is dropped.
        """
        waiting: deque[SignedOutcome] = deque(maxlen=self._to_judge.maxlen)
        while self._to_judge:
            o = self._to_judge.popleft()
            if o.directive_id in self.directives:
                self._judge_advice(o, now)
            elif now - o.ts < OPEN_WORK_MAX_SECONDS:
                waiting.append(o)
        self._to_judge = waiting

    def _judge_advice(self, o: SignedOutcome, now: float) -> None:
        """Score the advice behind the outcome's directive (:mod:`~metaheal.agents.meta.advice_accuracy`)."""
        d = self.directives[o.directive_id]
        advice = self.advice.get(d.cycle_id)
        known = [
            c
            for c in (advice.root_cause_candidates if advice else [])
            if c.service in (None, d.service) and c.cause != "unknown"
        ]
        top_cause = max(known, key=lambda c: c.probability).cause if known else None
        if top_cause is None and d.ml_advice.root_causes:
            top_cause = d.ml_advice.root_causes[0]
        # the ranker's own first choice when its advice was read, else the directive's first playbook
        ranked = advice.ranked_playbooks if advice else []
        books = [max(ranked, key=lambda p: p.score).name] if ranked else d.ml_advice.recommended_playbooks
        self.accuracy.directive(
            d.directive_id, d.service, top_cause=top_cause, top_playbook=books[0] if books else None
        )
        update = self.accuracy.observe(
            o.outcome_id,
            o.directive_id,
            o.playbook,
            o.result,
            ts=o.ts,
            fixes=self.fixes,
            now=now,
            verification_passed=o.verification_passed,
        )
        if update is not None:
            self.weight_updates.append(update)

    def _violation(self, key: str, v: TrustViolation, now: float) -> str | None:
        new = key not in self.violations
        self.violations[key] = v
        if new and v.ts >= now - self.window:
            return f"trust_violation: {v.detail}"
        return None

    def _ledger(self, e: LedgerEntry, now: float) -> str | None:
        try:
            payload = json.loads(e.payload) if e.payload else {}
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if e.action == "trust_violation":
            service = str(payload.get("service") or e.resource)
            key = str(payload.get("plan_id") or f"ledger:{e.sequence}")
            detail = str(
                payload.get("reason")
                or payload.get("detail")
                or f"{e.actor} recorded a trust violation on {e.resource}"
            )
            ts = _iso_ts(e.timestamp) or now
            return self._violation(key, TrustViolation(service, "ledger", detail, ts), now)
        if e.action == "learning_update" and e.actor == ACTOR and payload.get("kind") == "advice_weights":
            self.weights_in_ledger.add(str(payload.get("for_outcome")))
        elif e.action == "learning_update" and e.actor == ACTOR and payload.get("outcome_id"):
            # recorded by us or a previous leader: a restart or takeover must not record it again
            self.learned_in_ledger.add(str(payload["outcome_id"]))
        if e.action == "directive_issued" and e.actor == ACTOR:
            # a directive recorded in the ledger counts even if its publisher died before publishing it
            d = payload
            if d.get("directive_id") and d.get("service"):
                self._directive(
                    str(d["directive_id"]),
                    e.cycle_id,
                    str(d["service"]),
                    str(d.get("focus_area", "")),
                    float(d.get("ts", now)),
                    float(d.get("time_budget_seconds", 600)),
                )
        return None


def _iso_ts(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Inputs:
    """One group-less reader over every input topic (no group join delay, replays from the start)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # short fetch waits: advice and strong anomalies should reach a decision in tens of ms, not 0.5 s
        fast: dict[str, Any] = {"fetch.wait.max.ms": 50}
        self.consumer = Consumer(settings.kafka, group_id=None, **fast)
        self.names = {settings.topics.name(short): short for short in INPUTS}
        self.decoders: dict[str, Callable[[bytes], Event]] = {}
        for short, models in INPUTS.items():
            if len(models) == 1:
                self.decoders[short] = AvroDeserializer(models[0])
            else:
                self.decoders[short] = EventDecoder(models)
        parts = self.consumer.assign_topics(self.names)
        self.pending_eof = {(tp.topic, tp.partition) for tp in parts}
        self.verifier = RecordVerifier.for_settings(settings)
        #: refused records that arrived while following (not during the replay from the start): the meta loop
        #: records them as ``trust_violation``; each is dead-lettered here
        self.refused: deque[tuple[str, DeadLetter, RecordRefused]] = deque(maxlen=1000)
        self.refused_count = 0
        self._dlq: Producer | None = None

    @property
    def caught_up(self) -> bool:
        return not self.pending_eof

    def poll(self, timeout: float) -> list[tuple[str, Event]]:
        out: list[tuple[str, Event]] = []
        for m in self.consumer.raw.consume(500, timeout):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.pending_eof.discard((m.topic(), m.partition()))
                    continue
                if err.fatal():
                    raise KafkaUnavailable(f"consume error on {m.topic()}: {err}")
                logger.warning("meta_loop transient consume error topic=%s error=%s", m.topic(), err)
                continue
            short, value = self.names.get(m.topic() or ""), m.value()
            if short is None or value is None:
                continue
            try:
                event = self.decoders[short](value)
                if short in SIGNED_INPUTS:
                    self._check(short, m, event)
                out.append((short, event))
            except RecordRefused as exc:
                self._refuse(short, m, exc)
            except DecodeError as exc:
                # the record stays on its topic (nothing lost); its producer owns the dead-letter path
                logger.warning(
                    "meta_loop skipped undecodable record topic=%s offset=%d error=%s", m.topic(), m.offset(), exc
                )
        return out

    def _check(self, short: str, m: Any, event: Event) -> None:
        """The record's signature, and an event time no later than its signing time (plus the clock skew)."""
        record_id = event.outcome_id if isinstance(event, SignedOutcome) else getattr(event, "directive_id", None)
        signed = self.verifier.check(SIGNED_INPUTS[short], m, record_id=record_id)
        ts = float(getattr(event, "ts", signed.ts))
        if ts > signed.ts + self.verifier.max_skew:
            raise RecordRefused(
                "future_ts", f"{short} record stamped {ts:.3f}, {ts - signed.ts:.1f}s after it was signed"
            )

    def _refuse(self, short: str, m: Any, exc: RecordRefused) -> None:
        self.refused_count += 1
        logger.warning(
            "meta_loop refused record topic=%s offset=%d reason=%s error=%s", m.topic(), m.offset(), exc.reason, exc
        )
        if not self.caught_up:  # replayed from the start: whoever followed the topic then filed it
            return
        dl = DeadLetter.of(m, f"untrusted {SIGNED_INPUTS[short]}: {exc.reason}", str(exc))
        self.refused.append((SIGNED_INPUTS[short], dl, exc))
        try:
            self._dlq = self._dlq or Producer(self.settings.kafka)
            self._dlq.send(self.settings.topics.name("deadletter"), AvroSerializer(DeadLetter)(dl), key=m.key())
        except KafkaUnavailable as err:
            logger.warning("meta_loop dead_letter_failed offset=%d error=%s", m.offset(), err)

    def close(self) -> None:
        self.consumer.close()
        if self._dlq is not None:
            self._dlq.close(2.0)
