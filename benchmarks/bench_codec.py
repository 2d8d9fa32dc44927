"""Throughput of the codec path: Avro single-object encoding on fastavro, through Kafka.

    python benchmarks/bench_codec.py [--bootstrap HOST:PORT] [--n 20000] [--batch 100]

Without ``--bootstrap`` an embedded tansu broker (in memory) is started.
Prints, all measured in the same run:

* produce msgs/s (encode + produce + flush) and consume msgs/s (read to the end +
  decode) for single ``Metric`` records and for ``MetricBatch`` records (samples/s too);
* serializer-only encode/decode rates for fastavro (metaheal) and avro-python3
  (the reference implementation), and their ratio.

The machine is shared with other test runs: treat the numbers as indicative.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack

import avro.io
import avro.schema

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings, TopicSettings
from metaheal.events import Metric, MetricBatch
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import (
    HEADER_LEN,
    AvroDeserializer,
    AvroSerializer,
    TelemetryDeserializer,
)
from metaheal.schemas import load
from metaheal.topics import ensure_topics


def make_metrics(n: int, seed: int = 0) -> list[Metric]:
    rng = random.Random(seed)
    services = [f"svc-{i}" for i in range(20)]
    return [
        Metric(
            service=rng.choice(services),
            metric=rng.choice(["latency_ms", "error_rate", "cpu_utilization"]),
            value=rng.lognormvariate(5, 0.3),
            ts=1736951400.0 + i * 0.01,
            labels={"host": f"h{i % 8}"},
        )
        for i in range(n)
    ]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f}/s"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_kafka(settings: Settings, metrics: list[Metric], batch: int) -> None:
    topic_single = settings.topics.name("telemetry")
    topic_batch = settings.topics.name("health")  # any 4-partition topic of this run's prefix
    telemetry = TelemetryDeserializer()
    ser_one, ser_batch = AvroSerializer(Metric), AvroSerializer(MetricBatch)
    distinct = [MetricBatch(samples=metrics[i : i + batch]) for i in range(0, len(metrics), batch)]
    # As many batch records as single records, so fixed costs weigh the same.
    batches = [distinct[i % len(distinct)] for i in range(len(metrics) // 4)]
    n_samples = sum(len(b.samples) for b in batches)

    producer = Producer(settings.kafka, **{"linger.ms": 20, "batch.num.messages": 10000})

    def produce_single() -> None:
        for m in metrics:
            producer.produce(topic_single, ser_one(m), key=m.service)
        producer.flush()

    def produce_batches() -> None:
        for b in batches:
            producer.produce(topic_batch, ser_batch(b), key=b.samples[0].service)
        producer.flush()

    counted: dict[str, int] = {}

    def consume(topic: str) -> Callable[[], None]:
        def run() -> None:
            with Consumer(settings.kafka, **{"fetch.max.bytes": 52428800}) as c:
                counted[topic] = sum(len(telemetry(m.value())) for m in c.read_to_end(topic, timeout=120))

        return run

    t = timed(produce_single)
    print(f"produce Metric          {rate(len(metrics), t)} records   ({len(metrics)} in {t:.2f}s)")
    t = timed(consume(topic_single))
    assert counted[topic_single] == len(metrics), counted
    print(f"consume Metric          {rate(len(metrics), t)} records   (decoded {counted[topic_single]} samples)")
    t = timed(produce_batches)
    print(f"produce MetricBatch     {rate(len(batches), t)} records {rate(n_samples, t)} samples  (batch={batch})")
    t = timed(consume(topic_batch))
    assert counted[topic_batch] == n_samples, counted
    print(f"consume MetricBatch     {rate(len(batches), t)} records {rate(n_samples, t)} samples")
    t = timed(consume(settings.topics.name("anomalies")))
    print(f"read_to_end fixed cost  {t * 1000:>9.0f} ms      (empty 4-partition topic: assign + EOF)")


def bench_serializers(metrics: list[Metric]) -> None:
    ser, de = AvroSerializer(Metric), AvroDeserializer(Metric)
    ref_schema = avro.schema.parse(json.dumps(load(Metric)))
    writer, reader = avro.io.DatumWriter(ref_schema), avro.io.DatumReader(ref_schema)
    header = ser.fingerprint
    dicts = [m.model_dump() for m in metrics]

    def ref_encode(d: dict[str, object]) -> bytes:
        buf = io.BytesIO()
        buf.write(b"\xc3\x01" + header)
        writer.write(d, avro.io.BinaryEncoder(buf))
        return buf.getvalue()

    def ref_decode(data: bytes) -> Metric:
        return Metric.model_validate(reader.read(avro.io.BinaryDecoder(io.BytesIO(data[HEADER_LEN:]))))

    def ref_decode_raw(data: bytes) -> object:
        return reader.read(avro.io.BinaryDecoder(io.BytesIO(data[HEADER_LEN:])))

    encoded: list[bytes] = []
    t_fe = timed(lambda: encoded.extend(ser(m) for m in metrics))
    t_fd = timed(lambda: [de(b) for b in encoded])
    t_fraw = timed(lambda: [de.decode_dict(b) for b in encoded])
    ref_encoded: list[bytes] = []
    t_re = timed(lambda: ref_encoded.extend(ref_encode(d) for d in dicts))
    t_rd = timed(lambda: [ref_decode(b) for b in ref_encoded])
    t_rraw = timed(lambda: [ref_decode_raw(b) for b in ref_encoded])
    assert encoded == ref_encoded, "fastavro and avro-python3 disagree on the bytes"
    n = len(metrics)
    print(f"encode fastavro         {rate(n, t_fe)}   (incl. pydantic model_dump)")
    print(f"decode fastavro         {rate(n, t_fd)}   (incl. pydantic validation)")
    print(f"encode avro-python3     {rate(n, t_re)}")
    print(f"decode avro-python3     {rate(n, t_rd)}   (incl. pydantic validation)")
    print(f"decode fastavro raw     {rate(n, t_fraw)}   (bytes -> dict, no validation)")
    print(f"decode avro-python3 raw {rate(n, t_rraw)}   (bytes -> dict, no validation)")
    print(
        f"fastavro/avro-python3   encode x{t_re / t_fe:.1f}   decode x{t_rd / t_fd:.1f}   "
        f"raw decode x{t_rraw / t_fraw:.1f}   (same run, identical bytes)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", help="existing broker; default: start an embedded one")
    ap.add_argument("--n", type=int, default=20000, help="samples per measurement")
    ap.add_argument("--batch", type=int, default=100, help="samples per MetricBatch record")
    args = ap.parse_args()
    metrics = make_metrics(args.n)
    with ExitStack() as stack:
        bootstrap = args.bootstrap
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker(port=free_port())).bootstrap
            print(f"embedded tansu broker on {bootstrap} (in memory)")
        settings = Settings(
            kafka=KafkaSettings(bootstrap=bootstrap), topics=TopicSettings(prefix=f"bench{uuid.uuid4().hex[:6]}.")
        )
        ensure_topics(settings)
        bench_kafka(settings, metrics, args.batch)
    bench_serializers(metrics)


if __name__ == "__main__":
    main()
