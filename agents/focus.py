"""Evidence -> one focus area for the cycle, with a confidence and the sentences behind it.

Each focus area gets a confidence per service from two independent kinds of evidence,
fused with a noisy-or (either alone can be decisive, both together are stronger):
the health windows (current value against the window's baseline, per signal) and the
anomaly scores (calibrated tail probabilities from the scorer). Trust violations are
counted, not scored. The area with the highest confidence wins; ties go to the more
urgent area (:data:`PRIORITY`). Below ``min_confidence`` the cycle is routine
maintenance, and the reasoning says what was strongest and why it was not enough.

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

from metaheal.events import AnomalyScore, HealthWindow, SignalStats

#: Tie-break order (most urgent first).
PRIORITY: tuple[str, ...] = (
    "trust_violations",
    "error_spike",
    "dependency_health",
    "latency_drift",
    "capacity_strain",
)

#: Which focus area an anomaly on a signal kind speaks for.
SIGNAL_FOCUS: dict[str, str] = {
    "latency": "latency_drift",
    "errors": "error_spike",
    "saturation": "capacity_strain",
    "capacity": "capacity_strain",
    "traffic": "capacity_strain",
    "dependency": "dependency_health",
}

LATENCY_RATIO_FULL = 1.6  # p95 x1.6 of baseline is certain drift
LATENCY_RATIO_MIN = 1.1
ERROR_RATIO_FULL = 10.0
ERROR_RATIO_MIN = 2.0
ERROR_BASELINE_FLOOR = 0.01  # a zero baseline must not make one error infinitely surprising
SATURATION_FULL = 0.95  # utilisation as a fraction
SATURATION_MIN = 0.75
DEPENDENCY_RATIO_FULL = 3.0
DEPENDENCY_RATIO_MIN = 1.3
ANOMALY_FLOOR = 0.9  # scores below this are not evidence
VIOLATION_CONFIDENCE = (0.0, 0.8, 0.92, 0.97)  # by count (capped)


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


@dataclass
class _Finding:
    confidence: float
    sentence: str


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at ``lo``, 1 at ``hi``, linear between (clamped)."""
    if hi <= lo:
        return 1.0 if x >= hi else 0.0
    return max(0.0, min(1.0, (x - lo) / (hi - lo)))


def _conf(strength: float) -> float:
    """Map a 0..1 strength onto 0.5..0.98: any finding above its minimum is at least a hint."""
    return 0.0 if strength <= 0 else round(0.5 + 0.48 * strength, 4)


def _ms(v: float) -> str:
    return f"{v:.0f}ms" if v >= 10 else f"{v:.3g}ms"


def _latency(service: str, s: SignalStats) -> _Finding | None:
    base = s.baseline_p95 if s.baseline_p95 else s.baseline_mean
    cur = s.p95 if s.baseline_p95 else s.mean
    if not base or base <= 0:
        return None
    ratio = cur / base
    strength = _ramp(ratio, LATENCY_RATIO_MIN, LATENCY_RATIO_FULL)
    if strength <= 0:
        return None
    return _Finding(_conf(strength), f"Latency drift: {_ms(base)} -> {_ms(cur)} on {service} ({s.metric}, x{ratio:.2f})")


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g}s"


def _errors(service: str, s: SignalStats, window: float) -> _Finding | None:
    cur = s.rate if s.rate is not None and s.baseline_mean is None else s.mean
    base = max(s.baseline_mean or 0.0, ERROR_BASELINE_FLOOR)
    if cur <= 0:
        return None
    ratio = cur / base
    if ratio < ERROR_RATIO_MIN:
        return None
    strength = _ramp(math.log(ratio), math.log(ERROR_RATIO_MIN), math.log(ERROR_RATIO_FULL))
    total = s.mean * s.count
    return _Finding(
        _conf(max(strength, 1e-3)),
        f"{total:.3g} {s.metric} in {_duration(window)} on {service} "
        f"(mean {cur:.3g} per sample, baseline {s.baseline_mean or 0.0:.3g})",
    )


def _saturation(service: str, s: SignalStats) -> _Finding | None:
    scale = 100.0 if max(s.mean, s.baseline_mean or 0.0) > 1.5 else 1.0  # percent or fraction
    cur = s.mean / scale
    strength = _ramp(cur, SATURATION_MIN, SATURATION_FULL)
    if strength <= 0:
        return None
    base = (s.baseline_mean or 0.0) / scale
    return _Finding(
        _conf(strength), f"Capacity strain: {s.metric} at {cur:.0%} on {service} (baseline {base:.0%})"
    )


def _capacity(service: str, s: SignalStats) -> _Finding | None:
    """Capacity metrics (ready instances, headroom) strain when they fall below baseline."""
    if not s.baseline_mean or s.baseline_mean <= 0:
        return None
    drop = 1 - s.mean / s.baseline_mean
    strength = _ramp(drop, 0.2, 0.5)
    if strength <= 0:
        return None
    return _Finding(
        _conf(strength), f"Capacity strain: {s.metric} down {drop:.0%} on {service} ({s.baseline_mean:.3g} -> {s.mean:.3g})"
    )


def _dependency(service: str, s: SignalStats) -> _Finding | None:
    base = s.baseline_p95 if s.baseline_p95 else s.baseline_mean
    cur = s.p95 if s.baseline_p95 else s.mean
    if not base or base <= 0:
        return None
    ratio = cur / base
    strength = _ramp(ratio, DEPENDENCY_RATIO_MIN, DEPENDENCY_RATIO_FULL)
    if strength <= 0:
        return None
    dep = s.dependency or "?"
    return _Finding(
        _conf(strength),
        f"Dependency {dep} unhealthy from {service}: {s.metric} {base:.3g} -> {cur:.3g} (x{ratio:.2f})",
    )


def _health_findings(w: HealthWindow, window: float) -> list[tuple[str, _Finding]]:
    out: list[tuple[str, _Finding]] = []
    for s in w.signals:
        f: _Finding | None = None
        area = SIGNAL_FOCUS.get(s.signal)
        if s.signal == "latency":
            f = _latency(w.service, s)
        elif s.signal == "errors":
            f = _errors(w.service, s, w.window_end - w.window_start or window)
        elif s.signal == "saturation":
            f = _saturation(w.service, s)
        elif s.signal == "capacity":
            f = _capacity(w.service, s)
        elif s.signal == "dependency":
            f = _dependency(w.service, s)
        if f is not None and area is not None:
            out.append((area, f))
    return out


def _anomaly_finding(a: AnomalyScore) -> tuple[str, _Finding] | None:
    area = SIGNAL_FOCUS.get(a.signal or "")
    if area is None or a.score < ANOMALY_FLOOR:
        return None
    conf = round(a.score * a.confidence, 4)
    where = f"{a.service} {a.metric}"
    if a.labels.get("dependency"):
        where += f" (dependency {a.labels['dependency']})"
    return area, _Finding(conf, f"Anomaly score {a.score:.4g} on {where}: {a.value:.4g} vs baseline {a.baseline:.4g}")


def _noisy_or(confs: list[float]) -> float:
    p = 1.0
    for c in confs:
        p *= 1 - min(c, 0.999)
    return round(1 - p, 4)


def decide_focus(evidence: Evidence, min_confidence: float = 0.70) -> FocusDecision:
    """Choose the focus area; see the module docstring for the rules."""
    # area -> service -> findings
    findings: dict[str, dict[str, list[_Finding]]] = defaultdict(lambda: defaultdict(list))
    for w in evidence.health:
        for area, f in _health_findings(w, evidence.window_seconds):
            findings[area][w.service].append(f)
    # only the strongest anomaly per (service, metric) counts: a burst of samples is one piece of evidence
    best: dict[tuple[str, str, str], tuple[str, _Finding]] = {}
    max_anomaly = 0.0
    for a in evidence.anomalies:
        max_anomaly = max(max_anomaly, a.score)
        got = _anomaly_finding(a)
        if got is None:
            continue
        key = (a.service, a.metric, a.labels.get("dependency", ""))
        if key not in best or got[1].confidence > best[key][1].confidence:
            best[key] = got
    for (service, _m, _d), (area, f) in best.items():
        findings[area][service].append(f)
    by_service_tv: dict[str, list[TrustViolation]] = defaultdict(list)
    for v in evidence.trust_violations:
        by_service_tv[v.service].append(v)
    for service, vs in by_service_tv.items():
        conf = VIOLATION_CONFIDENCE[min(len(vs), len(VIOLATION_CONFIDENCE) - 1)]
        detail = "; ".join(v.detail for v in vs[:3])
        findings["trust_violations"][service].append(
            _Finding(conf, f"{len(vs)} trust violation(s) on {service} in {_duration(evidence.window_seconds)}: {detail}")
        )

    per_area: dict[str, dict[str, float]] = {}
    for area, services in findings.items():
        per_area[area] = {svc: _noisy_or([f.confidence for f in fs]) for svc, fs in services.items()}
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
    sentences = [f.sentence for svc in sorted(findings[area], key=lambda s: -per_area[area][s]) for f in findings[area][svc]]
    if conf < min_confidence:
        reason = (
            f"Strongest evidence is {area} at confidence {conf:.2f}, below the {min_confidence:.2f} needed "
            "to act: routine maintenance."
        )
        return FocusDecision("routine_maintenance", round(1 - conf, 4), [reason, *sentences[:3]], [], scores, max_anomaly)
    targets = sorted((s for s, c in per_area[area].items() if c >= min_confidence), key=lambda s: -per_area[area][s])
    others = [f"Also seen: {a} at {c:.2f}." for a, c in sorted(scores.items(), key=lambda kv: -kv[1]) if a != area]
    return FocusDecision(area, conf, [*sentences[:5], *others[:2]], targets, scores, max_anomaly)
