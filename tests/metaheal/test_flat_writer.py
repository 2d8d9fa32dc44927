"""FlatRecordWriter writes exactly fastavro's bytes (it replaces fastavro on the worker's hot path)."""

from __future__ import annotations

import io
import math
import random

import fastavro
import pytest

from metaheal.events import AnomalyScore, DeadLetter, HealthWindow
from metaheal.kafka.flat_writer import FlatRecordWriter, varint
from metaheal.schemas import load


def fastavro_bytes(schema: dict, datum: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
    return buf.getvalue()


def random_text(rng: random.Random) -> str:
    n = rng.choice([0, 1, 5, 63, 64, 65, 200, 9000])  # around the one-byte length prefix, and long
    return ("aZ9_./-é€😀" * 1000)[rng.randrange(10) :][:n]


def random_anomaly(rng: random.Random) -> dict:
    def num() -> float:
        return rng.choice([0.0, -0.0, 1e-300, -5.5, 1e300, math.inf, -math.inf, rng.uniform(-1e6, 1e6)])

    return {
        "service": random_text(rng) or "s",
        "metric": random_text(rng) or "m",
        "signal": rng.choice([None, "latency", random_text(rng)]),
        "kind": rng.choice(["sample", "summary"]),
        "value": num(),
        "baseline": num(),
        "score": rng.random(),
        "threshold": rng.random(),
        "crossed": rng.random() < 0.5,
        "confidence": rng.random(),
        "model": random_text(rng),
        "ts": num(),
        "window_start": num(),
        "window_end": num(),
        "labels": {random_text(rng): random_text(rng) for _ in range(rng.choice([0, 1, 3, 70]))},
    }


def test_same_bytes_as_fastavro_for_anomaly_events():
    rng = random.Random(7)
    schema = load(AnomalyScore)
    writer = FlatRecordWriter(schema)
    for _ in range(300):
        datum = random_anomaly(rng)
        assert writer(datum) == fastavro_bytes(schema, datum)


def test_prefix_is_written_first():
    schema = load(AnomalyScore)
    datum = random_anomaly(random.Random(1))
    assert FlatRecordWriter(schema)(datum, b"\xc3\x01header") == b"\xc3\x01header" + fastavro_bytes(schema, datum)


def test_varint_matches_avro_zigzag():
    schema = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"}]}
    for n in [0, -1, 1, 63, -64, 64, 300, -300, 2**31, -(2**63), 2**63 - 1]:
        assert varint(n) == fastavro_bytes(schema, {"n": n})
        assert FlatRecordWriter(schema)({"n": n}) == fastavro_bytes(schema, {"n": n})


@pytest.mark.parametrize("model", [HealthWindow, DeadLetter])
def test_records_that_are_not_flat_are_refused(model):
    # HealthWindow nests an array of records; DeadLetter has a bytes field: fastavro handles those
    with pytest.raises(TypeError, match="not flat"):
        FlatRecordWriter(load(model))
