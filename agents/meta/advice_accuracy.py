"""Which advice is most accurate: each advisor's record against verified outcomes, and the weights it earns.

For every directive the meta loop remembers the advisors' top picks for its service: the root-cause
suggester's leading known cause, the playbook ranker's first playbook (as the directive recommends it).
When the directive's outcome arrives (``success``, ``failed`` or ``rolled_back``; refusals and
inconclusive outcomes say nothing about the advice):

* **playbook ranker**: its pick ran; a verified success is a hit, a failure or rollback a miss.
  Another playbook that succeeded is a miss for the pick (the ranker did not lead to the fix);
  another one that failed says nothing about the pick.
* **root cause**: the outcome's playbook declares the cause: success is a hit, failure a miss (the
  fix for that cause did not fix it). A playbook for other causes that succeeded is a miss.

Verified outcomes do not test the anomaly scorer (a fix says the symptom was real, a failed fix says
nothing about whether it was), so its weight stays as configured.

Each record is recency-weighted (an outcome's weight halves every ``half_life`` seconds) and smoothed
towards one half by ``prior`` pseudo-outcomes; the combination weight of the advisor's term is its
configured weight times ``0.5 + accuracy``, clamped to ``[1 - max_shift, 1 + max_shift]`` times the
configured one: bounded, and back to the configuration without evidence.

>>> acc = AdviceAccuracy({"anomaly": 0.3, "root_cause": 0.25, "playbook": 0.45}, half_life=3600.0)
>>> acc.directive("d1", "api", top_cause="upstream_outage", top_playbook="failover_dependency")
>>> fixes = {"failover_dependency": frozenset({"upstream_outage"}), "rollback_flag": frozenset({"bad_deployment"})}
>>> u = acc.observe("o1", "d1", "failover_dependency", "rolled_back", ts=100.0, fixes=fixes, now=100.0)
>>> u.hits, round(u.after["playbook"], 3), round(u.after["root_cause"], 3)
({'playbook': False, 'root_cause': False}, 0.375, 0.208)
>>> acc.observe("o1", "d1", "failover_dependency", "rolled_back", ts=100.0, fixes=fixes, now=100.0) is None
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

#: results that judge the advice (the playbook ran and was verified, or failed, or was rolled back)
JUDGED = frozenset({"success", "failed", "rolled_back"})
#: the advisors whose record moves their term's weight (see the module docstring for the anomaly scorer)
TRACKED = ("root_cause", "playbook")


@dataclass(frozen=True)
class _Picks:
    service: str
    top_cause: str | None
    top_playbook: str | None


@dataclass(frozen=True)
class _Judged:
    ts: float
    advisor: str
    hit: bool


@dataclass(frozen=True)
class WeightUpdate:
    """One outcome's effect on the advisors' records and weights (a ``learning_update`` ledger entry)."""

    outcome_id: str
    directive_id: str
    service: str
    playbook: str
    result: str
    hits: dict[str, bool]
    accuracy: dict[str, float]
    judged: dict[str, float]
    before: dict[str, float]
    after: dict[str, float]
    picks: dict[str, str | None] = field(default_factory=dict)

    def payload(self) -> dict[str, object]:
        return {
            "kind": "advice_weights",
            "for_outcome": self.outcome_id,
            "directive_id": self.directive_id,
            "service": self.service,
            "playbook": self.playbook,
            "result": self.result,
            "picks": self.picks,
            "hits": self.hits,
            "accuracy": self.accuracy,
            "judged_weight": self.judged,
            "weights_before": self.before,
            "weights_after": self.after,
            "insight": self.sentence,
        }

    @property
    def sentence(self) -> str:
        parts = [
            f"{a} {'hit' if h else 'miss'} (accuracy {self.accuracy[a]:.0%}, weight "
            f"{self.before[a]:.3f} -> {self.after[a]:.3f})"
            for a, h in self.hits.items()
        ]
        return f"Advice on {self.service} ({self.playbook} {self.result}): " + "; ".join(parts)


class AdviceAccuracy:
    def __init__(
        self,
        base: Mapping[str, float],
        *,
        half_life: float = 3600.0,
        prior: float = 2.0,
        max_shift: float = 0.5,
        max_history: int = 5000,
    ) -> None:
        self.base = dict(base)
        self.half_life = half_life
        self.prior = prior
        self.max_shift = max_shift
        self._picks: dict[str, _Picks] = {}
        self._judged: deque[_Judged] = deque(maxlen=max_history)
        self._seen: set[str] = set()
        self._now = 0.0

    def directive(self, directive_id: str, service: str, *, top_cause: str | None, top_playbook: str | None) -> None:
        """Remember the advisors' picks behind a directive (the first record of it wins)."""
        self._picks.setdefault(directive_id, _Picks(service, top_cause, top_playbook))
        while len(self._picks) > 10_000:
            self._picks.pop(next(iter(self._picks)))

    def _weight(self, ts: float, now: float) -> float:
        return 0.5 ** (max(0.0, now - ts) / self.half_life)

    def accuracy(self, advisor: str, now: float) -> tuple[float, float]:
        """(smoothed recency-weighted accuracy, recency-weighted number of judged outcomes)."""
        w = [(self._weight(j.ts, now), j.hit) for j in self._judged if j.advisor == advisor]
        total = sum(x for x, _ in w)
        hits = sum(x for x, h in w if h)
        return (hits + 0.5 * self.prior) / (total + self.prior), total

    def weights(self, now: float | None = None) -> dict[str, float]:
        """The combination weights now: configured ones, moved by each tracked advisor's record."""
        t = self._now if now is None else now
        out = dict(self.base)
        for a in TRACKED:
            if a in out:
                acc, _ = self.accuracy(a, t)
                factor = min(1.0 + self.max_shift, max(1.0 - self.max_shift, 0.5 + acc))
                out[a] = round(self.base[a] * factor, 4)
        return out

    def observe(
        self,
        outcome_id: str,
        directive_id: str,
        playbook: str,
        result: str,
        *,
        ts: float,
        fixes: Mapping[str, frozenset[str]],
        now: float,
        verification_passed: bool | None = None,
    ) -> WeightUpdate | None:
        """Judge the picks behind ``directive_id`` by its outcome; None when it judges nothing (or again)."""
        picks = self._picks.get(directive_id)
        if outcome_id in self._seen or picks is None or result not in JUDGED:
            return None
        self._seen.add(outcome_id)
        success = result == "success" and verification_passed is not False
        hits: dict[str, bool] = {}
        if picks.top_playbook is not None and (success or playbook == picks.top_playbook):
            hits["playbook"] = success and playbook == picks.top_playbook
        if picks.top_cause is not None:
            treats = picks.top_cause in fixes.get(playbook, frozenset())
            if success or treats:
                hits["root_cause"] = success and treats
        if not hits:
            return None
        self._now = max(self._now, now)
        before = self.weights(now)
        for a, h in hits.items():
            self._judged.append(_Judged(ts, a, h))
        after = self.weights(now)
        acc = {a: round(self.accuracy(a, now)[0], 4) for a in hits}
        judged = {a: round(self.accuracy(a, now)[1], 3) for a in hits}
        return WeightUpdate(
            outcome_id,
            directive_id,
            picks.service,
            playbook,
            result,
            hits,
            acc,
            judged,
            {a: before[a] for a in hits},
            {a: after[a] for a in hits},
            {"root_cause": picks.top_cause, "playbook": picks.top_playbook},
        )
