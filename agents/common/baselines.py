"""Healthy references: what a signal looks like when its service is well, and whether it is off that now.

Shared by the meta loop (evidence), the advisors (their view of a persisting fault) and the executor
(does the symptom that triggered a plan still show): all of them judge a window against the baseline
it had while it was last healthy, with the same per-signal findings.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from metaheal.events import HealthWindow, SignalStats

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
LOAD_RATIO_MIN = 1.3  # traffic x1.3 of its baseline is a real change in load (daily swings are slower)
#: a dependency whose traffic grew this many times more than its callers' own traffic is loaded *by* them
LOAD_AMPLIFICATION = 1.5
HINT = 0.5  # any finding above its minimum: enough to explain a caller's symptom, not to act on alone


@dataclass
class Finding:
    confidence: float
    sentence: str
    #: for dependency findings: the dependency that looks unhealthy from the caller
    dependency: str | None = None


def ramp(x: float, lo: float, hi: float) -> float:
    """0 at ``lo``, 1 at ``hi``, linear between (clamped)."""
    if hi <= lo:
        return 1.0 if x >= hi else 0.0
    return max(0.0, min(1.0, (x - lo) / (hi - lo)))


def strength_confidence(strength: float) -> float:
    """Map a 0..1 strength onto 0.5..0.98: any finding above its minimum is at least a hint."""
    return 0.0 if strength <= 0 else round(0.5 + 0.48 * strength, 4)


def _ms(v: float) -> str:
    return f"{v:.0f}ms" if v >= 10 else f"{v:.3g}ms"


def _latency(service: str, s: SignalStats) -> Finding | None:
    base = s.baseline_p95 if s.baseline_p95 else s.baseline_mean
    cur = s.p95 if s.baseline_p95 else s.mean
    if not base or base <= 0:
        return None
    ratio = cur / base
    strength = ramp(ratio, LATENCY_RATIO_MIN, LATENCY_RATIO_FULL)
    if strength <= 0:
        return None
    return Finding(
        strength_confidence(strength),
        f"Latency drift: {_ms(base)} -> {_ms(cur)} on {service} ({s.metric}, x{ratio:.2f})",
    )


def duration_text(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g}s"


def _errors(service: str, s: SignalStats, window: float) -> Finding | None:
    cur = s.rate if s.rate is not None and s.baseline_mean is None else s.mean
    base = max(s.baseline_mean or 0.0, ERROR_BASELINE_FLOOR)
    if cur <= 0:
        return None
    ratio = cur / base
    if ratio < ERROR_RATIO_MIN:
        return None
    strength = ramp(math.log(ratio), math.log(ERROR_RATIO_MIN), math.log(ERROR_RATIO_FULL))
    total = s.mean * s.count
    return Finding(
        strength_confidence(max(strength, 1e-3)),
        f"{total:.3g} {s.metric} in {duration_text(window)} on {service} "
        f"(mean {cur:.3g} per sample, baseline {s.baseline_mean or 0.0:.3g})",
    )


def _saturation(service: str, s: SignalStats) -> Finding | None:
    scale = 100.0 if max(s.mean, s.baseline_mean or 0.0) > 1.5 else 1.0  # percent or fraction
    cur = s.mean / scale
    strength = ramp(cur, SATURATION_MIN, SATURATION_FULL)
    if strength <= 0:
        return None
    base = (s.baseline_mean or 0.0) / scale
    return Finding(
        strength_confidence(strength), f"Capacity strain: {s.metric} at {cur:.0%} on {service} (baseline {base:.0%})"
    )


def _capacity(service: str, s: SignalStats) -> Finding | None:
    """Capacity metrics (ready instances, headroom) strain when they fall below baseline."""
    if not s.baseline_mean or s.baseline_mean <= 0:
        return None
    drop = 1 - s.mean / s.baseline_mean
    strength = ramp(drop, CAPACITY_DROP_MIN, 0.5)
    if strength <= 0:
        return None
    return Finding(
        strength_confidence(strength),
        f"Capacity strain: {s.metric} down {drop:.0%} on {service} ({s.baseline_mean:.3g} -> {s.mean:.3g})",
    )


def _dependency(service: str, s: SignalStats) -> Finding | None:
    base = s.baseline_p95 if s.baseline_p95 else s.baseline_mean
    cur = s.p95 if s.baseline_p95 else s.mean
    if not base or base <= 0:
        return None
    ratio = cur / base
    strength = ramp(ratio, DEPENDENCY_RATIO_MIN, DEPENDENCY_RATIO_FULL)
    if strength <= 0:
        return None
    dep = s.dependency or "?"
    return Finding(
        strength_confidence(strength),
        f"Dependency {dep} unhealthy from {service}: {s.metric} {base:.3g} -> {cur:.3g} (x{ratio:.2f})",
        s.dependency,
    )


def health_findings(w: HealthWindow, window: float) -> list[tuple[str, Finding]]:
    out: list[tuple[str, Finding]] = []
    for s in w.signals:
        f: Finding | None = None
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


def deviates(service: str, s: SignalStats, window_seconds: float) -> bool:
    """Whether one health signal is off its own baseline: a finding (above its minimum), or traffic up
    by :data:`LOAD_RATIO_MIN`.

    Traffic is no finding by itself, but it tells who loads whom (:func:`loaded_by_callers`), so its
    baseline must not learn a surge away while the surge lasts, any more than a latency baseline may.
    Like latency, only the unhealthy direction holds the baseline: after a surge the reference
    follows the streams baseline back down instead of staying stuck at the surge.

    >>> from metaheal.events import SignalStats
    >>> ok = SignalStats(signal="errors", metric="error_rate", count=4, mean=0.002, p50=0.002, p95=0.002, max=0.002,
    ...                  baseline_mean=0.002)
    >>> deviates("api", ok, 2.0), deviates("api", ok.model_copy(update={"mean": 0.2}), 2.0)
    (False, True)
    >>> rps = SignalStats(signal="traffic", metric="requests_per_s", count=4, mean=110, p50=110, p95=115, max=120,
    ...                   baseline_mean=100)
    >>> deviates("db", rps, 2.0), deviates("db", rps.model_copy(update={"mean": 300}), 2.0)
    (False, True)
    >>> deviates("db", rps.model_copy(update={"mean": 30}), 2.0)
    False
    """
    ratio = _traffic_ratio(s)
    if ratio is not None:
        return ratio >= LOAD_RATIO_MIN
    w = HealthWindow(service=service, window_start=0.0, window_end=window_seconds, sample_count=s.count, signals=[s])
    return bool(health_findings(w, window_seconds))


def healthy_reference(service: str, s: SignalStats, window_seconds: float) -> tuple[float | None, float | None]:
    """(mean, p95) baseline a healthy window hands on: the streams baseline, unless that baseline is itself
    off against the window (it still carries an incident that is over); then the window's own values.

    Only for error rates (a floor keeps their noise from counting) and traffic (means): a short
    window's latency percentiles are too noisy to become anybody's reference.

    >>> from metaheal.events import SignalStats
    >>> after = SignalStats(signal="errors", metric="error_rate", count=4, mean=0.002, p50=0.002, p95=0.003,
    ...                     max=0.004, baseline_mean=0.03, baseline_p95=None)
    >>> healthy_reference("api", after, 2.0)
    (0.002, None)
    >>> healthy_reference("api", after.model_copy(update={"baseline_mean": 0.0025}), 2.0)  # noise: keep it
    (0.0025, None)
    """
    if s.signal not in CAPPED_REFERENCE or s.baseline_mean is None:
        return s.baseline_mean, s.baseline_p95
    # the baseline judged as if it were the window, against the window as if it were the baseline
    probe = s.model_copy(
        update={
            "mean": s.baseline_mean,
            "p50": s.baseline_mean,
            "p95": s.baseline_p95 or s.baseline_mean,
            "rate": None,
            "baseline_mean": s.mean,
            "baseline_p95": s.p95 if s.baseline_p95 is not None else None,
        }
    )
    if deviates(service, probe, window_seconds):
        return s.mean, (s.p95 if s.baseline_p95 is not None else None)
    return s.baseline_mean, s.baseline_p95


Reference = dict[tuple[str, str, str, str], tuple[float | None, float | None]]
#: signals whose healthy windows may replace a baseline that still carries the last incident
CAPPED_REFERENCE = frozenset({"errors", "traffic"})


def against_reference(reference: Reference, w: HealthWindow, default_window: float) -> HealthWindow:
    """Judge each signal of ``w`` against the baseline it had while it was last healthy (updating ``reference``).

    The streams worker's baselines keep learning, so a fault that persists becomes
    "normal" within a few windows and would vanish from the evidence while it is still
    there (e.g. while a first, wrong plan runs). A baseline is therefore only taken
    over from windows that do not deviate from the reference (:func:`healthy_reference`);
    deviating windows are judged against the last healthy one. The meta loop and the
    advisors both judge this way, so they see the same persisting fault.

    >>> ref: Reference = {}
    >>> def win(mean: float, base: float) -> HealthWindow:
    ...     return HealthWindow(service="api", window_start=0, window_end=2, sample_count=4, signals=[SignalStats(
    ...         signal="latency", metric="latency_ms", count=4, mean=mean, p50=mean, p95=mean, max=mean,
    ...         baseline_mean=base)])
    >>> pairs = [(100, 100), (240, 150), (240, 230)]
    >>> [against_reference(ref, win(m, b), 2.0).signals[0].baseline_mean for m, b in pairs]
    [100.0, 100.0, 100.0]
    """
    signals = []
    seconds = w.window_end - w.window_start or default_window
    for s in w.signals:
        key = (w.service, s.signal, s.metric, s.dependency or "")
        ref = reference.get(key)
        judged = s if ref is None else s.model_copy(update={"baseline_mean": ref[0], "baseline_p95": ref[1]})
        if not deviates(w.service, judged, seconds):
            reference[key] = healthy_reference(w.service, s, seconds)
            judged = s
        signals.append(judged)
    return w.model_copy(update={"signals": signals})


def _traffic_ratio(s: SignalStats) -> float | None:
    if s.signal != "traffic" or s.dependency or not s.baseline_mean or s.baseline_mean <= 0:
        return None
    return s.mean / s.baseline_mean


def load_ratios(health: list[HealthWindow]) -> dict[str, float]:
    """Each service's incoming traffic against its baseline (latest window; the largest traffic signal)."""
    latest: dict[tuple[str, str], tuple[float, float]] = {}
    for w in health:
        for s in w.signals:
            r = _traffic_ratio(s)
            key = (w.service, s.metric)
            if r is not None and (key not in latest or latest[key][0] < w.window_end):
                latest[key] = (w.window_end, r)
    out: dict[str, float] = {}
    for (service, _), (_, r) in latest.items():
        out[service] = max(out.get(service, 0.0), r)
    return out


def loaded_by_callers(ratios: dict[str, float], dependencies: dict[str, list[str]]) -> dict[str, list[str]]:
    """Dependencies whose load grew well beyond their callers' own traffic -> those callers.

    More requests reach a dependency than its callers' traffic explains: the callers send more
    per request (cache misses falling through, retries, a changed query pattern), so the
    dependency's latency and errors are a consequence of what its callers do, and the callers
    are where a fix belongs. A surge at the edge raises callers and dependency alike and is
    not this.

    >>> deps = {"web": ["api"], "api": ["db", "cache"]}
    >>> loaded_by_callers({"web": 1.0, "api": 1.02, "db": 3.1, "cache": 1.0}, deps)
    {'db': ['api']}
    >>> loaded_by_callers({"web": 1.9, "api": 1.9, "db": 1.9}, deps)
    {}
    """
    callers: dict[str, list[str]] = defaultdict(list)
    for caller, ds in dependencies.items():
        for d in ds:
            callers[d].append(caller)
    out: dict[str, list[str]] = {}
    for d, r in sorted(ratios.items()):
        known = sorted(c for c in callers.get(d, []) if c in ratios)
        if known and r >= LOAD_RATIO_MIN and r >= LOAD_AMPLIFICATION * max(ratios[c] for c in known):
            out[d] = known
    return out


#: a capacity drop of this fraction below baseline starts to be a finding (:func:`_capacity`)
CAPACITY_DROP_MIN = 0.2
#: signals a plan's fix is expected to bring back (traffic is load, not a symptom a playbook removes)
SYMPTOM_SIGNALS = frozenset({"latency", "errors", "saturation", "capacity", "dependency"})


def reference_stat(s: SignalStats) -> str:
    """Which statistic a signal's healthy reference is kept in: p95 for latency-like signals that have one."""
    return "p95" if s.signal in ("latency", "dependency") and s.baseline_p95 else "mean"


def recovery_bound(signal: str, reference: float, tolerance: float) -> tuple[str, float, float]:
    """``(op, threshold, factor)``: what a recovered signal satisfies against its healthy ``reference``.

    The threshold is the reference times ``1 + tolerance``, but never tighter than the level at which
    the signal stops being a finding at all (noise on a healthy service must not fail a fix): error
    rates keep :data:`ERROR_BASELINE_FLOOR` and :data:`ERROR_RATIO_MIN`, saturation counts as recovered
    below :data:`SATURATION_MIN`, capacity (ready instances) must be back to within the tolerance
    *below* its reference, at most :data:`CAPACITY_DROP_MIN` (where a drop becomes a finding).

    >>> recovery_bound("latency", 20.0, 0.2)
    ('<=', 24.0, 1.2)
    >>> recovery_bound("errors", 0.002, 0.2)
    ('<=', 0.02, 2.0)
    >>> recovery_bound("saturation", 40.0, 0.2)
    ('<=', 75.0, 1.875)
    >>> recovery_bound("capacity", 4.0, 0.5)
    ('>=', 3.2, 0.8)
    """
    if signal == "capacity":
        factor = 1.0 - min(tolerance, CAPACITY_DROP_MIN)  # a drop this large is a finding again
        return ">=", round(reference * factor, 6), round(factor, 6)
    if signal == "saturation":
        scale = 100.0 if reference > 1.5 else 1.0
        threshold = max(reference * (1.0 + tolerance), SATURATION_MIN * scale)
        return "<=", round(threshold, 6), round(threshold / reference if reference > 0 else 1.0 + tolerance, 6)
    if signal == "errors":
        factor = max(1.0 + tolerance, ERROR_RATIO_MIN)
        return "<=", round(max(reference, ERROR_BASELINE_FLOOR) * factor, 6), round(factor, 6)
    minimum = {"latency": LATENCY_RATIO_MIN, "dependency": DEPENDENCY_RATIO_MIN}.get(signal, 1.0)
    factor = max(1.0 + tolerance, minimum)
    return "<=", round(reference * factor, 6), round(factor, 6)
