"""metaheal: a Kafka-native, meta-coordinated self-healing control plane.

The public surface is small: settings, the metrics producer, the ledger, the event
models and the errors. Everything else is reached through its module
(``metaheal.kafka``, ``metaheal.agents.meta``, ``metaheal.streams``, ...).

>>> import metaheal
>>> issubclass(metaheal.DecodeError, metaheal.MetahealError)
True
>>> metaheal.Metric(service="api", metric="latency_ms", value=245.0, ts=0.0).service
'api'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metaheal.errors import (
    ActuatorError,
    AdvisorActionForbidden,
    BacktestError,
    BadRequest,
    BrokerError,
    ComponentFailed,
    ConfigError,
    DecodeError,
    KafkaUnavailable,
    KcatUnavailable,
    LedgerFailed,
    LedgerKeyError,
    LedgerUnavailable,
    LimitExceeded,
    MetahealError,
    NoApplicablePlaybook,
    NotConfigured,
    NoteError,
    PlaybookError,
    ProofError,
    ReaderFailed,
    RecordRefused,
    RoleUnavailable,
    StateError,
    TemplateError,
)

if TYPE_CHECKING:
    from metaheal.config import Settings, load_settings
    from metaheal.events import (
        AgenticPlan,
        AnomalyScore,
        ApprovalDecision,
        ApprovalRequest,
        CycleFocus,
        DeadLetter,
        Directive,
        Event,
        HealthWindow,
        LedgerEntry,
        Metric,
        MetricBatch,
        MetricSeries,
        MLAdvice,
        ProbeCommand,
        ServiceRegistration,
        SignedOutcome,
    )
    from metaheal.ledger import ImmutableLog
    from metaheal.producer import MetricsProducer

# Everything but the errors is imported on first use (PEP 562). Every ``import metaheal.<x>``
# runs this file first, and importing settings, the producer and the ledger here costs about
# 0.5 s (pydantic models, confluent-kafka, fastavro, pynacl) for each CLI call and subprocess;
# ``metaheal.ledger`` also imports this package's modules back, which would make the package
# import a cycle. The errors module imports nothing from the project, so it is loaded eagerly.
_LAZY = {
    "Settings": "metaheal.config",
    "load_settings": "metaheal.config",
    "MetricsProducer": "metaheal.producer",
    "ImmutableLog": "metaheal.ledger",
    **dict.fromkeys(
        [
            "Event",
            "Metric",
            "MetricBatch",
            "MetricSeries",
            "HealthWindow",
            "AnomalyScore",
            "CycleFocus",
            "MLAdvice",
            "Directive",
            "AgenticPlan",
            "ApprovalRequest",
            "ApprovalDecision",
            "SignedOutcome",
            "ProbeCommand",
            "LedgerEntry",
            "DeadLetter",
            "ServiceRegistration",
        ],
        "metaheal.events",
    ),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # only when asked: ~35 ms to import

    try:
        return version("metaheal")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'metaheal' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ActuatorError",
    "AdvisorActionForbidden",
    "AgenticPlan",
    "AnomalyScore",
    "ApprovalDecision",
    "ApprovalRequest",
    "BacktestError",
    "BadRequest",
    "BrokerError",
    "ComponentFailed",
    "ConfigError",
    "CycleFocus",
    "DeadLetter",
    "DecodeError",
    "Directive",
    "Event",
    "HealthWindow",
    "ImmutableLog",
    "KafkaUnavailable",
    "KcatUnavailable",
    "LedgerEntry",
    "LedgerFailed",
    "LedgerKeyError",
    "LedgerUnavailable",
    "LimitExceeded",
    "MLAdvice",
    "MetahealError",
    "Metric",
    "MetricBatch",
    "MetricSeries",
    "MetricsProducer",
    "NoApplicablePlaybook",
    "NotConfigured",
    "NoteError",
    "PlaybookError",
    "ProbeCommand",
    "ProofError",
    "ReaderFailed",
    "RecordRefused",
    "RoleUnavailable",
    "ServiceRegistration",
    "Settings",
    "SignedOutcome",
    "StateError",
    "TemplateError",
    "__version__",
    "load_settings",
]
