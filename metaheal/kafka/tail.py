"""A background thread that tails assigned partitions: for readers that must not block the event loop.

The approval inbox, the live-telemetry view used by verification and the demo's
timeline all follow topics group-less (no join delay on tansu) from a chosen offset
and keep what they read in memory; this is the one loop they share.

A record the subclass cannot handle (whatever it raises) is counted, logged and
skipped: one bad record on a topic anyone can write to must not make the reader deaf.
A failure of the reader itself (consumer creation, assignment, a fatal consume error)
ends the thread and is visible: :attr:`TopicTail.healthy` turns false, :attr:`failed`
true, and :meth:`TopicTail.check` raises :class:`~metaheal.errors.ReaderFailed`, so its
component can stop (fail closed) instead of acting on a view that no longer updates.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, KafkaError, TopicPartition

from metaheal.config import KafkaSettings
from metaheal.errors import ReaderFailed
from metaheal.kafka.consumer import Consumer
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.kafka.message import ConsumedMessage

logger = logging.getLogger(__name__)


def received_at(msg: ConsumedMessage) -> float:
    """When ``msg`` reached the broker or this reader, by clocks the reader trusts.

    The reader's own clock (now), or the broker's log-append time if the record has one and it
    is earlier; a producer's ``CreateTime`` is its own word and is not used."""
    now = time.time()
    kind, ms = msg.timestamp()
    if kind == TIMESTAMP_LOG_APPEND_TIME and ms > 0:
        return min(now, ms / 1000.0)
    return now


class TopicTail:
    """Subclasses say which partitions to read (``assignment``) and what to do with a record (``handle``).

    A failure of the reader is kept in ``error`` and logged; ``start`` returns once the
    partitions are assigned (or the thread gave up), so callers never wait forever. An
    exception from ``handle`` is per record: ``record_errors`` counts them, ``last_error``
    names the latest, and :meth:`on_record_error` (a no-op here) may dead-letter the record.
    """

    name = "topic-tail"
    fetch_wait_ms: int | None = 100
    batch = 500
    poll_timeout = 0.2

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # the reader stopped because of it
        self.last_error: str | None = None  # the latest error, per record or fatal
        self.record_errors = 0  # records ``handle`` raised on (skipped)
        self.records = 0  # records handed to ``handle``

    @property
    def failed(self) -> bool:
        """The reader stopped without being asked to: what it serves no longer updates."""
        if self.error is not None:
            return True
        t = self._thread
        return t is not None and self._ready.is_set() and not t.is_alive() and not self._stop.is_set()

    @property
    def healthy(self) -> bool:
        """Started, still reading, never failed."""
        t = self._thread
        return t is not None and t.is_alive() and self.error is None

    def check(self) -> None:
        """Raise :class:`ReaderFailed` if the reader failed (components call this before acting)."""
        if self.failed:
            raise ReaderFailed(f"{self.name} stopped reading: {self.last_error or 'thread ended'}")

    def on_record_error(self, msg: ConsumedMessage, exc: BaseException) -> None:
        """A record ``handle`` raised on (already counted and logged); subclasses may dead-letter it."""

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        raise NotImplementedError

    def handle(self, msg: ConsumedMessage) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> TopicTail:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise KafkaUnavailable(f"{self.name} did not get its partitions assigned within {timeout}s")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        overrides: dict[str, Any] = {} if self.fetch_wait_ms is None else {"fetch.wait.max.ms": self.fetch_wait_ms}
        try:
            consumer = Consumer(self._kafka, **overrides)
        except Exception as exc:  # surfaced through ``error``
            self._fail(exc)
            self._ready.set()
            return
        try:
            consumer.assign(self.assignment(consumer))
            self._ready.set()
            while not self._stop.is_set():
                for msg in consumer.raw.consume(self.batch, self.poll_timeout):
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaUnavailable(f"fatal consume error: {err}")
                        if err.code() != KafkaError._PARTITION_EOF:
                            logger.warning("%s consume_error error=%s", self.name, err)
                        continue
                    self._handle_one(cast(ConsumedMessage, msg))
        except Exception as exc:
            self._fail(exc)
        finally:
            self._ready.set()
            consumer.close()

    def _handle_one(self, msg: ConsumedMessage) -> None:
        self.records += 1
        try:
            self.handle(msg)
        except Exception as exc:  # a record must not stop the reader: counted, logged, skipped
            self.record_errors += 1
            self.last_error = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {type(exc).__name__}: {exc}"
            logger.warning("%s record_skipped %s", self.name, self.last_error)
            try:
                self.on_record_error(msg, exc)
            except Exception as inner:
                logger.warning("%s on_record_error failed error=%r", self.name, inner)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.error("%s failed, no longer reading: %s", self.name, self.last_error)
