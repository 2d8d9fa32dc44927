"""OTLP decoding: requests built by the OpenTelemetry SDK's data model and encoded by its OTLP encoders."""

from __future__ import annotations

import math
import random

import pytest

from metaheal.errors import DecodeError
from metaheal.streams.intake import Record
from metaheal.streams.otlp import OtlpDecoder
from metaheal.streams.otlp_bridge import OtlpBridge

from .otlp_sdk import (
    CUMULATIVE,
    DELTA,
    counter,
    encode,
    exponential,
    exponential_point,
    gauge,
    histogram,
    histogram_point,
    metrics_data,
)

FORMATS = ("otlp_proto", "otlp_json")
T = 1_700_000_000.0


def by_metric(samples: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in samples:
        out.setdefault(s["metric"], []).append(s)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_gauge_with_service_labels_and_ratio_unit(fmt: str) -> None:
    data = metrics_data(
        {"service.name": "checkout"}, [gauge("system.cpu.utilization", [(T, 0.5), (T + 1, 0.75)], cpu="0")]
    )
    out = OtlpDecoder().decode(encode(data, fmt))
    assert out.format == fmt and out.problems == []
    assert [(s["service"], s["metric"], s["value"], s["ts"], s["labels"]) for s in out.samples] == [
        ("checkout", "system.cpu.utilization", 0.5, T, {"cpu": "0"}),
        ("checkout", "system.cpu.utilization", 0.75, T + 1, {"cpu": "0"}),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_delta_histogram_in_seconds_becomes_ms_count_sum_and_percentiles(fmt: str) -> None:
    rng = random.Random(3)
    values = [rng.uniform(0.1, 0.25) for _ in range(400)] + [rng.uniform(0.5, 0.75) for _ in range(100)]
    data = metrics_data(
        {"service.name": "api"},
        [histogram("http.server.request.duration", [histogram_point(values, T, T + 10, **{"http.route": "/x"})])],
    )
    out = OtlpDecoder().decode(encode(data, fmt))
    assert out.problems == []
    got = {m: ss[0]["value"] for m, ss in by_metric(out.samples).items()}
    assert got["http.server.request.duration.count"] == 500
    assert got["http.server.request.duration.sum"] == pytest.approx(sum(values) * 1000)
    truth = sorted(values)
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        true_ms = truth[int(q * len(truth)) - 1] * 1000
        estimate = got[f"http.server.request.duration.{name}"]
        # estimated inside the true value's bucket (100-250 ms, 500-750 ms): off by less than its width
        assert abs(estimate - true_ms) < 250, (name, estimate, true_ms)
    assert 100 <= got["http.server.request.duration.p50"] <= 250
    assert 500 <= got["http.server.request.duration.p99"] <= 750
    assert got["http.server.request.duration.error_ratio"] == 0.0


def test_cumulative_histogram_is_differenced_per_interval() -> None:
    dec = OtlpDecoder()
    first = [0.01] * 100
    second = first + [0.6] * 100  # cumulative: the second interval only had 600 ms requests

    def request(values: list[float], end: float) -> bytes:
        point = histogram_point(values, T, end)
        return encode(
            metrics_data({"service.name": "api"}, [histogram("http.server.request.duration", [point], CUMULATIVE)]),
            "otlp_proto",
        )

    out1 = dec.decode(request(first, T + 10))
    assert out1.samples == [] and out1.problems == []  # the first cumulative point only sets the baseline
    got = {s["metric"]: s["value"] for s in dec.decode(request(second, T + 20)).samples}
    assert got["http.server.request.duration.count"] == 100
    assert got["http.server.request.duration.sum"] == pytest.approx(60_000)
    assert 500 <= got["http.server.request.duration.p50"] <= 750  # not the lifetime median (10 ms)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exponential_histogram_percentiles(fmt: str) -> None:
    rng = random.Random(5)
    values = sorted(rng.lognormvariate(math.log(0.2), 0.3) for _ in range(1000))
    data = metrics_data(
        {"service.name": "api"}, [exponential("rpc.server.duration", [exponential_point(values, T, T + 5)])]
    )
    out = OtlpDecoder().decode(encode(data, fmt))
    assert out.problems == []
    got = {s["metric"]: s["value"] for s in out.samples}
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        true_ms = values[int(q * len(values)) - 1] * 1000
        # scale 3: buckets are 9% wide, so the estimate is within 10% of the truth
        assert got[f"rpc.server.duration.{name}"] == pytest.approx(true_ms, rel=0.1), name


@pytest.mark.parametrize("temporality", [DELTA, CUMULATIVE])
def test_counters_become_per_second_rates(temporality) -> None:
    dec = OtlpDecoder()
    if temporality == DELTA:
        points = [(T + 10, 50.0), (T + 20, 80.0)]  # each over its own 10 s (start = T for both: first only)
        data = metrics_data({"service.name": "api"}, [counter("requests", points[:1], T, DELTA)])
        assert [s["value"] for s in dec.decode(encode(data, "otlp_proto")).samples] == [5.0]
        return
    values = []
    for t, v in [(T + 10, 100.0), (T + 20, 300.0), (T + 30, 50.0)]:  # the last one: a reset, start unchanged
        data = metrics_data({"service.name": "api"}, [counter("requests", [(t, v)], T)])
        values += [s["value"] for s in dec.decode(encode(data, "otlp_json")).samples]
    assert values == [20.0, pytest.approx(50.0 / 30)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_dependency_label_from_db_system(fmt: str) -> None:
    point = histogram_point([0.002] * 10, T, T + 1, **{"db.system": "postgresql"})
    data = metrics_data({"service.name": "api"}, [histogram("db.client.operation.duration", [point])])
    out = OtlpDecoder().decode(encode(data, fmt))
    assert {s["labels"]["dependency"] for s in out.samples} == {"postgresql"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("resource", "metric", "field"),
    [
        ({}, gauge("system.cpu.utilization", [(T, 0.5)]), "resource_metrics[0].resource.attributes: service.name"),
        (
            {"service.name": "api"},
            gauge("system.cpu.utilization", [(T, math.nan)]),
            "metrics[0](system.cpu.utilization).gauge.data_points[0].as_double: nan",
        ),
        (
            {"service.name": "api"},
            counter("requests", [(T + 1, 1.0)], T, temporality=0),
            "metrics[0](requests).sum.aggregation_temporality: unknown (0)",
        ),
        (
            {"service.name": "api"},
            gauge("system.cpu.utilization", []),
            "metrics[0](system.cpu.utilization). ... no data points",
        ),
    ],
)
def test_bad_otlp_names_the_field(fmt: str, resource: dict, metric, field: str) -> None:
    raw = encode(metrics_data(resource, [metric]), fmt)
    out = OtlpBridge(telemetry_partitions=4).convert(Record("otlp_metrics", 0, 9, None, raw))
    assert out.records == []
    assert out.dead is not None and out.dead.reason == "invalid" and out.dead.value == raw
    assert all(part in out.dead.error for part in field.split(" ... ")), out.dead.error


def test_partial_request_forwards_the_good_part_and_dead_letters_the_rest() -> None:
    data = metrics_data(
        {"service.name": "api"}, [gauge("queue_depth", [(T, 4.0)]), gauge("system.cpu.utilization", [(T, math.inf)])]
    )
    out = OtlpBridge(telemetry_partitions=4).convert(Record("otlp_metrics", 0, 9, None, encode(data, "otlp_proto")))
    assert out.samples == 1 and len(out.records) == 1
    assert out.dead is not None and out.dead.reason == "partial"
    assert "metrics[1](system.cpu.utilization).gauge.data_points[0].as_double: inf" in out.dead.error


@pytest.mark.parametrize("raw", [b"\xff\xfe garbage", b'{"resourceMetrics": 7}', b""])
def test_not_otlp_at_all(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="OTLP"):
        OtlpDecoder().decode(raw)
    out = OtlpBridge(telemetry_partitions=4).convert(Record("otlp_metrics", 0, 1, None, raw))
    assert out.dead is not None and out.dead.reason == "undecodable"
