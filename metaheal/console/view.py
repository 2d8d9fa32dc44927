"""The console's picture of the control plane, folded from topic records (no database of its own).

:class:`FleetView` is fed records ``(topic short name, key, value)`` in any order the
feed reads them and keeps what the pages show: services (configured and registered),
recent health windows per service, crossed anomaly scores, cycles, advice,
directives, plans, approval requests and decisions, outcomes, probes, the control
topic's fold and the ledger. Reads and writes are serialised by one lock (the feed
writes from its thread, the web handlers read on the event loop). What cannot be
decoded is counted and skipped: the console shows what it can read, producers own
their dead letters.

>>> from metaheal.config import Settings
>>> from metaheal.kafka.serializers import AvroSerializer
>>> from metaheal.events import CycleFocus
>>> v = FleetView(Settings())
>>> c = CycleFocus(cycle_id="c1", ts=10.0, focus_area="latency_drift", confidence=0.8, reasoning=["p95 up"],
...                guardrail_adjustment="maintain", guardrail_level="maintain", time_budget_seconds=60)
>>> v.apply("cycles", b"c1", AvroSerializer(CycleFocus)(c))
True
>>> v.current_cycle().reasoning, v.version
(['p95 up'], 1)
>>> v.apply("cycles", None, b"not avro"), v.skipped
(False, 1)
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from metaheal.agents.executor.approvals import rejection_reason
from metaheal.agents.meta.leader import ControlView
from metaheal.config import ServiceSettings, Settings
from metaheal.errors import DecodeError
from metaheal.events import (
    AgenticPlan,
    AnomalyScore,
    ApprovalDecision,
    ApprovalRequest,
    CycleFocus,
    Directive,
    HealthWindow,
    LedgerEntry,
    MLAdvice,
    ProbeCommand,
    ServiceRegistration,
    SignedOutcome,
)
from metaheal.kafka.serializers import AvroDeserializer, EventDecoder
from metaheal.ledger.canonical import canonical_json
from metaheal.registry import decode_registration

#: the topics the console follows, by short name
TOPICS = (
    "services",
    "health",
    "anomalies",
    "cycles",
    "advice",
    "directives",
    "plans",
    "approvals",
    "outcomes",
    "probes",
    "control",
    "ledger",
)

HEALTH_KEEP = 90  # windows per service (the sparklines show the last minutes)
ANOMALIES_KEEP = 50  # crossed scores per service
ANOMALY_BADGE_SECONDS = 120.0


def plan_digest(plan: AgenticPlan) -> str:
    """SHA-256 of the plan's canonical JSON: what the operator reviewed, to detect a changed plan.

    >>> from metaheal.events import RiskAssessment
    >>> p = AgenticPlan(plan_id="p", directive_id="d", cycle_id="c", ts=1.0, service="api", selected_playbook="x",
    ...                 steps=[], verifications=[], rollback_plan=[], trust_approval_required=True,
    ...                 estimated_duration=1.0, risk_assessment=RiskAssessment(impact="low", blast_radius=1,
    ...                 risk_score=0.1), confidence=0.5)
    >>> plan_digest(p) == plan_digest(p.model_copy()), plan_digest(p) == plan_digest(p.model_copy(update={"ts": 2.0}))
    (True, False)
    """
    return hashlib.sha256(canonical_json(plan.model_dump(mode="json")).encode()).hexdigest()


@dataclass
class ServiceRow:
    name: str
    configured: ServiceSettings | None = None
    registration: ServiceRegistration | None = None

    @property
    def source(self) -> str:
        if self.configured and self.registration:
            return "configured + registered"
        return "configured" if self.configured else "registered"


@dataclass
class ApprovalRow:
    request: ApprovalRequest
    state: str  # pending | answered | expired
    decisions: list[ApprovalDecision]
    plan: AgenticPlan | None
    directive: Directive | None
    advice: MLAdvice | None

    @property
    def digest(self) -> str | None:
        return plan_digest(self.plan) if self.plan is not None else None


@dataclass
class FleetView:
    settings: Settings
    version: int = 0
    skipped: int = 0
    #: wall-clock time each topic last changed the view (for the page's "last event" line)
    changed_at: dict[str, float] = field(default_factory=dict)
    registered: dict[str, ServiceRegistration] = field(default_factory=dict)
    health: dict[str, deque[HealthWindow]] = field(
        default_factory=lambda: defaultdict(lambda: deque(maxlen=HEALTH_KEEP))
    )
    anomalies: dict[str, deque[AnomalyScore]] = field(
        default_factory=lambda: defaultdict(lambda: deque(maxlen=ANOMALIES_KEEP))
    )
    cycles: dict[str, CycleFocus] = field(default_factory=dict)
    advice: dict[str, MLAdvice] = field(default_factory=dict)
    directives: dict[str, Directive] = field(default_factory=dict)
    plans: dict[str, AgenticPlan] = field(default_factory=dict)
    requests: dict[str, ApprovalRequest] = field(default_factory=dict)  # by plan_id
    decisions: dict[str, list[ApprovalDecision]] = field(default_factory=dict)  # by plan_id
    outcomes: dict[str, SignedOutcome] = field(default_factory=dict)
    probes: list[ProbeCommand] = field(default_factory=list)
    control: ControlView = field(default_factory=ControlView)
    ledger: dict[int, LedgerEntry] = field(default_factory=dict)  # first entry seen per sequence
    ledger_by_cycle: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        # what the configuration says, as it was when the console started (``metaheal up`` merges the
        # registry into ``settings.services`` as it runs; the console shows the two apart)
        self.configured: list[ServiceSettings] = list(self.settings.services)
        self._de: dict[str, AvroDeserializer[Any]] = {
            "health": AvroDeserializer(HealthWindow),
            "anomalies": AvroDeserializer(AnomalyScore),
            "cycles": AvroDeserializer(CycleFocus),
            "advice": AvroDeserializer(MLAdvice),
            "directives": AvroDeserializer(Directive),
            "plans": AvroDeserializer(AgenticPlan),
            "outcomes": AvroDeserializer(SignedOutcome),
            "probes": AvroDeserializer(ProbeCommand),
            "ledger": AvroDeserializer(LedgerEntry),
        }
        self._approvals = EventDecoder((ApprovalRequest, ApprovalDecision))

    # --- feeding ---------------------------------------------------------------------------------

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> bool:
        """Fold one record; True if the view changed."""
        try:
            changed = self._apply(topic, (key or b"").decode("utf-8", "replace"), value)
        except (DecodeError, ValueError, UnicodeDecodeError):
            with self.lock:
                self.skipped += 1
            return False
        if changed:
            with self.lock:
                self.version += 1
                self.changed_at[topic] = time.time()
        return changed

    def _apply(self, topic: str, key: str, value: bytes | None) -> bool:
        if topic == "services":
            with self.lock:
                if value is None:
                    return self.registered.pop(key, None) is not None
                reg = decode_registration(value)
                self.registered[reg.name] = reg
                return True
        if value is None:
            return False
        if topic == "control":
            doc = json.loads(value)
            with self.lock:
                self.control.apply(key, doc if isinstance(doc, dict) else None)
            return True
        if topic == "approvals":
            ev = self._approvals(value)
            with self.lock:
                if isinstance(ev, ApprovalRequest):
                    self.requests[ev.plan_id] = ev
                elif isinstance(ev, ApprovalDecision):
                    self.decisions.setdefault(ev.plan_id, []).append(ev)
            return True
        de = self._de.get(topic)
        if de is None:
            return False
        ev = de(value)
        with self.lock:
            if isinstance(ev, HealthWindow):
                self.health[ev.service].append(ev)
            elif isinstance(ev, AnomalyScore):
                if not ev.crossed:
                    return False
                self.anomalies[ev.service].append(ev)
            elif isinstance(ev, CycleFocus):
                self.cycles[ev.cycle_id] = ev
            elif isinstance(ev, MLAdvice):
                self.advice[ev.cycle_id] = ev
            elif isinstance(ev, Directive):
                self.directives[ev.directive_id] = ev
            elif isinstance(ev, AgenticPlan):
                self.plans[ev.plan_id] = ev
            elif isinstance(ev, SignedOutcome):
                self.outcomes[ev.outcome_id] = ev
            elif isinstance(ev, ProbeCommand):
                self.probes.append(ev)
            elif isinstance(ev, LedgerEntry):
                if ev.sequence in self.ledger:
                    return False
                self.ledger[ev.sequence] = ev
                self.ledger_by_cycle[ev.cycle_id].append(ev.sequence)
        return True

    # --- reading ---------------------------------------------------------------------------------

    def services(self) -> list[ServiceRow]:
        with self.lock:
            rows = {s.name: ServiceRow(s.name, configured=s) for s in self.configured}
            for name, reg in self.registered.items():
                rows.setdefault(name, ServiceRow(name)).registration = reg
            for name in self.health:
                rows.setdefault(name, ServiceRow(name))
            return [rows[n] for n in sorted(rows)]

    def health_series(self, service: str) -> dict[str, list[HealthWindow]]:
        with self.lock:
            return {service: list(self.health.get(service, ()))}

    def signals(self, service: str) -> list[dict[str, Any]]:
        """Per signal of ``service``: latest p95 and baseline, the recent p95 values (for a sparkline)."""
        with self.lock:
            windows = list(self.health.get(service, ()))
        by_signal: dict[str, dict[str, Any]] = {}
        for w in sorted(windows, key=lambda w: w.window_end):
            for s in w.signals:
                row = by_signal.setdefault(s.signal, {"signal": s.signal, "metric": s.metric, "values": []})
                row["values"].append(s.p95)
                row.update(p95=s.p95, mean=s.mean, baseline=s.baseline_p95, at=w.window_end, dependency=s.dependency)
        out = []
        for row in by_signal.values():
            base = row["baseline"]
            row["ratio"] = row["p95"] / base if base else None
            out.append(row)
        return sorted(out, key=lambda r: r["signal"])

    def recent_anomalies(self, service: str, now: float | None = None) -> list[AnomalyScore]:
        now = time.time() if now is None else now
        with self.lock:
            return [a for a in self.anomalies.get(service, ()) if a.ts >= now - ANOMALY_BADGE_SECONDS]

    def cycle_list(self) -> list[CycleFocus]:
        with self.lock:
            return sorted(self.cycles.values(), key=lambda c: c.ts, reverse=True)

    def current_cycle(self) -> CycleFocus | None:
        with self.lock:
            return max(self.cycles.values(), key=lambda c: c.ts) if self.cycles else None

    def cycle_directives(self, cycle_id: str) -> list[Directive]:
        with self.lock:
            return sorted((d for d in self.directives.values() if d.cycle_id == cycle_id), key=lambda d: d.ts)

    def cycle_plans(self, cycle_id: str) -> list[AgenticPlan]:
        with self.lock:
            return sorted((p for p in self.plans.values() if p.cycle_id == cycle_id), key=lambda p: p.ts)

    def cycle_outcomes(self, cycle_id: str) -> list[SignedOutcome]:
        with self.lock:
            return sorted((o for o in self.outcomes.values() if o.cycle_id == cycle_id), key=lambda o: o.ts)

    def cycle_services(self, c: CycleFocus) -> list[str]:
        return sorted({*c.target_services, *(d.service for d in self.cycle_directives(c.cycle_id))})

    def cycle_result(self, cycle_id: str) -> str:
        """The outcomes' results, or what the cycle is waiting for."""
        outs = self.cycle_outcomes(cycle_id)
        if outs:
            return ", ".join(sorted({o.result for o in outs}))
        with self.lock:
            if any(r.cycle_id == cycle_id and not self.decisions.get(r.plan_id) for r in self.requests.values()):
                return "awaiting_approval"
        if self.cycle_plans(cycle_id):
            return "in_progress"
        return "no_action" if not self.cycle_directives(cycle_id) else "directed"

    def guardrail_level(self) -> str:
        with self.lock:
            doc = self.control.guardrails
            if doc and "level" in doc:
                return str(doc["level"])
        c = self.current_cycle()
        return c.guardrail_level if c else self.settings.guardrails.initial_level

    def guardrail_history(self, limit: int = 20) -> list[dict[str, Any]]:
        """Each change of level across cycles (oldest first), with the cycle that made it."""
        out: list[dict[str, Any]] = []
        prev = None
        for c in reversed(self.cycle_list()):
            if c.guardrail_level != prev:
                out.append(
                    {
                        "ts": c.ts,
                        "level": c.guardrail_level,
                        "adjustment": c.guardrail_adjustment,
                        "cycle_id": c.cycle_id,
                    }
                )
                prev = c.guardrail_level
        return out[-limit:]

    def active_probes(self, now: float | None = None) -> list[ProbeCommand]:
        now = time.time() if now is None else now
        with self.lock:
            return [p for p in self.probes if p.enabled and p.issued_at + p.ttl_seconds > now]

    def approval(self, plan_id: str, now: float | None = None) -> ApprovalRow | None:
        now = time.time() if now is None else now
        with self.lock:
            req = self.requests.get(plan_id)
            if req is None:
                return None
            decs = list(self.decisions.get(plan_id, []))
            plan = self.plans.get(plan_id)
            directive = self.directives.get(plan.directive_id) if plan else None
            advice = self.advice.get(req.cycle_id)
        # a decision answers the request only if the executor would count it (a forged one does not)
        decs = [
            d for d in decs if rejection_reason(d, req, self.settings, seen=set(), received_at=d.decided_at) is None
        ]
        state = "answered" if decs else ("expired" if now > req.expires_at else "pending")
        return ApprovalRow(req, state, decs, plan, directive, advice)

    def approvals(self, now: float | None = None, *, include_done: bool = True) -> list[ApprovalRow]:
        with self.lock:
            ids = [r.plan_id for r in sorted(self.requests.values(), key=lambda r: r.requested_at, reverse=True)]
        rows = [row for pid in ids if (row := self.approval(pid, now)) is not None]
        return rows if include_done else [r for r in rows if r.state == "pending"]

    def outcome_list(self) -> list[SignedOutcome]:
        with self.lock:
            return sorted(self.outcomes.values(), key=lambda o: o.ts, reverse=True)

    def outcome_entry(self, o: SignedOutcome) -> dict[str, Any]:
        """The outcome's ledger payload (verdicts with query, observed values, threshold), if read."""
        with self.lock:
            e = self.ledger.get(o.ledger_sequence) if o.ledger_sequence is not None else None
        if e is None or e.action != "execution_outcome":
            return {}
        try:
            doc = json.loads(e.payload)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def chain(self) -> list[LedgerEntry]:
        """Ledger entries contiguous from sequence 0 (as ``ledger explain`` reads them)."""
        with self.lock:
            out: list[LedgerEntry] = []
            while len(out) in self.ledger:
                out.append(self.ledger[len(out)])
            return out

    def cycle_entries(self, cycle_id: str) -> list[LedgerEntry]:
        with self.lock:
            return [self.ledger[s] for s in sorted(self.ledger_by_cycle.get(cycle_id, []))]


__all__ = ["TOPICS", "ApprovalRow", "FleetView", "ServiceRow", "plan_digest"]
