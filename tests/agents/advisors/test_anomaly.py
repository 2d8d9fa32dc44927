from __future__ import annotations

from metaheal.agents.advisors.anomaly import AnomalyAdvisor
from metaheal.agents.advisors.base import CycleContext
from metaheal.events import AnomalyScore, HealthWindow, SignalStats
from tests.agents.advisors.conftest import cycle_focus


def _focus(services):
    return cycle_focus(services)


def _score(service, metric, score, value, baseline=100.0, signal="latency", crossed=None, confidence=1.0, **labels):
    return AnomalyScore(
        service=service,
        metric=metric,
        signal=signal,
        value=value,
        baseline=baseline,
        score=score,
        threshold=0.99,
        crossed=score >= 0.99 if crossed is None else crossed,
        model="m",
        ts=90.0,
        window_start=80.0,
        window_end=90.0,
        confidence=confidence,
        labels=labels,
    )


def test_strongest_score_per_series_becomes_one_finding() -> None:
    ctx = CycleContext(
        focus=_focus(["api"]),
        services=["api"],
        anomalies=[
            _score("api", "latency_ms", 0.995, 300.0),
            _score("api", "latency_ms", 0.99995, 900.0),
            _score("api", "cache_hit_rate", 0.9995, 0.2, baseline=0.9, signal=None),
            _score("api", "cpu_utilization", 0.5, 0.5, signal="saturation"),  # below the reporting floor
        ],
    )
    out = AnomalyAdvisor().advise(ctx)
    assert [(r.finding, r.severity) for r in out.recommendations] == [
        ("latency_up:latency_ms", "critical"),
        ("unknown_down:cache_hit_rate", "high"),
    ]
    assert {(s.metric, s.direction) for s in ctx.symptoms} == {("latency_ms", 1), ("cache_hit_rate", -1)}
    assert out.confidence == 1.0


def test_dependency_services_give_symptoms_but_no_findings() -> None:
    ctx = CycleContext(focus=_focus(["api"]), services=["api"], anomalies=[_score("db", "latency_ms", 0.9999, 500.0)])
    out = AnomalyAdvisor().advise(ctx)
    assert out.recommendations == [] and out.confidence == 0.0
    assert [s.service for s in ctx.symptoms] == ["db"]


def test_warm_up_scores_count_less() -> None:
    ctx = CycleContext(
        focus=_focus(["api"]), services=["api"], anomalies=[_score("api", "latency_ms", 0.9999, 500.0, confidence=0.2)]
    )
    out = AnomalyAdvisor().advise(ctx)
    assert ctx.symptoms[0].strength == 0.2 and out.confidence == 0.2


def test_health_windows_carry_deployments_and_unscored_moves() -> None:
    w = HealthWindow(
        service="api",
        window_start=80.0,
        window_end=90.0,
        sample_count=10,
        signals=[
            SignalStats(signal="unknown", metric="deployments", count=1, mean=1, p50=1, p95=1, max=1),
            SignalStats(
                signal="errors", metric="error_rate", count=5, mean=0.3, p50=0.3, p95=0.4, max=0.5, baseline_mean=0.01
            ),
        ],
    )
    ctx = CycleContext(focus=_focus(["api"]), services=["api"], health=[w])
    AnomalyAdvisor().advise(ctx)
    assert {(s.metric, s.signal) for s in ctx.symptoms} == {("deployments", "change"), ("error_rate", "errors")}


def test_a_deployment_already_there_when_the_last_fix_was_verified_is_no_news() -> None:
    def ctx_with(age: float, changed_at: float) -> CycleContext:
        w = HealthWindow(
            service="api",
            window_start=980.0,
            window_end=1000.0,
            sample_count=10,
            signals=[
                SignalStats(signal="unknown", metric="deployments", count=5, mean=1, p50=1, p95=1, max=1),
                SignalStats(
                    signal="unknown", metric="deployment_age_s", count=5, mean=age - 10, p50=age - 10, p95=age, max=age
                ),
            ],
        )
        ctx = CycleContext(focus=_focus(["api"]), services=["api"], health=[w], changed_at={"api": changed_at})
        AnomalyAdvisor().advise(ctx)
        return ctx

    # deployed at t=700, a rollback (or any fix) verified here at t=900: errors now are not "right after it"
    assert ctx_with(age=300.0, changed_at=900.0).symptoms == []
    # deployed at t=950, after the last fix: a change, and only the counter says so (the age is no change)
    assert [(s.metric, s.signal) for s in ctx_with(age=50.0, changed_at=900.0).symptoms] == [("deployments", "change")]
