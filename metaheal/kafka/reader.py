"""Group-less reads of one partition up to its end (found by partition EOF).

Two librdkafka timers make naive reads slow on a fresh topic, so this reader
avoids both: ``consume(n, timeout)`` waits for the whole timeout unless ``n``
records arrive (poll with a very short timeout instead), and assigning a topic the
client has no metadata for waits for the next 1 s "unavailable topics" refresh
(ask for its metadata first, once per topic), as does a logical start offset
(``OFFSET_BEGINNING`` needs a ListOffsets query; start at absolute offset 0).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from metaheal.config import KafkaSettings
from metaheal.kafka.config import consumer_config
from metaheal.kafka.consumer import partitions_of
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.kafka.message import ConsumedMessage


class PartitionReader:
    """One group-less consumer; not thread-safe (callers serialise)."""

    def __init__(self, settings: KafkaSettings) -> None:
        cfg = consumer_config(settings, None)
        # An empty fetch at the end of a partition waits fetch.wait.max.ms on the broker, and
        # librdkafka backs off between fetches once its queue holds data: both add up to tens
        # of ms per round trip of a replay, and the reader is assigned only while reading.
        cfg.update({"fetch.wait.max.ms": 1, "fetch.error.backoff.ms": 10, "fetch.queue.backoff.ms": 0})
        self.consumer = _Consumer(cfg)
        self._known: dict[str, int] = {}  # topic -> partition count

    def partitions(self, topic: str, timeout: float = 10.0) -> int:
        """The topic's partition count (from the metadata fetched once per topic)."""
        self._prime(topic, timeout)
        return self._known[topic]

    def _prime(self, topic: str, timeout: float) -> None:
        if topic in self._known:
            return
        self._known[topic] = len(partitions_of(self.consumer, topic, timeout))

    def assign(self, topic: str, offset: int, *, partition: int = 0, timeout: float = 10.0) -> None:
        self._prime(topic, timeout)
        self.consumer.assign([TopicPartition(topic, partition, max(offset, 0))])

    def read(
        self, topic: str, start: int = 0, *, partition: int = 0, timeout: float = 60.0
    ) -> Iterator[ConsumedMessage]:
        """Records from ``start`` to the current end; raises ``KafkaUnavailable`` on errors or timeout."""
        return self.read_many({topic: start}, partition=partition, timeout=timeout)

    def read_many(
        self, starts: dict[str, int], *, partition: int = 0, timeout: float = 60.0
    ) -> Iterator[ConsumedMessage]:
        """Several topics at once (one fetch round trip for all), each from its start to its end.

        ``timeout`` bounds the time without progress, so a slow consumer of the
        iterator (the verifier) can take as long as it needs.
        """
        return self.read_parts({(t, partition): o for t, o in starts.items()}, timeout=timeout)

    def read_parts(self, starts: dict[tuple[str, int], int], *, timeout: float = 60.0) -> Iterator[ConsumedMessage]:
        """Like :meth:`read_many`, for any ``(topic, partition)`` pairs: one fetch round trip for all."""
        for topic, _ in starts:
            self._prime(topic, timeout)
        self.consumer.assign([TopicPartition(t, p, max(o, 0)) for (t, p), o in starts.items()])
        pending = set(starts)
        names = ", ".join(sorted({t for t, _ in starts}))
        deadline = time.monotonic() + timeout
        try:
            while pending:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"timed out reading {names} to the end")
                try:
                    msgs = self.consumer.consume(1000, 0.005)
                except KafkaException as exc:
                    raise KafkaUnavailable(f"cannot read {names}: {exc}") from exc
                if msgs:
                    deadline = time.monotonic() + timeout  # a timeout without progress, not in total
                for m in msgs:
                    err = m.error()
                    if err is None:
                        yield cast(ConsumedMessage, m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        at = cast(ConsumedMessage, m)  # an EOF event names its partition too
                        pending.discard((at.topic(), at.partition()))
                    else:
                        raise KafkaUnavailable(f"cannot read {m.topic()}: {err}")
        finally:
            self.consumer.unassign()

    def close(self) -> None:
        self.consumer.close()
