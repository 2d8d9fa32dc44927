"""How fast the simulated fleet produces telemetry (model only, and published to a broker).

Prints samples/s for ``Fleet.sample`` alone and for sample + Avro + produce + flush
against an embedded tansu broker (one MetricBatch per service per tick), measured in
the same run so the ratio is meaningful. Numbers are noisy on a shared machine.

    python benchmarks/bench_simulator.py [--ticks 2000]
"""

from __future__ import annotations

import argparse
import time
import uuid

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.simulator.fleet import Fleet
from metaheal.simulator.publisher import TelemetryPublisher
from metaheal.topics import ensure_topics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=2000)
    ns = ap.parse_args()
    clock = [0.0]
    fleet = Fleet(seed=0, clock=lambda: clock[0])
    t0 = time.perf_counter()
    n = 0
    for _ in range(ns.ticks):
        clock[0] += 0.5
        n += sum(len(v) for v in fleet.sample().values())
    model = n / (time.perf_counter() - t0)
    print(f"model only: {ns.ticks} ticks, {n} samples, {model:,.0f} samples/s")

    with EmbeddedBroker(port=free_port()) as broker:
        settings = Settings(
            kafka=KafkaSettings(bootstrap=broker.bootstrap),
            topics=TopicSettings(prefix=f"bench{uuid.uuid4().hex[:6]}."),
        )
        ensure_topics(settings)
        pub = TelemetryPublisher(settings.kafka, settings.topics.name("telemetry"))
        ticks = max(1, ns.ticks // 4)
        t0 = time.perf_counter()
        for _ in range(ticks):
            clock[0] += 0.5
            pub.publish(fleet.sample())
        took = time.perf_counter() - t0
        pub.close()
        rate = pub.samples / took
        print(
            f"published: {ticks} ticks ({pub.batches} batches, {pub.samples} samples) in {took:.2f}s: "
            f"{rate:,.0f} samples/s, {ticks / took:,.0f} ticks/s (one flush per tick)"
        )
        print(f"ratio published/model: {rate / model:.2f}")


if __name__ == "__main__":
    main()
