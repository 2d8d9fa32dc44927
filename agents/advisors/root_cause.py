"""Root-cause suggester: knowledge-map prior, blended with a river model as outcomes confirm causes.

Features are the symptom vector of one service around the cycle (0..1 strengths:
which signals moved, which way, how far; unhealthy dependencies, from
dependency-labelled metrics *and* from the dependency graph in ``settings.services``;
recent deployments/config changes; probe labels such as ``error_type``).

Day one the :class:`~metaheal.agents.advisors.knowledge_map.KnowledgeMap` answers
alone. Every outcome whose live verification confirmed the cause (the cause whose
playbook fixed it: the diagnosis if the successful playbook treats it, else the
playbook's single declared cause) trains a ``river.naive_bayes.MultinomialNB``; its weight in the
blend grows as ``n / (n + learned_weight_halfway)``. The learned part only speaks
in proportion to how much symptom evidence there is, so a quiet service stays
``unknown`` however confident the model has become about busy ones.

A dependency's load counts for its caller only when it grew beyond the caller's own
traffic (``dep_load_up``: cache misses falling through, retries): then the dependency's
latency and errors are the caller's doing, not an outage or a slow query there. A
dependency serving *less* is no sign it is down (its callers may have failed over away).

A failing dependency explains its callers: the caller's ``upstream_outage``
candidate names the dependency, and the causes diagnosed *on* the dependency are
added as candidates located there (``service`` = the dependency).

>>> rc = RootCauseSuggester(graph={"api": ["orders-db"]})
>>> sym = [Symptom("api", "latency_ms", "latency", 1, 2.0, 1.0),
...        Symptom("orders-db", "query_latency_ms", "latency", 1, 3.0, 1.0)]
>>> f = symptom_features(sym, "api", {"orders-db"})
>>> sorted(k for k, v in f.items() if v > 0)
['db_latency_up', 'dep_latency_up', 'latency_up']
>>> cands = rc.candidates_for(["api"], sym)
>>> cands[0].cause, cands[0].service
('database_slow_query', 'api')
>>> rc.candidates_for(["api"], [])[0].cause
'unknown'
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

from river import naive_bayes

from metaheal.agents.advisors.anomaly import CHANGE_AGE, CHANGE_METRICS
from metaheal.agents.advisors.base import (
    UNKNOWN,
    Advisor,
    AdvisorOutput,
    CycleContext,
    Outcome,
    Symptom,
    clamp01,
)
from metaheal.agents.advisors.knowledge_map import KnowledgeMap
from metaheal.agents.advisors.negative import Absence, absences, cause_ratio
from metaheal.agents.common.baselines import LOAD_AMPLIFICATION
from metaheal.events import HealthWindow, RootCauseCandidate

logger = logging.getLogger(__name__)

DB_NAMES = re.compile(r"db|database|postgres|mysql|sql|mongo|cassandra|dynamo", re.IGNORECASE)
DEPLOY = re.compile(r"deploy|release|rollout", re.IGNORECASE)
UPSTREAM = "upstream_outage"
#: Nats by which a pattern must out-fit the average learned cause before "unknown" gives way.
UNKNOWN_MARGIN = 2.0
#: feature -> the signals at baseline that argue against it (``negative.absences``), per service
Absent = dict[str, list[Absence]]


def _put(f: dict[str, float], key: str, value: float) -> None:
    if value > f.get(key, 0.0):
        f[key] = value


def _service_feature(f: dict[str, float], s: Symptom, v: float) -> None:
    metric = s.metric.lower()
    up = s.direction > 0
    if s.signal == "change" or (up and CHANGE_METRICS.search(metric)):
        if not CHANGE_AGE.search(metric):  # an age dates a change; it growing is no change
            _put(f, "deploy_recent" if DEPLOY.search(metric) else "config_change_recent", v)
        return
    if "cache" in metric and (("hit" in metric and not up) or ("miss" in metric and up)):
        _put(f, "cache_hit_down", v)
    if "slow_quer" in metric or s.labels.get("slow_query"):
        _put(f, "slow_query", v)
    if "cpu" in metric and up:
        _put(f, "cpu_up", v)
    if ("mem" in metric or "heap" in metric or "rss" in metric) and up:
        _put(f, "memory_up", v)
    if s.signal in ("latency", "errors", "saturation", "traffic", "capacity"):
        _put(f, f"{s.signal}_{'up' if up else 'down'}", v)
    if "error_type" in s.labels:
        _put(f, f"error_type={s.labels['error_type']}", v)


def _dependency_feature(f: dict[str, float], dep: str, s: Symptom, v: float, own_load: float = 1.0) -> None:
    up = s.direction > 0
    metric = s.metric.lower()
    if s.signal == "traffic":
        if up and not s.dependency and 1.0 + s.size >= LOAD_AMPLIFICATION * own_load:
            # more requests reach the dependency than this service's own traffic explains: its latency
            # and errors are load this service sends it (an edge surge raises both alike)
            _put(f, "dep_load_up", v)
        return
    if (s.signal == "latency" or "latency" in metric) and up:
        _put(f, "dep_latency_up", v)
        if DB_NAMES.search(dep):
            _put(f, "db_latency_up", v)
    elif (s.signal == "errors" or "error" in metric) and up:
        _put(f, "dep_errors_up", v)
    elif (s.signal in ("capacity", "traffic") and not up) or metric == "up":
        _put(f, "dep_down", v)


def symptom_features(symptoms: Iterable[Symptom], service: str, dependencies: set[str]) -> dict[str, float]:
    """The symptom vector of ``service`` (values 0..1; absent = 0)."""
    f: dict[str, float] = {}
    symptoms = list(symptoms)
    own_load = max(
        (
            1.0 + s.size
            for s in symptoms
            if s.service == service and s.signal == "traffic" and s.direction > 0 and not s.dependency
        ),
        default=1.0,
    )
    for s in symptoms:
        v = clamp01(s.strength * min(1.0, 0.5 + s.size))
        if v <= 0:
            continue
        if s.service == service and s.dependency:
            _dependency_feature(f, s.dependency, s, v, own_load)
        elif s.service == service:
            _service_feature(f, s, v)
        elif s.service in dependencies and s.signal != "change":
            _dependency_feature(f, s.service, s, v, own_load)
    return f


def _logmeanexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def closure(graph: dict[str, list[str]], service: str, depth: int = 3) -> set[str]:
    """Services ``service`` depends on, transitively (bounded; cycles are harmless).

    >>> sorted(closure({"web": ["api"], "api": ["db"], "db": ["web"]}, "web"))
    ['api', 'db']
    """
    seen: set[str] = set()
    frontier = [service]
    for _ in range(depth):
        frontier = [d for s in frontier for d in graph.get(s, []) if d not in seen and d != service]
        seen.update(frontier)
    return seen


class RootCauseSuggester(Advisor):
    name = "root_cause"

    def __init__(
        self,
        knowledge_map: KnowledgeMap | None = None,
        graph: dict[str, list[str]] | None = None,
        *,
        unknown_below: float = 0.35,
        learned_weight_halfway: float = 20.0,
        playbook_causes: dict[str, list[str]] | None = None,
    ) -> None:
        self.km = knowledge_map or KnowledgeMap.default()
        self.playbook_causes = playbook_causes or {}
        self.graph = graph or {}
        self.unknown_below = unknown_below
        self.halfway = learned_weight_halfway
        self.model = naive_bayes.MultinomialNB(alpha=0.5)
        self.learned = 0

    # -- model -----------------------------------------------------------------------------------

    @property
    def learned_weight(self) -> float:
        return self.learned / (self.learned + self.halfway)

    def distribution(self, features: dict[str, float], absent: Absent | None = None) -> dict[str, float]:
        """P(cause | features, absent symptoms): :meth:`positive`, each map cause weighed down by the
        likelihood ratio of its expected symptoms sitting at baseline (:mod:`.negative`), renormalised."""
        dist = self.positive(features)
        if not absent:
            return dist
        ratios = {c: cause_ratio(rule, absent)[0] for c, rule in self.km.causes.items()}
        weighed = {c: p * ratios.get(c, 1.0) for c, p in dist.items()}
        total = sum(weighed.values())
        return {c: v / total for c, v in weighed.items()} if total > 0 else dist

    def against(self, cause: str, absent: Absent | None) -> list[str]:
        """What argued against ``cause``: its expected symptoms found at baseline."""
        rule = self.km.causes.get(cause)
        if rule is None or not absent:
            return []
        lr, why = cause_ratio(rule, absent)
        return [f"against: {w}" for w in why] if lr < 1.0 else []

    def positive(self, features: dict[str, float]) -> dict[str, float]:
        """P(cause | features) over the map's causes, learned causes and ``unknown``.

        A geometric blend: ``(1 - w) * log P_map(cause | f) + w * log-likelihood ratio``,
        ``w = learned / (learned + halfway)``. The model contributes its class-conditional
        likelihood ``p(f | cause)`` relative to the average cause, not its posterior: which
        causes get confirmed is biased by which ones we already diagnosed and fixed, and
        the class prior would carry that bias over. ``unknown`` (and any cause never
        confirmed) sits ``UNKNOWN_MARGIN`` nats below the average, so it gives way only
        when the model recognises the pattern as one specific cause.
        """
        prior = self.km.probabilities(features)
        w = self.learned_weight
        if w <= 0 or not features or not self.model.class_counts:
            return prior
        jll = self.model.joint_log_likelihood(features)
        loglik = {c: v - math.log(self.model.p_class(c)) for c, v in jll.items()}
        neutral = _logmeanexp(list(loglik.values()))
        floor = min(prior.values())
        logpost = {
            c: (1 - w) * math.log(max(prior.get(c, floor), 1e-12))
            + w * (loglik.get(c, neutral - UNKNOWN_MARGIN) - neutral)
            for c in sorted(set(prior) | set(loglik))
        }
        top = max(logpost.values())
        exp = {c: math.exp(v - top) for c, v in logpost.items()}
        total = sum(exp.values())
        return {c: v / total for c, v in exp.items()}

    def confirmed_cause(self, outcome: Outcome) -> str | None:
        """The cause the fix confirms: the diagnosed one if the playbook treats it, else the
        playbook's only declared cause; None when the fix does not single one out."""
        if outcome.confirmed_cause is None:
            return None
        treats = [c for c in self.playbook_causes.get(outcome.playbook, []) if c != UNKNOWN]
        if not treats or outcome.confirmed_cause in treats:
            return outcome.confirmed_cause
        return treats[0] if len(treats) == 1 else None

    def learn(self, outcome: Outcome, features: dict[str, dict[str, float]] | None = None) -> None:
        cause = self.confirmed_cause(outcome)
        f = (features or {}).get(outcome.service)
        if cause is None or not f:
            return
        self.model.learn_one(f, cause)
        self.learned += 1
        logger.debug("root_cause learned service=%s cause=%s n=%d", outcome.service, cause, self.learned)

    # -- candidates ------------------------------------------------------------------------------

    def features_for(self, services: Iterable[str], symptoms: list[Symptom]) -> dict[str, dict[str, float]]:
        """Feature vectors of the services and everything they depend on (recorded for learning)."""
        scope: set[str] = set()
        for s in services:
            scope |= {s} | closure(self.graph, s)
        scope |= {s.service for s in symptoms}
        return {s: symptom_features(symptoms, s, closure(self.graph, s)) for s in sorted(scope)}

    def _worst_dependency(self, service: str, symptoms: list[Symptom]) -> str | None:
        deps = closure(self.graph, service)
        load: dict[str, float] = {}
        for s in symptoms:
            target = s.dependency if (s.service == service and s.dependency) else s.service
            if target in deps or (s.service == service and s.dependency):
                load[target] = load.get(target, 0.0) + s.strength
        return max(load, key=lambda k: (load[k], k)) if load else None

    def absences_for(self, services: Iterable[str], health: list[HealthWindow]) -> dict[str, Absent]:
        """Per service in scope (the services and what they depend on): the features shown absent."""
        scope: set[str] = set()
        for s in services:
            scope |= {s} | closure(self.graph, s)
        return {s: absences(health, s, closure(self.graph, s)) for s in sorted(scope)}

    def _service_candidates(
        self,
        service: str,
        symptoms: list[Symptom],
        feats: dict[str, dict[str, float]],
        absent: dict[str, Absent] | None = None,
    ) -> list[RootCauseCandidate]:
        f = feats.get(service) or symptom_features(symptoms, service, closure(self.graph, service))
        ab = (absent or {}).get(service)
        dist = self.distribution(f, ab)
        out: list[RootCauseCandidate] = []
        dep = self._worst_dependency(service, symptoms) if dist.get(UPSTREAM, 0.0) > 0.05 else None
        for cause, p in dist.items():
            if cause == UPSTREAM and dep is not None:
                out.extend(self._upstream(service, dep, p, symptoms, feats, f, absent))
                continue
            out.append(
                RootCauseCandidate(
                    cause=cause,
                    probability=clamp01(p),
                    service=service,
                    evidence=[*self.km.explain(cause, f), *self.against(cause, ab)],
                )
            )
        return out

    def _upstream(
        self,
        service: str,
        dep: str,
        mass: float,
        symptoms: list[Symptom],
        feats: dict[str, dict[str, float]],
        f: dict[str, float],
        absent: dict[str, Absent] | None = None,
    ) -> list[RootCauseCandidate]:
        """``upstream_outage`` for the caller, refined by what is wrong *on* the dependency.

        The caller keeps ``upstream_outage`` (``service`` = the caller: that is what a
        directive for it can act on, e.g. fail over). The dependency's own diagnosis is
        added as candidates located at the dependency with probability
        ``P(upstream) * P(cause | dependency)``: refinements of the upstream event, so
        they are not disjoint from it.
        """
        dep_f = feats.get(dep) or symptom_features(symptoms, dep, closure(self.graph, dep))
        dep_ab = (absent or {}).get(dep)
        dep_dist = self.distribution(dep_f, dep_ab) if dep_f else {UNKNOWN: 1.0}
        located = sorted(
            ((c, p) for c, p in dep_dist.items() if c not in (UNKNOWN, UPSTREAM) and p * mass > 0.01),
            key=lambda cp: -cp[1],
        )
        why = [
            f"{service} depends on {dep}",
            *self.km.explain(UPSTREAM, f),
            *self.against(UPSTREAM, (absent or {}).get(service)),
        ]
        why += [f"{dep}: {c} p={p:.2f}" for c, p in located[:3]]
        out = [RootCauseCandidate(cause=UPSTREAM, probability=clamp01(mass), service=service, evidence=why)]
        for cause, p in located:
            out.append(
                RootCauseCandidate(
                    cause=cause,
                    probability=clamp01(mass * p),
                    service=dep,
                    evidence=[
                        f"explains {service} via upstream_outage",
                        *self.km.explain(cause, dep_f),
                        *self.against(cause, dep_ab),
                    ],
                )
            )
        return out

    def candidates_for(
        self,
        services: list[str],
        symptoms: list[Symptom],
        feats: dict[str, dict[str, float]] | None = None,
        absent: dict[str, Absent] | None = None,
    ) -> list[RootCauseCandidate]:
        """Ranked candidates over the focus services, weighted by how sick each one is (``absent``: the
        symptoms shown at baseline per service, :meth:`absences_for`)."""
        feats = feats if feats is not None else self.features_for(services, symptoms)
        if not services:
            return [RootCauseCandidate(cause=UNKNOWN, probability=1.0, evidence=["no target services"])]
        sick = {s: sum(x.strength for x in symptoms if x.service == s) + 1e-3 for s in services}
        total = sum(sick.values())
        merged: dict[tuple[str, str | None], RootCauseCandidate] = {}
        for s in services:
            for c in self._service_candidates(s, symptoms, feats, absent):
                key = (c.cause, c.service if c.cause != UNKNOWN else None)
                p = c.probability * sick[s] / total
                if key in merged:
                    merged[key].probability = clamp01(merged[key].probability + p)
                else:
                    merged[key] = RootCauseCandidate(
                        cause=c.cause, probability=clamp01(p), service=key[1], evidence=c.evidence
                    )
        ranked = sorted(merged.values(), key=lambda c: (-c.probability, c.cause))
        top = next((c for c in ranked if c.cause != UNKNOWN), None)
        if top is None or top.probability < self.unknown_below:
            # Thin evidence: say so first rather than lead with a weak guess.
            unknown = (
                next(c for c in ranked if c.cause == UNKNOWN)
                if any(c.cause == UNKNOWN for c in ranked)
                else RootCauseCandidate(cause=UNKNOWN, probability=0.0)
            )
            ranked = [unknown, *[c for c in ranked if c is not unknown]]
        return ranked

    def advise(self, ctx: CycleContext) -> AdvisorOutput:
        ctx.features = self.features_for(ctx.services, ctx.symptoms)
        ctx.absent = self.absences_for(ctx.services, ctx.health)
        cands = self.candidates_for(ctx.services, ctx.symptoms, ctx.features, ctx.absent)
        ctx.candidates = [c for c in cands if c.probability >= 0.01 or c.cause == UNKNOWN][:10]
        top = ctx.candidates[0]
        out = AdvisorOutput(candidates=ctx.candidates)
        out.confidence = 0.0 if top.cause == UNKNOWN else clamp01(top.probability)
        out.evidence.append(
            f"root_cause top={top.cause}@{top.service} p={top.probability:.2f} "
            f"learned_from={self.learned} learned_weight={self.learned_weight:.2f}"
        )
        if ctx.services:
            sick = {s: sum(x.strength for x in ctx.symptoms if x.service == s) for s in ctx.services}
            ctx.primary_service = max(ctx.services, key=lambda s: (sick[s], -ctx.services.index(s)))
        return out
