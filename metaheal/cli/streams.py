"""``metaheal streams worker`` and ``metaheal bench scorer`` (owned by the streams work)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from metaheal.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    err_console,
    require_bootstrap,
    settings_from,
)
from metaheal.kafka import KafkaUnavailable

# The worker and the benchmark are imported inside their commands: they load faust (~0.05 s measured).

streams_app = typer.Typer(help="Run the telemetry streams worker.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print measured numbers.", no_args_is_help=True)


@streams_app.command("worker")
def worker(config: ConfigOpt = None, bootstrap: BootstrapOpt = None) -> None:
    """Consume <prefix>telemetry; publish health windows, anomaly scores and dead letters until Ctrl-C."""
    from metaheal.streams.worker import run_forever

    settings = require_bootstrap(settings_from(config, bootstrap))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        run_forever(settings)
    except ValueError as exc:  # configuration problems found when building the app
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except KafkaUnavailable as exc:
        err_console.print(f"error: Kafka unavailable: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None


@bench_app.command("scorer")
def bench_scorer(
    n: Annotated[int, typer.Option("--n", min=1000, help="Samples for the throughput phase.")] = 200_000,
    services: Annotated[int, typer.Option("--services", min=1, help="Series (one per service).")] = 10,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Samples per telemetry record.")] = 500,
    load: Annotated[float, typer.Option("--load", min=1, help="Offered samples/s in the latency phase.")] = 5000.0,
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="Length of the latency phase.")] = 10.0,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="End-to-end phases per encoding (medians printed).")
    ] = 3,
    bootstrap: BootstrapOpt = None,
) -> None:
    """End-to-end vs model-only samples/s and produce->anomaly latency of one faust worker (embedded broker)."""
    from metaheal.streams.bench import run_bench

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run_bench(
        n=n, services=services, batch=batch, load=load, seconds=seconds, bootstrap=bootstrap, rounds=rounds
    )
    for line in result.lines():
        typer.echo(line)


@bench_app.command("scale")
def bench_scale(
    series: Annotated[int, typer.Option("--series", min=20, help="Live series (20 per service).")] = 20_000,
    samples: Annotated[int, typer.Option("--samples", min=5, help="History samples per series.")] = 50,
    live_seconds: Annotated[
        float | None, typer.Option("--live-seconds", help="Live phase length (default: checkpoint interval + 15 s).")
    ] = None,
    checkpoint_interval: Annotated[
        float, typer.Option("--checkpoint-interval", min=1, help="streams.checkpoint_interval_seconds.")
    ] = 120.0,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Per-series cost of the worker at N series: throughput ratio, RSS, checkpoint bytes, restart, scale-out."""
    from metaheal.streams.bench_scale import run_scale

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run_scale(
        series=series,
        per_series=samples,
        live_seconds=live_seconds,
        checkpoint_interval=checkpoint_interval,
        bootstrap=bootstrap,
    )
    for line in result.lines():
        typer.echo(line)
