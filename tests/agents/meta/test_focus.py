"""Focus decision rules (pure: no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from metaheal.agents.focus import Evidence, TrustViolation, decide_focus
from metaheal.events import AnomalyScore

NOW = 1_736_951_400.0


def anomaly(service: str, metric: str, signal: str | None, score: float, confidence: float = 1.0, **labels: str) -> AnomalyScore:
    return AnomalyScore(service=service, metric=metric, signal=signal, value=10.0, baseline=1.0, score=score, threshold=0.99,
                        crossed=score >= 0.99, confidence=confidence, model="m", ts=NOW, window_start=NOW - 10,
                        window_end=NOW, labels=labels)


def test_latency_sentence_carries_the_numbers(h: Any) -> None:
    w = h.window("api_cluster", h.stats("latency", "latency_p95_ms", mean=240, base=150, p95=245, base_p95=150), end=NOW)
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
        ("dependency", "dep_latency_ms", {"mean": 300, "base": 30, "p95": 320, "base_p95": 40, "dependency": "db"}, "dependency_health"),
    ],
)
def test_each_signal_kind_speaks_for_its_area(h: Any, signal: str, metric: str, kwargs: dict, area: str) -> None:
    d = decide_focus(Evidence(health=[h.window("svc", h.stats(signal, metric, **kwargs), end=NOW)]))
    assert (d.focus_area, d.target_services) == (area, ["svc"])


def test_anomaly_scores_alone_decide_and_weak_ones_do_not(h: Any) -> None:
    strong = decide_focus(Evidence(anomalies=[anomaly("api", "errors", "errors", 0.999)]))
    assert strong.focus_area == "error_spike" and strong.confidence == pytest.approx(0.999)
    weak = decide_focus(Evidence(anomalies=[anomaly("api", "errors", "errors", 0.95, confidence=0.5)]))
    assert weak.focus_area == "routine_maintenance"
    assert weak.reasoning[0].startswith("Strongest evidence is error_spike at confidence 0.47, below the 0.70")
    unknown = decide_focus(Evidence(anomalies=[anomaly("api", "gc_pauses", None, 0.999)]))
    assert unknown.focus_area == "routine_maintenance" and unknown.max_anomaly == pytest.approx(0.999)


def test_health_and_anomaly_evidence_reinforce_each_other(h: Any) -> None:
    w = h.window("api", h.stats("latency", "latency_p95_ms", mean=170, base=150, p95=180, base_p95=150), end=NOW)  # x1.2: a hint
    alone = decide_focus(Evidence(health=[w]))
    assert alone.focus_area == "routine_maintenance" and alone.scores["latency_drift"] < 0.7
    both = decide_focus(Evidence(health=[w], anomalies=[anomaly("api", "latency_p95_ms", "latency", 0.93, confidence=0.8)]))
    assert both.focus_area == "latency_drift" and both.confidence > 0.7


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
