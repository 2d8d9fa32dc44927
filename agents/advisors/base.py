"""The small contract every advisor keeps, and the data passed between them.

Advisors run in a fixed order for each cycle (anomaly findings, then root causes,
then playbooks): each reads what the earlier ones left in the :class:`CycleContext`
and returns an :class:`AdvisorOutput`. They only ever *return* advice; nothing in
this package can publish anything but advice (see ``service.AdviceProducer``).

Outcomes are the training data. :class:`Outcome` is parsed from a signed
``execution_outcome`` ledger payload (or a ``SignedOutcome`` event), so every
advisor learns from the same record the auditors see.

>>> o = Outcome.from_payload({"outcome_id": "o1", "service": "api", "playbook": "warm_cache",
...                           "root_cause": "cache_miss_rate_high", "result": "success",
...                           "verification_passed": True, "ts": 10.0})
>>> o.executed, o.succeeded, o.confirmed_cause
(True, True, 'cache_miss_rate_high')
>>> Outcome.from_payload({"outcome_id": "o2", "service": "api", "playbook": "x", "result": "denied", "ts": 1}).executed
False
>>> Outcome.from_payload({"service": "api"})
Traceback (most recent call last):
...
ValueError: outcome payload: missing field(s) outcome_id, playbook, result
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from metaheal.events import (
    AnomalyScore,
    CycleFocus,
    HealthWindow,
    Recommendation,
    RootCauseCandidate,
)

#: Outcome results that mean the playbook actually ran and was judged (``denied``/``expired`` never touched the
#: service; ``inconclusive`` touched it but nobody could tell whether it worked: no evidence either way).
EXECUTED_RESULTS = frozenset({"success", "failed", "rolled_back"})
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Outcome:
    """What one executed (or refused) plan taught us."""

    outcome_id: str
    service: str
    playbook: str
    result: str
    ts: float
    root_cause: str | None = None
    verification_passed: bool | None = None
    cycle_id: str | None = None

    @classmethod
    def from_payload(cls, payload: dict[str, Any], cycle_id: str | None = None) -> Outcome:
        missing = [k for k in ("outcome_id", "service", "playbook", "result") if not payload.get(k)]
        if missing:
            raise ValueError(f"outcome payload: missing field(s) {', '.join(missing)}")
        ts = float(payload.get("ts") or 0.0)
        if not math.isfinite(ts):
            raise ValueError("outcome payload: ts is not finite")
        return cls(
            outcome_id=str(payload["outcome_id"]),
            service=str(payload["service"]),
            playbook=str(payload["playbook"]),
            result=str(payload["result"]),
            ts=ts,
            root_cause=payload.get("root_cause") or None,
            verification_passed=payload.get("verification_passed"),
            cycle_id=payload.get("cycle_id") or cycle_id,
        )

    @property
    def executed(self) -> bool:
        return self.result in EXECUTED_RESULTS

    @property
    def succeeded(self) -> bool:
        """Success needs the live verification not to have failed, not only the steps to run."""
        return self.result == "success" and self.verification_passed is not False

    @property
    def confirmed_cause(self) -> str | None:
        """The cause whose playbook fixed it: the only label the root-cause model trusts."""
        if self.succeeded and self.verification_passed and self.root_cause and self.root_cause != UNKNOWN:
            return self.root_cause
        return None


@dataclass
class Symptom:
    """One anomalous series on one service, reduced to what diagnosis needs."""

    service: str
    metric: str
    signal: str | None
    direction: int  # +1 above baseline, -1 below
    size: float  # relative deviation from baseline
    strength: float  # 0..1: how sure we are this is a real symptom
    dependency: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class CycleContext:
    """Everything known about one cycle; advisors add to it in order."""

    focus: CycleFocus
    services: list[str]
    anomalies: list[AnomalyScore] = field(default_factory=list)
    health: list[HealthWindow] = field(default_factory=list)
    symptoms: list[Symptom] = field(default_factory=list)
    features: dict[str, dict[str, float]] = field(default_factory=dict)
    candidates: list[RootCauseCandidate] = field(default_factory=list)
    primary_service: str | None = None
    #: service -> feature -> signals at baseline arguing against it (``negative.Absence``), set by root_cause
    absent: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    #: service -> when the last outcome on it or on a service it calls or is called by arrived: a change
    #: (deployment, flag) from before it was already there when that remediation was verified
    changed_at: dict[str, float] = field(default_factory=dict)

    @property
    def diagnosis(self) -> str:
        """The leading cause (``unknown`` when the suggester said evidence is thin)."""
        return self.candidates[0].cause if self.candidates else UNKNOWN


@dataclass
class AdvisorOutput:
    confidence: float = 0.0
    recommendations: list[Recommendation] = field(default_factory=list)
    candidates: list[RootCauseCandidate] = field(default_factory=list)
    ranked: list[tuple[str, float, float]] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)


class Advisor(ABC):
    """One advisor: advises on a cycle, learns from outcomes, never acts."""

    #: Key in ``MLAdvice.confidence_scores``.
    name: str

    @abstractmethod
    def advise(self, ctx: CycleContext) -> AdvisorOutput: ...

    def learn(self, outcome: Outcome, features: dict[str, dict[str, float]] | None = None) -> None:
        """Update from one outcome; ``features`` are those recorded when the cycle was advised."""
        return None


def clamp01(x: object) -> float:
    """Clamp into [0, 1]; non-finite becomes 0 so a broken model cannot claim certainty.

    >>> clamp01(1.7), clamp01(float("nan")), clamp01(-2)
    (1.0, 0.0, 0.0)
    """
    if not isinstance(x, int | float) or not math.isfinite(x):
        return 0.0
    return min(1.0, max(0.0, float(x)))
