"""Guardrail level (tight / maintain / loose) and the rules that move it.

The design's rules, in order of precedence:

1. an error spike tightens at once, straight to ``tight`` (errors mean our last
   changes, or the system, are misbehaving: act carefully now, not next cycle);
2. a recent success rate below ``tighten_success_rate`` (0.50) tightens one level;
3. a recent success rate above ``loosen_success_rate`` (0.85) loosens one level,
   once per batch of new outcomes (so a single good run cannot loosen every cycle);
4. ``stable_cycles_to_loosen`` quiet cycles in a row loosen one level;
5. otherwise maintain.

Loosening is always one level at a time; tightening on an error spike is not.

>>> g = GuardrailState(level="maintain")
>>> g.decide("error_spike", success_rate=None, new_outcomes=0).adjustment
'tighten'
>>> g.level
'tight'
>>> for _ in range(3): r = g.decide("routine_maintenance", success_rate=None, new_outcomes=0)
>>> r.adjustment, g.level, r.reason
('loosen', 'maintain', '3 stable cycles in a row: loosen one level to maintain')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metaheal.config import GuardrailSettings

LEVELS: tuple[str, ...] = ("tight", "maintain", "loose")
#: time budget multiplier per level: tight guardrails give an agent less time before escalation
BUDGET_FACTOR = {"tight": 0.5, "maintain": 1.0, "loose": 1.5}


def tighter(level: str) -> str:
    return LEVELS[max(0, LEVELS.index(level) - 1)]


def looser(level: str) -> str:
    return LEVELS[min(len(LEVELS) - 1, LEVELS.index(level) + 1)]


@dataclass(frozen=True)
class GuardrailChange:
    adjustment: str  # tighten | loosen | maintain
    previous: str
    level: str
    reason: str

    @property
    def changed(self) -> bool:
        return self.previous != self.level


@dataclass
class GuardrailState:
    """Mutable level plus the counters the rules need; persisted as JSON on the control topic."""

    level: str = "maintain"
    stable_cycles: int = 0
    outcomes_since_change: int = 0
    rules: GuardrailSettings = field(default_factory=GuardrailSettings)
    stable_cycles_to_loosen: int = 3
    min_outcomes: int = 3

    def to_json(self) -> dict[str, object]:
        return {
            "level": self.level,
            "stable_cycles": self.stable_cycles,
            "outcomes_since_change": self.outcomes_since_change,
        }

    def restore(self, doc: dict[str, Any]) -> None:
        level = doc.get("level")
        if level in LEVELS:
            self.level = str(level)
        self.stable_cycles = int(doc.get("stable_cycles", 0) or 0)
        self.outcomes_since_change = int(doc.get("outcomes_since_change", 0) or 0)

    def decide(self, focus_area: str, success_rate: float | None, new_outcomes: int) -> GuardrailChange:
        """Apply the rules for one cycle; ``new_outcomes`` = outcomes seen since the last cycle."""
        prev = self.level
        self.outcomes_since_change += new_outcomes
        self.stable_cycles = self.stable_cycles + 1 if focus_area == "routine_maintenance" else 0
        # the success rate counts once enough outcomes were seen since the last change
        rate = success_rate if self.outcomes_since_change >= self.min_outcomes else None
        if focus_area == "error_spike" and prev != "tight":
            return self._move("tighten", "tight", "error spike: tighten at once to tight")
        if rate is not None and rate < self.rules.tighten_success_rate and prev != "tight":
            return self._move(
                "tighten",
                tighter(prev),
                f"recent success rate {rate:.2f} < {self.rules.tighten_success_rate:.2f}: tighten to {tighter(prev)}",
            )
        if rate is not None and rate > self.rules.loosen_success_rate and prev != "loose":
            return self._move(
                "loosen",
                looser(prev),
                f"recent success rate {rate:.2f} > {self.rules.loosen_success_rate:.2f}: "
                f"loosen one level to {looser(prev)}",
            )
        if self.stable_cycles >= self.stable_cycles_to_loosen and prev != "loose":
            n = self.stable_cycles
            return self._move("loosen", looser(prev), f"{n} stable cycles in a row: loosen one level to {looser(prev)}")
        shown = "n/a" if success_rate is None else f"{success_rate:.2f}"
        return GuardrailChange("maintain", prev, prev, f"maintain {prev} (recent success rate {shown})")

    def _move(self, adjustment: str, level: str, reason: str) -> GuardrailChange:
        prev, self.level = self.level, level
        self.stable_cycles = 0
        self.outcomes_since_change = 0
        return GuardrailChange(adjustment, prev, level, reason)


#: seconds an agent gets per focus area at the ``maintain`` level
BASE_BUDGET = {
    "latency_drift": 600,
    "error_spike": 300,
    "capacity_strain": 900,
    "dependency_health": 600,
    "trust_violations": 300,
    "routine_maintenance": 120,
}


def time_budget(focus_area: str, level: str, learned_seconds: float | None = None) -> int:
    """Budget from focus and level; a learned typical duration (x2 headroom) caps or lifts it within 0.5x..2x.

    >>> time_budget("error_spike", "tight"), time_budget("capacity_strain", "loose")
    (150, 1350)
    >>> time_budget("latency_drift", "maintain", learned_seconds=100.0)
    300
    """
    base = BASE_BUDGET.get(focus_area, 300) * BUDGET_FACTOR.get(level, 1.0)
    if learned_seconds is not None and learned_seconds > 0:
        base = min(max(2 * learned_seconds, base * 0.5), base * 2)
    return round(base)
