"""Workers as real processes: SIGKILL + restart stays warm and exact; two workers split the load."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from metaheal.config import Settings
from metaheal.events import HealthWindow, Metric, MetricBatch
from metaheal.kafka import Consumer, Producer
from metaheal.kafka.serializers import AvroSerializer
from metaheal.streams.worker import spawn_worker, worker_env

from .conftest import T0, outputs, read_all, wait_for

PER_WINDOW = 40  # samples per series per 1 s window


class Telemetry(threading.Thread):
    """Paced producer: one batch per service per half window, ``pace`` wall seconds apart.

    With ``hold_at`` it blocks before that half window until ``release`` is set, so a
    test can kill a worker while the stream is guaranteed to still be running.
    """

    def __init__(
        self,
        settings: Settings,
        services: list[str],
        windows: int,
        pace: float,
        seed: int = 0,
        hold_at: int | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.hold_at = hold_at
        self.release = threading.Event()
        self.settings, self.services, self.windows, self.pace = settings, services, windows, pace
        self.rng = random.Random(seed)
        self.produced_ts = T0  # event time of the last sample produced
        self.error: BaseException | None = None

    def run(self) -> None:
        ser = AvroSerializer(MetricBatch)
        topic = self.settings.topics.name("telemetry")
        try:
            with Producer(self.settings.kafka) as p:
                for half in range(self.windows * 2):
                    if half == self.hold_at and not self.release.wait(120):
                        raise TimeoutError("the test never released the producer")
                    for svc in self.services:
                        samples = [
                            Metric(
                                service=svc,
                                metric="latency_ms",
                                value=100 + self.rng.gauss(0, 5),
                                ts=T0 + half * 0.5 + i / PER_WINDOW,
                            )
                            for i in range(PER_WINDOW // 2)
                        ]
                        p.produce(topic, ser(MetricBatch(samples=samples)), key=svc)
                    p.flush()
                    self.produced_ts = T0 + half * 0.5 + 0.5
                    time.sleep(self.pace)
        except BaseException as exc:
            self.error = exc


def start(settings: Settings, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    return spawn_worker(worker_env(settings), log_path=log, cwd=tmp_path), log


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def checkpointed(settings: Settings) -> set[str]:
    with Consumer(settings.kafka) as c:
        return {m.key().decode() for m in c.read_to_end(settings.topics.name("scorer-state")) if m.value()}


def closed_windows(settings: Settings) -> int:
    return len({(h.service, h.window_start) for h in read_all(settings, "health", HealthWindow)})


def tails(*logs: Path, lines: int = 40) -> str:
    """The last lines of each worker log, so a timeout in CI says what the workers were doing."""
    out = []
    for log in logs:
        text = log.read_text(errors="replace").splitlines() if log.exists() else ["(no log)"]
        out.append(f"--- {log.name} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


def wait_logged(pred: Callable[[], bool], timeout: float, what: str, *logs: Path) -> None:
    try:
        wait_for(pred, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{tails(*logs)}") from None


def assigned(log: Path) -> set[int] | None:
    lines = re.findall(r"partitions assigned app=\S+ telemetry=(\S+)", log.read_text() if log.exists() else "")
    if not lines:
        return None
    return set() if lines[-1] == "-" else {int(p) for p in lines[-1].split(",")}


def test_sigkill_restart_resumes_warm_without_double_counting(stream_topics: Settings, tmp_path: Path) -> None:
    s = stream_topics
    services = [f"svc{i}" for i in range(4)]
    windows = 30
    first, first_log = start(s, tmp_path, "first")
    second = None
    feed = Telemetry(s, services, windows, pace=0.1, seed=1, hold_at=windows)  # holds half-way
    try:
        wait_logged(lambda: assigned(first_log) == {0, 1, 2, 3}, 60, "the first worker to own telemetry", first_log)
        feed.start()
        # warm (50+ samples per series), some checkpoints written, then kill mid-stream
        wait_logged(lambda: closed_windows(s) >= 4 * len(services), 60, "the first worker's windows", first_log)
        wait_logged(lambda: checkpointed(s) >= {f"{svc}/latency_ms" for svc in services}, 30, "checkpoints", first_log)
        first.kill()
        first.wait(10)
        killed_at = feed.produced_ts
        assert feed.is_alive(), "the producer finished before the kill: not mid-stream"
        feed.release.set()
        second, second_log = start(s, tmp_path, "second")
        feed.join(60)
        assert feed.error is None
        wait_logged(
            lambda: closed_windows(s) >= (windows - 1) * len(services),
            90,
            "all windows after the restart",
            first_log,
            second_log,
        )
    finally:
        for p in (first, second):
            if p is not None:
                stop(p)
    health, anomalies, _ = outputs(s)

    # every window present, every copy of a window (output is at-least-once) with exact counts
    by_window = defaultdict(set)
    for h in health:
        by_window[h.service, h.window_start].add(h.sample_count)
    assert set(by_window) == {(svc, T0 + w) for svc in services for w in range(windows - 1)}
    wrong = {(svc, w - T0): c for (svc, w), c in by_window.items() if c != {PER_WINDOW}}
    assert not wrong, f"windows with wrong counts: {wrong} (killed at event time {killed_at - T0})"

    # scoring continued warm: the restarted worker restored checkpoints and never warmed up again
    log = second_log.read_text()
    assert "scorer restored" in log
    after = [a for a in anomalies if a.ts > killed_at + 0.5]
    assert len([a for a in after if a.kind == "summary"]) >= 4 * len(services)
    assert min(a.confidence for a in after) == 1.0
    crossed = [a for a in after if a.kind == "sample" and a.crossed]
    n_after = sum(1 for a in after if a.kind == "summary") * PER_WINDOW
    assert len(crossed) <= 0.02 * n_after, f"{len(crossed)} crossed scores on {n_after} normal samples"


def test_two_workers_split_partitions_and_score_every_series_once(stream_topics: Settings, tmp_path: Path) -> None:
    s = stream_topics
    services = [f"svc{i}" for i in range(8)]
    windows = 8
    a, a_log = start(s, tmp_path, "a")
    b, b_log = start(s, tmp_path, "b")
    try:

        def split() -> bool:
            pa, pb = assigned(a_log), assigned(b_log)
            return bool(pa) and bool(pb) and not (pa & pb) and (pa | pb) == {0, 1, 2, 3}

        wait_logged(split, 90, "both workers to own telemetry partitions", a_log, b_log)
        feed = Telemetry(s, services, windows, pace=0.0, seed=2)
        feed.run()
        assert feed.error is None
        wait_logged(lambda: closed_windows(s) >= (windows - 1) * len(services), 60, "every window", a_log, b_log)
        # the split did not move while the data was processed (no rebalance: no replays)
        assert split()
    finally:
        stop(a)
        stop(b)
    health, anomalies, _ = outputs(s)
    assert Counter((h.service, h.window_start) for h in health) == {
        (svc, T0 + w): 1 for svc in services for w in range(windows - 1)
    }
    assert all(h.sample_count == PER_WINDOW for h in health)
    summaries = Counter((x.service, x.metric, x.window_start) for x in anomalies if x.kind == "summary")
    assert summaries == {(svc, "latency_ms", T0 + w): 1 for svc in services for w in range(windows - 1)}
    samples = Counter((x.service, x.metric, x.ts) for x in anomalies if x.kind == "sample")
    assert not samples or max(samples.values()) == 1
    # both workers did part of the work
    for log in (a_log, b_log):
        m = re.search(r"streams worker stopped stats=PipelineStats\(records=(\d+), samples=(\d+)", log.read_text())
        assert m is not None and int(m.group(2)) > 0, log.read_text()[-2000:]
