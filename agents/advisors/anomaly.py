"""Anomaly findings: the streams scorer's verdicts, turned into sentences and symptoms.

The scorer already did the statistics (its ``score`` is a calibrated tail
probability, so one threshold means the same on every series); this advisor only
picks, per (service, metric), the strongest evidence in the cycle's window, says it
in a sentence an on-call engineer can read, and hands the root-cause suggester a
list of :class:`~metaheal.agents.advisors.base.Symptom`. Health windows add what
the scorer does not score: deployment/config-change counters and large moves
against the window baseline.

>>> from metaheal.events import AnomalyScore, CycleFocus
>>> a = AnomalyScore(service="api", metric="latency_ms", signal="latency", value=900.0, baseline=200.0,
...                  score=0.9995, threshold=0.99, crossed=True, model="m", ts=100.0,
...                  window_start=90.0, window_end=100.0)
>>> focus = CycleFocus(cycle_id="c1", ts=105.0, focus_area="latency_drift", confidence=0.9, reasoning=[],
...                    guardrail_adjustment="maintain", guardrail_level="maintain", time_budget_seconds=60,
...                    target_services=["api"])
>>> ctx = CycleContext(focus=focus, services=["api"], anomalies=[a])
>>> out = AnomalyAdvisor().advise(ctx)
>>> out.recommendations[0].severity, ctx.symptoms[0].direction, round(ctx.symptoms[0].size, 2)
('high', 1, 3.5)
>>> out.recommendations[0].sentence
'api latency_ms is 900 against a baseline of 200 (+350%), anomaly score 0.9995.'
"""

from __future__ import annotations

import logging
import math
import re

from metaheal.agents.advisors.base import (
    Advisor,
    AdvisorOutput,
    CycleContext,
    Symptom,
    clamp01,
)
from metaheal.events import AnomalyScore, HealthWindow, Recommendation, SignalStats

logger = logging.getLogger(__name__)

#: Counters whose mere presence in a window is an event (a deployment, a flag flip).
CHANGE_METRICS = re.compile(r"deploy|release|rollout|config_change|flag", re.IGNORECASE)
#: How long ago the last change was (``deployment_age_s``): it dates a change, it is none itself.
CHANGE_AGE = re.compile(r"(^|_)age(_|$)", re.IGNORECASE)
#: Relative move against the health-window baseline that counts as a (weak) symptom.
HEALTH_MOVE = 0.5
#: Strength of an unscored health move at HEALTH_MOVE, and at HEALTH_MOVE_FULL (x4) or beyond.
HEALTH_STRENGTH = (0.4, 0.8)
HEALTH_MOVE_FULL = 3.0


def _relative(value: float, baseline: float) -> float:
    return abs(value - baseline) / max(abs(baseline), 1e-9) if baseline else abs(value)


def move_size(value: float, baseline: float) -> float:
    """Relative move; for a fraction (0..1) measured on its rarer side.

    A cache hit rate falling from 0.92 to 0.32 is 8.5 times the misses, and misses are
    what load the database; an error rate from 0.002 to 0.02 is 10 times the errors.
    Measured on the common side both would look small (-65 %, -2 % successes).

    >>> round(move_size(0.32, 0.92), 2), round(move_size(0.02, 0.002), 2), round(move_size(240.0, 150.0), 2)
    (7.5, 9.0, 0.6)
    """
    if 0.0 <= value <= 1.0 and 0.5 < baseline < 1.0:
        return _relative(1.0 - value, 1.0 - baseline)
    return _relative(value, baseline)


def health_strength(size: float) -> float:
    """How much an unscored move of ``size`` counts: more the further beyond :data:`HEALTH_MOVE`.

    No scorer vouched for it, so it stays below a crossed anomaly (1.0); but a mean four times
    its baseline over a whole window is no noise either.

    >>> health_strength(0.5), health_strength(3.0), round(health_strength(1.0), 2)
    (0.4, 0.8, 0.52)
    """
    lo, hi = HEALTH_STRENGTH
    x = (math.log1p(size) - math.log1p(HEALTH_MOVE)) / (math.log1p(HEALTH_MOVE_FULL) - math.log1p(HEALTH_MOVE))
    return round(lo + (hi - lo) * max(0.0, min(1.0, x)), 4)


def severity(score: float, threshold: float) -> str:
    """Severity from the calibrated tail probability.

    >>> severity(0.99995, 0.99), severity(0.9995, 0.99), severity(0.992, 0.99), severity(0.95, 0.99)
    ('critical', 'high', 'medium', 'low')
    """
    if score >= 0.9999:
        return "critical"
    if score >= 0.999:
        return "high"
    if score >= threshold:
        return "medium"
    return "low"


class AnomalyAdvisor(Advisor):
    """Findings and symptoms from ``AnomalyScore`` and ``HealthWindow`` events."""

    name = "anomaly_scorer"

    def __init__(self, threshold: float = 0.99, reporting_floor: float = 0.9) -> None:
        self.threshold = threshold
        self.floor = reporting_floor

    def _strongest(self, anomalies: list[AnomalyScore]) -> dict[tuple[str, str], AnomalyScore]:
        best: dict[tuple[str, str], AnomalyScore] = {}
        for a in anomalies:
            key = (a.service, a.metric if not a.labels.get("dependency") else f"{a.metric}@{a.labels['dependency']}")
            cur = best.get(key)
            if cur is None or (a.score, a.ts) > (cur.score, cur.ts):
                best[key] = a
        return best

    def _strength(self, a: AnomalyScore) -> float:
        threshold = a.threshold or self.threshold
        if a.crossed or a.score >= threshold:
            return clamp01(a.confidence if a.confidence > 0 else 1.0)
        span = max(threshold - self.floor, 1e-9)
        return clamp01((a.score - self.floor) / span) * 0.5 * clamp01(a.confidence)

    def advise(self, ctx: CycleContext) -> AdvisorOutput:
        out = AdvisorOutput()
        scope = set(ctx.services)
        confidences = []
        for (service, _), a in sorted(self._strongest(ctx.anomalies).items(), key=lambda kv: -kv[1].score):
            if a.score < self.floor:
                continue
            strength = self._strength(a)
            direction = 1 if a.value >= a.baseline else -1
            size = _relative(a.value, a.baseline)
            ctx.symptoms.append(
                Symptom(
                    service=service,
                    metric=a.metric,
                    signal=a.signal,
                    direction=direction,
                    size=size,
                    strength=strength,
                    dependency=a.labels.get("dependency"),
                    labels=dict(a.labels),
                )
            )
            if service in scope:
                confidences.append(a.confidence)
                pct = (a.value - a.baseline) / abs(a.baseline) * 100 if a.baseline else float("inf")
                change = f"{pct:+.0f}%" if pct != float("inf") else "from zero"
                out.recommendations.append(
                    Recommendation(
                        service=service,
                        severity=severity(a.score, a.threshold or self.threshold),
                        finding=f"{a.signal or 'unknown'}_{'up' if direction > 0 else 'down'}:{a.metric}",
                        sentence=(
                            f"{service} {a.metric} is {a.value:.4g} against a baseline of {a.baseline:.4g} "
                            f"({change}), anomaly score {a.score:.4f}."
                        ),
                    )
                )
                out.evidence.append(f"anomaly {service}/{a.metric} score={a.score:.4f} value={a.value:.4g}")
        self._health_symptoms(ctx, out)
        # Confidence: how much we trust the scorer's verdicts (warm-up shows as low confidence).
        out.confidence = clamp01(sum(confidences) / len(confidences)) if confidences else 0.0
        if not confidences:
            out.evidence.append("no anomaly above the reporting floor on the focus services in the window")
        return out

    def _health_symptoms(self, ctx: CycleContext, out: AdvisorOutput) -> None:
        scored = {(s.service, s.metric) for s in ctx.symptoms}
        latest: dict[tuple[str, str, str | None], tuple[HealthWindow, SignalStats]] = {}
        for w in ctx.health:
            for st in w.signals:
                key = (w.service, st.metric, st.dependency)
                if key not in latest or latest[key][0].window_end < w.window_end:
                    latest[key] = (w, st)
        ages: dict[str, float] = {}
        for (service, metric, _), (_, st) in latest.items():
            if CHANGE_METRICS.search(metric) and CHANGE_AGE.search(metric) and st.count > 0:
                ages[service] = min(ages.get(service, math.inf), st.max)
        for (service, metric, dependency), (w, st) in latest.items():
            if CHANGE_METRICS.search(metric):
                if CHANGE_AGE.search(metric) or not (st.count > 0 and st.max > 0):
                    continue
                at = w.window_end - ages.get(service, 0.0)
                if at < ctx.changed_at.get(service, 0.0):
                    # the change was there when the last remediation here was verified: it is not news now
                    out.evidence.append(f"change {service}/{metric} at {at:.0f} predates the last outcome")
                    continue
                ctx.symptoms.append(Symptom(service, metric, "change", 1, 1.0, 1.0, dependency))
                out.evidence.append(f"change event {service}/{metric} in window ending {w.window_end:.0f}")
                continue
            base = st.baseline_mean
            if (service, metric) in scored or base is None or st.count < 3:
                continue
            size = move_size(st.mean, base)
            if size >= HEALTH_MOVE:
                direction = 1 if st.mean >= base else -1
                ctx.symptoms.append(
                    Symptom(service, metric, st.signal, direction, size, health_strength(size), dependency)
                )
                out.evidence.append(f"health {service}/{metric} mean {size:+.0%} vs baseline (unscored)")
