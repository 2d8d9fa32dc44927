"""The worker's table changelogs, written through one librdkafka producer instead of faust's.

faust writes a table change with ``send_changelog``: each message goes through its
``ProducerBuffer`` one at a time (a task awaits the send of one message, then sets an
event the flush waits on, at most 0.1 s per message), and the stream stops to wait
whenever more than 100 messages are pending ("producer buffer full"). With window state
and checkpoints of thousands of services that path, not the model, bounds the worker.
:class:`ChangelogWriter` hands the same records to librdkafka (``produce`` is non-blocking
and batches per partition); the producer is idempotent, so the records of one changelog
partition are written in the order they were produced, which the crash-safety argument
of the window state (:func:`~metaheal.streams.windows.state_writes`, the progress marker
after the states) relies on.

The state is not in faust tables: faust restored a table by handing every changelog record to
Python one at a time before the worker was ready (seconds per 10^4 records, and the windows
changelog of a large fleet holds 10^5 and more), and :class:`~metaheal.streams.app.PartitionSync`
read the same changelogs to partition EOF again anyway. Now that read is the only one
(:meth:`ChangelogStore.load`). :meth:`ChangelogWriter.flush` runs before every offset commit (see
``streams/app.py``), so a committed offset never overtakes the state it produced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from metaheal.config import KafkaSettings, Settings
from metaheal.kafka import Producer
from metaheal.kafka.admin import Admin, TopicSpec
from metaheal.kafka.producer import drain
from metaheal.topics import COMPACTED

logger = logging.getLogger(__name__)


def windows_changelog(app_id: str) -> str:
    """The window state's changelog topic (the name faust gave it when the state was a faust table)."""
    return f"{app_id}-windows-changelog"


def ensure_changelogs(settings: Settings, app_id: str) -> None:
    """Create the windows changelog (compacted, telemetry's partition count) if it does not exist;
    ``scorer-state`` is a declared topic (:mod:`metaheal.topics`)."""
    partitions = settings.topics.partitions.get("telemetry", 4)
    spec = TopicSpec(
        name=windows_changelog(app_id),
        partitions=partitions,
        replication_factor=settings.kafka.replication_factor,
        config=dict(COMPACTED),
    )
    Admin(settings.kafka).ensure([spec])


class ChangelogWriter:
    """One idempotent producer for every changelog record of the worker."""

    def __init__(self, kafka: KafkaSettings) -> None:
        overrides: dict[str, Any] = {
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
        }
        self._producer = Producer(kafka, idempotent=True, **overrides).raw
        self._errors: list[Any] = []
        self.records = 0
        self.bytes = 0

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(err)
            logger.error("changelog record not delivered topic=%s error=%s", msg.topic(), err)

    def send(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition)
                break
            except BufferError:  # the local queue is full: let librdkafka send some first
                self._producer.poll(0.05)
        self.records += 1
        self.bytes += len(key) + (len(value) if value is not None else 0)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every record is acknowledged; raises ``KafkaUnavailable`` if some were not."""
        drain(self._producer, self._errors, timeout, "changelog record(s)")


class ChangelogStore:
    """A :class:`~metaheal.streams.scoring.Store` over a compacted changelog topic: the values of the
    partitions this worker owns in memory, every change written through a :class:`ChangelogWriter`
    to the changelog partition given (co-partitioned with telemetry).

    What is in memory comes from :meth:`load` (``PartitionSync`` reads a partition's changelog to
    its end when the partition is assigned) and goes with :meth:`drop` when it is revoked.

    >>> store = ChangelogStore("t-changelog", writer=None)
    >>> store.load([(0, b"a", b"1"), (1, b"b", b"2"), (0, b"a", None)])  # a tombstone deletes "a"
    1
    >>> store.get(b"a"), store.get(b"b"), store.drop({1}), store.get(b"b")
    (None, b'2', 1, None)
    """

    def __init__(self, topic: str, writer: ChangelogWriter | None) -> None:
        self.topic = topic
        self.writer = writer  # None: in memory only (tests)
        self.data: dict[bytes, bytes] = {}
        self._partition: dict[bytes, int] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.data[key] = value
        self._partition[key] = partition
        if self.writer is not None:
            self.writer.send(self.topic, partition, key, value)

    def delete(self, key: bytes, partition: int) -> None:
        """A tombstone: compaction drops the key, :meth:`load` pops it."""
        self.data.pop(key, None)
        self._partition.pop(key, None)
        if self.writer is not None:
            self.writer.send(self.topic, partition, key, None)

    def values(self) -> Iterable[bytes]:
        return list(self.data.values())

    def load(self, entries: Iterable[tuple[int, bytes | None, bytes | None]]) -> int:
        """Apply changelog records ``(partition, key, value)`` in log order; returns the keys held after."""
        data, where = self.data, self._partition
        for partition, key, value in entries:
            if key is None:
                continue
            if value is None:
                data.pop(key, None)
                where.pop(key, None)
            else:
                data[key] = value
                where[key] = partition
        return len(data)

    def drop(self, partitions: set[int]) -> int:
        """Forget the keys of ``partitions`` (revoked: their new owner loads them); returns how many."""
        gone = [k for k, p in self._partition.items() if p in partitions]
        for k in gone:
            self.data.pop(k, None)
            del self._partition[k]
        return len(gone)
