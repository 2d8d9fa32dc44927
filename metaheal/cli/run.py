"""``metaheal demo``, ``metaheal up`` and ``metaheal simulate``: the main job."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

from metaheal.broker import BrokerError, EmbeddedBroker, free_port
from metaheal.cli.console import warn_exposed
from metaheal.cli.options import BootstrapOpt, ConfigOpt, require_bootstrap, settings_from
from metaheal.errors import MetahealError
from metaheal.kafka import KafkaUnavailable
from metaheal.observability import LOG_FORMAT_ENV, use_log_format
from metaheal.ops import Operations
from metaheal.procs import ProcessTable, cmdline
from metaheal.topics import ensure_topics

# The runtime, the simulator and the demo are imported inside their commands: they load the ledger,
# aiohttp and the simulator fleet (0.06-1 s measured), which every other command would pay otherwise.


def simulate(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    scenario: Annotated[
        str | None, typer.Option(help="scenario to inject (a fault name, latency_drift, error_spike, quiet)")
    ] = None,
    at: Annotated[float, typer.Option("--at", help="inject the scenario this many seconds after start")] = 0.0,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds (default: until Ctrl-C)")] = None,
    interval: Annotated[float, typer.Option(help="seconds between telemetry ticks")] = 1.0,
    seed: Annotated[int, typer.Option(help="noise seed")] = 0,
    ready_delay: Annotated[float, typer.Option(help="seconds a new instance takes to become ready")] = 5.0,
    restart_seconds: Annotated[
        float, typer.Option(help="seconds a rolling restart keeps half the instances out")
    ] = 4.0,
    day_seconds: Annotated[float, typer.Option(help="length of the compressed daily load curve")] = 1800.0,
    day_amplitude: Annotated[float, typer.Option(help="relative swing of the daily load curve")] = 0.1,
    services_out: Annotated[
        Path | None, typer.Option(help="write the services: config (admin URLs) to this YAML file")
    ] = None,
) -> None:
    """Run the simulated fleet: telemetry to <prefix>telemetry, admin APIs on localhost, probes, faults.

    The services are registered on <prefix>services, so a running `metaheal up` on the same
    broker and prefix heals them (no --services-out/--config round trip needed).
    """
    from metaheal.runtime import configure_logging, run_until_signal
    from metaheal.simulator.faults import SCENARIOS
    from metaheal.simulator.runner import Simulator

    settings = require_bootstrap(settings_from(config, bootstrap))
    configure_logging()
    if scenario is not None and scenario not in SCENARIOS:
        typer.echo(f"error: --scenario: unknown {scenario!r}; known: {', '.join(sorted(SCENARIOS))}", err=True)
        raise typer.Exit(2)
    if interval <= 0:
        typer.echo("error: --interval: must be > 0", err=True)
        raise typer.Exit(2)
    for name, value in (
        ("--ready-delay", ready_delay),
        ("--restart-seconds", restart_seconds),
        ("--day-seconds", day_seconds),
    ):
        if value <= 0:
            typer.echo(f"error: {name}: must be > 0 (got {value})", err=True)
            raise typer.Exit(2)
    if not 0 <= day_amplitude < 1:
        typer.echo(f"error: --day-amplitude: must be in [0, 1) (got {day_amplitude})", err=True)
        raise typer.Exit(2)
    ensure_topics(settings)
    sim = Simulator(
        settings,
        seed=seed,
        interval=interval,
        scenario=scenario,
        at=at,
        duration=duration,
        ready_delay=ready_delay,
        restart_seconds=restart_seconds,
        day_seconds=day_seconds,
        day_amplitude=day_amplitude,
    )

    async def main(stop: asyncio.Event) -> None:
        await sim.start()
        doc = {"services": [s.model_dump(exclude_none=True) for s in sim.services_config()]}
        text = yaml.safe_dump(doc, sort_keys=False)
        if services_out is not None:
            services_out.write_text(text)
        typer.echo(text, nl=False)
        await sim.run(stop)

    run_until_signal(main)
    logging.getLogger(__name__).info("simulate done ticks=%d", sim.ticks)


def up(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="all|broker|streams|advisors|meta|executor|simulator (repeat or comma-separate)"),
    ] = None,
    workdir: Annotated[Path, typer.Option(help="folder for generated files (child-process settings)")] = Path("."),
    port: Annotated[int, typer.Option(help="embedded broker port when no --bootstrap (0: a free one)")] = 9092,
    scenario: Annotated[str | None, typer.Option(help="with --role simulator: scenario to inject")] = None,
    at: Annotated[float, typer.Option(help="with --role simulator: inject after this many seconds")] = 0.0,
    console_port: Annotated[
        int | None, typer.Option("--console-port", help="also serve the web console on this port (0: a free one)")
    ] = None,
    console_host: Annotated[str, typer.Option("--console-host", help="address the console listens on")] = "127.0.0.1",
    console_token: Annotated[
        str | None,
        typer.Option("--console-token", envvar="METAHEAL_CONSOLE_TOKEN", help="bearer token the console requires"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve /metrics, /healthz, /readyz on this port (default: observability.metrics_port)"),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(envvar="METAHEAL_LOG_FORMAT", help="text (default) or json (one object per line)")
    ] = None,
) -> None:
    """Start everything one machine needs (or one --role of it) until Ctrl-C/SIGTERM."""
    from metaheal.runtime import (
        LOG_FORMAT,
        Component,
        ComponentFailed,
        RoleUnavailable,
        Runtime,
        configure_logging,
        expand_roles,
        run_until_signal,
    )

    configure_logging()
    try:
        use_log_format(log_format, LOG_FORMAT)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if log_format:
        os.environ[LOG_FORMAT_ENV] = log_format  # the streams worker process logs the same way
    log = logging.getLogger("metaheal.up")
    settings = settings_from(config, bootstrap)
    if metrics_port is not None:
        settings.observability.metrics_port = metrics_port
    asked = role or ["all"]
    try:
        roles = expand_roles(asked)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    only_broker = roles == ["broker"]
    if only_broker and settings.kafka.bootstrap:
        typer.echo("error: --role broker starts the embedded broker; it makes no sense with --bootstrap", err=True)
        raise typer.Exit(2)
    table = ProcessTable(workdir.resolve())
    other = table.running("up")
    if other is not None and other.pid != os.getpid():
        typer.echo(f"error: another metaheal up (pid {other.pid}) is running on workdir {workdir.resolve()}", err=True)
        raise typer.Exit(1)
    for left in table.reap(skip=("up",)):
        log.warning("leftover of a previous run stopped role=%s pid=%d", left.role, left.pid)
    table.forget("up")
    table.record("up", os.getpid(), cmdline(os.getpid()) or sys.argv)
    broker = None
    if not settings.kafka.bootstrap:
        use = port if port and _port_free(port) else free_port()
        broker = EmbeddedBroker(port=use)
        try:
            took = broker.start()
        except BrokerError as exc:
            typer.echo(f"error: embedded broker: {exc}", err=True)
            raise typer.Exit(1) from None
        settings.kafka.bootstrap = broker.bootstrap
        if broker.process is not None:
            table.record("broker", broker.process.pid, cmdline(broker.process.pid) or [], group=True)
        log.info("broker started bootstrap=%s took_ms=%.0f", broker.bootstrap, took * 1000)
        typer.echo(
            f"embedded broker on {broker.bootstrap}; start a fleet in another terminal: metaheal simulate "
            f"--bootstrap {broker.bootstrap}{f' --config {config}' if config else ''} "
            "--scenario db_slow_query --at 30"
        )
    try:
        created = ensure_topics(settings)
        log.info("topics ensured prefix=%s created=%d", settings.topics.prefix, len(created))
        sim_opts = {"scenario": scenario, "at": at} if "simulator" in roles else None
        runtime = Runtime(
            settings,
            roles,
            workdir=workdir.resolve(),
            explicit="all" not in asked,
            simulator_options=sim_opts,
            table=table,
        )

        ops = Operations(
            settings,
            roles,
            workdir=workdir.resolve(),
            metrics_port=settings.observability.metrics_port,
            config_path=str(config.resolve()) if config else None,
        )

        async def main(stop: asyncio.Event) -> None:
            if broker is not None and only_broker:
                await stop.wait()
                return
            ops.start()
            web = None
            if console_port is not None:  # first: a taken port fails before anything else starts
                # starlette, uvicorn and the readers the console folds topics with: about 0.4 s measured
                from metaheal.console import ConsoleServer

                warn_exposed(console_host, console_token)
                web = ConsoleServer(settings, host=console_host, port=console_port, token=console_token)
                await web.start()
                typer.echo(f"metaheal console on {web.url}")
            try:
                try:
                    await runtime.start()
                except BaseException:
                    if web is not None:  # shut the console down before reporting what failed
                        stop.set()
                        await web.run(stop)
                    raise
                if web is not None:
                    runtime.components.append(Component("console", web))
                ops.started(runtime.components)
                await runtime.run(stop)
            finally:
                ops.stop()

        run_until_signal(main)
    except RoleUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KafkaUnavailable as exc:
        typer.echo(f"error: kafka: {exc}", err=True)
        raise typer.Exit(1) from None
    except ComponentFailed as exc:
        typer.echo(f"error: component failed: {exc}", err=True)
        raise typer.Exit(1) from None
    except MetahealError as exc:  # the console's port taken, ...
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        if broker is not None:
            broker.stop()
            table.forget("broker")
            log.info("broker stopped")
        table.forget("up", os.getpid())
    log.info("up stopped cleanly")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    workdir: Annotated[
        Path,
        typer.Option(
            help="where the demo writes metaheal.yaml, keys/ and logs; run `metaheal ledger verify` from there"
        ),
    ] = Path("metaheal-demo"),
    seed: Annotated[int, typer.Option(help="simulator noise seed")] = 0,
    warmup: Annotated[float, typer.Option(help="seconds of quiet telemetry before the first flow")] = 20.0,
    scenario: Annotated[
        list[str] | None,
        typer.Option(help="instead of the three design flows, heal these simulator scenarios one after another"),
    ] = None,
    flow_timeout: Annotated[float, typer.Option(help="seconds a flow may take to heal")] = 90.0,
) -> None:
    """The self-healing demo: simulated fleet, every component, three flows, ledger replay and verify."""
    from metaheal.demo import FLOWS, demo_settings, fault_flow, new_prefix, run_demo
    from metaheal.simulator.faults import SCENARIOS

    for name in scenario or []:
        if name not in SCENARIOS:
            typer.echo(f"error: --scenario: unknown {name!r}; known: {', '.join(sorted(SCENARIOS))}", err=True)
            raise typer.Exit(2)
    flows = tuple(fault_flow(n) for n in scenario) if scenario else FLOWS

    base = settings_from(config, bootstrap)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _log_to_file(workdir / "demo.log")
    broker = None
    if not base.kafka.bootstrap:
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu.log")
        try:
            took = broker.start()
        except BrokerError as exc:
            typer.echo(f"error: embedded broker: {exc}", err=True)
            raise typer.Exit(1) from None
        base.kafka.bootstrap = broker.bootstrap
        typer.echo(f"started embedded tansu broker on {broker.bootstrap} in {took * 1000:.0f} ms")
    settings = demo_settings(base, workdir, new_prefix())
    started = time.monotonic()
    try:
        report = asyncio.run(
            run_demo(
                settings, workdir, typer.echo, seed=seed, warmup_seconds=warmup, flow_timeout=flow_timeout, flows=flows
            )
        )
    except KafkaUnavailable as exc:
        typer.echo(f"error: kafka: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        if broker is not None:
            broker.stop()
    typer.echo(f"demo took {time.monotonic() - started:.0f}s; logs in {workdir / 'demo.log'}")
    if not report.ok:
        reasons = report.blocked + [f"{f.flow.name}: {'; '.join(f.reasons)}" for f in report.flows if not f.ok]
        if report.verify_clean is False:
            reasons.append("ledger verify is not clean")
        typer.echo("DEMO FAILED: " + (" | ".join(reasons) or "no flow ran"), err=True)
        raise typer.Exit(1)
    typer.echo("DEMO OK: every flow healed and the ledger verifies clean")


def _log_to_file(path: Path) -> None:
    """Components log at INFO to a file; the terminal shows the timeline and warnings only."""
    from metaheal.runtime import LOG_FORMAT

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(fh)
    err = logging.StreamHandler()
    err.setLevel(logging.ERROR)
    err.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(err)
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
