"""A background thread that tails assigned partitions: for readers that must not block the event loop.

The approval inbox, the live-telemetry view used by verification and the demo's
timeline all follow topics group-less (no join delay on tansu) from a chosen offset
and keep what they read in memory; this is the one loop they share.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from confluent_kafka import KafkaError, TopicPartition

from metaheal.config import KafkaSettings
from metaheal.kafka.consumer import Consumer
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.kafka.message import ConsumedMessage

logger = logging.getLogger(__name__)


class TopicTail:
    """Subclasses say which partitions to read (``assignment``) and what to do with a record (``handle``).

    A failure inside the thread is kept in ``error`` and logged; ``start`` returns once the
    partitions are assigned (or the thread gave up), so callers never wait forever.
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
        self.error: BaseException | None = None

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
            self.error = exc
            self._ready.set()
            return
        try:
            consumer.assign(self.assignment(consumer))
            self._ready.set()
            while not self._stop.is_set():
                for msg in consumer.raw.consume(self.batch, self.poll_timeout):
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            logger.warning("%s consume_error error=%s", self.name, err)
                        continue
                    self.handle(cast(ConsumedMessage, msg))
        except Exception as exc:
            self.error = exc
            logger.error("%s failed error=%s", self.name, exc)
        finally:
            self._ready.set()
            consumer.close()
