"""Intake: every telemetry encoding decodes; everything else becomes a named dead letter."""

from __future__ import annotations

import json

import pytest

from metaheal.events import DeadLetter, Metric, MetricBatch, MetricSeries
from metaheal.kafka.serializers import AvroSerializer
from metaheal.streams.intake import Intake, Record
from metaheal.streams.signals import SignalMap


@pytest.fixture
def intake() -> Intake:
    return Intake(SignalMap())


def rec(value: bytes | None, offset: int = 3) -> Record:
    return Record("p.telemetry", 2, offset, b"api", value)


def test_avro_metric_batch_and_json_decode(intake: Intake) -> None:
    m = Metric(service="api", metric="latency_ms", value=12.0, ts=5.0)
    batch = MetricBatch(samples=[m, Metric(service="api", metric="cpu_utilization", value=0.5, ts=6.0)])
    for raw in (
        AvroSerializer(Metric)(m),
        AvroSerializer(MetricBatch)(batch),
        m.model_dump_json().encode(),
        batch.model_dump_json().encode(),
    ):
        samples, dead = intake.decode(rec(raw))
        assert dead is None
        assert samples[0].series == "api/latency_ms" and samples[0].value == 12.0 and samples[0].signal == "latency"
    assert [s.signal for s in intake.decode(rec(AvroSerializer(MetricBatch)(batch)))[0]] == ["latency", "saturation"]


def test_signal_mapping_units_and_dependency(intake: Intake) -> None:
    doc = {
        "samples": [
            {"service": "api", "metric": "http.server.request.duration", "value": 0.25, "ts": 1},
            {"service": "api", "metric": "error_rate", "value": 0.1, "ts": 1},
            {"service": "api", "metric": "requests_per_s", "value": 100, "ts": 1},
            {"service": "api", "metric": "instances", "value": 3, "ts": 1},
            {"service": "api", "metric": "dependency_latency_ms", "value": 9, "ts": 1, "labels": {"dependency": "db"}},
            {"service": "api", "metric": "latency_ms", "value": 9, "ts": 1, "labels": {"dependency": "cache"}},
            {"service": "api", "metric": "gc_pause_count", "value": 2, "ts": 1},
        ]
    }
    samples, dead = intake.decode(rec(json.dumps(doc).encode()))
    assert dead is None
    assert [(s.signal, s.value) for s in samples] == [
        ("latency", 250.0),
        ("errors", 0.1),
        ("traffic", 100.0),
        ("capacity", 3.0),
        ("dependency", 9.0),
        ("dependency", 9.0),
        (None, 2.0),
    ]
    assert samples[4].series == "api/dependency_latency_ms{dependency=db}"
    assert samples[5].series == "api/latency_ms{dependency=cache}"


def test_signal_map_overrides() -> None:
    m = SignalMap({"gc_pause_count": "saturation", "instances": "none"})
    assert m.signal_of("gc_pause_count", {}) == "saturation"
    assert m.signal_of("instances", {}) is None
    with pytest.raises(ValueError, match=r"streams\.signal_map\.foo"):
        SignalMap({"foo": "bogus"})


@pytest.mark.parametrize(
    ("raw", "reason", "needle"),
    [
        (b"\x00garbage", "undecodable", "neither Avro single-object nor JSON"),
        (b"\xc3\x01\x00\x01\x02\x03\x04\x05\x06\x07zz", "undecodable", "unknown schema fingerprint"),
        (b"\xc3\x01", "undecodable", "truncated"),
        (None, "undecodable", "empty record"),
        (b'{"service": "", "metric": "m", "value": 1, "ts": 1}', "invalid", "service:"),
        (b'{"service": "a", "metric": "m", "value": 1}', "invalid", "ts: Field required"),
        (b'{"service": "a", "metric": "m", "value": NaN, "ts": 1}', "invalid", "value:"),
        (b'{"samples": []}', "invalid", "empty batch"),
        (b"[1, 2]", "undecodable", "must be an object"),
    ],
)
def test_bad_input_becomes_dead_letter_with_original_bytes(
    intake: Intake, raw: bytes | None, reason: str, needle: str
) -> None:
    samples, dead = intake.decode(rec(raw, offset=41))
    assert samples == []
    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.source_topic, dead.partition, dead.offset, dead.key, dead.value) == (
        reason,
        "p.telemetry",
        2,
        41,
        b"api",
        raw,
    )
    assert needle in dead.error


def test_truncated_avro_batch_is_dead_letter(intake: Intake) -> None:
    raw = AvroSerializer(MetricBatch)(MetricBatch(samples=[Metric(service="a", metric="m", value=1.0, ts=1.0)]))
    samples, dead = intake.decode(rec(raw[:-3]))
    assert samples == [] and dead is not None and dead.value == raw[:-3] and "MetricBatch" in dead.error


def _series_bytes(service: str, metric: str, ts: list[float], values: list[float], labels: dict | None = None) -> bytes:
    """A MetricSeries as Avro without model validation (to send what a broken producer would)."""
    import io

    import fastavro

    from metaheal.kafka.serializers import MAGIC
    from metaheal.schemas import load

    ser = AvroSerializer(MetricSeries)
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        fastavro.parse_schema(load(MetricSeries)),
        {"service": service, "metric": metric, "labels": labels or {}, "ts": ts, "values": values},
    )
    return MAGIC + ser.fingerprint + buf.getvalue()


def test_metric_series_decodes_like_the_same_samples_in_a_batch(intake: Intake) -> None:
    labels = {"dependency": "db"}
    series = MetricSeries(
        service="api", metric="http.server.request.duration", labels=labels, ts=[3.0, 1.0, 2.0], values=[0.2, 0.1, 0.15]
    )
    batch = MetricBatch(samples=series.samples())
    want = intake.decode_series(rec(AvroSerializer(MetricBatch)(batch)))
    for raw in (AvroSerializer(MetricSeries)(series), series.model_dump_json().encode()):
        got = intake.decode_series(rec(raw))
        assert got[1] is None and len(got[0]) == 1
        g, w = got[0][0], want[0][0]
        assert (g.series, g.signal, g.dependency, g.values, g.ts, g.labels) == (
            w.series,
            w.signal,
            w.dependency,
            w.values,
            w.ts,
            w.labels,
        )
        assert g.values == [200.0, 100.0, 150.0]  # seconds -> ms, order kept
        samples, dead = intake.decode(rec(raw))
        assert dead is None and [s.value for s in samples] == [200.0, 100.0, 150.0]


@pytest.mark.parametrize(
    ("ts", "values", "needle"),
    [
        ([1.0, 2.0], [1.0], "values: 1 value(s) for 2 timestamp(s) in ts"),
        ([], [], "ts: List should have at least 1 item"),
        ([1.0, float("nan")], [1.0, 2.0], "ts.1: Input should be a finite number"),
        ([1.0, 2.0], [1.0, float("inf")], "values.1: Input should be a finite number"),
    ],
)
def test_bad_metric_series_is_a_dead_letter_naming_the_field(intake: Intake, ts, values, needle) -> None:
    raw = _series_bytes("api", "latency_ms", ts, values)
    groups, dead = intake.decode_series(rec(raw, offset=9))
    assert groups == [] and dead is not None
    assert (dead.reason, dead.offset, dead.value) == ("invalid", 9, raw)
    assert needle in dead.error
