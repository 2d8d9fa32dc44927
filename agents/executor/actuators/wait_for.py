"""``wait_for``: block until a condition holds on live telemetry, or time out.

The condition is read from ``<prefix>telemetry`` (raw samples) or
``<prefix>health`` (a statistic of the streams' windows) through the executor's
:class:`~metaheal.agents.executor.verification.LiveTelemetry`; only samples stamped
after the step started count, so a stale "good" value cannot satisfy it.

>>> WaitFor().check({"metric": "instances", "op": ">=", "value": 5})
>>> WaitFor().check({"metric": "instances", "op": "=>", "value": 5})
Traceback (most recent call last):
...
metaheal.errors.ActuatorError: params.op: unknown operator '=>'; expected one of ['<', '<=', '>', '>=', '==', '!=']
"""

from __future__ import annotations

import time
from typing import Any

from metaheal.agents.executor.actuators.base import (
    OPS,
    Actuator,
    ActuatorError,
    StepContext,
    StepResult,
)


class WaitFor(Actuator):
    name = "wait_for"

    def check(self, params: dict[str, Any]) -> None:
        unknown = set(params) - {"metric", "op", "value", "source", "stat", "service"}
        if unknown:
            raise ActuatorError(f"params: unknown field(s) {sorted(unknown)} for wait_for")
        if not isinstance(params.get("metric"), str) or not params["metric"]:
            raise ActuatorError(f"params.metric: must be a metric name, got {params.get('metric')!r}")
        if params.get("op") not in OPS:
            raise ActuatorError(f"params.op: unknown operator {params.get('op')!r}; expected one of {list(OPS)}")
        value = params.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ActuatorError(f"params.value: must be a number, got {value!r}")
        if params.get("source", "telemetry") not in ("telemetry", "health"):
            raise ActuatorError(f"params.source: must be telemetry or health, got {params.get('source')!r}")

    async def run(self, params: dict[str, Any], ctx: StepContext, timeout: float) -> StepResult:
        self.check(params)
        if ctx.telemetry is None:
            return StepResult(ok=False, error="no live telemetry available to wait on")
        t0 = time.monotonic()
        verdict = await ctx.telemetry.wait_for(
            service=params.get("service", ctx.service),
            metric=params["metric"],
            op=params["op"],
            threshold=float(params["value"]),
            within=timeout,
            since=ctx.started_at or time.time(),
            source=params.get("source", "telemetry"),
            stat=params.get("stat", "p95"),
        )
        ok = verdict.status == "pass"
        return StepResult(
            ok=ok,
            value=verdict.observed[-1] if verdict.observed else None,
            detail=verdict.model_dump(),
            duration_seconds=time.monotonic() - t0,
            error=None if ok else f"condition {params['metric']} {params['op']} {params['value']} {verdict.status}",
        )
