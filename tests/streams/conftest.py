"""Helpers for the streams tests: produce telemetry, read outputs, wait without sleeps-as-sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from metaheal.config import Settings, StreamSettings
from metaheal.events import AnomalyScore, DeadLetter, Event, HealthWindow
from metaheal.kafka import Consumer
from metaheal.kafka.serializers import AvroDeserializer

E = TypeVar("E", bound=Event)
# event-time origin of test telemetry: a whole hour a day ago (a window boundary for 1 s windows), so the
# worker's event-time bounds (streams.max_event_age_seconds, 7 days by default) accept it
T0 = float(int(time.time()) // 3600 * 3600 - 86400)


def fast_streams(settings: Settings) -> Settings:
    settings.streams = StreamSettings(window_seconds=1.0, allowed_lateness_seconds=0.5)
    return settings


def read_all(settings: Settings, short: str, model: type[E]) -> list[E]:
    decode = AvroDeserializer(model)
    with Consumer(settings.kafka) as c:
        return [decode(m.value()) for m in c.read_to_end(settings.topics.name(short))]


def outputs(settings: Settings) -> tuple[list[HealthWindow], list[AnomalyScore], list[DeadLetter]]:
    return (
        read_all(settings, "health", HealthWindow),
        read_all(settings, "anomalies", AnomalyScore),
        read_all(settings, "deadletter", DeadLetter),
    )


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll ``pred`` until true (each poll is a real read, not a sleep standing in for one)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def await_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(pred):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
def stream_topics(topics: Settings) -> Settings:
    """Every topic created, 1 s windows with 0.5 s allowed lateness."""
    return fast_streams(topics)
