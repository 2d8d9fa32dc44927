"""The contract every actuator keeps: validate params up front, run with a timeout, report.

An actuator is the only code that changes the world, so it is small and uniform:
``check`` rejects bad parameters at plan time (and is all that ``--dry-run``
does), ``run`` performs the action and returns a :class:`StepResult` that records
what happened (status, captured output) for the ledger. Failures are results,
not exceptions, so the executor can always decide to roll back.

>>> StepResult(ok=True, value={"instances": 3}).value["instances"]
3
>>> compare(">=", 5, 4), compare("<=", 250.0, 200)
(True, False)
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from metaheal.errors import ActuatorError as ActuatorError  # re-exported: actuators import it from here

if TYPE_CHECKING:
    from metaheal.agents.executor.verification import LiveTelemetry

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
OPS: tuple[str, ...] = tuple(_OPS)


def compare(op: str, observed: float, threshold: float) -> bool:
    """``observed op threshold``; an unknown operator is a ``ValueError`` naming it."""
    try:
        return bool(_OPS[op](observed, threshold))
    except KeyError:
        raise ValueError(f"unknown comparison operator {op!r}; expected one of {list(OPS)}") from None


class StepResult(BaseModel):
    ok: bool
    #: What ``save_as`` stores for later templates (an HTTP JSON body, a command's stdout).
    value: Any = None
    #: What the ledger records about the call (status, captured output, timings).
    detail: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    duration_seconds: float = 0.0


@dataclass
class StepContext:
    """What an actuator may know about the run it is part of."""

    service: str
    telemetry: LiveTelemetry | None = None
    #: Hosts HTTP actuators may reach (the service's admin host); empty = any.
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    started_at: float = 0.0
    #: ``plan_id/step`` for a mutating step: sent as the ``Idempotency-Key`` header (HTTP) or the
    #: :data:`IDEMPOTENCY_ENV` variable (commands), so a re-send after a crash is applied once
    idempotency_key: str | None = None
    #: the service's admin URL; with ``admin_hosts`` set, every URL must stay under it
    admin_url: str | None = None
    #: ``executor.admin_hosts`` (see :mod:`~metaheal.agents.executor.actuators.urls`); None = no allow-list
    admin_hosts: tuple[str, ...] | None = None


#: environment variable carrying the idempotency key to a ``command`` step
IDEMPOTENCY_ENV = "METAHEAL_IDEMPOTENCY_KEY"
#: HTTP header carrying the idempotency key
IDEMPOTENCY_HEADER = "Idempotency-Key"


class Actuator(ABC):
    name: ClassVar[str]

    @abstractmethod
    def check(self, params: dict[str, Any]) -> None:
        """Raise :class:`ActuatorError` for parameters that cannot work."""

    @abstractmethod
    async def run(self, params: dict[str, Any], ctx: StepContext, timeout: float) -> StepResult:
        """Perform the action within ``timeout`` seconds; never raise for an action failure."""
