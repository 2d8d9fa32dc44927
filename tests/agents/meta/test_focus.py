"""Focus decision rules (pure: no broker)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from metaheal.agents.meta.focus import Evidence, TrustViolation, decide_focus
from metaheal.events import AnomalyScore, HealthWindow, SignalStats

NOW = 1_736_951_400.0


def anomaly(
    service: str, metric: str, signal: str | None, score: float, confidence: float = 1.0, **labels: str
) -> AnomalyScore:
    return AnomalyScore(
        service=service,
        metric=metric,
        signal=signal,
        value=10.0,
        baseline=1.0,
        score=score,
        threshold=0.99,
        crossed=score >= 0.99,
        confidence=confidence,
        model="m",
        ts=NOW,
        window_start=NOW - 10,
        window_end=NOW,
        labels=labels,
    )


def test_latency_sentence_carries_the_numbers(h: Any) -> None:
    w = h.window(
        "api_cluster", h.stats("latency", "latency_p95_ms", mean=240, base=150, p95=245, base_p95=150), end=NOW
    )
    d = decide_focus(Evidence(health=[w]))
    assert d.focus_area == "latency_drift" and d.confidence >= 0.9
    assert d.reasoning[0] == "Latency drift: 150ms -> 245ms on api_cluster (latency_p95_ms, x1.63)"


def test_error_sentence_counts_errors_in_the_window(h: Any) -> None:
    w = h.window("checkout", h.stats("errors", "errors", mean=0.5, base=0.3 / 30, count=30), end=NOW, seconds=300)
    d = decide_focus(Evidence(health=[w]))
    assert d.focus_area == "error_spike"
    assert d.reasoning[0] == "15 errors in 5 min on checkout (mean 0.5 per sample, baseline 0.01)"


@pytest.mark.parametrize(
    ("signal", "metric", "kwargs", "area"),
    [
        ("saturation", "cpu_utilization", {"mean": 0.97, "base": 0.4}, "capacity_strain"),
        ("saturation", "cpu_percent", {"mean": 96.0, "base": 40.0}, "capacity_strain"),
        ("capacity", "ready_instances", {"mean": 2.0, "base": 6.0}, "capacity_strain"),
        (
            "dependency",
            "dep_latency_ms",
            {"mean": 300, "base": 30, "p95": 320, "base_p95": 40, "dependency": "db"},
            "dependency_health",
        ),
    ],
)
def test_each_signal_kind_speaks_for_its_area(h: Any, signal: str, metric: str, kwargs: dict, area: str) -> None:
    d = decide_focus(Evidence(health=[h.window("svc", h.stats(signal, metric, **kwargs), end=NOW)]))
    assert (d.focus_area, d.target_services) == (area, ["svc"])


def test_anomaly_scores_alone_are_a_hint_never_a_decision(h: Any) -> None:
    # one crossing on one series is not chance (p=0.001), but without a health deviation it cannot reach 0.70
    alone = decide_focus(Evidence(anomalies=[anomaly("api", "errors", "errors", 0.99999)]))
    assert alone.focus_area == "routine_maintenance"
    assert alone.reasoning[0].startswith("Strongest evidence is error_spike at confidence 0.60, below the 0.70")
    # corroborated by the service's own error window, the same anomaly adds to it
    w = h.window("api", h.stats("errors", "errors", mean=0.04, base=0.01), end=NOW)  # x4: a hint on its own
    hint = decide_focus(Evidence(health=[w]))
    both = decide_focus(Evidence(health=[w], anomalies=[anomaly("api", "errors", "errors", 0.99999)]))
    chance = decide_focus(Evidence(health=[w], anomalies=[anomaly("api", "errors", "errors", 0.9995)]))
    assert chance.scores == hint.scores  # the max of 30 samples reaching 0.9995 is chance (p=0.03): adds nothing
    assert both.focus_area == "error_spike" and both.confidence > hint.scores["error_spike"]
    # below the crossing threshold, or of an unknown signal kind, a score is no evidence at all
    weak = decide_focus(Evidence(anomalies=[anomaly("api", "errors", "errors", 0.95, confidence=0.5)]))
    assert weak.focus_area == "routine_maintenance" and weak.scores == {}
    unknown = decide_focus(Evidence(anomalies=[anomaly("api", "gc_pauses", None, 0.999)]))
    assert unknown.focus_area == "routine_maintenance" and unknown.max_anomaly == pytest.approx(0.999)


def test_health_and_anomaly_evidence_reinforce_each_other(h: Any) -> None:
    w = h.window(
        "api", h.stats("latency", "latency_p95_ms", mean=170, base=150, p95=180, base_p95=150), end=NOW
    )  # x1.2: a hint
    alone = decide_focus(Evidence(health=[w]))
    assert alone.focus_area == "routine_maintenance" and alone.scores["latency_drift"] < 0.7
    both = decide_focus(
        Evidence(health=[w], anomalies=[anomaly("api", "latency_p95_ms", "latency", 0.999999, confidence=0.8)])
    )
    assert both.focus_area == "latency_drift" and both.confidence > 0.7


def quiet_fleet(
    rng: np.random.Generator,
    services: int = 5,
    series: int = 12,
    windows: int = 7,
    k: int = 4,
    threshold: float = 0.999,
) -> Evidence:
    """Calibrated noise: every score is a uniform tail probability, every window summary the max of ``k``;
    health windows wobble a few percent around their baselines."""
    health, anomalies = [], []
    for i in range(services):
        svc = f"svc{i}"
        sigs = [h_stats(rng, "latency", f"latency_p{q}_ms", 100.0, k) for q in (50, 95)]
        sigs += [h_stats(rng, "errors", "error_rate", 0.002, k), h_stats(rng, "saturation", "cpu_utilization", 0.45, k)]
        health.append(HealthWindow(service=svc, window_start=NOW - 2, window_end=NOW, sample_count=4 * k, signals=sigs))
        for j in range(series):
            signal = ("latency", "errors", "saturation", "dependency", "traffic", "capacity")[j % 6]
            labels = {"dependency": f"dep{j}"} if signal == "dependency" else {}
            for wi in range(windows):
                start = NOW - 2 * (windows - wi)
                score = float(rng.random(k).max())
                anomalies.append(
                    AnomalyScore(
                        service=svc,
                        metric=f"m{j}",
                        signal=signal,
                        kind="summary",
                        value=1.0,
                        baseline=1.0,
                        score=score,
                        threshold=threshold,
                        crossed=score >= threshold,
                        confidence=1.0,
                        model="m",
                        ts=start + 2,
                        window_start=start,
                        window_end=start + 2,
                        labels=labels,
                    )
                )
    return Evidence(health=health, anomalies=anomalies, window_seconds=15.0)


def h_stats(rng: np.random.Generator, signal: str, metric: str, base: float, k: int) -> SignalStats:
    xs = base * (1 + 0.05 * rng.standard_normal(k))
    return SignalStats(
        signal=signal,
        metric=metric,
        count=k,
        mean=float(xs.mean()),
        p50=float(np.median(xs)),
        p95=float(np.percentile(xs, 95)),
        max=float(xs.max()),
        baseline_mean=base,
        baseline_p95=base * 1.08,
    )


def test_a_noisy_quiet_fleet_is_routine_maintenance_cycle_after_cycle() -> None:
    """60 series of calibrated noise: some window max crosses 0.999 in most cycles, none is acted on."""
    rng = np.random.default_rng(7)
    cycles = [decide_focus(quiet_fleet(rng)) for _ in range(100)]
    crossed = sum(any(a.crossed for a in quiet_fleet(np.random.default_rng(100 + i)).anomalies) for i in range(50))
    assert crossed >= 10, "the null fleet must actually produce chance crossings for this test to mean anything"
    assert [c.focus_area for c in cycles].count("routine_maintenance") == 100
    assert all(c.target_services == [] for c in cycles)


def test_a_real_drift_in_that_noise_is_still_found() -> None:
    rng = np.random.default_rng(11)
    ev = quiet_fleet(rng)
    w = ev.health[2]
    w.signals[1] = SignalStats(
        signal="latency",
        metric="latency_p95_ms",
        count=4,
        mean=150,
        p50=150,
        p95=160,
        max=165,
        baseline_mean=100,
        baseline_p95=108,
    )
    for wi in range(4):  # the drifting series crosses in 4 consecutive windows
        start = NOW - 8 + 2 * wi
        ev.anomalies.append(
            AnomalyScore(
                service="svc2",
                metric="latency_p95_ms",
                signal="latency",
                kind="summary",
                value=160,
                baseline=100,
                score=0.99995,
                threshold=0.999,
                crossed=True,
                model="m",
                ts=start + 2,
                window_start=start,
                window_end=start + 2,
            )
        )
    d = decide_focus(ev)
    assert (d.focus_area, d.target_services) == ("latency_drift", ["svc2"])
    assert any("crossed in 4 of 4 window(s)" in r for r in d.reasoning)


def test_a_failing_dependency_explains_its_callers(h: Any) -> None:
    lat = {"web": 260.0, "api_cluster": 240.0, "db": 152.0}
    ws = [
        h.window(s, h.stats("latency", "latency_p95_ms", mean=v, base=150, p95=v, base_p95=150), end=NOW)
        for s, v in lat.items()
    ]
    deps = {"web": ["api_cluster"], "api_cluster": ["db", "cache"]}
    d = decide_focus(Evidence(health=ws, dependencies=deps))
    assert (d.focus_area, d.target_services) == ("latency_drift", ["api_cluster"])
    assert "web explained by its dependency api_cluster: not targeted." in d.reasoning
    assert d.service_confidence["web"] >= 0.7  # seen, just not acted on
    # without the graph both are targets
    assert decide_focus(Evidence(health=ws)).target_services == ["api_cluster", "web"]  # tie: by name


def test_trust_violations_are_counted_and_ranked_with_other_areas(h: Any) -> None:
    v = [TrustViolation("billing", "outcome", f"plan p{i} denied", NOW) for i in range(2)]
    w = h.window("api", h.stats("latency", "latency_p95_ms", mean=240, base=150, p95=245, base_p95=150), end=NOW)
    d = decide_focus(Evidence(health=[w], trust_violations=v))
    # latency at 0.98 beats 2 violations (0.92); three violations (0.97) still lose to it, but outrank lower areas
    assert d.focus_area == "latency_drift" and "Also seen: trust_violations at 0.92." in d.reasoning
    only = decide_focus(Evidence(trust_violations=v))
    assert (only.focus_area, only.target_services) == ("trust_violations", ["billing"])


def test_targets_are_every_service_above_the_threshold_strongest_first(h: Any) -> None:
    ws = [
        h.window("a", h.stats("latency", "p95", mean=200, base=150, p95=200, base_p95=150), end=NOW),  # x1.33
        h.window("b", h.stats("latency", "p95", mean=300, base=150, p95=300, base_p95=150), end=NOW),  # x2
        h.window("c", h.stats("latency", "p95", mean=155, base=150, p95=155, base_p95=150), end=NOW),  # noise
    ]
    d = decide_focus(Evidence(health=ws))
    assert d.target_services == ["b", "a"]


def test_threshold_is_configurable(h: Any) -> None:
    w = h.window("api", h.stats("latency", "p95", mean=200, base=150, p95=200, base_p95=150), end=NOW)
    assert decide_focus(Evidence(health=[w]), min_confidence=0.99).focus_area == "routine_maintenance"
    assert decide_focus(Evidence(health=[w]), min_confidence=0.5).focus_area == "latency_drift"


def test_a_dependency_with_only_a_hint_is_still_the_one_acted_on(h: Any) -> None:
    # the caller's symptom is already strong while the failing dependency only starts to deviate
    ws = [
        h.window("web", h.stats("latency", "latency_p95_ms", mean=250, base=150, p95=250, base_p95=150), end=NOW),
        h.window(
            "api_cluster", h.stats("latency", "latency_p95_ms", mean=180, base=150, p95=180, base_p95=150), end=NOW
        ),
    ]
    d = decide_focus(Evidence(health=ws, dependencies={"web": ["api_cluster"]}))
    assert (d.focus_area, d.target_services) == ("latency_drift", ["api_cluster"])
    assert d.service_confidence["api_cluster"] == d.service_confidence["web"]  # inherits the caller's evidence


def test_a_callers_view_of_a_failing_fleet_service_is_not_dependency_health(h: Any) -> None:
    web = h.window(
        "web", h.stats("dependency", "dependency_error_rate", mean=0.15, base=0.002, dependency="api_cluster"), end=NOW
    )
    api = h.window("api_cluster", h.stats("errors", "error_rate", mean=0.18, base=0.002), end=NOW)
    graph = {"web": ["api_cluster"], "api_cluster": ["db"]}
    d = decide_focus(Evidence(health=[web, api], dependencies=graph))
    assert (d.focus_area, d.target_services) == ("error_spike", ["api_cluster"])
    assert "dependency_health" not in d.scores
    # an outside dependency (or one of ours that looks fine) is still dependency health
    alone = decide_focus(Evidence(health=[web], dependencies={"web": ["api_cluster"]}))
    assert (alone.focus_area, alone.target_services) == ("dependency_health", ["web"])


def test_a_failing_leaf_upstream_is_acted_on_through_the_callers_that_see_it(h: Any) -> None:
    # upstream outage: payments (calls nothing) fails; api_cluster sees its dependency errors and can fail over
    api = h.window(
        "api_cluster",
        h.stats("dependency", "dependency_error_rate", mean=0.6, base=0.002, dependency="payments"),
        h.stats("errors", "error_rate", mean=0.06, base=0.002),
        end=NOW,
    )
    pay = h.window("payments", h.stats("errors", "error_rate", mean=0.6, base=0.002), end=NOW)
    graph = {"web": ["api_cluster"], "api_cluster": ["db", "payments"]}
    d = decide_focus(Evidence(health=[api, pay], dependencies=graph))
    assert (d.focus_area, d.target_services) == ("error_spike", ["api_cluster"])
    assert d.service_confidence["api_cluster"] >= d.service_confidence["payments"]
    assert any("acting on api_cluster" in r for r in d.reasoning)
    # an overloaded leaf (more load than it can take) gets capacity itself: no routing around it
    hot = h.window(
        "payments",
        h.stats("errors", "error_rate", mean=0.6, base=0.002),
        h.stats("saturation", "cpu_utilization", mean=0.99, base=0.4),
        end=NOW,
    )
    assert decide_focus(Evidence(health=[api, hot], dependencies=graph)).target_services == ["payments"]
    # nobody sees it through a dependency metric: the leaf itself stays the target
    assert decide_focus(Evidence(health=[pay], dependencies=graph)).target_services == ["payments"]


def test_a_dependency_loaded_by_its_callers_calls_is_their_symptom(h: Any) -> None:
    # the api's cache stopped absorbing reads: the database gets 3x the queries at unchanged api traffic
    def fleet(api_rps: float, db_rps: float) -> list[HealthWindow]:
        return [
            h.window(
                "web",
                h.stats("latency", "latency_p95_ms", mean=640, base=130, p95=640, base_p95=130),
                h.stats("traffic", "requests_per_s", mean=api_rps, base=400),
                end=NOW,
            ),
            h.window(
                "api",
                h.stats("latency", "latency_p95_ms", mean=560, base=90, p95=560, base_p95=90),
                h.stats("traffic", "requests_per_s", mean=api_rps, base=400),
                end=NOW,
            ),
            h.window(
                "db",
                h.stats("latency", "latency_p95_ms", mean=370, base=40, p95=370, base_p95=40),
                h.stats("saturation", "cpu_utilization", mean=0.98, base=0.4),
                h.stats("traffic", "requests_per_s", mean=db_rps, base=170),
                end=NOW,
            ),
        ]

    graph = {"web": ["api"], "api": ["db", "cache"]}
    d = decide_focus(Evidence(health=fleet(405, 540), dependencies=graph))
    assert (d.focus_area, d.target_services) == ("latency_drift", ["api"])
    assert any(r.startswith("db is loaded by its callers: requests x3.18 against x1.01 on api") for r in d.reasoning)
    # an edge surge raises the database's load only as much as the api's: the database is the one to act on
    surge = decide_focus(Evidence(health=fleet(800, 340), dependencies=graph))
    assert surge.target_services == ["db"]
    assert not any("loaded by its callers" in r for r in surge.reasoning)


def test_a_callers_saturation_is_its_own_not_its_busier_dependencys(h: Any) -> None:
    # a surge: api saturates; its cache is busier too (a hint of strain), which does not saturate the api
    ws = [
        h.window("api", h.stats("saturation", "cpu_utilization", mean=0.99, base=0.56), end=NOW),
        h.window("cache", h.stats("saturation", "cpu_utilization", mean=0.8, base=0.3), end=NOW),
    ]
    d = decide_focus(Evidence(health=ws, dependencies={"web": ["api"], "api": ["cache", "db"]}))
    assert (d.focus_area, d.target_services) == ("capacity_strain", ["api"])
    assert 0.5 <= d.service_confidence["cache"] < 0.7  # seen as a hint, not acted on


def test_a_dependency_a_little_slower_under_the_same_surge_does_not_explain_its_saturated_caller(h: Any) -> None:
    def fleet(db_rps: float, api_rps: float = 760) -> list[HealthWindow]:
        return [
            h.window(
                "api",
                h.stats("latency", "latency_p95_ms", mean=260, base=90, p95=260, base_p95=90),
                h.stats("traffic", "requests_per_s", mean=api_rps, base=400),
                end=NOW,
            ),
            h.window(
                "db",
                h.stats("latency", "latency_p95_ms", mean=48, base=41, p95=48, base_p95=41),
                h.stats("traffic", "requests_per_s", mean=db_rps, base=170),
                end=NOW,
            ),
        ]

    graph = {"web": ["api"], "api": ["db"]}
    # twice the traffic at api and db alike: api is the one in trouble, db only passes the load on a little slower
    assert decide_focus(Evidence(health=fleet(320), dependencies=graph)).target_services == ["api"]
    # at unchanged traffic the same slight db drift is the early sign of a failing dependency: it is acted on
    assert decide_focus(Evidence(health=fleet(170, 400), dependencies=graph)).target_services == ["db"]
