"""Background readers under hostile records: they skip what they cannot handle and keep reading; a reader
that cannot go on says so (``failed``, ``check()``), and what depends on it fails closed.

Before, one JSON record nested 1,500 deep on ``<prefix>telemetry`` raised ``RecursionError`` in the
executor's live-telemetry thread (``TopicTail``), which died silently: every later verification was
inconclusive and every plan rolled back.
"""

from __future__ import annotations

import json
import time

import pytest

from metaheal.agents.executor.verification import LiveTelemetry
from metaheal.config import Settings
from metaheal.errors import ReaderFailed
from metaheal.kafka import Consumer, Message, TopicPartition
from metaheal.kafka.tail import TopicTail

from .conftest import attack, wait_for

DEEP = b"[" * 1500 + b"]" * 1500


def sample(value: float, ts: float) -> bytes:
    return json.dumps({"service": "api", "metric": "latency_ms", "value": value, "ts": ts}).encode()


def test_live_telemetry_keeps_reading_past_hostile_records(topics: Settings) -> None:
    s = topics
    s.streams.max_record_bytes = 64 * 1024
    tel = LiveTelemetry(s, start_at="beginning").start()
    try:
        now = time.time()
        attack(
            s,
            s.topics.name("telemetry"),
            [
                (b"api", DEEP),
                (b"api", b'{"samples": ' + DEEP + b"}"),
                (b"api", b"\xc3\x01 truncated avro"),
                (b"api", b"x" * (s.streams.max_record_bytes + 1)),
                (b"api", sample(250.0, now)),
            ],
        )
        wait_for(lambda: tel.samples("api", "latency_ms", since=now - 1) == [(now, 250.0)], 20, "the good sample")
        assert tel.healthy and not tel.failed
        tel.check()
        assert tel.records == 5
    finally:
        tel.stop()


class NaiveReader(TopicTail):
    """A reader written without any care: ``json.loads`` on every value, whatever comes."""

    name = "naive"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.kafka)
        self.topic = settings.topics.name("telemetry")
        self.docs: list[object] = []

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        return consumer.topic_partitions([self.topic])

    def handle(self, msg: Message) -> None:
        self.docs.append(json.loads(msg.value() or b""))


def test_a_record_the_handler_raises_on_is_skipped_and_counted(topics: Settings) -> None:
    s = topics
    reader = NaiveReader(s).start()
    try:
        attack(s, s.topics.name("telemetry"), [(b"a", DEEP), (b"a", b"not json"), (b"a", b'{"ok": 1}')])
        wait_for(lambda: reader.docs == [{"ok": 1}], 20, "the record after the bad ones")
        assert reader.healthy and reader.record_errors == 2
        assert reader.last_error is not None and "JSONDecodeError" in reader.last_error
        reader.check()  # per-record errors are not a reader failure
    finally:
        reader.stop()


class BrokenReader(NaiveReader):
    """Its partitions cannot be found: the reader cannot start reading at all."""

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        return consumer.topic_partitions([self.topic + ".missing"])


def test_a_reader_that_cannot_continue_is_visible(topics: Settings) -> None:
    reader = BrokenReader(topics).start()
    try:
        wait_for(lambda: reader.failed, 20, "the failure")
        assert not reader.healthy and reader.last_error is not None and "does not exist" in reader.last_error
        with pytest.raises(ReaderFailed, match="naive stopped reading"):
            reader.check()
    finally:
        reader.stop()


class DeafTelemetry(LiveTelemetry):
    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        return consumer.topic_partitions([self._settings.topics.name("telemetry") + ".missing"])


async def test_verification_against_a_failed_reader_is_inconclusive_naming_why(topics: Settings) -> None:
    tel = DeafTelemetry(topics).start()
    try:
        wait_for(lambda: tel.failed, 20, "the failure")
        started = time.monotonic()
        v = await tel.wait_for(service="api", metric="latency_ms", op="<=", threshold=200, within=30, since=0.0)
        assert time.monotonic() - started < 5  # not a 30 s wait on a view that will never change
        assert v.status == "inconclusive" and v.reason.startswith("telemetry reader failed: ")
        assert "does not exist" in v.reason
        assert v.query["metric"] == "latency_ms" and v.threshold == 200
    finally:
        tel.stop()
