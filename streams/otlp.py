"""OTLP metrics (``ExportMetricsServiceRequest``, protobuf or JSON) -> native samples.

The OpenTelemetry Collector's Kafka exporter writes one ``ExportMetricsServiceRequest``
per record, protobuf (``otlp_proto``) or JSON (``otlp_json``). :class:`OtlpDecoder`
parses it with ``opentelemetry-proto`` and maps it onto the samples native telemetry
carries (``service``, ``metric``, ``value``, ``ts``, ``labels``):

* the service is the resource attribute ``service.name``;
* gauges, and sums that are not monotonic, are samples as they are; monotonic sums
  (counters) are per-second rates: a delta point over its own interval, a cumulative
  point against the previous point of the same stream (the first point of a stream
  only sets the baseline; a reset, i.e. a new start time or a smaller value, restarts it);
* histograms, exponential histograms and summaries become ``<name>.count`` (observations
  in the interval), ``<name>.sum`` and ``<name>.p50|p95|p99`` estimated from the buckets
  (cumulative points are differenced against the previous point first); HTTP server
  durations also give ``<name>.error_ratio`` (5xx or ``error.type`` observations / all);
* values in seconds (``s``, ``ms``, ``us``, ``ns`` units) become milliseconds, ratios
  (unit ``1``) are kept; data point attributes become labels, and the attribute naming the
  called system of a client metric (``db.system.name``/``db.system``, ``server.address``)
  becomes the ``dependency`` label.

Anything that cannot be mapped (missing ``service.name``, unknown temporality, NaN, a
metric without data points, buckets that do not add up) is reported as a *problem*
naming its field; the caller dead-letters the record with those problems, and forwards
what could be mapped.

>>> from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
>>> req = ExportMetricsServiceRequest()
>>> rm = req.resource_metrics.add()
>>> kv = rm.resource.attributes.add(key="service.name"); kv.value.string_value = "api"
>>> m = rm.scope_metrics.add().metrics.add(name="system.cpu.utilization", unit="1")
>>> p = m.gauge.data_points.add(as_double=0.75, time_unix_nano=2_000_000_000)
>>> out = OtlpDecoder().decode(req.SerializeToString())
>>> out.format, out.samples, out.problems
('otlp_proto', [{'service': 'api', 'metric': 'system.cpu.utilization', 'value': 0.75, 'ts': 2.0, 'labels': {}}], [])
>>> OtlpDecoder().decode(b'{"resourceMetrics": [{"scopeMetrics": []}]}').problems
['resource_metrics[0].resource.attributes: service.name missing']
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, DataPointFlags

from metaheal.errors import DecodeError
from metaheal.streams.signals import DEPENDENCY_LABEL, UNIT_SCALE

OTLP_FORMATS = ("otlp_proto", "otlp_json")
QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK

#: OTel unit (UCUM) -> factor into metaheal's unit (durations in ms; anything else kept)
UNIT_FACTORS: dict[str, float] = {"s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "ns": 1e-6, "min": 60_000.0}

#: client metrics: the attribute naming the system called, in order of preference -> ``dependency`` label
DEPENDENCY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "db.client.operation.duration": ("db.system.name", "db.system"),
    "db.client.connection.count": ("db.system.name", "db.system"),
    "http.client.request.duration": ("server.address",),
    "rpc.client.duration": ("rpc.service",),
    "messaging.client.operation.duration": ("messaging.system",),
}

#: histograms whose observations say whether the request failed (-> ``<name>.error_ratio``)
ERROR_RATIO_METRICS = frozenset({"http.server.request.duration", "rpc.server.duration"})

MAX_PROBLEMS = 20  # a dead letter names at most this many fields (and how many more there were)


@dataclass
class OtlpResult:
    """What one record yielded: samples (native field dicts) and problems (field: what is wrong)."""

    format: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    points: int = 0  # data points read

    @property
    def error(self) -> str:
        shown = "; ".join(self.problems[:MAX_PROBLEMS])
        more = len(self.problems) - MAX_PROBLEMS
        return f"{shown}; ... {more} more" if more > 0 else shown

    def by_service(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for s in self.samples:
            out.setdefault(s["service"], []).append(s)
        return out


def detect_format(data: bytes) -> str:
    """``otlp_json`` when the record is a JSON object, else ``otlp_proto``.

    >>> detect_format(b' {"resourceMetrics": []}'), detect_format(b"\\n\\x00")
    ('otlp_json', 'otlp_proto')
    """
    return "otlp_json" if data.lstrip()[:1] == b"{" else "otlp_proto"


def parse_request(data: bytes | None) -> tuple[str, ExportMetricsServiceRequest]:
    """Parse one record; raises :class:`~metaheal.errors.DecodeError` naming the format."""
    if not data:
        raise DecodeError("value: empty record (expected an OTLP ExportMetricsServiceRequest)")
    fmt = detect_format(data)
    req = ExportMetricsServiceRequest()
    try:
        if fmt == "otlp_json":
            json_format.Parse(data, req, ignore_unknown_fields=True)
        else:
            req.ParseFromString(data)
    except (json_format.ParseError, ProtobufDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"not an OTLP ExportMetricsServiceRequest ({fmt}): {exc}") from None
    return fmt, req


def any_value(v: AnyValue) -> str:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind == "int_value":
        return str(v.int_value)
    if kind == "double_value":
        return repr(v.double_value)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    if kind == "array_value":
        return "[" + ",".join(any_value(x) for x in v.array_value.values) + "]"
    if kind == "kvlist_value":
        return "{" + ",".join(f"{kv.key}={any_value(kv.value)}" for kv in v.kvlist_value.values) + "}"
    return ""


def attributes(kvs: Iterable[Any]) -> dict[str, str]:
    return {kv.key: any_value(kv.value) for kv in kvs}


# -- percentiles from buckets ------------------------------------------------------------------


def quantile_from_buckets(buckets: Sequence[tuple[float, float, float]], q: float) -> float:
    """Linear interpolation inside the bucket holding rank ``q * total``; buckets are ``(lower, upper, count)``.

    >>> buckets = [(0, 10, 50), (10, 20, 50)]
    >>> quantile_from_buckets(buckets, 0.5), quantile_from_buckets(buckets, 0.99)
    (10.0, 19.8)
    """
    total = sum(c for _, _, c in buckets)
    rank = q * total
    seen = 0.0
    for lower, upper, count in buckets:
        if count <= 0:
            continue
        if seen + count >= rank:
            return float(lower + (upper - lower) * (rank - seen) / count)
        seen += count
    return float(buckets[-1][1])


def explicit_buckets(
    bounds: Sequence[float], counts: Sequence[float], lo: float | None, hi: float | None
) -> list[tuple[float, float, float]]:
    """Explicit-bounds buckets with finite edges: the open first/last bucket ends at min/max when known."""
    out = []
    n = len(counts)
    for i, c in enumerate(counts):
        lower = bounds[i - 1] if i > 0 else (lo if lo is not None else min(0.0, bounds[0]) if bounds else 0.0)
        last = hi if hi is not None else (bounds[-1] if bounds else lower)
        upper = bounds[i] if i < n - 1 else last
        if lo is not None:
            lower = max(lower, lo)
        if hi is not None:
            upper = min(upper, hi)
        out.append((lower, max(lower, upper), c))
    return out


def exponential_buckets(
    scale: int, zero_count: float, positive: dict[int, float], negative: dict[int, float]
) -> list[tuple[float, float, float]]:
    """Exponential buckets (index ``i`` covers ``(base**i, base**(i+1)]``, ``base = 2**2**-scale``), ascending."""
    base = 2.0 ** (2.0**-scale)
    out = [(-(base ** (i + 1)), -(base**i), c) for i, c in sorted(negative.items(), reverse=True)]
    if zero_count:
        out.append((0.0, 0.0, zero_count))
    out += [(base**i, base ** (i + 1), c) for i, c in sorted(positive.items())]
    return out


def _rescale(counts: dict[int, float], from_scale: int, to_scale: int) -> dict[int, float]:
    if from_scale == to_scale:
        return counts
    shift = from_scale - to_scale
    out: dict[int, float] = {}
    for i, c in counts.items():
        out[i >> shift] = out.get(i >> shift, 0.0) + c
    return out


# -- the decoder -------------------------------------------------------------------------------


class OtlpDecoder:
    """``bytes -> OtlpResult``; keeps the previous point of each cumulative stream (bounded LRU)."""

    def __init__(self, *, max_streams: int = 100_000) -> None:
        self.max_streams = max_streams
        self._prev: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    # previous cumulative points, one per (service, metric, attributes)
    def _swap(self, key: tuple[Any, ...], value: Any) -> Any:
        prev = self._prev.pop(key, None)
        self._prev[key] = value
        if len(self._prev) > self.max_streams:
            self._prev.popitem(last=False)
        return prev

    def decode(self, data: bytes | None) -> OtlpResult:
        """Raises :class:`~metaheal.errors.DecodeError` when the record is no OTLP request at all."""
        fmt, req = parse_request(data)
        out = OtlpResult(fmt)
        if not req.resource_metrics:
            out.problems.append("resource_metrics: empty request")
        for r, rm in enumerate(req.resource_metrics):
            where = f"resource_metrics[{r}]"
            service = ""
            for kv in rm.resource.attributes:
                if kv.key == "service.name":
                    service = any_value(kv.value)
                    break
            if not service:
                out.problems.append(f"{where}.resource.attributes: service.name missing")
                continue
            for s, sm in enumerate(rm.scope_metrics):
                for i, metric in enumerate(sm.metrics):
                    self._metric(out, service, metric, f"{where}.scope_metrics[{s}].metrics[{i}]({metric.name})")
        return out

    def _metric(self, out: OtlpResult, service: str, m: Any, where: str) -> None:
        if not m.name:
            out.problems.append(f"{where}.name: missing")
            return
        kind = m.WhichOneof("data")
        factor = UNIT_FACTORS.get(m.unit, 1.0)
        # a sample under a name the native intake scales itself (UNIT_SCALE) is not scaled twice
        number_factor = 1.0 if m.name in UNIT_SCALE else factor
        if kind is None:
            out.problems.append(
                f"{where}.data: no data points (no gauge, sum, histogram, exponential_histogram or summary)"
            )
            return
        data = getattr(m, kind)
        if not data.data_points:
            out.problems.append(f"{where}.{kind}.data_points: no data points")
            return
        temporality = getattr(data, "aggregation_temporality", None)
        if temporality is not None and temporality not in (DELTA, CUMULATIVE):
            out.problems.append(f"{where}.{kind}.aggregation_temporality: unknown ({temporality})")
            return
        dep_keys = DEPENDENCY_ATTRIBUTES.get(m.name, ())
        errors_of = m.name in ERROR_RATIO_METRICS
        bad = good = 0.0
        for j, p in enumerate(data.data_points):
            out.points += 1
            if p.flags & NO_RECORDED_VALUE:
                continue  # a staleness marker: the stream has no value now, by design
            pw = f"{where}.{kind}.data_points[{j}]"
            if not p.time_unix_nano:
                out.problems.append(f"{pw}.time_unix_nano: missing")
                continue
            labels = attributes(p.attributes)
            for key in dep_keys:
                if labels.get(key):
                    labels[DEPENDENCY_LABEL] = labels[key]
                    break
            ts = p.time_unix_nano / 1e9
            if kind == "gauge" or kind == "sum":
                value = self._number(out, service, m, data, kind, p, labels, pw)
                if value is not None:
                    out.samples.append(_sample(service, m.name, value * number_factor, ts, labels))
                continue
            interval = self._distribution(out, service, m.name, kind, temporality, p, labels, pw)
            if interval is None:
                continue
            count, total, buckets = interval
            out.samples.append(_sample(service, f"{m.name}.count", count, ts, labels))
            if total is not None:
                out.samples.append(_sample(service, f"{m.name}.sum", total * factor, ts, labels))
            if count > 0 and buckets:
                for q, suffix in QUANTILES:
                    v = buckets(q)
                    if v is not None:
                        out.samples.append(_sample(service, f"{m.name}.{suffix}", v * factor, ts, labels))
            if errors_of:
                failed = bool(labels.get("error.type")) or labels.get("http.response.status_code", "").startswith("5")
                bad, good = bad + (count if failed else 0.0), good + count
        if errors_of and bad + good > 0:
            last_ts = data.data_points[-1].time_unix_nano / 1e9
            out.samples.append(_sample(service, f"{m.name}.error_ratio", bad / (bad + good), last_ts, {}))

    def _number(
        self, out: OtlpResult, service: str, m: Any, data: Any, kind: str, p: Any, labels: dict[str, str], pw: str
    ) -> float | None:
        which = p.WhichOneof("value")
        if which is None:
            out.problems.append(f"{pw}.value: not set (as_double or as_int)")
            return None
        value = float(p.as_double if which == "as_double" else p.as_int)
        if not math.isfinite(value):
            out.problems.append(f"{pw}.{which}: {value} is not a finite number")
            return None
        if kind == "gauge" or not data.is_monotonic:
            return value
        if data.aggregation_temporality == DELTA:
            span = float(p.time_unix_nano - p.start_time_unix_nano) / 1e9
            if not p.start_time_unix_nano or span <= 0:
                out.problems.append(f"{pw}.start_time_unix_nano: a delta counter needs its interval start")
                return None
            return value / span
        key = (service, m.name, tuple(sorted(labels.items())))
        prev = self._swap(key, (p.start_time_unix_nano, p.time_unix_nano, value))
        if prev is None:
            return None  # the first point of a cumulative counter only sets the baseline
        start, t0, v0 = prev
        if p.start_time_unix_nano != start or value < v0:  # reset: count from the new start
            span = float(p.time_unix_nano - p.start_time_unix_nano) / 1e9
            return value / span if p.start_time_unix_nano and span > 0 else None
        span = float(p.time_unix_nano - t0) / 1e9
        return float(value - v0) / span if span > 0 else None

    def _distribution(
        self,
        out: OtlpResult,
        service: str,
        name: str,
        kind: str,
        temporality: int | None,
        p: Any,
        labels: dict[str, str],
        pw: str,
    ) -> tuple[float, float | None, Any] | None:
        """``(count, sum, quantile function)`` of the point's interval, or ``None`` (problem noted or first point)."""
        count = float(p.count)
        total = p.sum if kind == "summary" or p.HasField("sum") else None
        if total is not None and not math.isfinite(total):
            out.problems.append(f"{pw}.sum: {total} is not a finite number")
            return None
        if kind == "summary":  # quantiles come computed, always over the stream's lifetime
            qs = {round(qv.quantile, 6): qv.value for qv in p.quantile_values}
            if any(not math.isfinite(v) for v in qs.values()):
                out.problems.append(f"{pw}.quantile_values: not a finite number")
                return None
            return count, total, lambda q: qs.get(round(q, 6))
        lo = p.min if p.HasField("min") else None
        hi = p.max if p.HasField("max") else None
        if kind == "histogram":
            bounds, counts = list(p.explicit_bounds), [float(c) for c in p.bucket_counts]
            if counts and len(counts) != len(bounds) + 1:
                out.problems.append(
                    f"{pw}.bucket_counts: {len(counts)} counts for {len(bounds)} explicit_bounds (expected bounds + 1)"
                )
                return None
            if any(not math.isfinite(b) for b in bounds) or any(
                b >= a for a, b in zip(bounds[1:], bounds, strict=False)
            ):
                out.problems.append(f"{pw}.explicit_bounds: not finite and strictly increasing")
                return None
            if counts and sum(counts) != count:
                out.problems.append(f"{pw}.count: {p.count} but bucket_counts add up to {sum(counts):.0f}")
                return None
            state: Any = (tuple(bounds), counts)
        else:
            pos = {p.positive.offset + k: float(c) for k, c in enumerate(p.positive.bucket_counts) if c}
            neg = {p.negative.offset + k: float(c) for k, c in enumerate(p.negative.bucket_counts) if c}
            if sum(pos.values()) + sum(neg.values()) + p.zero_count != count:
                out.problems.append(f"{pw}.count: {p.count} but zero_count and buckets add up to another number")
                return None
            state = (p.scale, float(p.zero_count), pos, neg)
        if temporality == CUMULATIVE:
            key = (service, name, tuple(sorted(labels.items())))
            prev = self._swap(key, (p.start_time_unix_nano, count, total, state))
            if prev is None:
                return None  # the first cumulative point only sets the baseline
            start, c0, s0, st0 = prev
            if p.start_time_unix_nano == start and count >= c0:
                diffed = _subtract(kind, state, st0)
                if diffed is not None:
                    count, state = count - c0, diffed
                    total = total - s0 if total is not None and s0 is not None else None
                    lo = hi = None  # lifetime extremes do not bound this interval
        if kind == "histogram":
            bounds_t, counts = state
            buckets = explicit_buckets(bounds_t, counts, lo, hi) if counts else []
        else:
            scale, zero, pos, neg = state
            buckets = exponential_buckets(scale, zero, pos, neg)
            if lo is not None or hi is not None:
                buckets = [
                    (max(a, lo) if lo is not None else a, min(b, hi) if hi is not None else b, c) for a, b, c in buckets
                ]
        return count, total, (lambda q: quantile_from_buckets(buckets, q)) if buckets else None


def _subtract(kind: str, now: Any, before: Any) -> Any:
    """The interval's buckets: ``now - before`` (``None`` when they do not line up: then ``now`` is used)."""
    if kind == "histogram":
        bounds, counts = now
        bounds0, counts0 = before
        if bounds != bounds0 or len(counts) != len(counts0):
            return None
        diff = [a - b for a, b in zip(counts, counts0, strict=True)]
        return None if any(d < 0 for d in diff) else (bounds, diff)
    scale, zero, pos, neg = now
    scale0, zero0, pos0, neg0 = before
    s = min(scale, scale0)
    out = []
    for a, b in ((pos, pos0), (neg, neg0)):
        a, b = _rescale(a, scale, s), _rescale(b, scale0, s)
        d = {i: c - b.get(i, 0.0) for i, c in a.items()}
        if any(v < 0 for v in d.values()) or any(i not in a for i in b):
            return None
        out.append({i: v for i, v in d.items() if v})
    return (s, zero - zero0, out[0], out[1]) if zero >= zero0 else None


def _sample(service: str, metric: str, value: float, ts: float, labels: dict[str, str]) -> dict[str, Any]:
    return {"service": service, "metric": metric, "value": value, "ts": ts, "labels": labels}


__all__ = [
    "OTLP_FORMATS",
    "OtlpDecoder",
    "OtlpResult",
    "detect_format",
    "exponential_buckets",
    "parse_request",
    "quantile_from_buckets",
]
