"""Success rates per focus area and per playbook, weighted towards recent outcomes.

An outcome's weight halves every ``half_life`` seconds, so a playbook that used to work
but has started failing loses standing within hours, not weeks. ``denied`` and
``expired`` outcomes say nothing about whether a playbook works (nobody ran it), and an
``inconclusive`` one says nothing either (it ran, but the evidence went missing): all are
left out of the rates. The outcome that later settles an inconclusive plan counts (a
``success`` confirmed by an operator or by late telemetry, a ``rolled_back``).

>>> from metaheal.events import SignedOutcome
>>> def out(i, result, playbook="scale_up_instances", ts=1000.0):
...     return SignedOutcome(outcome_id=f"o{i}", plan_id=f"p{i}", directive_id=f"d{i}", cycle_id="c",
...         service="api", playbook=playbook, result=result, duration_seconds=40.0, trust_decision="auto",
...         actor="executor", actor_signature="", ts=ts)
>>> lr = Learner(half_life=3600.0)
>>> lr.observe(out(1, "success"), "capacity_strain", now=1000.0).sentence
'Scaling effective for this load pattern: 100% success over 1 run(s) on capacity_strain (recency-weighted)'
>>> lr.observe(out(2, "failed", ts=1000.0), "capacity_strain", now=1000.0).rate
0.5
>>> lr.success_rate(playbook="scale_up_instances", now=1000.0 + 3600.0)
0.5
>>> lr.observe(out(2, "failed"), "capacity_strain", now=1000.0) is None  # duplicates are ignored
True
>>> lr.observe(out(3, "inconclusive"), "capacity_strain", now=1000.0) is None  # not evidence against it
True
>>> lr.success_rate(playbook="scale_up_instances", now=1000.0)
0.5
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from metaheal.events import SignedOutcome

#: results that say whether the playbook worked (not ``denied``, ``expired``, ``inconclusive``)
COUNTED = {"success", "failed", "rolled_back"}

ACTION_PHRASE = {
    "scale_up_instances": "Scaling",
    "warm_cache": "Cache warming",
    "restart_service": "Restarting",
    "rollback_flag": "Flag rollback",
    "failover_dependency": "Dependency failover",
}
PATTERN_PHRASE = {
    "capacity_strain": "this load pattern",
    "latency_drift": "this latency pattern",
    "error_spike": "this error pattern",
    "dependency_health": "this dependency failure",
    "trust_violations": "this trust situation",
}


@dataclass(frozen=True)
class _Obs:
    ts: float
    focus_area: str | None
    playbook: str
    success: bool
    duration: float


@dataclass(frozen=True)
class Insight:
    """One learning update: what changed, in words, plus the numbers for the ledger payload."""

    outcome_id: str
    playbook: str
    focus_area: str | None
    result: str
    rate: float | None
    focus_rate: float | None
    count: int
    sentence: str

    def payload(self) -> dict[str, object]:
        return {
            "outcome_id": self.outcome_id,
            "playbook": self.playbook,
            "focus_area": self.focus_area,
            "result": self.result,
            "playbook_success_rate": self.rate,
            "focus_success_rate": self.focus_rate,
            "runs": self.count,
            "insight": self.sentence,
        }


class Learner:
    def __init__(self, half_life: float = 3600.0, recent: int = 10, max_history: int = 5000) -> None:
        self.half_life = half_life
        self._obs: deque[_Obs] = deque(maxlen=max_history)
        self._seen: set[str] = set()
        self._recent = recent
        self.new_since_cycle = 0

    def __len__(self) -> int:
        return len(self._obs)

    def _weight(self, ts: float, now: float) -> float:
        return 0.5 ** (max(0.0, now - ts) / self.half_life)

    def _rate(self, obs: list[_Obs], now: float) -> float | None:
        total = sum(self._weight(o.ts, now) for o in obs)
        if total <= 0:
            return None
        return round(sum(self._weight(o.ts, now) for o in obs if o.success) / total, 4)

    def success_rate(self, *, focus_area: str | None = None, playbook: str | None = None, now: float) -> float | None:
        obs = [
            o
            for o in self._obs
            if (focus_area is None or o.focus_area == focus_area) and (playbook is None or o.playbook == playbook)
        ]
        return self._rate(obs, now)

    def recent_success_rate(self, now: float) -> float | None:
        """Rate over the last ``recent`` counted outcomes (what guardrails react to)."""
        return self._rate(list(self._obs)[-self._recent :], now)

    def count_since(self, ts: float) -> int:
        """Counted outcomes newer than ``ts`` (what a new leader has not yet fed to the guardrails)."""
        return sum(1 for o in self._obs if o.ts > ts)

    def typical_duration(self, focus_area: str, now: float) -> float | None:
        obs = [o for o in self._obs if o.focus_area == focus_area and o.success]
        total = sum(self._weight(o.ts, now) for o in obs)
        if not obs or total <= 0:
            return None
        return sum(self._weight(o.ts, now) * o.duration for o in obs) / total

    def playbook_ranking(self, playbooks: list[str], now: float) -> list[str]:
        """Order candidate playbooks by learned success (unknown ones keep their place, neutral 0.5)."""
        rate = {p: self.success_rate(playbook=p, now=now) for p in playbooks}
        return sorted(playbooks, key=lambda p: -(r if (r := rate[p]) is not None else 0.5))

    def observe(self, outcome: SignedOutcome, focus_area: str | None, now: float) -> Insight | None:
        """Learn from one outcome; ``None`` for duplicates and outcomes that say nothing about playbooks."""
        if outcome.outcome_id in self._seen or outcome.result not in COUNTED:
            return None
        self._seen.add(outcome.outcome_id)
        self._obs.append(
            _Obs(outcome.ts, focus_area, outcome.playbook, outcome.result == "success", outcome.duration_seconds)
        )
        self.new_since_cycle += 1
        rate = self.success_rate(playbook=outcome.playbook, now=now)
        focus_rate = self.success_rate(focus_area=focus_area, now=now) if focus_area else None
        count = sum(1 for o in self._obs if o.playbook == outcome.playbook)
        action = ACTION_PHRASE.get(outcome.playbook, outcome.playbook)
        pattern = PATTERN_PHRASE.get(focus_area or "", "this pattern")
        assert rate is not None
        verdict = "effective" if rate >= 0.7 else "unreliable" if rate < 0.5 else "mixed"
        sentence = (
            f"{action} {verdict} for {pattern}: {rate:.0%} success over {count} run(s)"
            f"{' on ' + focus_area if focus_area else ''} (recency-weighted)"
        )
        return Insight(
            outcome.outcome_id, outcome.playbook, focus_area, outcome.result, rate, focus_rate, count, sentence
        )
