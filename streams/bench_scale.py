"""Scale benchmark of the streams worker: ``metaheal bench scale --series N`` (``benchmarks/bench_scale.py``).

One run, on one embedded broker, on the same ``N`` series (``N / 20`` services x 20 metrics):

1. model only: one :class:`~metaheal.streams.scorer.AnomalyScorer` per series over the
   history (``--samples`` per series), in this process: the ceiling; run before and after
   the end-to-end phase, the mean is the reference;
2. end to end: the history pre-produced to ``<prefix>telemetry`` (one ``MetricBatch`` record
   per service: 20 metrics x ``--samples``), one worker process from its "Worker ready" line to the last window summary;
   ratio to the model; worker RSS at ready and at the end, per live series;
3. live: a paced producer offers half the measured end-to-end rate, every sample stamped
   with its wall-clock produce time; p50/p99 of produce -> ``kind="sample"`` anomaly event; the
   ``<prefix>scorer-state`` bytes (keys + values) with a broker timestamp in the last
   ``checkpoint_interval`` seconds of the phase, per series and minute;
4. restart: the worker is SIGKILLed with every series live, a new one is started (the producer
   keeps offering the same load); seconds from the restart until window summaries (5 s
   windows) of 99 % of the series, scored after the restart, were read back, and the share of
   them at full confidence (warm, restored from the checkpoints);
5. scale-out: the history again under a new prefix, two workers in one consumer group
   (telemetry has 4 partitions: two each), combined samples/s from the later "Worker ready" to
   the last summary, against one worker's rate from phase 2.

Numbers are indicative on a shared machine: each line says what it measured.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tracemalloc
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaheal.broker import EmbeddedBroker, free_port
from metaheal.config import KafkaSettings, Settings, StreamSettings, TopicSettings
from metaheal.events import AnomalyScore, Metric, MetricBatch
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroDeserializer, AvroSerializer
from metaheal.streams.bench import _ready_time, _wait, process_cpu
from metaheal.streams.scorer import AnomalyScorer
from metaheal.streams.signals import series_id
from metaheal.streams.worker import spawn_worker, worker_env
from metaheal.topics import ensure_topics

logger = logging.getLogger(__name__)

METRICS = 20  # series per service
STEP = 0.2  # seconds of event time between two samples of a series in the history
WINDOW = 5.0  # streams.window_seconds: summaries (the restart measure) come at most a window late


@dataclass
class ScaleResult:
    series: int
    samples: int
    model_rate: float = 0.0
    e2e_rate: float = 0.0
    e2e_cpu_us: float = 0.0
    rss_ready_mb: float = 0.0
    rss_end_mb: float = 0.0
    mature_heap_kb: float = 0.0
    live_load: float = 0.0
    live_events: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    checkpoint_interval: float = 0.0
    checkpoint_bytes: int = 0
    checkpoint_records: int = 0
    restart_s: float = math.nan
    restart_warm: float = 0.0
    restart_covered: float = 0.0
    two_rate: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        per = self.samples // self.series
        ratio = self.e2e_rate / self.model_rate if self.model_rate else 0.0
        rss_kb = (self.rss_end_mb - self.rss_ready_mb) * 1024 / self.series
        ckpt = self.checkpoint_bytes / self.series / (self.checkpoint_interval / 60.0)
        two = self.two_rate / self.e2e_rate if self.e2e_rate else 0.0
        return [
            f"series={self.series} services={self.series // METRICS} samples={self.samples} ({per} per series)",
            f"model_only_samples_per_s={self.model_rate:,.0f} end_to_end_samples_per_s={self.e2e_rate:,.0f} "
            f"worker_cpu_us_per_sample={self.e2e_cpu_us:.1f}",
            f"ratio_end_to_end_to_model={ratio:.2f} (target >= 0.6)",
            f"worker_rss_mb ready={self.rss_ready_mb:.0f} end={self.rss_end_mb:.0f} "
            f"rss_growth_per_live_series_kb={rss_kb:.1f} (target <= 64; scorers {per} samples old)",
            f"mature_scorer_heap_kb={self.mature_heap_kb:.1f} (one scorer after 12,000 samples, Python heap)",
            f"checkpoint_bytes_per_series_per_minute={ckpt:,.0f} (target <= 2048; {self.checkpoint_records} "
            f"records, {self.checkpoint_bytes:,} bytes in the last {self.checkpoint_interval:.0f} s of the live phase, "
            f"checkpoint_interval_seconds={self.checkpoint_interval:.0f})",
            f"latency_offered_load_samples_per_s={self.live_load:,.0f} (half of end to end) "
            f"events_measured={self.live_events}",
            f"latency_p50_ms={self.p50_ms:.1f} latency_p99_ms={self.p99_ms:.1f} (target p99 <= 250)",
            f"restart_warm_seconds={self.restart_s:.1f} (target <= 30: SIGKILL with {self.series} live series -> "
            f"summaries of {self.restart_covered:.0%} of them scored after the restart; "
            f"{self.restart_warm:.1%} at full confidence)",
            f"two_workers_samples_per_s={self.two_rate:,.0f} ratio_to_one={two:.2f} (target >= 1.5)",
            *self.notes,
        ]


def names(series: int) -> list[tuple[str, str]]:
    return [(f"svc{s:04d}", f"m{m:02d}_ms") for s in range(max(1, series // METRICS)) for m in range(METRICS)]


def make_history(series: int, per_series: int, t0: float, seed: int) -> list[MetricBatch]:
    """One MetricBatch per service: its 20 metrics x ``per_series`` samples (what a fleet agent pushes)."""
    rng = random.Random(seed)
    by_service: dict[str, list[Metric]] = {}
    for svc, metric in names(series):
        by_service.setdefault(svc, []).extend(
            Metric(service=svc, metric=metric, value=100 + 10 * rng.gauss(0, 1), ts=t0 + i * STEP)
            for i in range(per_series)
        )
    return [MetricBatch(samples=samples) for samples in by_service.values()]


def model_only(history: list[MetricBatch]) -> float:
    scorers: dict[str, AnomalyScorer] = {}
    samples = [(series_id(m.service, m.metric), m.ts, m.value) for b in history for m in b.samples]
    t = time.perf_counter()
    for sid, ts, value in samples:
        scorer = scorers.get(sid)
        if scorer is None:
            scorer = scorers[sid] = AnomalyScorer(seed=0)
        scorer.score_then_learn(ts, value)
    return len(samples) / (time.perf_counter() - t)


def mature_heap_kb(samples: int = 12_000) -> float:
    rng = random.Random(5)
    scorer = AnomalyScorer()
    for i in range(samples):
        scorer.score_then_learn(60.0 * i, 100 + 20 * math.sin(i / 229) + rng.gauss(0, 5))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        copies = [copy.deepcopy(scorer) for _ in range(4)]
        return (tracemalloc.get_traced_memory()[0] - before) / len(copies) / 1024
    finally:
        tracemalloc.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Reader(threading.Thread):
    """Reads ``<prefix>anomalies``: summaries, sample latencies, first post-restart summary per series."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.summaries = 0
        self.latencies: list[float] = []
        self.latency_from = math.inf
        self.latency_until = math.inf
        self.restart_from = math.inf
        self.after_restart: dict[tuple[str, str], tuple[float, float]] = {}  # series -> (read time, confidence)
        self.stop = threading.Event()

    def run(self) -> None:
        decode = AvroDeserializer(AnomalyScore)
        fast: dict[str, Any] = {"fetch.wait.max.ms": 10}
        with Consumer(self.settings.kafka, **fast) as c:
            c.assign_topics([self.settings.topics.name("anomalies")])
            while not self.stop.is_set():
                for m in c.poll_batch(5000, 0.05):
                    now, value = time.time(), m.value()
                    if value is None:
                        continue
                    ev = decode.decode_dict(value)
                    if ev["kind"] == "summary":
                        self.summaries += 1
                        if ev["ts"] >= self.restart_from:
                            self.after_restart.setdefault((ev["service"], ev["metric"]), (now, ev["confidence"]))
                    elif self.latency_from <= ev["ts"] < self.latency_until:
                        self.latencies.append(now - ev["ts"])


class Pacer(threading.Thread):
    """Offers ``load`` samples/s: one MetricBatch (20 metrics x 1 sample, ts = now) per service in turn."""

    def __init__(self, settings: Settings, series: int, load: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.settings, self.load = settings, load
        self.services = sorted({svc for svc, _ in names(series)})
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.produced = 0
        self.started = 0.0

    def run(self) -> None:
        ser = AvroSerializer(MetricBatch)
        topic = self.settings.topics.name("telemetry")
        tick, k, i = 0.05, 0, 0
        no_linger: dict[str, Any] = {"linger.ms": 0}
        carry = 0.0
        with Producer(self.settings.kafka, **no_linger) as p:
            self.started = start = time.monotonic()
            while not self.stop.is_set():
                carry += self.load * tick / METRICS
                n, carry = int(carry), carry - int(carry)
                for _ in range(n):
                    svc = self.services[i % len(self.services)]
                    i += 1
                    now = time.time()
                    batch = MetricBatch(
                        samples=[
                            Metric(service=svc, metric=f"m{m:02d}_ms", value=100 + 10 * self.rng.gauss(0, 1), ts=now)
                            for m in range(METRICS)
                        ]
                    )
                    p.produce(topic, ser(batch), key=svc)
                    self.produced += METRICS
                p.raw.poll(0)
                k += 1
                delay = start + k * tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            p.flush()


def _settings(bootstrap: str, interval: float) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap=bootstrap, session_timeout_ms=6000),
        topics=TopicSettings(prefix=f"scale{uuid.uuid4().hex[:6]}."),
        streams=StreamSettings(
            window_seconds=WINDOW,
            allowed_lateness_seconds=1.0,
            checkpoint_interval_seconds=interval,
        ),
    )


def _produce_history(settings: Settings, history: list[MetricBatch], end_ts: float) -> None:
    ser = AvroSerializer(MetricBatch)
    topic = settings.topics.name("telemetry")
    with Producer(settings.kafka) as p:
        for batch in history:
            p.produce(topic, ser(batch), key=batch.samples[0].service)
        for batch in history:  # one more sample per service closes every window of the history
            svc = batch.samples[0].service
            last = Metric(service=svc, metric="m00_ms", value=100.0, ts=end_ts)
            p.produce(topic, ser(MetricBatch(samples=[last])), key=svc)
        p.flush()


def _spawn(stack: ExitStack, settings: Settings, tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"worker-{name}.log"
    env = worker_env(settings)
    env["METAHEAL_STREAMS__DATADIR"] = str(tmp / f"faust-{name}")
    proc = spawn_worker(env, log_path=log, cwd=tmp)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    stack.callback(stop)
    return proc, log


def _copy_logs(tmp: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in tmp.glob("*.log"):
        shutil.copy(log, dest / log.name)


def run_scale(
    *,
    series: int = 20_000,
    per_series: int = 50,
    live_seconds: float | None = None,
    checkpoint_interval: float = 120.0,
    bootstrap: str | None = None,
    seed: int = 0,
    keep_logs: Path | None = None,
) -> ScaleResult:
    live_seconds = live_seconds or checkpoint_interval + 15.0
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="metaheal-scale-")))
        if keep_logs is not None:
            stack.callback(_copy_logs, tmp, keep_logs)
        if bootstrap is None:
            broker = EmbeddedBroker(port=free_port(), log_path=tmp / "tansu.log")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        t0 = time.time() - 86400.0
        history = make_history(series, per_series, t0, seed)
        series = len(history) * METRICS
        end_ts = t0 + per_series * STEP + 60.0
        windows = len({int((t0 + i * STEP) // WINDOW) for i in range(per_series)})
        out = ScaleResult(series=series, samples=series * per_series, checkpoint_interval=checkpoint_interval)
        out.mature_heap_kb = mature_heap_kb()

        logger.info("scale: model only, %d series x %d samples", series, per_series)
        before = model_only(history)

        # -- 2. one worker, end to end ---------------------------------------------------------
        s1 = _settings(bootstrap, checkpoint_interval)
        ensure_topics(s1)
        _produce_history(s1, history, end_ts)
        reader = Reader(s1)
        reader.start()
        stack.callback(reader.stop.set)
        proc, log = _spawn(stack, s1, tmp, "one")
        _wait(lambda: _ready_time(log) is not None, 180, "the worker to be ready")
        ready = _ready_time(log) or 0.0
        cpu0, out.rss_ready_mb = process_cpu(proc.pid), rss_mb(proc.pid)
        _wait(lambda: reader.summaries >= windows * series, 1800, "every window summary")
        elapsed = time.time() - ready
        out.e2e_rate = out.samples / elapsed
        out.e2e_cpu_us = (process_cpu(proc.pid) - cpu0) / out.samples * 1e6
        out.rss_end_mb = rss_mb(proc.pid)
        out.model_rate = (before + model_only(history)) / 2
        logger.info("scale: end to end %.0f/s, model %.0f/s", out.e2e_rate, out.model_rate)

        # -- 3. live at half the capacity: latency, checkpoint traffic ---------------------------
        out.live_load = out.e2e_rate / 2
        pacer = Pacer(s1, series, out.live_load, seed + 1)
        reader.latency_from = time.time()
        pacer.start()
        stack.callback(pacer.stop.set)
        time.sleep(live_seconds)
        live_end = time.time()
        reader.latency_until = live_end
        out.live_load = pacer.produced / (time.monotonic() - pacer.started)
        lat = np.array(reader.latencies) * 1000.0
        out.live_events = len(lat)
        if len(lat):
            out.p50_ms, out.p99_ms = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        window_from_ms = (live_end - checkpoint_interval) * 1000
        with Consumer(s1.kafka) as c:
            for m in c.read_to_end(s1.topics.name("scorer-state"), timeout=300):
                ts = m.timestamp()[1]
                if window_from_ms <= ts <= live_end * 1000 and m.value():
                    out.checkpoint_records += 1
                    out.checkpoint_bytes += len(m.value() or b"") + len(m.key() or b"")

        # -- 4. SIGKILL with every series live, restart ------------------------------------------
        logger.info("scale: SIGKILL the worker")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        restart = time.time()
        reader.restart_from = restart
        proc2, log2 = _spawn(stack, s1, tmp, "restarted")
        target = 0.99 * series
        try:
            _wait(lambda: len(reader.after_restart) >= target, 180, "summaries of 99% of the series after the restart")
            firsts = sorted(t for t, _ in reader.after_restart.values())
            out.restart_s = firsts[int(target) - 1] - restart
        except TimeoutError:
            out.notes.append("restart: 99% of the series not reported back within 180 s")
        done = list(reader.after_restart.values())
        out.restart_covered = len(done) / series
        out.restart_warm = sum(1 for _, conf in done if conf >= 1.0) / max(1, len(done))
        pacer.stop.set()
        pacer.join(10)
        for line in log2.read_text().splitlines():
            if "changelog loaded" in line or "Worker ready" in line:
                logger.info("scale: restarted worker: %s", line[:160])
        proc2.terminate()
        try:
            proc2.wait(60)
        except subprocess.TimeoutExpired:
            out.notes.append("restart: the restarted worker did not stop within 60 s of SIGTERM (killed)")
            proc2.kill()
            proc2.wait(10)
        reader.stop.set()
        for line in out.lines():
            logger.info("scale: so far: %s", line)

        # -- 5. two workers, one consumer group ----------------------------------------------------
        s2 = _settings(bootstrap, checkpoint_interval)
        ensure_topics(s2)
        _produce_history(s2, history, end_ts)
        reader2 = Reader(s2)
        reader2.start()
        stack.callback(reader2.stop.set)
        logs = [_spawn(stack, s2, tmp, f"pair{i}")[1] for i in range(2)]
        _wait(lambda: all(_ready_time(lg) is not None for lg in logs), 180, "both workers to be ready")
        _wait(lambda: reader2.summaries >= windows * series, 1800, "every window summary (two workers)")
        start2 = min(_ready_time(lg) or 0.0 for lg in logs)
        out.two_rate = out.samples / (time.time() - start2)
        out.notes.append(
            f"two workers: {os.cpu_count()} CPU(s) shared by both workers, the broker and this benchmark's "
            "reader; rate from the first worker's 'Worker ready'"
        )
        return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=20_000)
    ap.add_argument("--samples", type=int, default=50, help="history samples per series")
    ap.add_argument("--live-seconds", type=float, default=None, help="live phase (default: checkpoint interval + 15)")
    ap.add_argument("--checkpoint-interval", type=float, default=120.0, help="streams.checkpoint_interval_seconds")
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--keep-logs", type=Path, default=None, help="copy the worker and broker logs here")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run_scale(
        series=ns.series,
        per_series=ns.samples,
        live_seconds=ns.live_seconds,
        checkpoint_interval=ns.checkpoint_interval,
        bootstrap=ns.bootstrap,
        keep_logs=ns.keep_logs,
    )
    for line in result.lines():
        print(line)


if __name__ == "__main__":
    main()
