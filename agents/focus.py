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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
LOAD_RATIO_MIN = 1.3  # traffic x1.3 of its baseline is a real change in load (daily swings are slower)
#: a dependency whose traffic grew this many times more than its callers' own traffic is loaded *by* them
LOAD_AMPLIFICATION = 1.5
ANOMALY_MIN_THRESHOLD = 0.999  # a crossing is never less extreme than this, whatever a series was configured with
ANOMALY_ALPHA = 0.01  # fleet-wide (Bonferroni) p-value a series' crossings must beat to count at all
ANOMALY_ALONE_CAP = 0.6  # anomaly evidence without a health deviation in the same area stays a hint
HINT = 0.5  # any finding above its minimum: enough to explain a caller's symptom, not to act on alone
#: which way a series must move for its anomaly to speak for the area (an instance count going *up*
#: after a scale-out is not capacity strain); signals not listed count either way
UNHEALTHY_DIRECTION: dict[str, int] = {"latency": 1, "errors": 1, "saturation": 1, "dependency": 1, "capacity": -1}
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


@dataclass
class _Finding:
    confidence: float
    sentence: str
    #: for dependency findings: the dependency that looks unhealthy from the caller
    dependency: str | None = None


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
        s.dependency,
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
    return bool(_health_findings(w, window_seconds))


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
    probe = s.model_copy(update={
        "mean": s.baseline_mean, "p50": s.baseline_mean, "p95": s.baseline_p95 or s.baseline_mean, "rate": None,
        "baseline_mean": s.mean, "baseline_p95": s.p95 if s.baseline_p95 is not None else None,
    })
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
    >>> [against_reference(ref, win(m, b), 2.0).signals[0].baseline_mean for m, b in [(100, 100), (240, 150), (240, 230)]]
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
) -> list[tuple[str, str, _Finding]]:
    """(area, service, finding) for every series whose crossings are not chance across the fleet."""
    series = _anomaly_series(anomalies)
    m = max(1, len(series))
    out: list[tuple[str, str, _Finding]] = []
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
        strength = _ramp(-math.log10(max(p, 1e-12)), -math.log10(ANOMALY_ALPHA), 6.0)
        conf = round(_conf(max(strength, 1e-3)) * sr.confidence, 4)
        a = sr.top
        where = f"{service} {metric}" + (f" (dependency {dep})" if dep else "")
        out.append((sr.area, service, _Finding(
            conf,
            f"Anomaly score {a.score:.4g} on {where}: {a.value:.4g} vs baseline {a.baseline:.4g} "
            f"(crossed in {len(sr.crossed)} of {len(sr.windows)} window(s), fleet-wide p={p:.1e} over {m} series)",
            dep or None,
        )))
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


def upstream(service: str, dependencies: dict[str, list[str]]) -> set[str]:
    """Every service ``service`` calls, directly or not."""
    seen: set[str] = set()
    todo = list(dependencies.get(service, []))
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(dependencies.get(d, []))
    return seen


def downstream(service: str, dependencies: dict[str, list[str]]) -> set[str]:
    """Every service that calls ``service``, directly or not.

    >>> sorted(downstream("db", {"web": ["api"], "api": ["db", "cache"]}))
    ['api', 'web']
    """
    return {caller for caller in dependencies if service in upstream(caller, dependencies)}


class ServiceGraph:
    """``settings.services`` as a dependency graph, as it is now.

    ``metaheal up`` swaps in a new list when a service registers at run time; the graph
    is rebuilt only then, so reading it per anomaly costs nothing.
    """

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._of: list[Any] | None = None
        self._graph: dict[str, list[str]] = {}

    @property
    def graph(self) -> dict[str, list[str]]:
        if self._of is not self._settings.services:
            self._of = self._settings.services
            self._graph = {svc.name: list(svc.dependencies) for svc in self._of}
        return self._graph


def related(services: str | Iterable[str], dependencies: dict[str, list[str]]) -> set[str]:
    """The services themselves, everything they call and everything calling them, directly or not:
    whose remediation changes them, and where a fault in them shows.

    >>> sorted(related("api", {"web": ["api"], "api": ["db"], "cache": []}))
    ['api', 'db', 'web']
    """
    names = {services} if isinstance(services, str) else set(services)
    return names.union(*(upstream(s, dependencies) | downstream(s, dependencies) for s in names))


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
    health: dict[str, dict[str, list[_Finding]]] = defaultdict(lambda: defaultdict(list))
    anomaly: dict[str, dict[str, list[_Finding]]] = defaultdict(lambda: defaultdict(list))
    samples_per_window: dict[tuple[str, str, str], int] = {}
    for w in evidence.health:
        for s in w.signals:
            samples_per_window[(w.service, s.metric, s.dependency or "")] = s.count
        for area, f in _health_findings(w, evidence.window_seconds):
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
            _Finding(conf, f"{len(vs)} trust violation(s) on {service} in {_duration(evidence.window_seconds)}: {detail}")
        )

    # a dependency that is one of ours and shows its own trouble is diagnosed in its own area:
    # its callers' view of it is a symptom (the root cause is acted on, not the caller)
    own = {svc for ar, svcs in health.items() if ar != "dependency_health"
           for svc, fs in svcs.items() if any(f.confidence >= HINT for f in fs)}
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
    findings: dict[str, dict[str, list[_Finding]]] = defaultdict(lambda: defaultdict(list))
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
    explained = {s: sorted(upstream(s, deps) & hinted - _surge_hints(s, ratios, hinted, strong))
                 if area != "capacity_strain" else [] for s in strong}
    for s, by in explained.items():
        for d in by:
            confidence[d] = max(confidence[d], confidence[s])
    roots = {d for by in explained.values() for d in by}
    candidates = sorted(set(strong) | roots, key=lambda s: (-confidence[s], s))
    targets = [s for s in candidates if area == "capacity_strain"
               or not (upstream(s, deps) & (set(candidates) | hinted) - _surge_hints(s, ratios, hinted, strong))]
    notes = [
        f"{d} is loaded by its callers: requests x{ratios[d]:.2f} against x{max(ratios[c] for c in cs):.2f} on "
        f"{', '.join(cs)}: acting on {', '.join(cs)}, not on {d}." for d, cs in loaded.items()
    ]
    notes += [
        f"{s} explained by its dependency {', '.join(by)}: not targeted." for s, by in explained.items() if by
    ]
    # an overloaded upstream needs capacity on itself, not a failover by its callers
    overloaded = {svc for kind in (health, anomaly) for svc, fs in kind.get("capacity_strain", {}).items()
                  if any(f.confidence >= HINT for f in fs)}
    targets, routed = route_around_leaves(targets, deps, {d: c for d, c in seen_by.items() if d not in overloaded},
                                          confidence)
    notes += [f"{d} calls nothing it could change and its callers see it fail: acting on {', '.join(by)} "
              f"(they can route around it)." for d, by in routed.items()]
    sentences = [f.sentence for svc in targets for f in findings[area].get(svc, [])] + [
        f.sentence for svc in ranked if svc not in targets for f in findings[area].get(svc, [])
    ]
    others = [f"Also seen: {a} at {c:.2f}." for a, c in sorted(scores.items(), key=lambda kv: -kv[1]) if a != area]
    return FocusDecision(area, conf, [*sentences[:4], *notes[:2], *others[:2]], targets, scores, max_anomaly, confidence)
