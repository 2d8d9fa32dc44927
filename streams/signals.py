"""Metric name -> signal kind, and the unit normalisation the health windows rely on.

The meta loop reasons about *signals* (latency, errors, saturation, traffic, capacity,
dependency), not about whatever each producer calls its metrics, so the mapping lives
in configuration: the defaults below cover the usual names (incl. the OpenTelemetry
``http.server.request.duration``, reported in seconds and normalised here to ms so
every latency window is in one unit); ``settings.streams.signal_map`` adds or
replaces entries. A metric with a ``dependency`` label is always a dependency signal.
Unknown metrics map to ``None``: they are still scored and windowed, just unlabelled.

>>> m = SignalMap()
>>> m.signal_of("latency_ms", {}), m.signal_of("dependency_latency_ms", {"dependency": "db"})
('latency', 'dependency')
>>> m.signal_of("my_custom_gauge", {}) is None
True
>>> SignalMap({"my_custom_gauge": "saturation"}).signal_of("my_custom_gauge", {})
'saturation'
>>> m.signal_of("process.runtime.cpython.memory", {}), m.signal_of("http.server.request.duration.p95", {})
('saturation', 'latency')
>>> normalise_value("http.server.request.duration", 0.245)
245.0
>>> SignalMap({"x": "latncy"})
Traceback (most recent call last):
...
ValueError: streams.signal_map.x: unknown signal kind 'latncy'
    (expected one of capacity, dependency, errors, latency, saturation, traffic, or 'none')
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

SIGNAL_KINDS: frozenset[str] = frozenset({"latency", "errors", "saturation", "traffic", "capacity", "dependency"})

#: Documented defaults; ``settings.streams.signal_map`` overrides entries by metric name.
DEFAULT_SIGNAL_MAP: dict[str, str] = {
    # latency (ms; see UNIT_SCALE for metrics reported in seconds)
    "latency_ms": "latency",
    "latency_p50_ms": "latency",
    "latency_p95_ms": "latency",
    "latency_p99_ms": "latency",
    "http.server.request.duration": "latency",
    # errors: a 0..1 ratio or a per-second rate
    "error_rate": "errors",
    "errors_per_s": "errors",
    # saturation: utilisations 0..1, queue lengths
    "cpu_utilization": "saturation",
    "memory_utilization": "saturation",
    "queue_depth": "saturation",
    # traffic
    "requests_per_s": "traffic",
    # capacity
    "instances": "capacity",
    "ready_instances": "capacity",
    # dependency metrics usually carry a ``dependency`` label (which wins anyway)
    "dependency_latency_ms": "dependency",
    "dependency_error_rate": "dependency",
    # OpenTelemetry semantic conventions, as the OTLP stage names them (docs/otlp.md): a histogram
    # becomes <name>.count/.sum/.p50/.p95/.p99 (durations in ms), a counter a per-second rate
    "http.server.request.duration.p50": "latency",
    "http.server.request.duration.p95": "latency",
    "http.server.request.duration.p99": "latency",
    "http.server.request.duration.count": "traffic",
    "http.server.request.duration.error_ratio": "errors",
    "http.server.active_requests": "saturation",
    "rpc.server.duration.p50": "latency",
    "rpc.server.duration.p95": "latency",
    "rpc.server.duration.p99": "latency",
    "rpc.server.duration.count": "traffic",
    "rpc.server.duration.error_ratio": "errors",
    "http.client.request.duration.*": "dependency",
    "db.client.operation.duration.*": "dependency",
    "system.cpu.utilization": "saturation",
    "process.cpu.utilization": "saturation",
    "system.memory.utilization": "saturation",
    "jvm.cpu.recent_utilization": "saturation",
    "jvm.memory.used": "saturation",
    "jvm.memory.*": "saturation",
    "process.memory.usage": "saturation",
    "process.runtime.*memory*": "saturation",
    "messaging.*lag*": "saturation",
    "kafka.consumer_group.lag": "saturation",
}

#: Multipliers that bring a metric into the unit of its signal (seconds -> ms for latency).
UNIT_SCALE: dict[str, float] = {"http.server.request.duration": 1000.0}

DEPENDENCY_LABEL = "dependency"


def normalise_value(metric: str, value: float) -> float:
    """The value in its signal's unit (latency in ms)."""
    scale = UNIT_SCALE.get(metric)
    return value * scale if scale is not None else value


class SignalMap:
    """Defaults plus overrides; an override of ``"none"`` unmaps a default name."""

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        table = dict(DEFAULT_SIGNAL_MAP)
        for metric, kind in (overrides or {}).items():
            if kind.lower() in ("none", ""):
                table.pop(metric, None)
                continue
            if kind not in SIGNAL_KINDS:
                expected = ", ".join(sorted(SIGNAL_KINDS))
                raise ValueError(
                    f"streams.signal_map.{metric}: unknown signal kind {kind!r} (expected one of {expected}, or 'none')"
                )
            table[metric] = kind
        self._table = table
        # names with ``*`` are shell-style patterns, tried in order after the exact names
        self._patterns = [(pattern, kind) for pattern, kind in table.items() if "*" in pattern]

    def signal_of(self, metric: str, labels: Mapping[str, str]) -> str | None:
        if labels.get(DEPENDENCY_LABEL):
            return "dependency"
        kind = self._table.get(metric)
        if kind is None and self._patterns:
            kind = next((k for pattern, k in self._patterns if fnmatchcase(metric, pattern)), None)
        return kind


def series_id(service: str, metric: str, dependency: str | None = None) -> str:
    """Stable id of one scored series (the scorer-state key).

    >>> series_id("api", "latency_ms"), series_id("api", "dependency_latency_ms", "db")
    ('api/latency_ms', 'api/dependency_latency_ms{dependency=db}')
    """
    base = f"{service}/{metric}"
    return f"{base}{{dependency={dependency}}}" if dependency else base
