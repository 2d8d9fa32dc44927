"""Following the topics for the console: one background reader, and a fan-out to the open pages.

:class:`ConsoleFeed` reads every partition of the console's topics from the beginning
(group-less, so any number of consoles can run and each rebuilds its view on start)
and folds each record into the :class:`~metaheal.console.view.FleetView`.
:class:`Broadcaster` tells the event loop which topics changed; bursts (the catch-up
on start, a window of health records) are coalesced into one notification per
loop turn, so a page re-renders once per burst, not once per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from metaheal.config import Settings
from metaheal.console.view import TOPICS, FleetView
from metaheal.kafka import ConsumedMessage, Consumer, KafkaUnavailable, TopicPartition
from metaheal.kafka.tail import TopicTail

logger = logging.getLogger(__name__)


class ConsoleFeed(TopicTail):
    name = "console-feed"
    fetch_wait_ms = 50
    poll_timeout = 0.1
    batch = 1000

    def __init__(self, settings: Settings, view: FleetView, on_change: Callable[[str], None] | None = None) -> None:
        super().__init__(settings.kafka)
        self._settings = settings
        self.view = view
        self.on_change = on_change
        self._short = {settings.topics.name(t): t for t in TOPICS}

    def assignment(self, consumer: Consumer) -> list[TopicPartition]:
        parts = []
        for full in self._short:
            try:
                parts += consumer.topic_partitions([full])
            except KafkaUnavailable as exc:
                logger.warning("console_topic_missing topic=%s error=%s", full, exc)
        return parts

    def handle(self, msg: ConsumedMessage) -> None:
        topic = self._short.get(msg.topic())
        if topic is not None and self.view.apply(topic, msg.key(), msg.value()) and self.on_change is not None:
            self.on_change(topic)


class Broadcaster:
    """Thread-safe ``notify(topic)``; each subscriber gets sets of changed topics on its queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._scheduled = False
        self._queues: set[asyncio.Queue[set[str] | None]] = set()

    def notify(self, topic: str) -> None:
        with self._lock:
            self._pending.add(topic)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            topics, self._pending, self._scheduled = self._pending, set(), False
        for q in list(self._queues):
            if q.full():
                continue  # a stalled page gets the next burst; it re-renders everything anyway
            q.put_nowait(topics)

    def subscribe(self) -> asyncio.Queue[set[str] | None]:
        q: asyncio.Queue[set[str] | None] = asyncio.Queue(maxsize=100)
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[set[str] | None]) -> None:
        self._queues.discard(q)

    def close(self) -> None:
        """End every open stream (``None`` on each queue); call on the event loop."""
        for q in list(self._queues):
            while q.full():
                q.get_nowait()
            q.put_nowait(None)


__all__ = ["Broadcaster", "ConsoleFeed"]
