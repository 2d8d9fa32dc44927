"""Consumers: group members for workers, group-less readers for replay."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import Consumer as _Consumer

from metaheal.config import KafkaSettings
from metaheal.kafka.config import consumer_config
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.kafka.message import ConsumedMessage


def partitions_of(client: _Consumer, topic: str, timeout: float) -> list[int]:
    """The partition ids of ``topic`` from a metadata request; ``KafkaUnavailable`` if it does not exist."""
    try:
        md = client.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read metadata for {topic}: {exc}") from exc
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise KafkaUnavailable(f"topic {topic} does not exist")
    return sorted(t.partitions)


class Consumer:
    """Wraps ``confluent_kafka.Consumer``; partition-EOF events are always enabled."""

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str | None = None,
        *,
        auto_offset_reset: str = "earliest",
        enable_auto_commit: bool = False,
        **overrides: Any,
    ) -> None:
        cfg = consumer_config(
            settings, group_id, auto_offset_reset=auto_offset_reset, enable_auto_commit=enable_auto_commit
        )
        cfg.update(overrides)
        self._consumer = _Consumer(cfg)

    @property
    def raw(self) -> _Consumer:
        return self._consumer

    def subscribe(self, topics: list[str], **kwargs: Any) -> None:
        self._consumer.subscribe(topics, **kwargs)

    def partitions(self, topic: str, timeout: float = 10.0) -> list[int]:
        return partitions_of(self._consumer, topic, timeout)

    def topic_partitions(self, topics: Iterable[str], offset: int = OFFSET_BEGINNING) -> list[TopicPartition]:
        """Every partition of ``topics``, each at ``offset`` (default: the beginning), ready to assign."""
        return [TopicPartition(t, p, offset) for t in topics for p in self.partitions(t)]

    def assign(self, parts: list[TopicPartition]) -> None:
        self._consumer.assign(parts)

    def assign_topics(self, topics: Iterable[str], offset: int = OFFSET_BEGINNING) -> list[TopicPartition]:
        """Read every partition of ``topics`` from ``offset`` (replay from the start by default); the assignment."""
        parts = self.topic_partitions(topics, offset)
        self._consumer.assign(parts)
        return parts

    def poll_batch(self, max_messages: int = 500, timeout: float = 1.0) -> list[ConsumedMessage]:
        """Data messages only; EOF events are dropped, real errors raised."""
        msgs = self._consumer.consume(max_messages, timeout)
        out: list[ConsumedMessage] = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(cast(ConsumedMessage, m))
            elif err.code() != KafkaError._PARTITION_EOF:
                raise KafkaUnavailable(f"consume error: {err}")
        return out

    def read_to_end(
        self,
        topic: str,
        *,
        partitions: list[int] | None = None,
        start_offsets: dict[int, int] | None = None,
        timeout: float = 30.0,
        batch: int = 1000,
        wait: float = 0.5,
    ) -> Iterator[ConsumedMessage]:
        """Yield every record from the start offsets to the current end of each partition.

        ``wait`` is how long one ``consume`` call may wait for a full batch: short waits
        make a read that finds little data (or only EOF) return fast; ``batch=1`` returns
        as soon as the last EOF arrives (milliseconds), for readers that must see the end often.

        The end is found by partition EOF (not watermarks, which tansu gets wrong).
        Metadata is read before ``assign`` even when ``partitions`` are given: assigned
        before the leader is known, librdkafka retries its start-offset query only after
        500 ms, which was most of every short read here (0.55 s against 0.05 s).
        """
        known = self.partitions(topic)
        parts = partitions if partitions is not None else known
        start_offsets = start_offsets or {}
        self._consumer.assign([TopicPartition(topic, p, start_offsets.get(p, OFFSET_BEGINNING)) for p in parts])
        pending = set(parts)
        deadline = time.monotonic() + timeout
        try:
            while pending:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"timed out reading {topic} to its end (partitions {sorted(pending)})")
                for m in self._consumer.consume(batch, wait):
                    err = m.error()
                    if err is None:
                        yield cast(ConsumedMessage, m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(cast(ConsumedMessage, m).partition())
                    else:
                        raise KafkaUnavailable(f"consume error on {topic}: {err}")
        finally:
            self._consumer.unassign()

    def commit(self, message: ConsumedMessage | None = None, asynchronous: bool = False) -> None:
        """Commit the group's offsets: past ``message``, or of everything consumed when omitted."""
        if message is None:
            if asynchronous:
                self._consumer.commit(asynchronous=True)
            else:
                self._consumer.commit(asynchronous=False)
        elif asynchronous:
            self._consumer.commit(message=cast(Message, message), asynchronous=True)
        else:
            self._consumer.commit(message=cast(Message, message), asynchronous=False)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
