"""Symptom builders and a playbook catalogue shared by the advisor tests."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from metaheal.agents.advisors.anomaly import AnomalyAdvisor
from metaheal.agents.advisors.base import CycleContext, Symptom
from metaheal.agents.advisors.root_cause import RootCauseSuggester
from metaheal.events import CycleFocus, HealthWindow, RootCauseCandidate, SignalStats


def sym(
    service: str,
    metric: str,
    signal: str | None,
    direction: int = 1,
    *,
    size: float = 1.5,
    strength: float = 1.0,
    dependency: str | None = None,
    **labels: str,
) -> Symptom:
    if dependency:
        labels["dependency"] = dependency
    return Symptom(service, metric, signal, direction, size, strength, dependency, labels)


def signal_stats(
    signal: str, metric: str, mean: float, base: float, dependency: str | None = None, *, spread: float = 0.2
) -> SignalStats:
    """A health-window signal whose p95 and max sit ``spread`` and ``2 * spread`` above its mean."""
    return SignalStats(
        signal=signal,
        metric=metric,
        count=20,
        mean=mean,
        p50=mean,
        p95=mean * (1 + spread),
        max=mean * (1 + 2 * spread),
        baseline_mean=base,
        dependency=dependency,
    )


def window(service: str, *signals: SignalStats) -> HealthWindow:
    return HealthWindow(service=service, window_start=80.0, window_end=90.0, sample_count=100, signals=list(signals))


def cycle_focus(
    services: list[str], *, area: str = "latency_drift", cycle_id: str = "c1", ts: float = 100.0
) -> CycleFocus:
    """The meta loop's focus on ``services`` for one cycle (maintained guardrails, a 60 s budget)."""
    return CycleFocus(
        cycle_id=cycle_id,
        ts=ts,
        focus_area=area,
        confidence=0.9,
        reasoning=[],
        guardrail_adjustment="maintain",
        guardrail_level="maintain",
        time_budget_seconds=60,
        target_services=services,
    )


def diagnose(windows: list[HealthWindow], graph: dict[str, list[str]], target: str = "api") -> list[RootCauseCandidate]:
    """One cycle's diagnosis of ``target``: the anomaly advisor, then the root-cause suggester."""
    ctx = CycleContext(focus=cycle_focus([target]), services=[target], health=windows)
    AnomalyAdvisor().advise(ctx)
    RootCauseSuggester(graph=graph).advise(ctx)
    return ctx.candidates


#: cause -> symptoms on service "api" (with "orders-db" and "payments" as dependencies)
PATTERNS: dict[str, list[Symptom]] = {
    "database_slow_query": [
        sym("api", "latency_p95_ms", "latency"),
        sym("api", "dependency_latency_ms", "dependency", dependency="orders-db"),
    ],
    "cache_miss_rate_high": [sym("api", "latency_p95_ms", "latency"), sym("api", "cache_hit_rate", None, -1)],
    "cpu_saturation": [sym("api", "latency_p95_ms", "latency"), sym("api", "cpu_utilization", "saturation")],
    "traffic_surge": [sym("api", "requests_per_second", "traffic"), sym("api", "queue_depth", "saturation")],
    "bad_deployment": [sym("api", "error_rate", "errors"), sym("api", "deployments", "change")],
    "upstream_outage": [sym("api", "dependency_errors", "dependency", dependency="payments")],
    "memory_leak": [sym("api", "memory_rss_mb", "saturation")],
}


@pytest.fixture
def make_sym() -> Callable[..., Symptom]:
    return sym


@pytest.fixture
def patterns() -> dict[str, list[Symptom]]:
    return {k: list(v) for k, v in PATTERNS.items()}


def playbook(
    name: str,
    causes: list[str],
    prior: float = 0.6,
    *,
    impact: str = "low",
    blast_radius: int = 1,
    focus: tuple[str, ...] = ("latency_drift",),
) -> SimpleNamespace:
    """Only the fields the ranker reads."""
    return SimpleNamespace(
        name=name,
        impact=impact,
        blast_radius=blast_radius,
        prior_success=prior,
        applies_to=SimpleNamespace(focus_areas=list(focus), root_causes=causes),
    )


@pytest.fixture
def make_playbook() -> Callable[..., SimpleNamespace]:
    return playbook
