"""Negative evidence: what a cause predicts but the health windows show at its baseline.

A cause predicts symptoms (the knowledge map's ``all``/``any`` features). When the telemetry that
would show one of them is there and sits at its healthy baseline, the cause is less likely, and
the clearer the absence, the less likely. Each observed signal gives a likelihood ratio

    LR = N(z; z_expected, 1) / N(z; 0, 1) = exp(z * z_expected - z_expected**2 / 2)

where ``z`` is the signal's move in the cause's direction in units of its noise (``(mean -
baseline) / se``, ``se`` from the window's own spread and sample count, floored at
:data:`REL_NOISE` of the baseline) and ``z_expected`` the smallest move the cause would produce
(:data:`EXPECTED_MOVE`, e.g. latency +50 %, errors x2 over the error floor, misses x1.5). The
ratio is only ever used to lower a cause (capped at 1: a move towards the symptom is the
positive features' business) and never below :data:`LR_FLOOR`, so one absent symptom cuts a
cause's odds at most tenfold; no telemetry is no evidence (LR 1). Deployment and config-change
markers are never negative evidence: a flag can be flipped without any counter moving.

Per cause the ratios combine as the rule reads: every ``all`` (and ``expect``) feature is needed, so
the most clearly absent one counts (min); one ``any`` feature is enough, so all must be absent (max). A
feature is absent only if *every* signal that could show it is at baseline (max over signals).

>>> from metaheal.events import HealthWindow, SignalStats
>>> def sig(metric, signal, mean, base, dep=None, count=20):
...     return SignalStats(signal=signal, metric=metric, count=count, mean=mean, p50=mean, p95=mean * 1.1,
...                        max=mean * 1.2, baseline_mean=base, dependency=dep)
>>> w = HealthWindow(service="api", window_start=0, window_end=10, sample_count=60, signals=[
...     sig("error_rate", "errors", 0.19, 0.002),
...     sig("dependency_error_rate", "dependency", 0.002, 0.002, dep="db"),
...     sig("dependency_latency_ms", "dependency", 25.0, 25.0, dep="db")])
>>> ab = absences([w], "api", {"db"})
>>> round(ab["dep_errors_up"][0].lr, 2), ab["dep_errors_up"][0].z
(0.1, 0.0)
>>> "errors_up" in ab  # the error rate is far above its baseline: no absence
False
>>> from metaheal.agents.advisors.knowledge_map import KnowledgeMap
>>> lr, why = cause_ratio(KnowledgeMap.default().causes["upstream_outage"], ab)
>>> round(lr, 2), why[0]
(0.1, 'dep_errors_up absent: api dependency_error_rate@db 0.002 vs baseline 0.002 (z=0.0, LR=0.10)')
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from metaheal.agents.common.baselines import ERROR_BASELINE_FLOOR
from metaheal.events import HealthWindow, SignalStats

#: Smallest likelihood ratio one absent feature can give (keeps the map's other evidence in play).
LR_FLOOR = 0.1
#: Noise floor of a window mean, relative to its baseline (baselines drift; a window is short).
REL_NOISE = 0.15
#: The smallest relative move (in the unhealthy direction) a cause predicting the feature would produce.
EXPECTED_MOVE = {"latency": 0.5, "traffic": 0.3, "resource": 0.3, "errors": 1.0, "cache": 0.5}
DB_NAMES = re.compile(r"db|database|postgres|mysql|sql|mongo|cassandra|dynamo", re.IGNORECASE)


@dataclass(frozen=True)
class Absence:
    """One signal at its baseline, and how strongly that argues against a feature."""

    feature: str
    service: str
    metric: str
    dependency: str | None
    observed: float
    baseline: float
    z: float
    lr: float

    def sentence(self) -> str:
        where = f"{self.service} {self.metric}" + (f"@{self.dependency}" if self.dependency else "")
        return (
            f"{self.feature} absent: {where} {self.observed:.3g} vs baseline {self.baseline:.3g} "
            f"(z={self.z:.1f}, LR={self.lr:.2f})"
        )

    def record(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "service": self.service,
            "metric": self.metric,
            "dependency": self.dependency,
            "observed": round(self.observed, 6),
            "baseline": round(self.baseline, 6),
            "z": round(self.z, 3),
            "lr": round(self.lr, 4),
        }


def _kind(metric: str, signal: str) -> tuple[str, int] | None:
    """(expected-move kind, unhealthy direction) of a signal, or None if it shows no feature here."""
    m = metric.lower()
    if "cache" in m and ("hit" in m or "miss" in m):
        return ("cache", -1 if "hit" in m else 1)
    if signal == "errors" or "error" in m:
        return ("errors", 1)
    if signal == "latency" or "latency" in m:
        return ("latency", 1)
    if signal == "traffic":
        return ("traffic", 1)
    if "cpu" in m or "mem" in m or "heap" in m or "rss" in m or signal == "saturation":
        return ("resource", 1)
    return None


def likelihood_ratio(s: SignalStats, kind: str, direction: int) -> tuple[float, float] | None:
    """(z, LR) of "the symptom is present" against "at baseline" for one window mean; None without a baseline.

    >>> from metaheal.events import SignalStats
    >>> s = SignalStats(signal="latency", metric="latency_ms", count=20, mean=100, p50=100, p95=110, max=120,
    ...                 baseline_mean=100)
    >>> [round(x, 2) for x in likelihood_ratio(s, "latency", 1)]
    [0.0, 0.1]
    >>> [round(x, 2) for x in likelihood_ratio(s.model_copy(update={"mean": 115.0}), "latency", 1)]
    [1.0, 0.11]
    >>> likelihood_ratio(s.model_copy(update={"mean": 130.0}), "latency", 1)[1]  # half-way there: no evidence
    1.0
    """
    base = s.baseline_mean
    if base is None or s.count <= 0 or not math.isfinite(s.mean):
        return None
    if kind == "errors":
        scale = max(abs(base), ERROR_BASELINE_FLOOR)
    elif kind == "cache":
        scale = max(1.0 - base, 0.01) if 0.0 <= base <= 1.0 else abs(base)
    else:
        scale = abs(base)
    if scale <= 0:
        return None
    spread = max(0.0, (s.p95 - s.p50) / 1.645)
    se = max(spread / math.sqrt(s.count), REL_NOISE * scale)
    z = (s.mean - base) * direction / se
    z_expected = EXPECTED_MOVE[kind] * scale / se
    lr = math.exp(min(0.0, z * z_expected - z_expected**2 / 2))
    return z, max(LR_FLOOR, lr)


def _latest(health: list[HealthWindow]) -> dict[tuple[str, str, str], tuple[HealthWindow, SignalStats]]:
    latest: dict[tuple[str, str, str], tuple[HealthWindow, SignalStats]] = {}
    for w in health:
        for s in w.signals:
            key = (w.service, s.metric, s.dependency or "")
            if key not in latest or latest[key][0].window_end < w.window_end:
                latest[key] = (w, s)
    return latest


def _features(service: str, w: HealthWindow, s: SignalStats, target: str, deps: set[str]) -> list[str]:
    """The features of ``target`` this signal could show (it can then also show their absence)."""
    k = _kind(s.metric, s.signal)
    if k is None:
        return []
    kind = k[0]
    dep = s.dependency if service == target else service if service in deps else None
    if service != target and dep is None:
        return []
    if dep is not None:
        out = {"errors": ["dep_errors_up", "dep_down"], "latency": ["dep_latency_up"]}.get(kind, [])
        if kind == "latency" and DB_NAMES.search(dep):
            out = [*out, "db_latency_up"]
        return out
    if s.dependency:
        return []
    return {
        "cache": ["cache_hit_down"],
        "errors": ["errors_up"],
        "latency": ["latency_up"],
        "traffic": ["traffic_up"],
        "resource": ["cpu_up"]
        if "cpu" in s.metric.lower()
        else ["saturation_up"]
        if s.signal == "saturation"
        else ["memory_up"],
    }[kind]


def absences(health: list[HealthWindow], target: str, deps: set[str]) -> dict[str, list[Absence]]:
    """Feature -> the signals that speak about it; a feature is listed only if *all* of them sit at baseline.

    ``health`` windows of ``target`` and of what it depends on (``deps``); for each series the latest
    window counts, and only series as fresh as the service's newest window (a metric that stopped
    reporting says nothing about now).
    """
    latest = _latest(health)
    newest: dict[str, float] = {}
    for w, _ in latest.values():
        newest[w.service] = max(newest.get(w.service, -math.inf), w.window_end)
    by_feature: dict[str, list[Absence | None]] = {}
    for (service, _, _), (w, s) in sorted(latest.items()):
        if service != target and service not in deps:
            continue
        if w.window_end < newest[service]:
            continue
        for feature in _features(service, w, s, target, deps):
            k = _kind(s.metric, s.signal)
            assert k is not None
            r = likelihood_ratio(s, *k)
            item = None
            if r is not None and r[1] < 1.0:
                dep = s.dependency or (service if service != target else None)
                item = Absence(feature, service, s.metric, dep, s.mean, s.baseline_mean or 0.0, r[0], r[1])
            by_feature.setdefault(feature, []).append(item)
    return {f: [a for a in items if a is not None] for f, items in by_feature.items() if all(items)}


def feature_ratio(items: list[Absence]) -> float:
    """A feature is absent only as clearly as its least clear signal."""
    return max((a.lr for a in items), default=1.0)


def cause_ratio(rule: object, absent: dict[str, list[Absence]]) -> tuple[float, list[str]]:
    """(LR, what argued against) of one knowledge-map rule: min over ``all`` features, max over ``any``."""
    all_ = list(getattr(rule, "all", [])) + [
        f for f in getattr(rule, "expect", []) if f not in getattr(rule, "all", [])
    ]
    any_ = list(getattr(rule, "any", []))
    lr = 1.0
    why: list[str] = []
    for f in all_:
        if f in absent:
            r = feature_ratio(absent[f])
            if r < lr:
                lr = r
            why.extend(a.sentence() for a in absent[f][:2])
    if any_ and all(f in absent for f in any_):
        r = max(feature_ratio(absent[f]) for f in any_)
        if r < lr:
            lr = r
        for f in any_:
            why.extend(a.sentence() for a in absent[f][:2])
    return lr, why
