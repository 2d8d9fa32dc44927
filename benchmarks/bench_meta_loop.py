"""Time from the first anomalous event to the directive, on the embedded broker.

Two schedules, as the meta-loop issue asks:

* ``cycle_seconds=120``: a strong anomaly (score >= ``strong_anomaly_score``) triggers an
  early cycle, so the directive should not wait for the schedule;
* ``cycle_seconds=5``: the evidence is a latency drift that is *not* strong enough to
  trigger early, so the directive comes with the next scheduled cycle (expected mean
  ~cycle_seconds/2 plus the cycle's own work).

"First anomalous event" is the moment the AnomalyScore/HealthWindow is published to
``<prefix>anomalies``/``<prefix>health`` (the meta loop's inputs; the streams worker's
own latency from raw telemetry is measured by the streams benchmarks), and the end is
the Directive being readable on ``<prefix>directives``. Each run uses fresh topics, the
real ledger (every decision is signed and acknowledged before it is published) and,
with ``--advisor`` (default), the real advisor service answering each cycle; without it
the meta loop waits the full ``advice_wait_seconds`` (5 s) and proceeds without advice.

    python benchmarks/bench_meta_loop.py [--runs 3] [--no-advisor] [--bootstrap HOST:PORT]

Numbers on a shared 2-core machine are noisy; compare rows of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from metaheal.agents.meta.leader import fast_reader, read_to_end
from metaheal.agents.meta.loop import MetaLoop
from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.events import (
    AnomalyScore,
    CycleFocus,
    Directive,
    HealthWindow,
    SignalStats,
)
from metaheal.kafka import Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.ledger import ImmutableLog
from metaheal.ledger.keys import init_system_keys
from metaheal.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent


def _count(settings: Settings, short: str, model: type) -> int:
    de = AvroDeserializer(model)
    with fast_reader(settings.kafka) as c:
        return sum(1 for m in read_to_end(c, settings.topics.name(short)) if de(m.value()))


async def _wait_for(settings: Settings, short: str, model: type, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_count, settings, short, model) >= n:
            return time.time()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no {model.__name__} within {timeout}s")


def _evidence(service: str, strong: bool) -> tuple[HealthWindow, AnomalyScore]:
    now = time.time()
    w = HealthWindow(
        service=service,
        window_start=now - 10,
        window_end=now,
        sample_count=20,
        signals=[
            SignalStats(
                signal="latency",
                metric="latency_p95_ms",
                count=20,
                mean=240.0,
                p50=238.0,
                p95=245.0,
                max=260.0,
                baseline_mean=150.0,
                baseline_p95=150.0,
            )
        ],
    )
    a = AnomalyScore(
        service=service,
        metric="latency_p95_ms",
        signal="latency",
        value=245.0,
        baseline=150.0,
        score=0.9995 if strong else 0.95,
        threshold=0.99,
        crossed=strong,
        confidence=1.0,
        model="bench",
        ts=now,
        window_start=now - 10,
        window_end=now,
    )
    return w, a


async def one_run(base: Settings, keys: Path, cycle_seconds: float, advisor: bool, rng: random.Random) -> float:
    settings = base.model_copy(deep=True)
    settings.topics = TopicSettings(prefix=f"bench{uuid.uuid4().hex[:8]}.")
    settings.keys = keys
    settings.playbooks = ROOT / "playbooks"
    settings.cycle.cycle_seconds = cycle_seconds
    await asyncio.to_thread(ensure_topics, settings)
    log = ImmutableLog(settings)  # one sequencer per process: shared by the meta loop and the advisors
    stop = asyncio.Event()
    loop = MetaLoop(settings, replica_id="bench", ledger=log)
    tasks = [asyncio.create_task(loop.run(stop))]
    if advisor:
        from metaheal.agents.advisors.service import AdvisorService

        svc = AdvisorService(settings, log=log)
        tasks.append(asyncio.create_task(svc.run(stop)))
        await asyncio.wait_for(svc.ready.wait(), 30)
    try:
        await _wait_for(settings, "cycles", CycleFocus, 1, 30)  # the first (quiet) cycle
        if cycle_seconds > 20:
            await asyncio.sleep(settings.cycle.min_cycle_gap_seconds)  # out of the debounce window
        else:
            await asyncio.sleep(rng.uniform(0, cycle_seconds))  # a random phase of the schedule
        w, a = _evidence("api", strong=cycle_seconds > 20)
        with Producer(settings.kafka) as p:
            sent = time.time()
            p.send(settings.topics.name("health"), AvroSerializer(HealthWindow)(w), "api")
            p.send(settings.topics.name("anomalies"), AvroSerializer(AnomalyScore)(a), "api")
        done = await _wait_for(settings, "directives", Directive, 1, cycle_seconds + 60)
        return done - sent
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-advisor", action="store_true")
    ap.add_argument("--bootstrap")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(args.seed)
    broker = None
    if args.bootstrap is None:
        broker = EmbeddedBroker(port=free_port())
        broker.start()
        args.bootstrap = broker.bootstrap
    try:
        base = Settings(kafka=KafkaSettings(bootstrap=args.bootstrap, session_timeout_ms=6000))
        with tempfile.TemporaryDirectory() as tmp:
            keys = Path(tmp) / "keys"
            init_system_keys(keys)
            advisor = not args.no_advisor
            print(
                f"advisor={'on' if advisor else 'off'} advice_wait_seconds={base.cycle.advice_wait_seconds:g} "
                f"min_cycle_gap_seconds={base.cycle.min_cycle_gap_seconds:g} runs={args.runs}"
            )
            for cycle_seconds, label in ((120.0, "strong anomaly, early cycle"), (5.0, "drift, next scheduled cycle")):
                took = [await one_run(base, keys, cycle_seconds, advisor, rng) for _ in range(args.runs)]
                print(
                    f"cycle_seconds={cycle_seconds:>5g} ({label}): "
                    f"anomaly -> directive median {statistics.median(took):.2f}s "
                    f"min {min(took):.2f}s max {max(took):.2f}s  [{', '.join(f'{t:.2f}' for t in took)}]"
                )
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
