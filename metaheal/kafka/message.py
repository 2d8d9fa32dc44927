"""The consumed message, as every reader in this package hands it out."""

from __future__ import annotations

from typing import Protocol


class ConsumedMessage(Protocol):
    """A consumed data message: a confluent-kafka ``Message`` that carries no error.

    librdkafka sets the topic, partition and offset of every consumed message; its type stubs
    leave them optional because the same ``Message`` class also carries error events and
    produced messages. The readers here (:class:`~metaheal.kafka.Consumer`,
    :class:`~metaheal.kafka.PartitionReader`, :class:`~metaheal.kafka.tail.TopicTail`) drop
    partition-EOF events and raise on errors, so what they yield is typed as this.
    """

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...
