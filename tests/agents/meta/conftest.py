"""Helpers for meta-loop tests: publish evidence, run loops, read topics back (real broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, ClassVar

import pytest

from metaheal.agents.meta.leader import fast_reader, read_to_end
from metaheal.agents.meta.loop import MetaLoop
from metaheal.config import Settings
from metaheal.events import Event, HealthWindow, SignalStats, SignedOutcome
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer, DecodeError
from metaheal.ledger.keys import init_system_keys
from metaheal.ledger.signing import RecordSigner


class Bus:
    """Publish events and read them back on the test's own topic prefix."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer(settings.kafka)

    #: topics whose records the meta loop reads only when signed: record type, signing actor, id field
    SIGNED: ClassVar[dict[str, tuple[str, str, str]]] = {
        "outcomes": ("outcome", "executor", "outcome_id"),
        "directives": ("directive", "meta_loop", "directive_id"),
    }

    def publish(self, short: str, event: Event, key: str, *, signed: bool = True) -> None:
        """Publish as the actor that writes ``short`` would (signed), or unsigned as an attacker would."""
        value = AvroSerializer(type(event))(event)
        headers = None
        if signed and short in self.SIGNED:
            record_type, actor, id_field = self.SIGNED[short]
            signer = RecordSigner(self.settings.keys, actor)
            headers = signer.sign(record_type, value, key=key, record_id=getattr(event, id_field))
        self.producer.send(self.settings.topics.name(short), value, key, headers=headers)

    def read(self, short: str, model: type) -> list[Any]:
        de = AvroDeserializer(model)
        out = []
        with fast_reader(self.settings.kafka) as c:
            for m in read_to_end(c, self.settings.topics.name(short), timeout=20):
                with suppress(DecodeError):
                    out.append(de(m.value()))
        return out

    async def aread(self, short: str, model: type) -> list[Any]:
        return await asyncio.to_thread(self.read, short, model)


def window(service: str, *signals: SignalStats, end: float | None = None, seconds: float = 300.0) -> HealthWindow:
    end = time.time() if end is None else end
    return HealthWindow(
        service=service,
        window_start=end - seconds,
        window_end=end,
        sample_count=sum(s.count for s in signals),
        signals=list(signals),
    )


def stats(
    signal: str,
    metric: str,
    *,
    mean: float,
    base: float,
    p95: float | None = None,
    base_p95: float | None = None,
    count: int = 30,
    dependency: str | None = None,
) -> SignalStats:
    return SignalStats(
        signal=signal,
        metric=metric,
        count=count,
        mean=mean,
        p50=mean,
        p95=p95 if p95 is not None else mean,
        max=max(mean, p95 or mean),
        baseline_mean=base,
        baseline_p95=base_p95,
        dependency=dependency,
    )


def outcome(
    i: int | str,
    service: str,
    result: str,
    playbook: str = "scale_up_instances",
    cycle_id: str = "c0",
    directive_id: str | None = None,
    ts: float | None = None,
) -> SignedOutcome:
    return SignedOutcome(
        outcome_id=f"out{i}",
        plan_id=f"plan{i}",
        directive_id=directive_id or f"d{i}",
        cycle_id=cycle_id,
        service=service,
        playbook=playbook,
        result=result,
        duration_seconds=42.0,
        trust_decision="auto_approved" if result != "denied" else "denied: blast radius 3 > 1",
        actor="executor",
        actor_signature="00",
        ts=time.time() if ts is None else ts,
    )


async def until(pred: Callable[[], Any], timeout: float = 20.0, every: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something truthy (async predicates are awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


@asynccontextmanager
async def running(loop: MetaLoop) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        yield task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 15)
        elif not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


@pytest.fixture
def meta(topics: Settings) -> Settings:
    """Topics created, system keys present, short waits so tests stay fast."""
    init_system_keys(topics.keys)
    topics.cycle.advice_wait_seconds = 0.5
    topics.cycle.lease_seconds = 3.0
    return topics


@pytest.fixture
def bus(meta: Settings) -> Bus:
    return Bus(meta)


@pytest.fixture
def h() -> Any:
    """This module's helpers (tests cannot import conftest under ``--import-mode=importlib``)."""
    import sys

    return sys.modules[__name__]
