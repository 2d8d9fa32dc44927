"""Run the streams worker: in-process (:func:`run_worker`) or as its own process.

``metaheal up`` and other launchers have two options:

* ``await run_worker(settings, stop)`` inside an asyncio program (it returns
  within a couple of seconds after ``stop`` is set); or
* :func:`spawn_worker` (``python -m metaheal.streams.worker``, settings passed as
  ``METAHEAL_*`` environment variables plus an optional ``--config``), which keeps the
  CPU-bound scoring off the caller's event loop and is what the kill/restart and
  scale-out tests use. ``metaheal streams worker`` runs the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaheal.config import Settings, load_settings
from metaheal.kafka import KafkaUnavailable
from metaheal.observability import use_log_format
from metaheal.procs import PARENT_ENV, watch_parent
from metaheal.streams.app import app_id, create_app
from metaheal.streams.changelog import ensure_changelogs
from metaheal.streams.otlp_bridge import ensure_otlp_topics
from metaheal.streams.pipeline import PipelineStats
from metaheal.streams.signals import SignalMap
from metaheal.topics import ensure_topics

logger = logging.getLogger(__name__)


async def run_worker(settings: Settings, stop: asyncio.Event, *, datadir: Path | None = None) -> PipelineStats:
    """Consume telemetry until ``stop`` is set; return the pipeline's counters.

    Raises ``ValueError`` for invalid streams settings and ``KafkaUnavailable`` when the
    broker cannot be reached, both before anything is consumed.
    """
    SignalMap(settings.streams.signal_map)  # a bad override is an error before any I/O
    await asyncio.to_thread(ensure_topics, settings)
    await asyncio.to_thread(ensure_otlp_topics, settings)
    await asyncio.to_thread(ensure_changelogs, settings, app_id(settings))
    app, pipeline = create_app(settings, datadir=datadir)
    logger.info("streams worker starting app=%s bootstrap=%s", app.conf.id, settings.kafka.bootstrap)
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_state, app)
    await app.start()
    try:
        await stop.wait()
    finally:
        logger.info("streams worker stopping stats=%s", pipeline.stats)
        pipeline.flush_state()
        try:
            await asyncio.wait_for(app.stop(), timeout=10.0)
        except TimeoutError:
            logger.warning("faust app did not stop within 10 s")
        flush = getattr(pipeline.sink, "flush", None)
        if flush is not None:
            await asyncio.to_thread(flush)
    return pipeline.stats


def run_forever(settings: Settings) -> PipelineStats:
    """Blocking: run until SIGINT/SIGTERM (used by the CLI and ``python -m``); SIGUSR1 logs the tasks."""

    async def main() -> PipelineStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_worker(settings, stop)

    return asyncio.run(main())


def dump_state(app: Any) -> None:
    """Log partition states and every task's await chain (``kill -USR1 <pid>``).

    What a stalled worker is waiting for: paused or unpositioned partitions, faust's
    active set and flow control, and where each coroutine is suspended.
    """
    buf = io.StringIO()
    consumer = app.consumer
    buf.write(f"flow_active={app.flow_control.is_active()} generation={app.consumer_generation_id}\n")
    buf.write(f"faust active={sorted(map(str, consumer._active_partitions or ()))}\n")
    buf.write(f"faust paused={sorted(map(str, consumer._paused_partitions or ()))}\n")
    aio = getattr(consumer._thread, "_consumer", None)
    subscription = getattr(getattr(aio, "_subscription", None), "subscription", None)
    if subscription is not None:
        assignment = subscription.assignment
        for tp in sorted(assignment.tps):
            st = assignment.state_value(tp)
            pos = st._position
            buf.write(
                f"  {tp.topic}[{tp.partition}] position={pos} paused={st.paused} awaiting_reset={st.awaiting_reset}\n"
            )
    for task in asyncio.all_tasks():
        buf.write(f"--- {task.get_name()}\n")
        coro: Any = task.get_coro()
        while coro is not None:
            frame = (
                getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
            )
            if frame is not None:
                buf.write(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n")
            coro = (
                getattr(coro, "cr_await", None)
                or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None)
            )
    logger.warning("worker state on SIGUSR1:\n%s", buf.getvalue())


def spawn_worker(
    env: Mapping[str, str], *, config: Path | None = None, log_path: Path | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m metaheal.streams.worker`` with ``METAHEAL_*`` settings in ``env``."""
    args = [sys.executable, "-m", "metaheal.streams.worker"]
    if config is not None:
        args += ["--config", str(config)]
    # the child gets its own copy of the log's descriptor, so ours is closed once it started
    with open(log_path, "ab") if log_path is not None else contextlib.nullcontext(subprocess.DEVNULL) as out:
        return subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def worker_env(settings: Settings) -> dict[str, str]:
    """The ``METAHEAL_*`` variables that reproduce the parts of ``settings`` a worker needs."""
    env = {
        "METAHEAL_KAFKA__BOOTSTRAP": settings.kafka.bootstrap or "",
        "METAHEAL_KAFKA__SESSION_TIMEOUT_MS": str(settings.kafka.session_timeout_ms),
        "METAHEAL_TOPICS__PREFIX": settings.topics.prefix,
    }
    if settings.kafka.client:  # SASL/TLS settings: the worker's clients need them as much as ours
        env["METAHEAL_KAFKA__CLIENT"] = json.dumps(settings.kafka.client)
    for name, value in settings.streams.model_dump(exclude_defaults=True).items():
        env[f"METAHEAL_STREAMS__{name.upper()}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaheal.streams.worker", description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--log-level", default="INFO")
    ns = parser.parse_args(argv)
    text_format = "%(asctime)s %(levelname)s %(name)s %(message)s"
    logging.basicConfig(level=ns.log_level, format=text_format)
    try:
        use_log_format(None, text_format)  # $METAHEAL_LOG_FORMAT, as `metaheal up --log-format` sets it
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(ns.config)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get(PARENT_ENV):
        watch_parent()  # started by `metaheal up`: never outlive it (docs/processes.md)
    if ns.bootstrap:
        settings.kafka.bootstrap = ns.bootstrap
    if not settings.kafka.bootstrap:
        print("error: no Kafka bootstrap: pass --bootstrap or set METAHEAL_KAFKA__BOOTSTRAP", file=sys.stderr)
        return 2
    try:
        stats = run_forever(settings)
    except (ValueError, KafkaUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    logger.info("streams worker stopped stats=%s", stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
