"""``command``: run a program from an argv list — never through a shell.

A list cannot be re-split or glob-expanded, so a templated argument stays one
argument. The process is killed at the timeout; stdout/stderr are captured
(truncated) for the ledger.

>>> Command().check({"argv": ["kubectl", "rollout", "restart", "deploy/api"]})
>>> Command().check({"argv": "rm -rf /"})
Traceback (most recent call last):
...
metaheal.errors.ActuatorError: params.argv: must be a non-empty list of strings (no shell), got 'rm -rf /'
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from metaheal.agents.executor.actuators.base import (
    IDEMPOTENCY_ENV,
    Actuator,
    ActuatorError,
    StepContext,
    StepResult,
)
from metaheal.procs import preexec_for_child

MAX_CAPTURE = 4096


class Command(Actuator):
    name = "command"

    def check(self, params: dict[str, Any]) -> None:
        unknown = set(params) - {"argv", "expect_exit", "cwd"}
        if unknown:
            raise ActuatorError(f"params: unknown field(s) {sorted(unknown)} for command")
        argv = params.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ActuatorError(f"params.argv: must be a non-empty list of strings (no shell), got {argv!r}")

    async def run(self, params: dict[str, Any], ctx: StepContext, timeout: float) -> StepResult:
        self.check(params)
        argv: list[str] = params["argv"]
        expect = int(params.get("expect_exit", 0))
        t0 = time.monotonic()
        detail: dict[str, Any] = {"argv": argv}
        env = None
        if ctx.idempotency_key is not None:
            env = {**os.environ, IDEMPOTENCY_ENV: ctx.idempotency_key}
            detail["idempotency_key"] = ctx.idempotency_key
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=params.get("cwd"),
                env=env,
                preexec_fn=preexec_for_child(),  # dies with the executor
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return StepResult(ok=False, detail=detail, error=f"cannot start {argv[0]}: {exc}")
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            await _kill(proc)
            return StepResult(
                ok=False,
                detail=detail,
                error=f"timeout after {timeout}s (killed)",
                duration_seconds=time.monotonic() - t0,
            )
        except asyncio.CancelledError:
            await _kill(proc)
            raise
        stdout = out.decode(errors="replace")[:MAX_CAPTURE]
        detail.update(exit_code=proc.returncode, stdout=stdout, stderr=err.decode(errors="replace")[:MAX_CAPTURE])
        ok = proc.returncode == expect
        return StepResult(
            ok=ok,
            value=stdout.strip(),
            detail=detail,
            duration_seconds=time.monotonic() - t0,
            error=None if ok else f"exit code {proc.returncode} (expected {expect})",
        )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
