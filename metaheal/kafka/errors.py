"""Errors callers are expected to handle (everything else is a bug); defined in :mod:`metaheal.errors`."""

from metaheal.errors import KafkaUnavailable

__all__ = ["KafkaUnavailable"]
