"""Incident memory: what was already tried on one unresolved problem, rebuilt from the signed ledger.

An *incident* is one service with one focus area (``api``/``error_spike``) from its first executed
plan until a plan resolves it (a verified success, or a success an operator confirmed) or until no
plan has touched it for ``executor.incident_window_seconds``. It remembers every attempt, and which
playbooks failed verification or were rolled back: the next plan in the same incident never takes one
of those again, and after ``executor.max_incident_attempts`` automatic attempts every further plan waits
for a human (an approval request that names the evidence and what was tried).

Nothing here is kept only in memory: :meth:`IncidentMemory.from_entries` folds the signed
``execution_outcome`` entries, oldest first, so a restarted (or another) executor knows the same.
The healthy reference the first attempt judged the symptom against travels in its outcome, so later
attempts in the incident judge against the same one.

>>> mem = IncidentMemory(window=600.0, max_attempts=3)
>>> def out(plan, playbook, result, ts, focus="error_spike"):
...     mem.fold({"plan_id": plan, "service": "api", "focus_area": focus, "playbook": playbook,
...               "result": result, "verification_passed": result == "success"}, ts)
>>> out("p1", "failover_dependency", "rolled_back", 10.0)
>>> out("p2", "restart_service", "failed", 40.0)
>>> inc = mem.current("api", "error_spike", now=50.0)
>>> sorted(inc.failed), inc.automatic_attempts, inc.tried()
(['failover_dependency', 'restart_service'], 2, 'failover_dependency (rolled_back), restart_service (failed)')
>>> mem.current("api", "latency_drift", now=50.0) is None, mem.current("api", "error_spike", now=700.0) is None
(True, True)
>>> out("p3", "rollback_flag", "success", 60.0)
>>> mem.current("api", "error_spike", now=61.0) is None  # resolved
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from metaheal.agents.common.outcomes import entry_time

#: results of a plan that ran and did not fix the problem (its playbook is not tried again in the incident)
FAILED_RESULTS = frozenset({"failed", "rolled_back"})
#: results of a plan that ran (``denied``/``expired``: nobody ran it, so it is no attempt)
ATTEMPT_RESULTS = FAILED_RESULTS | {"success", "inconclusive"}


@dataclass
class Attempt:
    plan_id: str
    playbook: str
    result: str
    ts: float
    verification_passed: bool | None = None


@dataclass
class Incident:
    service: str
    focus_area: str
    opened_at: float
    attempts: list[Attempt] = field(default_factory=list)
    #: the symptoms (``Symptom`` dumps) the first attempt judged, with their healthy references
    symptoms: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_ts(self) -> float:
        return max((a.ts for a in self.attempts), default=self.opened_at)

    @property
    def failed(self) -> dict[str, str]:
        """Playbook -> why it is out for this incident (failed verification / rolled back)."""
        out: dict[str, str] = {}
        for a in self.attempts:
            if a.result in FAILED_RESULTS:
                how = "verification failed" if a.verification_passed is False else a.result
                out[a.playbook] = f"{how} in this incident (plan {a.plan_id})"
        return out

    @property
    def automatic_attempts(self) -> int:
        return len(self.attempts)

    def tried(self) -> str:
        return ", ".join(f"{a.playbook} ({a.result})" for a in self.attempts) or "nothing yet"

    def summary(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "focus_area": self.focus_area,
            "opened_at": self.opened_at,
            "attempt": len(self.attempts) + 1,
            "tried": [{"plan_id": a.plan_id, "playbook": a.playbook, "result": a.result} for a in self.attempts],
            "excluded": sorted(self.failed),
        }


class IncidentMemory:
    def __init__(self, *, window: float, max_attempts: int) -> None:
        self.window = window
        self.max_attempts = max_attempts
        self.open: dict[tuple[str, str], Incident] = {}

    @classmethod
    def from_entries(cls, entries: Iterable[Any], *, window: float, max_attempts: int) -> IncidentMemory:
        """Fold signed ``execution_outcome`` ledger entries (``payload_dict``, ``timestamp``, ``sequence``)."""
        mem = cls(window=window, max_attempts=max_attempts)
        for e in sorted(entries, key=lambda e: e.sequence):
            mem.fold(e.payload_dict, entry_time(e.timestamp))
        return mem

    def fold(self, payload: dict[str, Any], ts: float) -> None:
        """One outcome: an attempt in its incident (opening one), or the success that resolves it."""
        service, focus, result = payload.get("service"), payload.get("focus_area"), payload.get("result")
        plan_id, playbook = payload.get("plan_id"), payload.get("playbook")
        if not (service and focus and result and plan_id and playbook) or result not in ATTEMPT_RESULTS:
            return
        key = (str(service), str(focus))
        inc = self.open.get(key)
        if inc is not None and ts - inc.last_ts > self.window:
            inc = None  # quiet for longer than the window: that one is over, this is a new one
        if result == "success" and payload.get("verification_passed") is not False:
            self.open.pop(key, None)
            return
        if inc is None:
            inc = Incident(service=key[0], focus_area=key[1], opened_at=ts)
            self.open[key] = inc
        if not inc.symptoms and isinstance(payload.get("symptoms"), list):
            inc.symptoms = [s for s in payload["symptoms"] if isinstance(s, dict)]
        attempt = Attempt(str(plan_id), str(playbook), str(result), ts, payload.get("verification_passed"))
        # an interim (inconclusive) outcome is replaced by its plan's final one
        inc.attempts = [a for a in inc.attempts if a.plan_id != attempt.plan_id] + [attempt]

    def current(self, service: str, focus_area: str, *, now: float) -> Incident | None:
        inc = self.open.get((service, focus_area))
        if inc is None or now - inc.last_ts > self.window:
            return None
        return inc
