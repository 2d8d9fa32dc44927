"""Real OTLP export requests, built with the OpenTelemetry SDK's metric data model and its OTLP encoders."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.json.common.metrics_encoder import encode_metrics as encode_json
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics as encode_proto
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Buckets,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

NS = 1_000_000_000
DELTA, CUMULATIVE = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)  # the SDK's seconds


def metrics_data(resource: Mapping[str, Any], metrics: Sequence[Metric]) -> MetricsData:
    scope = InstrumentationScope("metaheal.tests", "1.0")
    return MetricsData(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource.create(dict(resource)) if resource else Resource({}),
                scope_metrics=[ScopeMetrics(scope=scope, metrics=list(metrics), schema_url="")],
                schema_url="",
            )
        ]
    )


def encode(data: MetricsData, fmt: str) -> bytes:
    """``otlp_proto``: the SDK's protobuf encoder; ``otlp_json``: its OTLP/JSON encoder."""
    if fmt == "otlp_proto":
        return encode_proto(data).SerializeToString()
    return encode_json(data).to_json().encode()


def gauge(name: str, points: Sequence[tuple[float, float]], unit: str = "1", **attrs: Any) -> Metric:
    return Metric(
        name=name,
        description="",
        unit=unit,
        data=Gauge(data_points=[NumberDataPoint(attrs, 0, int(t * NS), v) for t, v in points]),
    )


def counter(name: str, points: Sequence[tuple[float, float]], start: float, temporality: Any = CUMULATIVE) -> Metric:
    return Metric(
        name=name,
        description="",
        unit="{request}",
        data=Sum(
            data_points=[NumberDataPoint({}, int(start * NS), int(t * NS), v) for t, v in points],
            aggregation_temporality=temporality,
            is_monotonic=True,
        ),
    )


def histogram_point(values: Sequence[float], start: float, end: float, **attrs: Any) -> HistogramDataPoint:
    counts = [0] * (len(BOUNDS) + 1)
    for v in values:
        counts[next((i for i, b in enumerate(BOUNDS) if v <= b), len(BOUNDS))] += 1
    return HistogramDataPoint(
        attributes=attrs,
        start_time_unix_nano=int(start * NS),
        time_unix_nano=int(end * NS),
        count=len(values),
        sum=sum(values),
        bucket_counts=counts,
        explicit_bounds=list(BOUNDS),
        min=min(values),
        max=max(values),
    )


def histogram(name: str, points: Sequence[HistogramDataPoint], temporality: Any = DELTA, unit: str = "s") -> Metric:
    return Metric(
        name=name,
        description="",
        unit=unit,
        data=Histogram(data_points=list(points), aggregation_temporality=temporality),
    )


def exponential_point(
    values: Sequence[float], start: float, end: float, scale: int = 3
) -> ExponentialHistogramDataPoint:
    base = 2 ** (2**-scale)
    index = [math.ceil(math.log(v, base)) - 1 for v in values]  # bucket i holds (base**i, base**(i+1)]
    offset = min(index)
    counts = [0] * (max(index) - offset + 1)
    for i in index:
        counts[i - offset] += 1
    return ExponentialHistogramDataPoint(
        attributes={},
        start_time_unix_nano=int(start * NS),
        time_unix_nano=int(end * NS),
        count=len(values),
        sum=sum(values),
        scale=scale,
        zero_count=0,
        positive=Buckets(offset=offset, bucket_counts=counts),
        negative=Buckets(offset=0, bucket_counts=[]),
        flags=0,
        min=min(values),
        max=max(values),
    )


def exponential(name: str, points: Sequence[ExponentialHistogramDataPoint], unit: str = "s") -> Metric:
    return Metric(
        name=name,
        description="",
        unit=unit,
        data=ExponentialHistogram(data_points=list(points), aggregation_temporality=DELTA),
    )
