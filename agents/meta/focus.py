"""Evidence -> one focus area for the cycle, with a confidence and the sentences behind it.

Each focus area gets a confidence per service from two kinds of evidence, fused with a
noisy-or: the health windows (current value against the window's baseline; the strongest
signal of an area counts, since p50/p95/max of one service are not independent witnesses)
and the anomaly scores (calibrated tail probabilities from the scorer).

Anomaly scores are many comparisons at once: every series publishes a window summary (the
max score of the window), so with ~60 series some series crosses 0.999 by chance nearly
every window. A series therefore counts only when its crossings are *not chance for the
whole fleet*: the number of windows it crossed in is tested against a binomial null (per
window crossing probability ``1 - t**k`` for ``k`` samples a window), its most extreme
window max ``s`` against ``1 - s**k``, and the better of the two p-values is
Bonferroni-corrected for both tests and the number of series seen; it must be below
:data:`ANOMALY_ALPHA`. Even then, anomaly evidence alone cannot reach ``min_confidence``
(capped at :data:`ANOMALY_ALONE_CAP`): a service is only acted on when its own health
windows deviate in the same area. Trust violations are counted, not scored.

The area with the highest confidence wins; ties go to the more urgent area
(:data:`PRIORITY`). Targets are the services whose own confidence reaches
``min_confidence``, minus those explained by a dependency that is itself a target (a
failing dependency explains its callers: the root cause is acted on, not its symptoms), unless
the dependency is loaded *by* its callers: more requests reach it than their own traffic explains
(cache misses falling through to a database), so its trouble is theirs and they are targeted.
Below ``min_confidence`` the cycle is routine maintenance, and the reasoning says what
was strongest and why it was not enough.

>>> from metaheal.events import HealthWindow, SignalStats
>>> w = HealthWindow(service="api_cluster", window_start=0, window_end=10, sample_count=20, signals=[
...     SignalStats(signal="latency", metric="latency_p95_ms", count=20, mean=240, p50=240, p95=245,
...                 max=260, baseline_mean=150, baseline_p95=150)])
>>> d = decide_focus(Evidence(health=[w]))
>>> d.focus_area, d.target_services, d.reasoning[0]
('latency_drift', ['api_cluster'], 'Latency drift: 150ms -> 245ms on api_cluster (latency_p95_ms, x1.63)')
>>> quiet = decide_focus(Evidence())
>>> quiet.focus_area, quiet.reasoning[0]
('routine_maintenance', 'No anomalous evidence in the window: routine maintenance.')
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from metaheal.agents.common.baselines import (
    HINT,
    LOAD_RATIO_MIN,
    SIGNAL_FOCUS,
    Finding,
    duration_text,
    health_findings,
    load_ratios,
    loaded_by_callers,
    ramp,
    strength_confidence,
)
from metaheal.agents.common.graph import upstream
from metaheal.events import AnomalyScore, HealthWindow

ANOMALY_MIN_THRESHOLD = 0.999  # a crossing is never less extreme than this, whatever a series was configured with
ANOMALY_ALPHA = 0.01  # fleet-wide (Bonferroni) p-value a series' crossings must beat to count at all
ANOMALY_ALONE_CAP = 0.6  # anomaly evidence without a health deviation in the same area stays a hint
#: which way a series must move for its anomaly to speak for the area (an instance count going *up*
#: after a scale-out is not capacity strain); signals not listed count either way
UNHEALTHY_DIRECTION: dict[str, int] = {"latency": 1, "errors": 1, "saturation": 1, "dependency": 1, "capacity": -1}
VIOLATION_CONFIDENCE = (0.0, 0.8, 0.92, 0.97)  # by count (capped)

#: Tie-break order (most urgent first).
PRIORITY: tuple[str, ...] = (
    "trust_violations",
    "error_spike",
    "dependency_health",
    "latency_drift",
    "capacity_strain",
)


@dataclass(frozen=True)
class TrustViolation:
    service: str
    source: str  # "outcome", "approval", "ledger"
    detail: str
    ts: float


@dataclass
class Evidence:
    """What the meta loop saw in the evidence window (already filtered by time)."""

    health: list[HealthWindow] = field(default_factory=list)
    anomalies: list[AnomalyScore] = field(default_factory=list)
    trust_violations: list[TrustViolation] = field(default_factory=list)
    window_seconds: float = 300.0
    #: service -> the services it calls (``settings.services``): a failing dependency explains its callers
    dependencies: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class FocusDecision:
    focus_area: str
    confidence: float
    reasoning: list[str]
    target_services: list[str]
    #: best confidence of every area (for the ledger and for tests)
    scores: dict[str, float]
    #: the strongest anomaly score seen, if any
    max_anomaly: float = 0.0
    #: confidence of the focus area per service (targets and the services that did not make it)
    service_confidence: dict[str, float] = field(default_factory=dict)


def _binomial_tail(n: int, c: int, q: float) -> float:
    """P(X >= c) for X ~ Binomial(n, q): the chance a quiet series crosses in ``c`` of ``n`` windows.

    >>> round(_binomial_tail(7, 1, 0.001), 5), f"{_binomial_tail(7, 2, 0.001):.1e}"
    (0.00698, '2.1e-05')
    """
    if c <= 0:
        return 1.0
    return min(1.0, sum(math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(c, n + 1)))


@dataclass
class _Series:
    """One (service, metric, dependency) series' anomaly record in the evidence window."""

    area: str
    windows: dict[float, float] = field(default_factory=dict)  # window_start -> max score
    crossed: set[float] = field(default_factory=set)  # window_starts with a crossing
    threshold: float = ANOMALY_MIN_THRESHOLD
    confidence: float = 1.0
    top: AnomalyScore | None = None


def _anomaly_series(anomalies: list[AnomalyScore]) -> dict[tuple[str, str, str], _Series]:
    out: dict[tuple[str, str, str], _Series] = {}
    for a in anomalies:
        area = SIGNAL_FOCUS.get(a.signal or "")
        if area is None:
            continue
        direction = UNHEALTHY_DIRECTION.get(a.signal or "", 0)
        if direction and (a.value - a.baseline) * direction <= 0:
            continue  # surprising, but in the healthy direction
        key = (a.service, a.metric, a.labels.get("dependency", ""))
        sr = out.get(key)
        if sr is None:
            sr = out[key] = _Series(area)
        t = max(a.threshold, ANOMALY_MIN_THRESHOLD)
        sr.threshold = t
        sr.windows[a.window_start] = max(sr.windows.get(a.window_start, 0.0), a.score)
        if a.score >= t:
            sr.crossed.add(a.window_start)
        if sr.top is None or a.score > sr.top.score:
            sr.top, sr.confidence = a, a.confidence
    return out


def _anomaly_findings(
    anomalies: list[AnomalyScore], samples_per_window: dict[tuple[str, str, str], int]
) -> list[tuple[str, str, Finding]]:
    """(area, service, finding) for every series whose crossings are not chance across the fleet."""
    series = _anomaly_series(anomalies)
    m = max(1, len(series))
    out: list[tuple[str, str, Finding]] = []
    for (service, metric, dep), sr in series.items():
        if not sr.crossed or sr.top is None:
            continue
        k = max(1, samples_per_window.get((service, metric, dep), 1))
        n = len(sr.windows)
        q = -math.expm1(k * math.log(sr.threshold))  # a quiet window's max crosses with this probability
        # two tests, either can speak: persistence (crossed in c of n windows) and extremeness (the top window's max)
        persistence = _binomial_tail(n, len(sr.crossed), q)
        extreme = n * -math.expm1(k * math.log(max(sr.top.score, 1e-12)))
        p = min(1.0, 2 * m * min(persistence, extreme))
        if p > ANOMALY_ALPHA:
            continue
        strength = ramp(-math.log10(max(p, 1e-12)), -math.log10(ANOMALY_ALPHA), 6.0)
        conf = round(strength_confidence(max(strength, 1e-3)) * sr.confidence, 4)
        a = sr.top
        where = f"{service} {metric}" + (f" (dependency {dep})" if dep else "")
        out.append(
            (
                sr.area,
                service,
                Finding(
                    conf,
                    f"Anomaly score {a.score:.4g} on {where}: {a.value:.4g} vs baseline {a.baseline:.4g} "
                    f"(crossed in {len(sr.crossed)} of {len(sr.windows)} window(s), "
                    f"fleet-wide p={p:.1e} over {m} series)",
                    dep or None,
                ),
            )
        )
    return out


def _surge_hints(service: str, ratios: dict[str, float], hinted: set[str], strong: list[str]) -> set[str]:
    """Dependencies that cannot explain ``service``: it carries a surge (traffic x``LOAD_RATIO_MIN``) and
    they only hint at trouble while carrying the same surge. Both are feeling the load; the service
    that is clearly in trouble is the one to act on, not the ones that pass the load on a little slower.

    >>> sorted(_surge_hints("api", {"api": 1.9, "db": 1.9, "cache": 1.0}, {"db", "cache"}, ["api"]))
    ['db']
    >>> _surge_hints("api", {"api": 1.0, "db": 1.9}, {"db"}, ["api"])
    set()
    """
    if ratios.get(service, 1.0) < LOAD_RATIO_MIN:
        return set()
    return {d for d in hinted if d not in strong and ratios.get(d, 1.0) >= LOAD_RATIO_MIN}


def _noisy_or(confs: list[float]) -> float:
    p = 1.0
    for c in confs:
        p *= 1 - min(c, 0.999)
    return round(1 - p, 4)


def route_around_leaves(
    targets: list[str], deps: dict[str, list[str]], seen_by: dict[str, set[str]], confidence: dict[str, float]
) -> tuple[list[str], dict[str, list[str]]]:
    """Replace a failing upstream that depends on nothing (a database, a provider) by the callers
    that see it fail through their dependency metrics.

    Nothing on such a leaf can be failed over (it has no dependency of its own), while its
    callers can route around it to a standby; they are also the services whose symptoms
    (dependency errors, dependency latency) the advisors can diagnose as ``upstream_outage``
    or ``database_slow_query``. Callers inherit the leaf's confidence. Only services in the
    graph count: without one, nothing is known to be a leaf.

    >>> route_around_leaves(["payments"], {"api": ["payments"]}, {"payments": {"api"}}, {"payments": 0.9})
    (['api'], {'payments': ['api']})
    >>> route_around_leaves(["api"], {"web": ["api"], "api": ["db"]}, {"api": {"web"}}, {"api": 0.9})
    (['api'], {})
    """
    out: list[str] = []
    routed: dict[str, list[str]] = {}
    for t in targets:
        callers = sorted(c for c in seen_by.get(t, ()) if t in deps.get(c, ()))
        if callers and not deps.get(t):
            routed[t] = callers
            for c in callers:
                confidence[c] = max(confidence.get(c, 0.0), confidence.get(t, 0.0))
                if c not in out:
                    out.append(c)
        elif t not in out:
            out.append(t)
    return out, routed


def decide_focus(evidence: Evidence, min_confidence: float = 0.70) -> FocusDecision:
    """Choose the focus area; see the module docstring for the rules."""
    deps = evidence.dependencies
    # area -> service -> health findings / anomaly findings
    health: dict[str, dict[str, list[Finding]]] = defaultdict(lambda: defaultdict(list))
    anomaly: dict[str, dict[str, list[Finding]]] = defaultdict(lambda: defaultdict(list))
    samples_per_window: dict[tuple[str, str, str], int] = {}
    for w in evidence.health:
        for st in w.signals:
            samples_per_window[(w.service, st.metric, st.dependency or "")] = st.count
        for area, f in health_findings(w, evidence.window_seconds):
            health[area][w.service].append(f)
    max_anomaly = max((a.score for a in evidence.anomalies), default=0.0)
    for area, service, f in _anomaly_findings(evidence.anomalies, samples_per_window):
        anomaly[area][service].append(f)
    by_service_tv: dict[str, list[TrustViolation]] = defaultdict(list)
    for v in evidence.trust_violations:
        by_service_tv[v.service].append(v)
    for service, vs in by_service_tv.items():
        conf = VIOLATION_CONFIDENCE[min(len(vs), len(VIOLATION_CONFIDENCE) - 1)]
        detail = "; ".join(v.detail for v in vs[:3])
        health["trust_violations"][service].append(
            Finding(
                conf, f"{len(vs)} trust violation(s) on {service} in {duration_text(evidence.window_seconds)}: {detail}"
            )
        )

    # a dependency that is one of ours and shows its own trouble is diagnosed in its own area:
    # its callers' view of it is a symptom (the root cause is acted on, not the caller)
    own = {
        svc
        for ar, svcs in health.items()
        if ar != "dependency_health"
        for svc, fs in svcs.items()
        if any(f.confidence >= HINT for f in fs)
    }
    # who sees which dependency go wrong (before those views are dropped as symptoms below)
    seen_by: dict[str, set[str]] = defaultdict(set)
    for kind in (health, anomaly):
        for svc, fs in kind.get("dependency_health", {}).items():
            for f in fs:
                if f.dependency and f.confidence >= HINT:
                    seen_by[f.dependency].add(svc)
    for kind in (health, anomaly):
        for svc, fs in list(kind.get("dependency_health", {}).items()):
            kept = [f for f in fs if f.dependency not in own]
            if kept:
                kind["dependency_health"][svc] = kept
            else:
                del kind["dependency_health"][svc]
    per_area: dict[str, dict[str, float]] = {}
    findings: dict[str, dict[str, list[Finding]]] = defaultdict(lambda: defaultdict(list))
    for area in set(health) | set(anomaly):
        for service in set(health[area]) | set(anomaly[area]):
            h = max((f.confidence for f in health[area][service]), default=0.0)
            a = max((f.confidence for f in anomaly[area][service]), default=0.0)
            if h == 0.0:
                a = min(a, ANOMALY_ALONE_CAP)  # uncorroborated: a hint, never enough to act on
            per_area.setdefault(area, {})[service] = _noisy_or([h, a])
            fs = sorted([*health[area][service], *anomaly[area][service]], key=lambda f: -f.confidence)
            findings[area][service] = fs
    scores = {area: max(svcs.values()) for area, svcs in per_area.items() if svcs}
    if not scores:
        return FocusDecision(
            "routine_maintenance",
            round(1.0 - max_anomaly * 0.5, 4) if max_anomaly else 0.95,
            ["No anomalous evidence in the window: routine maintenance."],
            [],
            {},
            max_anomaly,
        )
    area = max(scores, key=lambda a: (scores[a], -PRIORITY.index(a)))
    conf = scores[area]
    ranked = sorted(findings[area], key=lambda s: (-per_area[area][s], s))
    sentences = [f.sentence for svc in ranked for f in findings[area][svc]]
    if conf < min_confidence:
        reason = (
            f"Strongest evidence is {area} at confidence {conf:.2f}, below the {min_confidence:.2f} needed "
            "to act: routine maintenance."
        )
        return FocusDecision(
            "routine_maintenance", round(1 - conf, 4), [reason, *sentences[:3]], [], scores, max_anomaly, per_area[area]
        )
    confidence = dict(per_area[area])
    # a dependency loaded by its callers' calls is their symptom: its callers are acted on, and inherit its
    # confidence (its evidence is evidence about what they send it)
    ratios = load_ratios(evidence.health)
    loaded = {d: cs for d, cs in loaded_by_callers(ratios, deps).items() if confidence.get(d, 0.0) >= HINT}
    for d, cs in loaded.items():
        for c in cs:
            confidence[c] = max(confidence.get(c, 0.0), confidence[d])
    ranked = sorted(confidence, key=lambda s: (-confidence[s], s))
    strong = [s for s in ranked if confidence[s] >= min_confidence and s not in loaded]
    # a caller whose dependency also deviates in this area is a symptom: act on the dependency (the root
    # cause), which inherits the caller's confidence, since the caller's evidence is evidence about it
    hinted = {s for s in ranked if confidence[s] >= HINT and s not in loaded}
    # ... except for capacity: a slow or failing dependency slows or fails its callers, but a caller's
    # saturation is its own (more load reaches both alike in a surge; the dependency does not cause it)
    explained = {
        s: sorted(upstream(s, deps) & hinted - _surge_hints(s, ratios, hinted, strong))
        if area != "capacity_strain"
        else []
        for s in strong
    }
    for s, by in explained.items():
        for d in by:
            confidence[d] = max(confidence[d], confidence[s])
    roots = {d for by in explained.values() for d in by}
    candidates = sorted(set(strong) | roots, key=lambda s: (-confidence[s], s))
    targets = [
        s
        for s in candidates
        if area == "capacity_strain"
        or not (upstream(s, deps) & (set(candidates) | hinted) - _surge_hints(s, ratios, hinted, strong))
    ]
    notes = [
        f"{d} is loaded by its callers: requests x{ratios[d]:.2f} against x{max(ratios[c] for c in cs):.2f} on "
        f"{', '.join(cs)}: acting on {', '.join(cs)}, not on {d}."
        for d, cs in loaded.items()
    ]
    notes += [f"{s} explained by its dependency {', '.join(by)}: not targeted." for s, by in explained.items() if by]
    # an overloaded upstream needs capacity on itself, not a failover by its callers
    overloaded = {
        svc
        for kind in (health, anomaly)
        for svc, fs in kind.get("capacity_strain", {}).items()
        if any(f.confidence >= HINT for f in fs)
    }
    targets, routed = route_around_leaves(
        targets, deps, {d: c for d, c in seen_by.items() if d not in overloaded}, confidence
    )
    notes += [
        f"{d} calls nothing it could change and its callers see it fail: acting on {', '.join(by)} "
        f"(they can route around it)."
        for d, by in routed.items()
    ]
    sentences = [f.sentence for svc in targets for f in findings[area].get(svc, [])] + [
        f.sentence for svc in ranked if svc not in targets for f in findings[area].get(svc, [])
    ]
    others = [f"Also seen: {a} at {c:.2f}." for a, c in sorted(scores.items(), key=lambda kv: -kv[1]) if a != area]
    return FocusDecision(
        area, conf, [*sentences[:4], *notes[:2], *others[:2]], targets, scores, max_anomaly, confidence
    )
