"""Playbook ranker: expected success of each applicable playbook for (service, diagnosis).

* **Beta-Bernoulli with Bayesian smoothing.** The prior is the playbook's declared
  ``prior_success`` worth ``prior_pseudo_count`` outcomes (halved when the playbook
  only matches the focus area, not the diagnosed cause); executed outcomes add
  successes/failures for that exact (service, diagnosis, playbook). Evidence from
  the same service under other diagnoses counts a quarter; other services never
  count, because what fixes ``api`` says little about ``billing``.
* **Recency decay.** Counts decay with ``outcome_half_life_hours`` so a playbook
  that stopped working loses its record.
* **Context.** A river ``LogisticRegression`` per (service, playbook) on time of
  day, load and dependency health nudges the estimate, weighted by its evidence.
* **Exploration, deterministic and safe.** Where evidence is thin the score is a Thompson
  draw from the posterior, so an untried playbook gets a chance; with evidence the draw
  concentrates on the mean. The draw is seeded by the evidence itself (service, diagnosis,
  playbook, its decayed counts rounded), so the same evidence always gives the same ranking
  and a new outcome gives a new draw. Only playbooks that cannot make things worse than the
  best expected one explore (no higher impact, no larger blast radius) and may draw above
  it; the best expected and the riskier ones keep their mean.
* **Never a certain refusal.** Playbooks the trust check's policy denies for the
  service (``policy``: normally ``metaheal.agents.common.policy.Policies.playbook_denied``,
  i.e. ``executor.deny_playbooks``/``allow_playbooks``) or whose impact/blast radius
  exceeds *every* guardrail level are never ranked.

The ledger is the training data: :meth:`PlaybookRanker.learn` is fed from signed
outcomes (replayed on start, then one by one); outcome ids already seen are skipped,
so replay and live updates can overlap safely.

>>> from types import SimpleNamespace as NS
>>> pb = lambda name, causes, prior=0.5, impact="low", br=1: NS(name=name, impact=impact, blast_radius=br,
...     prior_success=prior, applies_to=NS(focus_areas=["latency_drift"], root_causes=causes))
>>> r = PlaybookRanker({"a": pb("a", ["x"]), "b": pb("b", ["x"], prior=0.7), "big": pb("big", ["x"], impact="high")},
...                    explore=False)
>>> [p.name for p in r.rank("api", "latency_drift", "x", now=0.0)]
['b', 'a']
>>> for i in range(4):
...     r.learn(Outcome(f"a{i}", "api", "a", "success", ts=0.0, root_cause="x", verification_passed=True))
...     r.learn(Outcome(f"b{i}", "api", "b", "failed", ts=0.0, root_cause="x"))
>>> order = lambda svc: [p.name for p in r.rank(svc, "latency_drift", "x", now=0.0)]
>>> order("api"), order("web")
(['a', 'b'], ['b', 'a'])
>>> r.refusal("api", r.playbooks["big"])
'impact high / blast radius 1 exceeds every guardrail level'
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from river import linear_model, optim

from metaheal.agents.advisors.base import (
    UNKNOWN,
    Advisor,
    AdvisorOutput,
    CycleContext,
    Outcome,
    clamp01,
)
from metaheal.config import GuardrailSettings

logger = logging.getLogger(__name__)

IMPACT_ORDER = {"low": 0, "medium": 1, "high": 2}
ANY_CAUSE = "*"
#: Weight of the same service's evidence gathered under other diagnoses.
OTHER_DIAGNOSES_WEIGHT = 0.25
#: Evidence (in outcomes) at which confidence reaches one half.
CONFIDENCE_HALFWAY = 5.0
#: Largest share of the estimate the context model may take (reached with plenty of evidence).
CONTEXT_WEIGHT = 0.2


class PlaybookLike(Protocol):
    """What the ranker needs from ``metaheal.agents.common.playbooks.Playbook`` (read-only)."""

    @property
    def name(self) -> str: ...
    @property
    def impact(self) -> str: ...
    @property
    def blast_radius(self) -> int: ...
    @property
    def prior_success(self) -> float: ...
    @property
    def applies_to(self) -> Any: ...


@dataclass
class _Counts:
    """Decayed success/failure counts; decayed lazily to the time asked."""

    success: float = 0.0
    failure: float = 0.0
    ts: float = 0.0

    def at(self, now: float, half_life: float) -> tuple[float, float]:
        k = 0.5 ** (max(0.0, now - self.ts) / half_life)
        return self.success * k, self.failure * k

    def add(self, success: bool, ts: float, half_life: float) -> None:
        if ts >= self.ts:
            self.success, self.failure = self.at(ts, half_life)
            self.ts = ts
            k = 1.0
        else:  # a late (replayed out of order) outcome counts as much as its age says
            k = 0.5 ** ((self.ts - ts) / half_life)
        if success:
            self.success += k
        else:
            self.failure += k


@dataclass(frozen=True)
class Ranked:
    name: str
    score: float
    confidence: float
    expected: float
    evidence: float


def context_features(ts: float, features: Mapping[str, float] | None = None) -> dict[str, float]:
    """Time of day (on the circle), load and dependency health for the context model.

    >>> sorted(context_features(6 * 3600.0, {"traffic_up": 1.0, "dep_errors_up": 0.5}).items())
    [('dep_health', 0.5), ('hour_cos', 0.0), ('hour_sin', 1.0), ('load', 1.0)]
    """
    hour = (ts % 86400.0) / 3600.0
    f = features or {}
    dep = max((v for k, v in f.items() if k.startswith("dep_") or k == "db_latency_up"), default=0.0)
    return {
        "hour_sin": round(math.sin(2 * math.pi * hour / 24), 6),
        "hour_cos": round(math.cos(2 * math.pi * hour / 24), 6),
        "load": max(f.get("traffic_up", 0.0), f.get("saturation_up", 0.0)),
        "dep_health": 1.0 - dep,
    }


class PlaybookRanker(Advisor):
    name = "playbook_ranker"

    def __init__(
        self,
        playbooks: Mapping[str, PlaybookLike],
        guardrails: GuardrailSettings | None = None,
        *,
        policy: Callable[[str, str], str | None] | None = None,
        prior_pseudo_count: float = 8.0,
        half_life_hours: float = 168.0,
        explore: bool = True,
        seed: int = 0,
    ) -> None:
        self.playbooks = dict(playbooks)
        self.guardrails = guardrails or GuardrailSettings()
        self.policy = policy
        self.k = prior_pseudo_count
        self.half_life = half_life_hours * 3600.0
        self.explore = explore
        self.seed = seed
        self.counts: dict[tuple[str, str, str], _Counts] = {}
        self.context: dict[tuple[str, str], tuple[linear_model.LogisticRegression, int]] = {}
        self.seen: set[str] = set()

    # -- policy ----------------------------------------------------------------------------------

    def refusal(self, service: str, pb: PlaybookLike) -> str | None:
        """Why the trust check would certainly refuse ``pb`` on ``service`` (None if it might not)."""
        if self.policy is not None and (why := self.policy(service, pb.name)):
            return why
        levels = self.guardrails.levels.values()
        if all(
            IMPACT_ORDER[pb.impact] > IMPACT_ORDER[lv.max_impact] or pb.blast_radius > lv.max_blast_radius
            for lv in levels
        ):
            return f"impact {pb.impact} / blast radius {pb.blast_radius} exceeds every guardrail level"
        return None

    def applicable(self, service: str, focus_area: str, diagnosis: str) -> list[PlaybookLike]:
        out = []
        for pb in self.playbooks.values():
            matches = focus_area in pb.applies_to.focus_areas or diagnosis in pb.applies_to.root_causes
            if matches and self.refusal(service, pb) is None:
                out.append(pb)
        return out

    # -- learning --------------------------------------------------------------------------------

    def learn(self, outcome: Outcome, features: dict[str, dict[str, float]] | None = None) -> None:
        if outcome.outcome_id in self.seen or not outcome.executed:
            return
        self.seen.add(outcome.outcome_id)
        ok = outcome.succeeded
        causes = {ANY_CAUSE, outcome.root_cause or UNKNOWN}
        for cause in causes:
            key = (outcome.service, cause, outcome.playbook)
            self.counts.setdefault(key, _Counts()).add(ok, outcome.ts, self.half_life)
        svc_features = (features or {}).get(outcome.service)
        model, n = self.context.get((outcome.service, outcome.playbook)) or (
            linear_model.LogisticRegression(optimizer=optim.SGD(0.1)),
            0,
        )
        model.learn_one(context_features(outcome.ts, svc_features), ok)
        self.context[(outcome.service, outcome.playbook)] = (model, n + 1)

    def learn_many(self, outcomes: Iterable[Outcome]) -> int:
        before = len(self.seen)
        for o in sorted(outcomes, key=lambda o: o.ts):
            self.learn(o)
        return len(self.seen) - before

    # -- ranking ---------------------------------------------------------------------------------

    def _evidence(self, service: str, diagnosis: str, playbook: str, now: float) -> tuple[float, float]:
        c_all = self.counts.get((service, ANY_CAUSE, playbook))
        s_all, f_all = c_all.at(now, self.half_life) if c_all else (0.0, 0.0)
        if diagnosis == UNKNOWN:
            return s_all, f_all
        c = self.counts.get((service, diagnosis, playbook))
        s, f = c.at(now, self.half_life) if c else (0.0, 0.0)
        w = OTHER_DIAGNOSES_WEIGHT
        return s + w * max(0.0, s_all - s), f + w * max(0.0, f_all - f)

    def rank(
        self,
        service: str,
        focus_area: str,
        diagnosis: str,
        *,
        now: float,
        features: Mapping[str, float] | None = None,
    ) -> list[Ranked]:
        ctx = context_features(now, features)
        rows = []
        for pb in self.applicable(service, focus_area, diagnosis):
            prior = pb.prior_success
            if diagnosis != UNKNOWN and diagnosis not in pb.applies_to.root_causes:
                prior *= 0.5  # fits the focus, not the diagnosed cause
            s, f = self._evidence(service, diagnosis, pb.name, now)
            a = prior * self.k + s + 1e-3
            b = (1 - prior) * self.k + f + 1e-3
            model, n_ctx = self.context.get((service, pb.name), (None, 0))
            w_ctx = CONTEXT_WEIGHT * n_ctx / (n_ctx + 10.0)
            p_ctx = clamp01(model.predict_proba_one(ctx).get(True, 0.5)) if model is not None else 0.5
            expected = (1 - w_ctx) * a / (a + b) + w_ctx * p_ctx
            rows.append((pb, a, b, w_ctx, p_ctx, expected, s + f))
        best = max(rows, key=lambda r: (r[5], r[0].name), default=None)
        out: list[Ranked] = []
        for pb, a, b, w_ctx, p_ctx, expected, n in rows:
            # the best expected keeps its mean (a low draw must not let a riskier one through); others that are
            # no riskier than it may draw above it
            safe = best is not None and (
                pb is not best[0]
                and IMPACT_ORDER[pb.impact] <= IMPACT_ORDER[best[0].impact]
                and pb.blast_radius <= best[0].blast_radius
            )
            draw = self._draw(service, diagnosis, pb.name, a, b) if self.explore and safe else a / (a + b)
            score = (1 - w_ctx) * draw + w_ctx * p_ctx
            out.append(Ranked(pb.name, clamp01(score), n / (n + CONFIDENCE_HALFWAY), clamp01(expected), n))
        return sorted(out, key=lambda r: (-r.score, r.name))

    def _draw(self, service: str, diagnosis: str, playbook: str, a: float, b: float) -> float:
        """A Thompson draw from Beta(a, b), the same for the same evidence (and seed)."""
        key = f"{self.seed}|{service}|{diagnosis}|{playbook}|{a:.3f}|{b:.3f}".encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        return float(rng.beta(a, b))

    def advise(self, ctx: CycleContext) -> AdvisorOutput:
        service = ctx.primary_service or (ctx.services[0] if ctx.services else "")
        diagnosis = ctx.diagnosis
        ranked = self.rank(
            service, ctx.focus.focus_area, diagnosis, now=ctx.focus.ts, features=ctx.features.get(service)
        )
        out = AdvisorOutput(ranked=[(r.name, r.score, r.confidence) for r in ranked])
        out.confidence = ranked[0].confidence if ranked else 0.0
        refused = [f"{n}: {why}" for n, pb in self.playbooks.items() if (why := self.refusal(service, pb))]
        out.evidence.append(
            f"playbooks for service={service} diagnosis={diagnosis} focus={ctx.focus.focus_area}: "
            + ", ".join(f"{r.name} expected={r.expected:.2f} n={r.evidence:.1f}" for r in ranked)
        )
        out.evidence.extend(f"never ranked: {r}" for r in refused)
        return out
