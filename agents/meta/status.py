"""What the control plane is doing right now, read from the topics (never from a process's memory).

Any replica, any operator laptop, any auditor gets the same answer, and the answer
survives the meta loop's death: the current cycle is the last CycleFocus on
``<prefix>cycles``, the guardrail level and the leader come from the control topic,
pending approvals are requests on ``<prefix>approvals`` without a decision that have not
expired, outcomes come from ``<prefix>outcomes``, changes awaiting a verdict are plans
whose latest outcome is ``inconclusive`` with a verdict request still open, and plans in
flight (halted ones with their reason and next resume) are the executor's records on
``<prefix>executor-state``.

Usage::

    client = StatusClient(settings)
    cycle = client.current_cycle()          # CycleFocus | None
    last = client.outcome_history(limit=5)  # list[SignedOutcome], newest last
    doc = client.snapshot()                 # everything, JSON-ready
"""

from __future__ import annotations

import time
from typing import Any

from metaheal.agents.executor.state import PlanRecord
from metaheal.agents.meta.leader import ControlView, fast_reader, read_to_end
from metaheal.config import Settings
from metaheal.errors import DecodeError
from metaheal.events import (
    ApprovalDecision,
    ApprovalRequest,
    CycleFocus,
    Event,
    ProbeCommand,
    SignedOutcome,
)
from metaheal.kafka.limits import loads
from metaheal.kafka.serializers import AvroDeserializer, EventDecoder
from metaheal.ledger.signing import RecordVerifier


class StatusClient:
    def __init__(self, settings: Settings, *, timeout: float = 15.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._verifier = RecordVerifier.for_settings(settings)

    def _read(self, short: str) -> list[bytes]:
        topic = self.settings.topics.name(short)
        with fast_reader(self.settings.kafka) as c:
            return [value for m in read_to_end(c, topic, timeout=self.timeout) if (value := m.value())]

    def _decode_all(self, short: str, model: type[Event]) -> list[Any]:
        de = AvroDeserializer(model)
        out = []
        for raw in self._read(short):
            try:
                out.append(de(raw))
            except DecodeError:
                continue  # status shows what it can read; producers own their dead letters
        return out

    def current_cycle(self) -> CycleFocus | None:
        cycles: list[CycleFocus] = self._decode_all("cycles", CycleFocus)
        return max(cycles, key=lambda c: c.ts) if cycles else None

    def outcome_history(self, limit: int | None = 10, service: str | None = None) -> list[SignedOutcome]:
        """The last ``limit`` outcomes (``None``: every one the topic retains), oldest first."""
        outs: list[SignedOutcome] = self._decode_all("outcomes", SignedOutcome)
        if service is not None:
            outs = [o for o in outs if o.service == service]
        outs.sort(key=lambda o: o.ts)
        if limit is None:
            return outs
        return outs[-limit:] if limit > 0 else []

    def control(self) -> ControlView:
        view = ControlView()
        topic = self.settings.topics.name("control")
        with fast_reader(self.settings.kafka) as c:
            for m in read_to_end(c, topic, timeout=self.timeout):
                value = m.value()
                key = (m.key() or b"").decode("utf-8", "replace")
                try:
                    self._verifier.check("control", m, record_id=key)  # shown only if the meta loop signed it
                    doc = loads(value) if value else None
                except ValueError:  # RecordRefused and DecodeError
                    continue
                view.apply(key, doc)
        return view

    def guardrail_level(self) -> str:
        doc = self.control().guardrails
        return str(doc["level"]) if doc and "level" in doc else self.settings.guardrails.initial_level

    def _requests(self) -> tuple[dict[str, ApprovalRequest], set[str]]:
        decode = EventDecoder((ApprovalRequest, ApprovalDecision))
        requests: dict[str, ApprovalRequest] = {}
        decided: set[str] = set()
        for raw in self._read("approvals"):
            try:
                ev = decode(raw)
            except DecodeError:
                continue
            if isinstance(ev, ApprovalRequest):
                requests[ev.request_id] = ev
            elif isinstance(ev, ApprovalDecision):
                decided.add(ev.request_id)
        return requests, decided

    def pending_approvals(self, now: float | None = None) -> list[ApprovalRequest]:
        """Plans waiting for permission to run (verdict requests are in :meth:`awaiting_verdict`)."""
        now = time.time() if now is None else now
        requests, decided = self._requests()
        return [
            r for r in requests.values() if r.request_id not in decided and r.expires_at > now and not r.asks_verdict
        ]

    def awaiting_verdict(
        self, now: float | None = None, outcomes: list[SignedOutcome] | None = None
    ) -> list[dict[str, Any]]:
        """Changes in place whose verification was inconclusive and that nobody has settled yet."""
        now = time.time() if now is None else now
        outs = outcomes if outcomes is not None else self._decode_all("outcomes", SignedOutcome)
        latest: dict[str, SignedOutcome] = {}
        for o in sorted(outs, key=lambda o: o.ts):
            latest[o.plan_id] = o
        requests, decided = self._requests()
        rows = []
        for o in latest.values():
            if o.result != "inconclusive" or not o.verdict_request_id:
                continue
            req = requests.get(o.verdict_request_id)
            rows.append(
                {
                    "plan_id": o.plan_id,
                    "service": o.service,
                    "playbook": o.playbook,
                    "request_id": o.verdict_request_id,
                    "since": o.ts,
                    "expires_at": req.expires_at if req else None,
                    "evidence": req.reason if req else "",
                    "on_expiry": req.plan_summary.rsplit("unanswered it ends as ", 1)[-1] if req else None,
                    "answered": o.verdict_request_id in decided,
                }
            )
        return sorted(rows, key=lambda r: r["since"])

    def active_probes(self, now: float | None = None) -> list[ProbeCommand]:
        now = time.time() if now is None else now
        probes: list[ProbeCommand] = self._decode_all("probes", ProbeCommand)
        return [p for p in probes if p.enabled and p.issued_at + p.ttl_seconds > now]

    def plans_in_flight(self) -> list[dict[str, Any]]:
        """The executor's plans not done yet (latest record per directive), halted ones included.

        Plans awaiting a verdict are listed by :meth:`awaiting_verdict` instead (unless halted).
        """
        latest: dict[str, PlanRecord] = {}
        topic = self.settings.topics.name("executor-state")
        with fast_reader(self.settings.kafka) as c:
            for m in read_to_end(c, topic, timeout=self.timeout):
                key = (m.key() or b"").decode("utf-8", "replace")
                raw = m.value()
                try:  # shown only if the executor signed it (what the executor itself would recover)
                    self._verifier.check("executor_state", m, record_id=key)
                except ValueError:
                    continue
                if raw is None:
                    latest.pop(key, None)
                    continue
                try:
                    latest[key] = PlanRecord.model_validate_json(raw)
                except ValueError:
                    continue
        out = []
        for rec in sorted(latest.values(), key=lambda r: r.updated_at):
            if not rec.in_flight or (rec.status == "awaiting_verdict" and not rec.halted):
                continue  # a change kept while awaiting its verdict has its own table
            try:
                total = len(loads(rec.plan_json).get("steps", [])) if rec.plan_json else None
            except (DecodeError, AttributeError):
                total = None
            out.append(
                {
                    "directive_id": rec.directive_id,
                    "plan_id": rec.plan_id,
                    "service": rec.service,
                    "status": "halted" if rec.halted else rec.status,
                    "stage": rec.status,
                    "steps_done": rec.steps_done,
                    "steps": total,
                    "step_started": rec.step_started,
                    "halted": rec.halted,
                    "halted_at": rec.halted_at,
                    "resume_attempts": rec.resume_attempts,
                    "next_resume_at": rec.next_resume_at,
                    "owner": rec.owner,
                    "updated_at": rec.updated_at,
                }
            )
        return out

    def snapshot(self, outcomes: int = 10) -> dict[str, Any]:
        """Everything ``metaheal status --json`` prints."""
        now = time.time()
        view = self.control()
        cycle = self.current_cycle()
        level = (
            str(view.guardrails["level"])
            if view.guardrails and "level" in view.guardrails
            else self.settings.guardrails.initial_level
        )
        lease = view.leader
        all_outcomes: list[SignedOutcome] = self._decode_all("outcomes", SignedOutcome)
        return {
            "current_cycle": cycle.model_dump(mode="json") if cycle else None,
            "guardrail_level": level,
            "leader": (
                {
                    "holder": lease.holder,
                    "epoch": lease.epoch,
                    "alive": not lease.expired(now),
                    "expires_at": lease.expires_at,
                }
                if lease
                else None
            ),
            "active_probes": [p.model_dump(mode="json") for p in self.active_probes(now)],
            "pending_approvals": [r.model_dump(mode="json") for r in self.pending_approvals(now)],
            "awaiting_verdict": self.awaiting_verdict(now, all_outcomes),
            "plans_in_flight": self.plans_in_flight(),
            "last_outcomes": [o.model_dump(mode="json") for o in sorted(all_outcomes, key=lambda o: o.ts)[-outcomes:]]
            if outcomes > 0
            else [],
        }


def current_cycle(settings: Settings) -> CycleFocus | None:
    """The latest cycle decision, from ``<prefix>cycles``."""
    return StatusClient(settings).current_cycle()


def outcome_history(settings: Settings, limit: int = 10) -> list[SignedOutcome]:
    """The last ``limit`` signed outcomes, oldest first, from ``<prefix>outcomes``."""
    return StatusClient(settings).outcome_history(limit)


__all__ = ["StatusClient", "current_cycle", "outcome_history"]
