"""The worker's hand-written Avro writers against the generic serializer: same bytes."""

from __future__ import annotations

import random

from metaheal.events import HealthWindow, SignalStats
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.streams.encoders import HealthWriter


def test_health_windows_written_directly_are_the_generic_serializers_bytes() -> None:
    rng = random.Random(4)
    generic, direct, read = AvroSerializer(HealthWindow), HealthWriter(), AvroDeserializer(HealthWindow)

    def maybe(x: float) -> float | None:
        return None if rng.random() < 0.3 else x

    for i in range(300):
        signals = [
            SignalStats(
                signal=rng.choice(["latency", "errors", "unknown", "sättigung"]),
                metric=f"m{j}_ms",
                count=rng.randint(0, 10**7),
                mean=rng.gauss(0, 1e6),
                p50=rng.gauss(0, 1),
                p95=rng.uniform(-1e300, 1e300),
                max=rng.random(),
                rate=maybe(rng.random()),
                baseline_mean=maybe(rng.gauss(100, 5)),
                baseline_p95=maybe(-0.0),
                dependency=rng.choice([None, "db", "ünïcode"]),
            )
            for j in range(rng.randint(0, 25))
        ]
        hw = HealthWindow(
            service=f"svc{i}",
            window_start=rng.uniform(0, 2e9),
            window_end=rng.uniform(0, 2e9),
            sample_count=rng.randint(0, 10**9),
            signals=signals,
        )
        blob = direct(hw)
        assert blob == generic(hw)
        assert read(blob) == hw
