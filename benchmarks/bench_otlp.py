"""Decode cost per sample: OTLP (protobuf and JSON) next to native telemetry (Avro and JSON MetricBatch).

    python benchmarks/bench_otlp.py [--points 500] [--repeat 200]

No broker: each path decodes the same record again and again, in-process.

* native: :meth:`Intake.decode_series` on one ``MetricBatch`` record (Avro: the fast path;
  JSON: the validating path);
* OTLP: :meth:`OtlpBridge.convert` (parse with ``opentelemetry-proto``, map, one Avro
  ``MetricBatch`` per service) and then, as in the worker, :meth:`Intake.decode_series` on
  that re-published record ("end to end"). Requests are built with the OpenTelemetry SDK's
  data model and encoded by its OTLP encoders; gauges (one sample per point) and delta
  histograms (count, sum, p50/p95/p99 and an error ratio per point: 6 samples) are measured apart.

Prints µs per sample (best of 5 runs). The machine is shared: treat the numbers as indicative.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from metaheal.events import Metric, MetricBatch
from metaheal.kafka.serializers import AvroSerializer
from metaheal.streams.intake import Intake, Record
from metaheal.streams.otlp_bridge import OtlpBridge
from metaheal.streams.signals import SignalMap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.streams.otlp_sdk import encode, gauge, histogram, histogram_point, metrics_data

T0 = 1_700_000_000.0


def best_us(fn: Callable[[], int], repeat: int) -> float:
    """Best of 5 runs of ``repeat`` calls: µs per sample (``fn`` returns its sample count)."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        n = 0
        for _ in range(repeat):
            n += fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=500, help="data points (native: samples) per record")
    ap.add_argument("--repeat", type=int, default=200)
    ns = ap.parse_args(argv)
    rng = random.Random(1)
    n = ns.points
    values = [100 + rng.gauss(0, 5) for _ in range(n)]

    native = MetricBatch(
        samples=[
            Metric(service="api", metric="latency_ms", value=v, ts=T0 + i / n, labels={"route": "/x"})
            for i, v in enumerate(values)
        ]
    )
    avro_rec = Record("telemetry", 0, 0, b"api", AvroSerializer(MetricBatch)(native))
    json_rec = Record("telemetry", 0, 0, b"api", json.dumps(native.model_dump()).encode())

    gauges = metrics_data(
        {"service.name": "api"},
        [gauge("system.cpu.utilization", [(T0 + i / n, v / 1000) for i, v in enumerate(values)], route="/x")],
    )
    hist_points = [
        histogram_point([rng.uniform(0.05, 0.2) for _ in range(20)], T0 + i, T0 + i + 1, **{"http.route": "/x"})
        for i in range(max(1, n // 6))
    ]
    hists = metrics_data({"service.name": "api"}, [histogram("http.server.request.duration", hist_points)])

    intake = Intake(SignalMap())

    def native_path(rec: Record) -> Callable[[], int]:
        def run() -> int:
            groups, dead = intake.decode_series(rec)
            assert dead is None
            return sum(len(g.values) for g in groups)

        return run

    def otlp_path(raw: bytes, end_to_end: bool) -> Callable[[], int]:
        bridge = OtlpBridge(telemetry_partitions=4)
        rec = Record("otlp_metrics", 0, 0, None, raw)

        def run() -> int:
            out = bridge.convert(rec)
            assert out.dead is None, out.dead
            if end_to_end:
                for key, partition, value in out.records:
                    intake.decode_series(Record("telemetry", partition, 0, key, value))
            return out.samples

        return run

    rows = [
        ("native Avro MetricBatch", native_path(avro_rec)),
        ("native JSON MetricBatch", native_path(json_rec)),
    ]
    for fmt in ("otlp_proto", "otlp_json"):
        for label, data in (("gauge", gauges), ("histogram", hists)):
            raw = encode(data, fmt)
            rows.append((f"{fmt} {label}: bridge (decode+map+Avro)", otlp_path(raw, False)))
            rows.append((f"{fmt} {label}: end to end (+ intake)", otlp_path(raw, True)))
    print(f"decode cost per sample, {n} points per record, best of 5 x {ns.repeat} records")
    for label, fn in rows:
        print(f"  {label:<48} {best_us(fn, ns.repeat):6.2f} µs/sample")


if __name__ == "__main__":
    main()
