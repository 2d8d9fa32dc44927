"""Verdicts: evidence recorded, missing data inconclusive, health-window statistics."""

from __future__ import annotations

import time

import pytest

from metaheal.agents.verification import LiveTelemetry, Verdict, evaluate_samples, overall, run_verification
from metaheal.config import Settings
from metaheal.events import HealthWindow, SignalStats

def test_evaluate_and_overall():
    assert evaluate_samples([(1, 300.0), (2, 150.0)], op="<=", threshold=200, min_samples=2) == "fail"
    assert evaluate_samples([(1, 150.0), (2, 150.0)], op="<=", threshold=200, min_samples=2) == "pass"
    assert evaluate_samples([(1, 150.0)], op="<=", threshold=200, min_samples=2) == "inconclusive"
    v = lambda s: Verdict(check="x", status=s)  # noqa: E731
    assert overall([v("pass"), v("pass")]) is True
    assert overall([v("pass"), v("fail")]) is False
    assert overall([v("inconclusive"), v("pass")]) is None


@pytest.mark.asyncio(loop_scope="session")
async def test_health_window_statistic_is_checked_and_evidence_recorded():
    tel = LiveTelemetry(Settings())
    now = time.time()
    stats = SignalStats(signal="latency", metric="latency_p95_ms", count=10, mean=120, p50=110, p95=180, max=250)
    tel.add_health(HealthWindow(service="api", window_start=now - 10, window_end=now + 1, sample_count=10,
                                signals=[stats]))
    spec = {"type": "metric_threshold", "metric": "latency_p95_ms", "op": "<=", "value": 200, "within": 0.3,
            "source": "health", "stat": "p95"}
    v = await run_verification(spec, service="api", since=now, telemetry=tel)
    assert v.status == "pass" and v.observed == [180.0] and v.threshold == 200 and v.query["stat"] == "p95"
    v = await run_verification({**spec, "stat": "max"}, service="api", since=now, telemetry=tel)
    assert v.status == "fail" and v.observed == [250.0] and "not met" in v.reason


@pytest.mark.asyncio(loop_scope="session")
async def test_no_telemetry_reader_or_unknown_check_is_inconclusive():
    spec = {"type": "metric_threshold", "metric": "m", "op": "<", "value": 1}
    assert (await run_verification(spec, service="api", since=0, telemetry=None)).status == "inconclusive"
    assert (await run_verification({"type": "vibes"}, service="api", since=0, telemetry=None)).status == "inconclusive"
