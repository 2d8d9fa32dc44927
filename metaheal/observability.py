"""Prometheus metrics, ``/metrics`` + ``/healthz`` + ``/readyz``, JSON logs and librdkafka's log lines.

Every metric metaheal exports is declared here. ``metaheal up --metrics-port PORT`` serves them
for everything it runs: its own process (this module's default registry) and the streams
worker process, which runs in prometheus-client's multiprocess mode (``up`` gives it a
``PROMETHEUS_MULTIPROC_DIR``); :func:`exposition` merges both into one text page, summing
samples with the same name and labels.

>>> LEVELS["loose"], LEVELS["tight"]
(2, 0)
>>> families = {m.name for m in merged_families(REGISTRY, None)}
>>> {"metaheal_plans", "metaheal_consumer_lag", "metaheal_ledger_append_seconds"} <= families
True
"""

from __future__ import annotations

import json
import logging
import os
import re
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

prometheus_client.disable_created_metrics()  # *_created samples cannot be summed across processes

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LEVELS = {"tight": 0, "maintain": 1, "loose": 2}
TELEMETRY_FORMATS = ("avro", "json", "otlp_proto", "otlp_json")

REGISTRY = prometheus_client.REGISTRY

TELEMETRY_SAMPLES = Counter(
    "metaheal_telemetry_samples_total", "Telemetry samples accepted by the streams worker", ["format"]
)
DEADLETTERS = Counter("metaheal_deadletters_total", "Records dead-lettered, by reason", ["reason"])
CYCLES = Counter("metaheal_cycles_total", "Meta-loop cycles (CycleFocus decisions), by focus area", ["focus_area"])
DIRECTIVES = Counter("metaheal_directives_total", "Directives issued by the meta loop")
PLANS = Counter("metaheal_plans_total", "Plans made by the executor", ["playbook", "decision"])
OUTCOMES = Counter("metaheal_outcomes_total", "Signed outcomes, by playbook and result", ["playbook", "result"])
PENDING_APPROVALS = Gauge(
    "metaheal_pending_approvals", "Approval requests neither decided nor expired", multiprocess_mode="mostrecent"
)
GUARDRAIL_LEVEL = Gauge(
    "metaheal_guardrail_level", "Current guardrail level (0 tight, 1 maintain, 2 loose)", multiprocess_mode="mostrecent"
)
LEDGER_APPENDS = Counter("metaheal_ledger_appends_total", "Entries appended to the signed ledger")
LEDGER_APPEND_SECONDS = Histogram(
    "metaheal_ledger_append_seconds",
    "Time to append one ledger entry (signed, acknowledged by the broker)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CONSUMER_LAG = Gauge(
    "metaheal_consumer_lag", "Records not yet consumed, by topic", ["topic"], multiprocess_mode="mostrecent"
)
WEBHOOK_DELIVERIES = Counter(
    "metaheal_webhook_deliveries_total", "Webhook notifications by event and status", ["event", "status"]
)
STREAMS_HEARTBEAT = Gauge(
    "metaheal_streams_heartbeat_timestamp_seconds",
    "Last time the streams worker reported itself running",
    multiprocess_mode="max",
)


def merged_families(registry: CollectorRegistry, multiproc_dir: str | Path | None) -> list[Metric]:
    """This process's metrics plus the multiprocess files', samples with one name and labels summed."""
    sources: list[Iterable[Metric]] = [registry.collect()]
    if multiproc_dir and Path(multiproc_dir).is_dir():
        sources.append(MultiProcessCollector(None, path=str(multiproc_dir)).collect())
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for source in sources:
        for fam in source:
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                values[fam.name] = {}
            acc = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if fam.type == "gauge" and key in acc:
                    acc[key] = max(acc[key], s.value)  # one gauge, reported by whichever process owns it
                else:
                    acc[key] = acc.get(key, 0.0) + s.value
    for name, fam in families.items():
        for (sample, labels), value in values[name].items():
            fam.add_sample(sample, dict(labels), value)
    return list(families.values())


class _Merged(Collector):
    def __init__(self, registry: CollectorRegistry, multiproc_dir: str | Path | None) -> None:
        self.registry, self.multiproc_dir = registry, multiproc_dir

    def collect(self) -> Iterable[Metric]:
        return merged_families(self.registry, self.multiproc_dir)


def exposition(multiproc_dir: str | Path | None = None, registry: CollectorRegistry = REGISTRY) -> bytes:
    """The Prometheus text page of this process and of the worker processes writing to ``multiproc_dir``."""
    out = CollectorRegistry(auto_describe=False)
    out.register(_Merged(registry, multiproc_dir))
    return prometheus_client.generate_latest(out)


def prepare_multiproc_dir(path: Path) -> Path:
    """An empty folder for the child processes' metric files (stale files would add old counts)."""
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("*.db"):
        f.unlink()
    return path


# -- the HTTP endpoints ------------------------------------------------------------------------


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger("metaheal.metrics.http").debug(format, *args)


class MetricsServer:
    """``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (``ready()`` is empty) on a thread.

    ``ready`` returns what is not ready (role -> why); an empty dict means ready.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "0.0.0.0",
        multiproc_dir: Path | None = None,
        ready: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.multiproc_dir = multiproc_dir
        self.ready = ready or (lambda: {})
        self._server = make_server(
            host, port, self._app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metaheal-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        logging.getLogger(__name__).info("metrics server listening port=%d paths=/metrics,/healthz,/readyz", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body = exposition(self.multiproc_dir)
            start_response("200 OK", [("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"status": "alive", "pid": os.getpid()}).encode()]
        if path == "/readyz":
            try:
                waiting = self.ready()
            except Exception as exc:  # a readiness check that fails is "not ready", with the reason
                waiting = {"readiness": f"{type(exc).__name__}: {exc}"}
            status = "200 OK" if not waiting else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps({"ready": not waiting, "waiting": waiting}).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]


# -- logs ------------------------------------------------------------------------------------

_KV = re.compile(r"(?<![\w.])([a-z_][a-z0-9_]*)=(\"[^\"]*\"|\S+)")
LOG_FORMAT_ENV = "METAHEAL_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``key=value`` pairs of the message (``cycle_id=...``) become fields.

    >>> msg = "plan approved plan_id=%s by=%s"
    >>> rec = logging.LogRecord("metaheal.x", logging.INFO, "f", 1, msg, ("p-1", "ana"), None)
    >>> doc = json.loads(JsonFormatter().format(rec))
    >>> doc["msg"], doc["plan_id"], doc["by"], doc["level"]
    ('plan approved plan_id=p-1 by=ana', 'p-1', 'ana', 'info')
    """

    RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        for key, value in _KV.findall(msg):
            if key not in self.RESERVED:
                doc.setdefault(key, value.strip('"'))
        for key in ("cycle_id", "plan_id", "service"):
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def log_formatter(fmt: str | None, text_format: str) -> logging.Formatter:
    """``json`` or ``text`` (default: ``$METAHEAL_LOG_FORMAT``, else text); anything else is an error."""
    fmt = (fmt or os.environ.get(LOG_FORMAT_ENV) or "text").lower()
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(text_format)
    raise ValueError(f"--log-format / {LOG_FORMAT_ENV}: unknown {fmt!r} (expected text or json)")


def use_log_format(fmt: str | None, text_format: str) -> None:
    """Put the chosen formatter on the root logger's handlers (one stderr handler if there is none)."""
    formatter = log_formatter(fmt, text_format)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for h in root.handlers:
        h.setFormatter(formatter)


class LibrdkafkaFilter(logging.Filter):
    """librdkafka's log lines through Python logging, at a sensible level and without repetition.

    An unreachable broker makes librdkafka log a connect failure per broker per retry (hundreds
    of ``%3|...|FAIL|`` lines): connection-state facilities become warnings, and one line
    per distinct message (timings stripped) is let through per ``interval`` seconds.
    """

    NOISY = frozenset({"FAIL", "BROKERFAIL", "CONNECT", "REQTMOUT", "DISCONNECT"})
    _TIMING = re.compile(r"\(after \d+ms[^)]*\)|\d+ms|\d+/\d+")

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval, self.clock = interval, clock
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        fac = str(args[0]) if args else ""
        if fac in self.NOISY and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        key = self._TIMING.sub("", record.getMessage())
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        self._last[key] = now
        if len(self._last) > 1000:
            self._last.clear()
        return True


LIBRDKAFKA_LOGGER = logging.getLogger("metaheal.kafka.librdkafka")
LIBRDKAFKA_LOGGER.addFilter(LibrdkafkaFilter())
