"""command: argv only, no shell, timeout kills, output captured."""

from __future__ import annotations

import sys
import time

import pytest

from metaheal.agents.executor.actuators import ActuatorError, StepContext, get_actuator

pytestmark = pytest.mark.asyncio(loop_scope="session")
CTX = StepContext(service="api")


async def test_output_and_exit_code_are_captured():
    res = await get_actuator("command").run(
        {"argv": [sys.executable, "-c", "print('hi'); import sys; sys.exit(0)"]}, CTX, 10
    )
    assert res.ok and res.value == "hi" and res.detail["exit_code"] == 0
    res = await get_actuator("command").run({"argv": [sys.executable, "-c", "import sys; sys.exit(3)"]}, CTX, 10)
    assert not res.ok and res.detail["exit_code"] == 3 and "exit code 3" in res.error


async def test_arguments_are_never_shell_interpreted(tmp_path):
    marker = tmp_path / "pwned"
    res = await get_actuator("command").run({"argv": ["echo", f"x; touch {marker}", "$(id)"]}, CTX, 10)
    assert res.ok and res.value == f"x; touch {marker} $(id)" and not marker.exists()


async def test_timeout_kills_the_process():
    t0 = time.monotonic()
    res = await get_actuator("command").run({"argv": [sys.executable, "-c", "import time; time.sleep(30)"]}, CTX, 0.5)
    assert not res.ok and "timeout" in res.error and time.monotonic() - t0 < 5


async def test_bad_params_and_missing_program():
    with pytest.raises(ActuatorError, match=r"params\.argv"):
        get_actuator("command").check({"argv": "ls -l"})
    with pytest.raises(ActuatorError, match="unknown field"):
        get_actuator("command").check({"argv": ["ls"], "shell": True})
    res = await get_actuator("command").run({"argv": ["/nonexistent/prog"]}, CTX, 1)
    assert not res.ok and "cannot start" in res.error


async def test_the_idempotency_key_reaches_the_command_in_its_environment():
    argv = [sys.executable, "-c", "import os; print(os.environ.get('METAHEAL_IDEMPOTENCY_KEY', '-'))"]
    keyed = await get_actuator("command").run({"argv": argv}, StepContext(service="api", idempotency_key="p-1/2"), 10)
    assert keyed.ok and keyed.value == "p-1/2" and keyed.detail["idempotency_key"] == "p-1/2"
    plain = await get_actuator("command").run({"argv": argv}, CTX, 10)
    assert plain.ok and plain.value == "-"
