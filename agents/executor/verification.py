"""Verification on live telemetry and HTTP checks.

A fix is only a fix if the service says so afterwards. Each check returns a
:class:`Verdict` that records the query, every observed value and the
threshold, so the ledger shows *why* an action was judged. Missing telemetry is
``inconclusive`` — never a pass: silence from a broken service must not look
like health.

>>> v = evaluate_samples([(10.0, 250.0), (11.0, 180.0)], op="<=", threshold=200, min_samples=1)
>>> v
'pass'
>>> evaluate_samples([], op="<=", threshold=200, min_samples=1)
'inconclusive'
>>> overall([Verdict(check="a", status="pass"), Verdict(check="b", status="inconclusive")]) is None
True
>>> tel = LiveTelemetry(Settings())
>>> for dep, err in (("cache", 0.0), ("payments", 0.4)):
...     tel.add_metric(Metric(service="api", metric="dependency_error_rate", value=err, ts=5.0,
...                           labels={"dependency": dep}))
>>> tel.worst_dependency("api", ["cache", "payments", "db"], since=0.0)
'payments'
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from metaheal.agents.common.baselines import (
    SIGNAL_FOCUS,
    SYMPTOM_SIGNALS,
    Reference,
    against_reference,
    health_findings,
    recovery_bound,
    reference_stat,
)
from metaheal.agents.common.playbooks import relative_threshold
from metaheal.agents.executor.actuators.base import compare
from metaheal.agents.executor.actuators.http import excerpt, tls_context
from metaheal.config import Settings
from metaheal.errors import DecodeError
from metaheal.events import HealthWindow, Metric, SignalStats
from metaheal.kafka import OFFSET_BEGINNING, OFFSET_END, ConsumedMessage, Consumer, KafkaUnavailable, TopicPartition
from metaheal.kafka.serializers import (
    AvroDeserializer,
    TelemetryDeserializer,
)
from metaheal.kafka.tail import TopicTail, received_at

logger = logging.getLogger(__name__)

Status = Literal["pass", "fail", "inconclusive"]
POLL_SECONDS = 0.1
MAX_RECORDED = 50
#: dependency error rate below which a dependency is not "failing" for ``worst_dependency``
DEPENDENCY_ERROR_FLOOR = 0.02


class Verdict(BaseModel):
    check: str
    status: Status
    query: dict[str, Any] = Field(default_factory=dict)
    observed: list[float] = Field(default_factory=list)
    threshold: float | int | None = None
    op: str | None = None
    reason: str = ""
    #: for checks against a healthy baseline: the reference value and the tolerance (a factor of it)
    reference: float | None = None
    tolerance: float | None = None


class Symptom(BaseModel):
    """One signal that made the meta loop act, with the healthy reference it must return to.

    ``series`` is the raw telemetry series the check reads after the action (``metric@dependency``
    for a per-dependency signal); ``op``/``threshold`` come from :func:`~metaheal.agents.common.
    baselines.recovery_bound` (``tolerance`` is the factor of the reference that threshold allows).

    >>> Symptom(service="api", signal="latency", metric="latency_p95_ms", stat="p95", reference=20.0,
    ...         op="<=", threshold=24.0, tolerance=1.2).series
    'latency_p95_ms'
    """

    service: str
    signal: str
    metric: str
    dependency: str | None = None
    stat: Literal["mean", "p95"] = "mean"
    reference: float
    op: str
    threshold: float
    tolerance: float
    #: the value seen when the plan was made (the window that showed the symptom), if it deviated
    observed: float | None = None
    finding: str = ""

    @property
    def series(self) -> str:
        return f"{self.metric}@{self.dependency}" if self.dependency else self.metric


def evaluate_samples(samples: list[tuple[float, float]], *, op: str, threshold: float, min_samples: int) -> Status:
    """``pass`` when the last ``min_samples`` samples all satisfy ``value op threshold``."""
    if len(samples) < min_samples:
        return "inconclusive"
    recent = samples[-min_samples:]
    return "pass" if all(compare(op, v, threshold) for _, v in recent) else "fail"


def clearly_failing(
    samples: list[tuple[float, float]], *, op: str, threshold: float, fresh_after: float, consecutive: int
) -> bool:
    """True once the last ``consecutive`` samples, all taken after ``fresh_after``, violate the
    threshold and show no real progress towards it.

    Waiting out the whole ``within`` for a fix that plainly did not work keeps a
    broken service broken (and its rollback and the next attempt waiting); but a
    fix that takes effect gradually must not be cut short, so a window that is
    still closing the gap by more than a tenth is left to run.

    >>> bad = [(t, 400.0) for t in range(20, 26)]
    >>> clearly_failing(bad, op="<=", threshold=200, fresh_after=15, consecutive=5)
    True
    >>> clearly_failing(bad, op="<=", threshold=200, fresh_after=22, consecutive=5)
    False
    >>> improving = [(20 + i, 400.0 - 30 * i) for i in range(6)]
    >>> clearly_failing(improving, op="<=", threshold=200, fresh_after=15, consecutive=5)
    False
    """
    if consecutive < 1 or len(samples) < consecutive:
        return False
    window = samples[-consecutive:]
    if window[0][0] < fresh_after or any(compare(op, v, threshold) for _, v in window):
        return False
    first_gap = abs(window[0][1] - threshold)
    last_gap = abs(window[-1][1] - threshold)
    return last_gap > first_gap * 0.9


def overall(verdicts: list[Verdict]) -> bool | None:
    """True if every check passed, False if any failed, None (inconclusive) otherwise."""
    if any(v.status == "fail" for v in verdicts):
        return False
    if all(v.status == "pass" for v in verdicts):
        return True
    return None


class LiveTelemetry(TopicTail):
    """A rolling in-memory view of ``<prefix>telemetry`` and ``<prefix>health``.

    A background thread tails both topics with a group-less reader (no group
    join delay) and keeps the last ``max_per_series`` samples per
    (service, metric). Checks then only look at samples stamped after their
    start, so it does not matter where reading began.

    A sample's own ``ts`` is the producer's word. Each sample is therefore also kept with the
    time this reader *received* it (or the broker's log-append time, when the topic has
    ``message.timestamp.type=LogAppendTime``, if earlier): a sample counts as taken after a
    change only if it was both stamped and received after it, and a sample stamped more than
    ``signing.max_clock_skew_seconds`` ahead of its receipt is dropped (``future_samples``). So a
    "healthy" sample written before a fix, whatever its stamp, cannot pass the fix's check.

    >>> tel = LiveTelemetry(Settings())
    >>> tel.add_metric(Metric(service="api", metric="errors", value=0.0, ts=time.time() + 3600))
    >>> tel.future_samples, tel.samples("api", "errors", since=0.0)
    (1, [])
    """

    name = "live-telemetry"
    fetch_wait_ms = 50
    poll_timeout = 0.1

    def __init__(
        self,
        settings: Settings,
        *,
        max_per_series: int = 2000,
        start_at: Literal["end", "beginning"] = "end",
        max_judged_windows: int = 120,
    ):
        super().__init__(settings.kafka)
        self._settings = settings
        self._start = OFFSET_END if start_at == "end" else OFFSET_BEGINNING
        #: per series: (event ts, value, trusted receive time)
        self._series: dict[tuple[str, str, str], deque[tuple[float, float, float]]] = defaultdict(
            lambda: deque(maxlen=max_per_series)
        )
        self._skew = settings.signing.max_clock_skew_seconds
        self.future_samples = 0  # samples (and health windows) dropped: stamped too far ahead of their receipt
        self._lock = threading.Lock()
        #: healthy references and the latest windows judged against them, per service (what the meta loop sees)
        self._reference: Reference = {}
        self._judged: dict[str, deque[HealthWindow]] = defaultdict(lambda: deque(maxlen=max_judged_windows))
        self._telemetry = TelemetryDeserializer(
            max_bytes=settings.streams.max_record_bytes, max_depth=settings.streams.max_json_depth
        )
        self._health = AvroDeserializer(HealthWindow)

    # --- feeding -------------------------------------------------------------------------------

    def _too_far_ahead(self, ts: float, seen: float) -> bool:
        if ts > seen + self._skew:
            self.future_samples += 1
            logger.debug("live_telemetry_future_sample ts=%s received=%s", ts, seen)
            return True
        return False

    def add_metric(self, m: Metric, *, seen: float | None = None) -> None:
        """Keep ``m``; ``seen`` is when it was received (a trusted time; default: now)."""
        seen = time.time() if seen is None else seen
        if self._too_far_ahead(m.ts, seen):
            return
        with self._lock:
            self._series[("telemetry", m.service, m.metric)].append((m.ts, m.value, seen))
            dep = m.labels.get("dependency")
            if dep:
                # Per-edge series too: "dependency_error_rate@payments" is one dependency's view.
                self._series[("telemetry", m.service, f"{m.metric}@{dep}")].append((m.ts, m.value, seen))

    def add_health(self, w: HealthWindow, *, seen: float | None = None) -> None:
        """Keep ``w``'s statistics, stamped by its ``window_end``; ``seen`` as for :meth:`add_metric`."""
        seen = time.time() if seen is None else seen
        if self._too_far_ahead(w.window_end, seen):
            return
        with self._lock:
            for s in w.signals:
                for stat in ("mean", "p50", "p95", "max"):
                    self._series[(f"health.{stat}", w.service, s.metric)].append((w.window_end, getattr(s, stat), seen))
            seconds = max(w.window_end - w.window_start, 1e-3)
            self._judged[w.service].append(against_reference(self._reference, w, seconds))

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        parts = []
        for topic in (self._settings.topics.name("telemetry"), self._settings.topics.name("health")):
            try:
                parts += consumer.topic_partitions([topic], self._start)
            except KafkaUnavailable as exc:
                logger.warning("live_telemetry_topic_missing topic=%s error=%s", topic, exc)
        return parts

    def handle(self, msg: ConsumedMessage) -> None:
        self._ingest(msg.topic() == self._settings.topics.name("health"), msg.value(), received_at(msg))

    def _ingest(self, is_health: bool, data: bytes | None, seen: float | None = None) -> None:
        try:
            if is_health:
                self.add_health(self._health(data or b""), seen=seen)
            else:
                for m in self._telemetry(data):
                    self.add_metric(m, seen=seen)
        except DecodeError as exc:
            # The streams worker dead-letters bad telemetry; here it simply does not count.
            logger.debug("live_telemetry_skip error=%s", exc)

    # --- reading -------------------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        """Why this reader cannot be trusted to see fresh samples (None: it is reading)."""
        if self.error is not None:
            return f"telemetry reader failed: {self.error}"
        if self.failed:  # TopicTail: the thread ended without being asked to
            return "telemetry reader stopped"
        return None

    def last_seen(self, service: str, metric: str, *, source: str = "telemetry", stat: str = "p95") -> float | None:
        """Timestamp of the newest sample ever read for the series (None: none since the reader started)."""
        got = self.samples(service, metric, since=0.0, source=source, stat=stat)
        return got[-1][0] if got else None

    def samples(
        self, service: str, metric: str, *, since: float, source: str = "telemetry", stat: str = "p95"
    ) -> list[tuple[float, float]]:
        """``(ts, value)`` of the samples stamped *and received* at or after ``since``, by ``ts``."""
        key = ("telemetry" if source == "telemetry" else f"health.{stat}", service, metric)
        with self._lock:
            return sorted((ts, v) for ts, v, seen in self._series.get(key, ()) if ts >= since and seen >= since)

    def health_seen(self, service: str) -> bool:
        """Whether any health window of ``service`` was read (the streams worker judges it)."""
        with self._lock:
            return bool(self._judged.get(service))

    def baseline(self, service: str, metric: str, *, stat: str = "p95") -> float | None:
        """The healthy reference of ``metric`` (``metric@dependency`` for one edge) on ``service``, if known:
        its p95 reference when ``stat`` is p95/max and it has one, else its mean reference."""
        name, _, dep = metric.partition("@")
        with self._lock:
            for (svc, _signal, m, d), (mean, p95) in self._reference.items():
                if svc == service and m == name and d == dep:
                    return p95 if stat in ("p95", "max") and p95 is not None else mean
        return None

    def focus_symptoms(self, service: str, focus_area: str, *, since: float, tolerance: float) -> list[Symptom]:
        """The signals of ``service`` that show the ``focus_area`` symptom in the windows ending after ``since``.

        Newest window first, one per series, judged against the healthy reference (the same
        :func:`~metaheal.agents.common.baselines.against_reference` the meta loop uses). Signals of
        another focus area count only when none of the focus area deviates; when nothing deviates,
        the focus area's signals in the newest window (the fix must keep them there). Empty when the
        service has no such signal (the caller decides what that means).
        """
        with self._lock:
            recent = [w for w in self._judged.get(service, ()) if w.window_end >= since]
        windows = sorted(recent, key=lambda w: -w.window_end)
        found: dict[tuple[str, str], tuple[str, Symptom]] = {}
        for w in windows:
            seconds = max(w.window_end - w.window_start, 1e-3)
            for s in w.signals:
                key = (s.metric, s.dependency or "")
                if s.signal not in SYMPTOM_SIGNALS or key in found:
                    continue
                one = w.model_copy(update={"signals": [s]})
                findings = health_findings(one, seconds)
                sym = _symptom(service, s, tolerance, findings[0][1].sentence if findings else "")
                if findings and sym is not None:
                    found[key] = (findings[0][0], sym)
        focus = [sym for area, sym in found.values() if area == focus_area]
        if focus or found:
            return focus or [sym for _, sym in found.values()]
        if not windows:
            return []
        calm = [_symptom(service, s, tolerance, "") for s in windows[0].signals if s.signal in SYMPTOM_SIGNALS]
        return [s for s in calm if s is not None and SIGNAL_FOCUS.get(s.signal) == focus_area]

    def worst_dependency(self, service: str, dependencies: list[str], *, since: float) -> str | None:
        """The dependency that looks worst from ``service`` (error rate first, then latency), if any data.

        Used to aim ``failover_dependency`` at the failing upstream rather than at the
        first one listed.
        """
        scored = []
        for dep in dependencies:
            err = self.samples(service, f"dependency_error_rate@{dep}", since=since)
            lat = self.samples(service, f"dependency_latency_ms@{dep}", since=since)
            if err or lat:
                # errors count once they matter (noise on a healthy upstream must not win over a slow one);
                # latency counts relative to the dependency's own usual level, not in absolute ms
                e = err[-1][1] if err and err[-1][1] > DEPENDENCY_ERROR_FLOOR else 0.0
                typical = sorted(v for _, v in lat)[len(lat) // 2] if lat else 0.0
                ratio = lat[-1][1] / typical if lat and typical > 0 else 0.0
                scored.append((e, ratio, dep))
        return max(scored)[2] if scored else None

    async def wait_for(
        self,
        *,
        service: str,
        metric: str,
        op: str,
        threshold: float,
        within: float,
        since: float,
        source: str = "telemetry",
        stat: str = "p95",
        min_samples: int = 1,
        check: str = "metric_threshold",
        settle: float | None = None,
        fail_after: int | None = None,
        patient: bool = False,
    ) -> Verdict:
        """Wait up to ``within`` seconds for the condition; decide as soon as it holds, or as soon as
        ``fail_after`` fresh samples (taken ``settle`` seconds after ``since``) clearly violate it.

        A ``patient`` check (a change awaiting its verdict) reports only a pass or such a clear
        violation; samples that merely do not meet the threshold yet leave it inconclusive."""
        deadline = time.monotonic() + within
        settle = min(20.0, within / 2) if settle is None else settle
        fail_after = max(min_samples, 5) if fail_after is None else fail_after
        query = {
            "source": source,
            "service": service,
            "metric": metric,
            "since": since,
            "within": within,
            "min_samples": min_samples,
            "settle": settle,
            "fail_after": fail_after,
        }
        if source == "health":
            query["stat"] = stat
        early = False
        while True:
            problem = self.problem
            if problem:  # a view that stopped updating proves nothing: inconclusive at once, naming why
                got = self.samples(service, metric, since=since, source=source, stat=stat)
                return Verdict(
                    check=check,
                    status="inconclusive",
                    query=query,
                    observed=[v for _, v in got][-MAX_RECORDED:],
                    threshold=threshold,
                    op=op,
                    reason=problem,
                )
            got = self.samples(service, metric, since=since, source=source, stat=stat)
            status = evaluate_samples(got, op=op, threshold=threshold, min_samples=min_samples)
            if status == "pass" or time.monotonic() >= deadline:
                break
            if fail_after > 0 and clearly_failing(
                got, op=op, threshold=threshold, fresh_after=since + settle, consecutive=fail_after
            ):
                status, early = "fail", True
                break
            await asyncio.sleep(POLL_SECONDS)
        waiting = patient and status == "fail" and not early
        if waiting:
            status = "inconclusive"
        observed = [v for _, v in got][-MAX_RECORDED:]
        reason = {
            "pass": f"last {min_samples} sample(s) satisfy {metric} {op} {threshold}",
            "fail": (
                f"{metric} {op} {threshold} violated by the last {fail_after} fresh samples "
                f"({settle:g}s after the change) without progress (last {observed[-1] if observed else None})"
            )
            if early
            else f"{metric} {op} {threshold} not met within {within}s (last {observed[-1] if observed else None})",
            "inconclusive": (
                f"{metric} {op} {threshold} not met yet and not clearly violated (last {observed[-1]})"
                if waiting
                else f"fewer than {min_samples} sample(s) of {metric} for {service} within {within}s"
            ),
        }[status]
        if status == "inconclusive" and not waiting and self.problem:
            reason = f"{reason} ({self.problem})"
        return Verdict(
            check=check, status=status, query=query, observed=observed, threshold=threshold, op=op, reason=reason
        )


def _symptom(service: str, s: SignalStats, tolerance: float, finding: str) -> Symptom | None:
    stat = reference_stat(s)
    reference = s.baseline_p95 if stat == "p95" else s.baseline_mean
    if reference is None or (reference <= 0 and s.signal != "errors"):
        return None  # no healthy reference to return to
    op, threshold, factor = recovery_bound(s.signal, reference, tolerance)
    return Symptom(
        service=service,
        signal=s.signal,
        metric=s.metric,
        dependency=s.dependency,
        stat=stat,
        reference=reference,
        op=op,
        threshold=threshold,
        tolerance=factor,
        observed=(s.p95 if stat == "p95" else s.mean) if finding else None,
        finding=finding,
    )


async def check_symptom(
    sym: Symptom,
    *,
    since: float,
    within: float,
    telemetry: LiveTelemetry | None,
    settle: float | None = None,
    min_samples: int = 3,
    patient: bool = False,
) -> Verdict:
    """Did the symptom return to within its tolerance of the healthy reference, on samples taken after ``since``?

    Reads the raw telemetry series; no fresh sample is *inconclusive* (never a pass)."""
    query = {
        "source": "telemetry",
        "service": sym.service,
        "metric": sym.series,
        "signal": sym.signal,
        "reference_stat": sym.stat,
        "since": since,
        "within": within,
        "min_samples": min_samples,
        "finding": sym.finding,
    }
    extra = {"reference": sym.reference, "tolerance": sym.tolerance}
    if telemetry is None or telemetry.problem:
        why = "no live telemetry reader" if telemetry is None else str(telemetry.problem)
        return Verdict(
            check="symptom", status="inconclusive", query=query, threshold=sym.threshold, op=sym.op, reason=why, **extra
        )
    v = await telemetry.wait_for(
        service=sym.service,
        metric=sym.series,
        op=sym.op,
        threshold=sym.threshold,
        within=within,
        since=since,
        min_samples=min_samples,
        check="symptom",
        settle=settle,
        patient=patient,
    )
    where = f"{sym.series} on {sym.service}: healthy {sym.stat} {sym.reference:g}, tolerance x{sym.tolerance:g}"
    return v.model_copy(update={"query": {**v.query, **query}, "reason": f"{v.reason} ({where})", **extra})


async def http_check(url: str, *, expect_status: int, within: float, timeout: float) -> Verdict:
    """Poll ``url`` until it answers ``expect_status`` or ``within`` runs out."""
    deadline = time.monotonic() + within
    statuses: list[float] = []
    last_error = ""
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, verify=tls_context()) as client:
        while True:
            try:
                resp = await client.get(url)
                statuses.append(resp.status_code)
                if resp.status_code == expect_status:
                    break
                last_error = f"status {resp.status_code}: {excerpt(resp.text, 200)}"  # redacted, as step bodies are
            except httpx.HTTPError as exc:
                last_error = f"{exc!r}"
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    ok = bool(statuses) and statuses[-1] == expect_status
    if ok:
        status: Status = "pass"
    else:
        status = "fail" if statuses else "inconclusive"
    return Verdict(
        check="http_check",
        status=status,
        query={"url": url, "within": within},
        observed=statuses[-MAX_RECORDED:],
        threshold=expect_status,
        op="==",
        reason="" if ok else f"expected {expect_status}: {last_error}",
    )


async def run_verification(
    spec: dict[str, Any],
    *,
    service: str,
    since: float,
    telemetry: LiveTelemetry | None,
    patient: bool = False,
    baselines: dict[str, float] | None = None,
) -> Verdict:
    """Run one rendered verification spec (a ``PlanVerification`` body); ``patient``: see ``wait_for``.

    A threshold written against the baseline (``value: "baseline * 1.2"``) is resolved here from
    ``baselines`` (series -> healthy reference, e.g. the incident's recorded symptoms) or the live
    healthy references; without one the check is inconclusive, never a pass."""
    kind = spec.get("type")
    if kind == "http_check":
        return await http_check(
            spec["url"],
            expect_status=int(spec.get("expect_status", 200)),
            within=float(spec.get("within", 10.0)),
            timeout=float(spec.get("timeout", 5.0)),
        )
    if kind == "metric_threshold":
        if telemetry is None:
            return Verdict(check=kind, status="inconclusive", reason="no live telemetry reader", query=spec)
        if telemetry.problem:
            return Verdict(check=kind, status="inconclusive", reason=telemetry.problem, query=spec)
        target = str(spec.get("service", service))
        relative = relative_threshold(spec["value"])
        reference = None
        if relative is not None:
            reference = (baselines or {}).get(spec["metric"]) if target == service else None
            if reference is None:
                reference = telemetry.baseline(target, spec["metric"], stat=str(spec.get("stat", "p95")))
            if reference is None:
                return Verdict(
                    check=kind,
                    status="inconclusive",
                    query=spec,
                    op=spec["op"],
                    reason=f"threshold {spec['value']!r} needs a healthy baseline of {spec['metric']} on {target}: "
                    "none known (no healthy health window seen)",
                )
        threshold = relative[0] * reference + relative[1] if relative is not None and reference is not None else None
        verdict = await telemetry.wait_for(
            service=target,
            metric=spec["metric"],
            op=spec["op"],
            threshold=threshold if threshold is not None else float(spec["value"]),
            within=float(spec.get("within", 60.0)),
            since=since,
            source=spec.get("source", "telemetry"),
            stat=spec.get("stat", "p95"),
            min_samples=int(spec.get("min_samples", 1)),
            settle=float(spec["settle"]) if spec.get("settle") is not None else None,
            fail_after=int(spec["fail_after"]) if spec.get("fail_after") is not None else None,
            patient=patient,
        )
        if relative is not None:
            verdict.query["value"] = spec["value"]
            verdict = verdict.model_copy(update={"reference": reference, "tolerance": relative[0]})
        return verdict
    return Verdict(check=str(kind), status="inconclusive", reason=f"unknown verification type {kind!r}")
