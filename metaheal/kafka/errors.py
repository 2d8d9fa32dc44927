"""Errors callers are expected to handle (everything else is a bug)."""


class KafkaUnavailable(RuntimeError):
    """The broker did not answer or refused the request in time.

    Agents treat this as "do not act": nothing that must be recorded first may
    proceed when the record could not be written.
    """
