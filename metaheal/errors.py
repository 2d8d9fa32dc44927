"""Every error metaheal raises on purpose, under one root: :class:`MetahealError`.

Modelled on httpx's ``_exceptions.py``: one module, one tree, so a caller can
``except MetahealError`` for "anything metaheal refused" and a narrower class for
one kind of refusal. Each class keeps the built-in base its callers already catch
(``ValueError`` for bad input, ``RuntimeError`` for an unavailable dependency,
``LookupError`` for something absent), so adding the root changes no behaviour.
Anything else that escapes metaheal is a bug.

The modules that raise these re-export them under their old names
(``metaheal.config.ConfigError``, ``metaheal.kafka.serializers.DecodeError``, ...).

    MetahealError
    ├── ConfigError                (ValueError)  settings or a config file
    │   └── NotConfigured                            a setting a default handle needs is missing
    ├── DecodeError                (ValueError)  a record that cannot become an event
    │   ├── LimitExceeded                            a record over a size or nesting bound
    │   └── RecordRefused                            a record whose signature or writer does not check out
    ├── KafkaUnavailable           (RuntimeError) the broker did not answer in time
    │   ├── LedgerUnavailable                    an entry was not durably appended
    │   └── ReaderFailed                         a background topic reader stopped
    ├── LedgerFailed               (RuntimeError) the meta loop's write-ahead append failed
    ├── LedgerKeyError             (LookupError) a ledger key absent or not usable
    ├── ProofError                 (LookupError) no inclusion/consistency proof can be made
    ├── NoteError                  (ValueError)  a malformed checkpoint note
    ├── PlaybookError              (ValueError)  a playbook that cannot be loaded
    ├── NoApplicablePlaybook       (ValueError)  nothing can be planned for a directive
    ├── TemplateError              (ValueError)  a playbook template that cannot be rendered
    ├── ActuatorError              (ValueError)  parameters an actuator cannot accept
    ├── AdvisorActionForbidden     (PermissionError) an advisor writing outside its topic
    ├── BacktestError              (ValueError)  an unusable backtest input row
    ├── StateError                 (ValueError)  a scorer checkpoint that is not a state of this model
    ├── BadRequest                 (ValueError)  a simulator admin API request body
    ├── BrokerError                (RuntimeError) the embedded broker cannot start
    ├── KcatUnavailable            (RuntimeError) kcat or its librdkafka is missing
    ├── RoleUnavailable            (RuntimeError) a runtime role that cannot start
    └── ComponentFailed            (RuntimeError) a runtime component stopped by itself

>>> issubclass(LedgerUnavailable, KafkaUnavailable) and issubclass(LedgerUnavailable, MetahealError)
True
>>> isinstance(ConfigError("x"), ValueError)
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: errors import nothing from the project at run time
    from metaheal.events import Directive

__all__ = [
    "ActuatorError",
    "AdvisorActionForbidden",
    "BacktestError",
    "BadRequest",
    "BrokerError",
    "ComponentFailed",
    "ConfigError",
    "DecodeError",
    "KafkaUnavailable",
    "KcatUnavailable",
    "LedgerFailed",
    "LedgerKeyError",
    "LedgerUnavailable",
    "LimitExceeded",
    "MetahealError",
    "NoApplicablePlaybook",
    "NotConfigured",
    "NoteError",
    "PlaybookError",
    "ProofError",
    "ReaderFailed",
    "RecordRefused",
    "RoleUnavailable",
    "StateError",
    "TemplateError",
]


class MetahealError(Exception):
    """Base of every error metaheal raises on purpose."""


# --- configuration and input ---------------------------------------------------------------------


class ConfigError(MetahealError, ValueError):
    """A config file that is not valid YAML or not a mapping; names file, line and problem."""


class NotConfigured(ConfigError):
    """A setting a default handle (``metaheal.ledger.immutable_log``, ...) needs is missing; names it."""


class DecodeError(MetahealError, ValueError):
    """Input that cannot become an event; the message names the problem and field."""


class LimitExceeded(DecodeError):
    """A record larger than ``max_record_bytes`` or JSON nested deeper than ``max_json_depth``; names the bound."""


class RecordRefused(DecodeError):
    """A record that cannot be trusted: unsigned, mis-signed, stale, replayed or by a writer not allowed.

    ``reason`` is one word (``unsigned``, ``bad_signature``, ``not_allowed``, ...) for dead letters and
    ``trust_violation`` entries; the message says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- Kafka and the ledger ------------------------------------------------------------------------


class KafkaUnavailable(MetahealError, RuntimeError):
    """The broker did not answer or refused the request in time.

    Agents treat this as "do not act": nothing that must be recorded first may
    proceed when the record could not be written.
    """


class LedgerUnavailable(KafkaUnavailable):
    """The entry was not durably appended; the caller must not act on it."""


class ReaderFailed(KafkaUnavailable):
    """A background reader (:class:`~metaheal.kafka.tail.TopicTail`) stopped; what it serves is stale."""


class LedgerFailed(MetahealError, RuntimeError):
    """The write-ahead ledger append failed: the decision must not be published."""


class LedgerKeyError(MetahealError, LookupError):
    """A key that should exist does not (or may not be used); the message names the actor."""


class ProofError(MetahealError, LookupError):
    """No proof can be made (sequence unknown, no checkpoint covers it yet)."""


class NoteError(MetahealError, ValueError):
    """A checkpoint text that does not follow the format (the message says where)."""


# --- playbooks, planning and acting --------------------------------------------------------------


class PlaybookError(MetahealError, ValueError):
    """A playbook that cannot be loaded; one line per problem, ``file:line: field: message``."""


class NoApplicablePlaybook(MetahealError, ValueError):
    """No playbook can be planned; ``reasons`` says why each candidate was skipped."""

    def __init__(self, directive: Directive, reasons: list[str]):
        self.reasons = reasons
        super().__init__(
            f"no applicable playbook for directive {directive.directive_id} "
            f"({directive.service}, {directive.focus_area}): " + "; ".join(reasons)
        )


class TemplateError(MetahealError, ValueError):
    """A template that cannot be rendered; the message quotes the template."""


class ActuatorError(MetahealError, ValueError):
    """Parameters an actuator cannot accept; raised by ``check`` with the field named."""


class AdvisorActionForbidden(MetahealError, PermissionError):
    """An advisor tried to write somewhere other than the advice topic."""


# --- tools around the control plane --------------------------------------------------------------


class BacktestError(MetahealError, ValueError):
    """A row of the input could not be used; the message names the line and the field."""


class StateError(MetahealError, ValueError):
    """A detector or scorer checkpoint that is not a state of this model (other class, version or shape)."""


class BadRequest(MetahealError, ValueError):
    """A request body that does not fit the endpoint; the message names the field."""


class BrokerError(MetahealError, RuntimeError):
    """The embedded broker cannot be found, verified or started; the message says why."""


class KcatUnavailable(MetahealError, RuntimeError):
    """kcat or the bundled librdkafka is missing; the message says how to get it."""


class RoleUnavailable(MetahealError, RuntimeError):
    """A role whose component is not installed or cannot start; the message says why."""


class ComponentFailed(MetahealError, RuntimeError):
    """A component stopped by itself (crash or exit) while the others were meant to run."""
