"""Benchmark of the streams worker (``metaheal bench scorer``, ``benchmarks/bench_streams.py``).

Measurements in one run, on the same data and the same machine:

1. model only: :class:`~metaheal.streams.scorer.AnomalyScorer` per series, score-then-learn
   over every sample, no Kafka: the ceiling;
2. end to end, ``rounds`` times per encoding (default 3), alternating: the samples
   pre-produced to ``<prefix>telemetry`` as ``MetricSeries`` records (one series' samples
   as columns) or as ``MetricBatch`` records (a record per sample inside the batch), each
   phase under a new topic prefix with a new worker; one faust worker (own process)
   consumes, decodes, scores, windows and publishes; samples/s from the worker's "Worker
   ready" log line to the moment the last expected per-window summary is read back. The
   model is measured again after every phase, and each phase's ratio is to the mean of
   the model-only runs just before and just after it, because this machine's speed
   drifts by tens of percent within a minute; the medians per encoding are printed;
3. latency: a paced producer offers a fixed load (default 5,000 samples/s, as
   ``MetricSeries`` records) with event time = wall-clock produce time; for every
   ``kind="sample"`` anomaly event read back, latency = read time - sample ts (same
   clock); p50/p99 printed.

The machine may be shared with other work: numbers are indicative, ratios are from one run.
Because of that the CPU time per sample is printed too (model only: this process; end
to end: the worker process, all its threads, from "Worker ready" to the last summary):
it moves far less than wall-clock rates when other programs compete for the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import random
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings, StreamSettings, TopicSettings
from metaheal.events import AnomalyScore, Metric, MetricBatch, MetricSeries
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.streams.scorer import AnomalyScorer
from metaheal.streams.signals import series_id
from metaheal.streams.worker import spawn_worker, worker_env
from metaheal.topics import ensure_topics

logger = logging.getLogger(__name__)


@dataclass
class Throughput:
    """One end-to-end phase: samples/s and worker CPU per sample, against the model around it."""

    encoding: str
    rate: float
    cpu_us: float
    model_rate: float  # mean of the model-only runs just before and just after this phase

    @property
    def ratio(self) -> float:
        return self.rate / self.model_rate


@dataclass
class BenchResult:
    samples: int
    series: int
    model_rate: float  # mean of every model-only run
    phases: list[Throughput]
    latency_load: float
    latency_events: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    model_cpu_us: float = 0.0  # CPU microseconds per sample, model only

    def encodings(self) -> list[str]:
        return list(dict.fromkeys(ph.encoding for ph in self.phases))

    def median(self, encoding: str, what: Callable[[Throughput], float]) -> float:
        return float(statistics.median(what(ph) for ph in self.phases if ph.encoding == encoding))

    def lines(self) -> list[str]:
        rounds = len(self.phases) // max(1, len(self.encodings()))
        out = [
            f"samples={self.samples} series={self.series} rounds={rounds}",
            f"model_only_samples_per_s={self.model_rate:,.0f} (mean of the model-only runs around the phases)",
        ]
        out += [
            f"  phase {i + 1} {ph.encoding}: end_to_end={ph.rate:,.0f}/s model_around={ph.model_rate:,.0f}/s "
            f"ratio={ph.ratio:.2f} worker_cpu_us_per_sample={ph.cpu_us:.1f}"
            for i, ph in enumerate(self.phases)
        ]
        for enc in self.encodings():
            ratios = " ".join(f"{ph.ratio:.2f}" for ph in self.phases if ph.encoding == enc)
            cpu = self.median(enc, lambda ph: ph.cpu_us)
            out += [
                f"end_to_end_samples_per_s[{enc}]={self.median(enc, lambda ph: ph.rate):,.0f} "
                f"(one faust worker, median of {rounds})",
                f"ratio_end_to_end_to_model[{enc}]={self.median(enc, lambda ph: ph.ratio):.2f} "
                f"(target >= 0.6; median of {ratios})",
                f"cpu_us_per_sample[{enc}] model_only={self.model_cpu_us:.1f} end_to_end={cpu:.1f} "
                f"(cpu ratio {self.model_cpu_us / cpu if cpu else 0.0:.2f})",
            ]
        return [
            *out,
            f"latency_offered_load_samples_per_s={self.latency_load:,.0f} events_measured={self.latency_events}",
            f"latency_p50_ms={self.latency_p50_ms:.1f} latency_p99_ms={self.latency_p99_ms:.1f} "
            f"latency_max_ms={self.latency_max_ms:.1f} (target p99 <= 250)",
        ]


def make_data(n: int, services: int, batch: int, t0: float, seed: int = 0) -> list[MetricBatch]:
    """``n`` samples, one latency series per service, 100 samples/s of event time per series."""
    rng = random.Random(seed)
    per_service = n // services
    out = []
    for start in range(0, per_service, batch):
        for s in range(services):
            svc = f"svc{s:02d}"
            out.append(
                MetricBatch(
                    samples=[
                        Metric(service=svc, metric="latency_ms", value=100 + 10 * rng.gauss(0, 1), ts=t0 + i / 100)
                        for i in range(start, min(start + batch, per_service))
                    ]
                )
            )
    return out


def model_only(batches: list[MetricBatch]) -> tuple[float, float]:
    """Samples/s (wall clock) and CPU seconds of scoring every sample with its series' model."""
    scorers: dict[str, AnomalyScorer] = {}
    samples = [(series_id(m.service, m.metric), m.ts, m.value) for b in batches for m in b.samples]
    t, cpu = time.perf_counter(), time.process_time()
    for sid, ts, value in samples:
        scorer = scorers.get(sid)
        if scorer is None:
            scorer = scorers[sid] = AnomalyScorer(seed=0)
        scorer.score_then_learn(ts, value)
    return len(samples) / (time.perf_counter() - t), time.process_time() - cpu


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out waiting for {what}")
        time.sleep(0.05)


class AnomalyReader(threading.Thread):
    """Reads ``<prefix>anomalies`` from the start, counting summaries and timing sample events."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.summaries = 0
        self.latencies: list[float] = []
        self.sent_at: list[float] = []
        self.latency_from = float("inf")
        self.stop = threading.Event()

    def run(self) -> None:
        decode = AvroDeserializer(AnomalyScore)
        topic = self.settings.topics.name("anomalies")
        fast: dict[str, Any] = {"fetch.wait.max.ms": 10}
        with Consumer(self.settings.kafka, **fast) as c:
            c.assign_topics([topic])
            while not self.stop.is_set():
                for m in c.poll_batch(5000, 0.05):
                    now, value = time.time(), m.value()
                    if value is None:
                        continue
                    ev = decode.decode_dict(value)  # no validation: keep the reader's CPU small
                    if ev["kind"] == "summary":
                        self.summaries += 1
                    elif ev["ts"] >= self.latency_from:
                        self.latencies.append(now - ev["ts"])
                        self.sent_at.append(ev["ts"])


def _ready_time(log: Path) -> float | None:
    m = re.search(r"^(\S+ \S+) INFO faust.tables.recovery .*Worker ready", log.read_text(), re.M)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def as_series(b: MetricBatch) -> MetricSeries:
    """The same samples as columns (a benchmark batch holds one series)."""
    first = b.samples[0]
    return MetricSeries(
        service=first.service,
        metric=first.metric,
        labels=first.labels,
        ts=[m.ts for m in b.samples],
        values=[m.value for m in b.samples],
    )


def _settings(bootstrap: str) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap=bootstrap, session_timeout_ms=6000),
        topics=TopicSettings(prefix=f"bench{uuid.uuid4().hex[:6]}."),
        streams=StreamSettings(window_seconds=10.0, allowed_lateness_seconds=1.0),
    )


def _start_worker(
    stack: ExitStack, settings: Settings, tmp: Path, name: str
) -> tuple[subprocess.Popen[bytes], Path, AnomalyReader]:
    reader = AnomalyReader(settings)
    reader.start()
    stack.callback(reader.stop.set)
    log = tmp / f"worker-{name}.log"
    env = worker_env(settings)
    env["METAHEAL_STREAMS__DATADIR"] = str(tmp / f"faust-{name}")
    proc = spawn_worker(env, log_path=log, cwd=tmp)

    def stop_worker() -> None:
        proc.terminate()
        proc.wait(20)

    stack.callback(stop_worker)
    return proc, log, reader


def _throughput(
    stack: ExitStack,
    bootstrap: str,
    tmp: Path,
    records: list[tuple[bytes, str]],
    n: int,
    expected: int,
    name: str,
) -> tuple[float, float, Settings, AnomalyReader, subprocess.Popen[bytes]]:
    """Samples/s and worker CPU us/sample of one worker over pre-produced ``records`` (value, key)."""
    settings = _settings(bootstrap)
    ensure_topics(settings)
    topic = settings.topics.name("telemetry")
    logger.info("bench: producing %d samples as %s", n, name)
    with Producer(settings.kafka) as p:
        for value, key in records:
            p.produce(topic, value, key=key)
        p.flush()
    proc, log, reader = _start_worker(stack, settings, tmp, name)
    _wait(lambda: _ready_time(log) is not None, 120, "the worker to be ready")
    cpu_at_ready = process_cpu(proc.pid)
    _wait(lambda: reader.summaries >= expected, 600, "every window summary")
    rate = n / (time.time() - (_ready_time(log) or 0.0))
    cpu = process_cpu(proc.pid) - cpu_at_ready
    for line in log.read_text().splitlines():
        if "Worker ready" in line or "changelog loaded" in line or "partitions assigned" in line:
            logger.info("bench: worker log: %s", line[:160])
    return rate, cpu / n * 1e6, settings, reader, proc


def run_bench(
    *,
    n: int = 200_000,
    services: int = 10,
    batch: int = 500,
    load: float = 5000.0,
    seconds: float = 10.0,
    bootstrap: str | None = None,
    seed: int = 0,
    rounds: int = 3,
) -> BenchResult:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="metaheal-bench-")))
        if bootstrap is None:
            broker = EmbeddedBroker(port=free_port(), log_path=tmp / "tansu.log")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        t0 = time.time() - 3 * 86400  # history: event time well before the live phase
        batches = make_data(n, services, batch, t0, seed)
        per_service = n // services
        # one sentinel per service closes every window of the history
        end_ts = t0 + per_service / 100 + 60
        for s in range(services):
            batches.append(
                MetricBatch(samples=[Metric(service=f"svc{s:02d}", metric="latency_ms", value=100.0, ts=end_ts)])
            )
        windows_per_series = len({int((t0 + i / 100) // 10) for i in range(per_service)})
        expected_summaries = windows_per_series * services
        history = batches[:-services]
        rows, cols = AvroSerializer(MetricBatch), AvroSerializer(MetricSeries)

        encoded = {
            "series": [(cols(as_series(b)), b.samples[0].service) for b in batches],
            "batch": [(rows(b), b.samples[0].service) for b in batches],
        }
        models: list[tuple[float, float]] = []  # (samples/s, CPU s) of each model-only run

        def model() -> float:
            logger.info("bench: model only")
            models.append(model_only(history))
            return models[-1][0]

        model()
        phases: list[Throughput] = []
        lat = sent = np.array([])
        offered, reader = 0.0, None
        for r in range(rounds):
            for encoding, records in encoded.items():
                rate, cpu_us, settings, phase_reader, proc = _throughput(
                    stack, bootstrap, tmp, records, n, expected_summaries, f"{encoding}{r}"
                )
                if not phases:  # the latency phase runs once, on the first worker
                    logger.info("bench: latency at %.0f samples/s for %.0fs", load, seconds)
                    reader = phase_reader
                    offered, lat, sent = _latency(settings, reader, load, seconds, services, seed)
                phase_reader.stop.set()
                proc.terminate()
                proc.wait(20)
                before, after = models[-1][0], model()
                phases.append(Throughput(encoding, rate, cpu_us, (before + after) / 2))
                logger.info("bench: %s", phases[-1])
        logger.info("bench: model only runs samples/s=%s", [round(m[0]) for m in models])
        assert reader is not None

        for sec in range(int(seconds)):
            sel = lat[(sent >= reader.latency_from + sec) & (sent < reader.latency_from + sec + 1)]
            if len(sel):
                logger.info(
                    "bench: latency second=%d events=%d p50_ms=%.0f max_ms=%.0f",
                    sec,
                    len(sel),
                    np.percentile(sel, 50),
                    sel.max(),
                )
        if not len(lat):
            raise RuntimeError("benchmark: no anomaly sample events arrived during the latency phase")
        return BenchResult(
            samples=n,
            series=services,
            model_rate=sum(m[0] for m in models) / len(models),
            phases=phases,
            latency_load=offered,
            latency_events=len(lat),
            latency_p50_ms=float(np.percentile(lat, 50)),
            latency_p99_ms=float(np.percentile(lat, 99)),
            latency_max_ms=float(lat.max()),
            model_cpu_us=sum(m[1] for m in models) / len(models) / n * 1e6,
        )


def _latency(
    settings: Settings,
    reader: AnomalyReader,
    load: float,
    seconds: float,
    services: int,
    seed: int,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Offer ``load`` samples/s for ``seconds``; (offered rate, latencies in ms, their send times)."""
    ser = AvroSerializer(MetricSeries)
    topic = settings.topics.name("telemetry")
    reader.latency_from = time.time()
    tick = 0.05  # each service's producer sends one record per 50 ms
    per_tick = max(1, round(load * tick / services))
    rng = random.Random(seed + 1)
    produced = 0
    no_linger: dict[str, Any] = {"linger.ms": 0}
    with Producer(settings.kafka, **no_linger) as p:
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < seconds:
            now = time.time()
            for s in range(services):
                svc = f"svc{s:02d}"
                series = MetricSeries(
                    service=svc,
                    metric="latency_ms",
                    ts=[now + i * 1e-4 for i in range(per_tick)],
                    values=[100 + 10 * rng.gauss(0, 1) for _ in range(per_tick)],
                )
                p.produce(topic, ser(series), key=svc)
                produced += per_tick
            p._producer.poll(0)
            k += 1
            delay = start + k * tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        offered = produced / (time.monotonic() - start)
        p.flush()
    time.sleep(2.0)  # let the tail of the latency phase arrive (a measurement pause, not a sync)
    return offered, np.array(reader.latencies) * 1000.0, np.array(reader.sent_at)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="samples for the throughput phase")
    ap.add_argument("--services", type=int, default=10)
    ap.add_argument("--batch", type=int, default=500, help="samples per MetricBatch record")
    ap.add_argument("--load", type=float, default=5000.0, help="offered samples/s in the latency phase")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    ap.add_argument("--bootstrap", default=None, help="existing broker; default: an embedded tansu")
    ap.add_argument("--rounds", type=int, default=3, help="end-to-end phases per encoding (medians are printed)")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run_bench(
        n=ns.n,
        services=ns.services,
        batch=ns.batch,
        load=ns.load,
        seconds=ns.seconds,
        bootstrap=ns.bootstrap,
        rounds=ns.rounds,
    )
    for line in result.lines():
        print(line)


if __name__ == "__main__":
    main()
