"""Attacks from outside: records written by a plain producer to the embedded broker, as anyone with
write access to a topic could; the component under attack runs for real and must keep running."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from metaheal.config import Settings, StreamSettings
from metaheal.events import DeadLetter, Event, HealthWindow
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer

E = TypeVar("E", bound=Event)

# a whole hour a day ago: a window boundary, inside the worker's default event-time bounds
T0 = float(int(time.time()) // 3600 * 3600 - 86400)


def read_all(settings: Settings, short: str, model: type[E]) -> list[E]:
    decode = AvroDeserializer(model)
    with Consumer(settings.kafka) as c:
        return [decode(m.value()) for m in c.read_to_end(settings.topics.name(short))]


def dead_letters(settings: Settings) -> list[DeadLetter]:
    return read_all(settings, "deadletter", DeadLetter)


def health(settings: Settings) -> list[HealthWindow]:
    return read_all(settings, "health", HealthWindow)


def attack(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]], **kw: int) -> None:
    """Write raw records (key, value) with a plain producer: no metaheal serializer, no checks."""
    with Producer(settings.kafka) as p:
        for key, value in records:
            p.produce(topic, value, key=key, **kw)
        p.flush()


async def await_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(pred):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def stream_topics(topics: Settings) -> Settings:
    """Every topic created; 1 s windows, 0.5 s lateness, small limits so attacks stay small."""
    topics.streams = StreamSettings(
        window_seconds=1.0,
        allowed_lateness_seconds=0.5,
        max_series_per_service=5,
        max_record_bytes=64 * 1024,
    )
    return topics
