"""Verification counts a sample as taken after a fix only by a time the executor can trust.

Before, the live-telemetry view kept samples by their own ``ts`` (the producer's word): a "healthy"
sample written before a fix but stamped after it (seconds or hours ahead) was "fresh" and passed the
fix's check. Here the attacker writes such samples with a plain producer before the fix; the real
reader (``LiveTelemetry`` on the broker) must not pass the check on them, and does pass it on a
healthy sample that really arrives after the fix.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from metaheal.agents.executor.verification import LiveTelemetry, run_verification
from metaheal.config import Settings

from .conftest import attack, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

SPEC = {"type": "metric_threshold", "metric": "error_rate", "op": "<=", "value": 0.05, "within": 1.5, "min_samples": 1}


def sample(value: float, ts: float) -> bytes:
    return json.dumps({"service": "api", "metric": "error_rate", "value": value, "ts": ts}).encode()


def test_a_healthy_sample_stamped_in_the_future_before_the_fix_does_not_pass(topics: Settings) -> None:
    s = topics
    tel = LiveTelemetry(s).start()
    try:
        now = time.time()
        skew = s.signing.max_clock_skew_seconds
        # written before the fix, stamped after it: inside the skew, and far ahead of it
        forged = [(b"api", sample(0.0, now + 5)), (b"api", sample(0.0, now + 3600))]
        attack(s, s.topics.name("telemetry"), [(b"api", sample(0.9, now)), *forged])
        wait_for(lambda: tel.records >= 3, 20, "the three samples read")
        assert tel.future_samples == 1  # the one an hour ahead is dropped outright (more than the skew)
        assert tel.samples("api", "error_rate", since=0.0) == [(now, 0.9), (now + 5, 0.0)]
        assert now + 5 < now + skew

        since = time.time()  # the fix
        verdict = asyncio.run(run_verification(SPEC, service="api", since=since, telemetry=tel))
        assert verdict.status == "inconclusive", verdict  # before: "pass", on the forged 0.0 stamped now + 5
        assert verdict.observed == [] and "fewer than 1 sample" in verdict.reason

        # the legitimate path: a healthy sample that arrives after the fix passes
        after = time.time()
        attack(s, s.topics.name("telemetry"), [(b"api", sample(0.01, after))])
        verdict = asyncio.run(run_verification({**SPEC, "within": 10}, service="api", since=since, telemetry=tel))
        assert verdict.status == "pass" and verdict.observed == [0.01], verdict
    finally:
        tel.stop()
