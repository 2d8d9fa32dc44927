"""wait_for: a condition on the executor's live telemetry view (fed in-process here; see
tests/agents/executor for the same path fed from the real telemetry topic)."""

from __future__ import annotations

import asyncio
import time

import pytest

from metaheal.agents.executor.actuators import ActuatorError, StepContext, get_actuator
from metaheal.agents.executor.verification import LiveTelemetry
from metaheal.config import Settings
from metaheal.events import Metric

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_passes_once_a_fresh_sample_satisfies_the_condition():
    tel = LiveTelemetry(Settings())
    start = time.time()
    tel.add_metric(Metric(service="api", metric="instances", value=9, ts=start - 100))  # stale: ignored
    ctx = StepContext(service="api", telemetry=tel, started_at=start)

    async def scale_up():
        await asyncio.sleep(0.2)
        tel.add_metric(Metric(service="api", metric="instances", value=3, ts=time.time()))
        tel.add_metric(Metric(service="api", metric="instances", value=5, ts=time.time()))

    feeder = asyncio.create_task(scale_up())
    res = await get_actuator("wait_for").run({"metric": "instances", "op": ">=", "value": 5}, ctx, 3)
    await feeder
    assert res.ok and res.value == 5 and res.detail["observed"] == [3.0, 5.0]


async def test_times_out_as_failed_or_inconclusive():
    tel = LiveTelemetry(Settings())
    ctx = StepContext(service="api", telemetry=tel, started_at=time.time())
    res = await get_actuator("wait_for").run({"metric": "instances", "op": ">=", "value": 5}, ctx, 0.3)
    assert not res.ok and res.detail["status"] == "inconclusive"
    tel.add_metric(Metric(service="api", metric="instances", value=3, ts=time.time()))
    res = await get_actuator("wait_for").run({"metric": "instances", "op": ">=", "value": 5}, ctx, 0.3)
    assert not res.ok and res.detail["status"] == "fail" and res.detail["observed"] == [3.0]


async def test_params_are_checked():
    with pytest.raises(ActuatorError, match=r"params\.value"):
        get_actuator("wait_for").check({"metric": "instances", "op": ">=", "value": "{{ x }}"})
    res = await get_actuator("wait_for").run({"metric": "m", "op": ">", "value": 1}, StepContext(service="api"), 1)
    assert not res.ok and "no live telemetry" in res.error
