"""Actuators by action name: the only code that changes the systems under control.

>>> sorted(ACTUATORS)
['command', 'http.get', 'http.post', 'wait_for']
>>> get_actuator("ssh")
Traceback (most recent call last):
...
metaheal.errors.ActuatorError: action: unknown action 'ssh';
    expected one of ['command', 'http.get', 'http.post', 'wait_for']
"""

from __future__ import annotations

from metaheal.agents.executor.actuators.base import (
    IDEMPOTENCY_ENV,
    IDEMPOTENCY_HEADER,
    Actuator,
    ActuatorError,
    StepContext,
    StepResult,
    compare,
)
from metaheal.agents.executor.actuators.command import Command
from metaheal.agents.executor.actuators.http import HttpGet, HttpPost
from metaheal.agents.executor.actuators.wait_for import WaitFor

ACTUATORS: dict[str, Actuator] = {a.name: a for a in (HttpGet(), HttpPost(), Command(), WaitFor())}


def get_actuator(action: str) -> Actuator:
    try:
        return ACTUATORS[action]
    except KeyError:
        raise ActuatorError(f"action: unknown action {action!r}; expected one of {sorted(ACTUATORS)}") from None


__all__ = [
    "ACTUATORS",
    "IDEMPOTENCY_ENV",
    "IDEMPOTENCY_HEADER",
    "Actuator",
    "ActuatorError",
    "StepContext",
    "StepResult",
    "compare",
    "get_actuator",
]
