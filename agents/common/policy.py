"""Trust check: guardrail limits (auto-approve or ask a human) and hard policies (deny).

Two kinds of "no" are kept apart on purpose. Exceeding the directive's
guardrail level (confidence, blast radius, impact) is not wrong, just not for a
machine to decide alone: the plan goes to an operator. A policy — the kill
switch, a change freeze, a deny/allow list, the per-service rate limit, the
one-plan-per-service lock — is a hard stop: the plan is denied and the denial is
a signed ``trust_violation``.

Policies are checked twice: once for the plan (:meth:`Policies.check`) and again
right before every step that changes something, rollback and recovery steps
included (:meth:`Policies.before_step`): a kill switch engaged or a freeze that
began while a plan waited for approval stops it before its first call.

>>> from metaheal.config import Settings
>>> s = Settings()
>>> guardrail_reasons(s, "tight", confidence=0.97, impact="medium", blast_radius=1)
['impact medium exceeds tight limit low']
>>> guardrail_reasons(s, "loose", confidence=0.7, impact="low", blast_radius=1)
[]
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import Literal

from pydantic import BaseModel, Field

from metaheal.agents.common.playbooks import IMPACT_ORDER
from metaheal.config import Settings
from metaheal.events import AgenticPlan

logger = logging.getLogger(__name__)

Verdict = Literal["auto_approve", "needs_approval", "deny"]
HOUR = 3600.0


class TrustDecision(BaseModel):
    verdict: Verdict
    level: str
    reasons: list[str] = Field(default_factory=list)
    #: Policy names that denied the plan (kill_switch, change_freeze, deny_list, allow_list, rate_limit, lock).
    violations: list[str] = Field(default_factory=list)


def guardrail_reasons(
    settings: Settings, level: str, *, confidence: float, impact: str, blast_radius: int
) -> list[str]:
    """Why a plan exceeds the auto-approval limits of ``level`` (empty: it may run unattended)."""
    lim = settings.guardrails.levels[level]  # type: ignore[index]
    reasons = []
    if confidence < lim.auto_approve_confidence:
        reasons.append(f"confidence {confidence:.2f} below {level} auto-approve {lim.auto_approve_confidence:.2f}")
    if blast_radius > lim.max_blast_radius:
        reasons.append(f"blast radius {blast_radius} exceeds {level} limit {lim.max_blast_radius}")
    if IMPACT_ORDER[impact] > IMPACT_ORDER[lim.max_impact]:
        reasons.append(f"impact {impact} exceeds {level} limit {lim.max_impact}")
    return reasons


def plan_guardrail_reasons(settings: Settings, level: str, plan: AgenticPlan) -> list[str]:
    """:func:`guardrail_reasons` for a rendered plan's confidence and risk assessment."""
    risk = plan.risk_assessment
    return guardrail_reasons(
        settings, level, confidence=plan.confidence, impact=risk.impact, blast_radius=risk.blast_radius
    )


def _listed(table: dict[str, list[str]], service: str) -> list[str] | None:
    if service in table:
        return table[service]
    return table.get("*")


class Policies:
    """The hard rules, with the little state they need (action history, locks).

    State is per executor process; the service-keyed directive partitioning
    sends every directive of a service to one executor, so per-service locks
    and rate limits hold across a scaled-out group. The history is re-seeded
    from durable executor state on start (:meth:`record_action`).
    """

    def __init__(self, settings: Settings, clock=time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._actions: dict[str, deque[float]] = defaultdict(deque)
        self._locks: dict[str, str] = {}
        self._mutex = threading.Lock()
        self.kill_switch = settings.executor.kill_switch

    # --- playbook-level (also used by the planner to skip candidates) ------------------------------

    def playbook_denied(self, service: str, playbook: str) -> str | None:
        ex = self.settings.executor
        denied = _listed(ex.deny_playbooks, service) or []
        if playbook in denied or "*" in denied:
            return f"playbook {playbook} is on the deny list for {service}"
        allowed = _listed(ex.allow_playbooks, service)
        if allowed is not None and playbook not in allowed and "*" not in allowed:
            return f"playbook {playbook} is not on the allow list for {service}"
        return None

    # --- global and per-service --------------------------------------------------------------------

    def kill_switch_engaged(self) -> bool:
        f = self.settings.executor.kill_switch_file
        return self.kill_switch or (f is not None and f.exists())

    def frozen(self, service: str, now: float) -> str | None:
        for w in self.settings.executor.freeze_windows:
            if w.start <= now < w.end and ("*" in w.services or service in w.services):
                return f"change freeze until {w.end:.0f} ({w.reason})"
        return None

    def limit_for(self, service: str) -> int:
        return self.settings.executor.rate_limits.get(service, self.settings.executor.max_actions_per_hour)

    def actions_last_hour(self, service: str, now: float) -> int:
        with self._mutex:
            q = self._actions[service]
            while q and q[0] <= now - HOUR:
                q.popleft()
            return len(q)

    def record_action(self, service: str, ts: float) -> None:
        with self._mutex:
            q = self._actions[service]
            q.append(ts)
            if len(q) > 1 and q[-2] > ts:
                self._actions[service] = deque(sorted(q))

    def try_lock(self, service: str, plan_id: str) -> str | None:
        """Take the service's lock for ``plan_id``; returns the holder if someone else has it."""
        with self._mutex:
            holder = self._locks.get(service)
            if holder is not None and holder != plan_id:
                return holder
            self._locks[service] = plan_id
            return None

    def unlock(self, service: str, plan_id: str) -> None:
        with self._mutex:
            if self._locks.get(service) == plan_id:
                del self._locks[service]

    # --- right before a mutating step ----------------------------------------------------------------

    def before_step(self, service: str, plan_id: str, *, counted: bool = True) -> tuple[list[str], list[str]]:
        """``(reasons, violations)`` that forbid a mutating step of ``plan_id`` now (both empty: go ahead).

        ``counted``: the plan's own action is already in the hour's history (it started executing),
        so only actions beyond it count against the rate limit. The lock is taken if free.

        >>> from metaheal.config import Settings
        >>> p = Policies(Settings())
        >>> p.before_step("api", "p1", counted=False)
        ([], [])
        >>> p.kill_switch = True
        >>> p.before_step("api", "p1")
        (['global kill switch engaged'], ['kill_switch'])
        """
        now = self.clock()
        reasons, violations = [], []
        if self.kill_switch_engaged():
            reasons.append("global kill switch engaged")
            violations.append("kill_switch")
        freeze = self.frozen(service, now)
        if freeze:
            reasons.append(freeze)
            violations.append("change_freeze")
        used, limit = self.actions_last_hour(service, now) - (1 if counted else 0), self.limit_for(service)
        if used >= limit:
            reasons.append(f"rate limit: {used} other action(s) on {service} in the last hour (max {limit})")
            violations.append("rate_limit")
        holder = self.try_lock(service, plan_id)
        if holder is not None:
            reasons.append(f"lock: plan {holder} is running on {service}")
            violations.append("lock")
        return reasons, violations

    # --- the check ---------------------------------------------------------------------------------

    def check(self, plan: AgenticPlan, level: str) -> TrustDecision:
        """Decide auto-approve / needs approval / deny. On anything but deny the lock is held."""
        now = self.clock()
        reasons, violations = [], []
        if self.kill_switch_engaged():
            reasons.append("global kill switch engaged")
            violations.append("kill_switch")
        freeze = self.frozen(plan.service, now)
        if freeze:
            reasons.append(freeze)
            violations.append("change_freeze")
        listed = self.playbook_denied(plan.service, plan.selected_playbook)
        if listed:
            reasons.append(listed)
            violations.append("deny_list" if "deny list" in listed else "allow_list")
        used, limit = self.actions_last_hour(plan.service, now), self.limit_for(plan.service)
        if used >= limit:
            reasons.append(f"rate limit: {used} action(s) on {plan.service} in the last hour (max {limit})")
            violations.append("rate_limit")
        if not violations:
            holder = self.try_lock(plan.service, plan.plan_id)
            if holder is not None:
                reasons.append(f"lock: plan {holder} is already running on {plan.service}")
                violations.append("lock")
        if violations:
            logger.info(
                "trust_denied plan=%s service=%s violations=%s", plan.plan_id, plan.service, ",".join(violations)
            )
            return TrustDecision(verdict="deny", level=level, reasons=reasons, violations=violations)
        exceeded = plan_guardrail_reasons(self.settings, level, plan)
        if exceeded:
            return TrustDecision(verdict="needs_approval", level=level, reasons=exceeded)
        return TrustDecision(
            verdict="auto_approve",
            level=level,
            reasons=[
                f"within {level} guardrails (confidence {plan.confidence:.2f}, "
                f"impact {plan.risk_assessment.impact}, blast radius "
                f"{plan.risk_assessment.blast_radius})"
            ],
        )
