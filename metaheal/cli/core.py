"""Foundation commands: ``broker``, ``topics ensure|check``, ``config check``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from metaheal.broker import BrokerError, EmbeddedBroker
from metaheal.cli.options import BootstrapOpt, ConfigOpt, err_console, format_validation_error, require_bootstrap, settings_from
from metaheal.config import load_settings
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.topics import check_topics, ensure_topics

topics_app = typer.Typer(help="Create and check the topics metaheal uses.", no_args_is_help=True)
config_app = typer.Typer(help="Validate configuration.", no_args_is_help=True)


def broker(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Kafka port.")] = 9092,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Durable storage folder (local S3); default: in memory.")
    ] = None,
) -> None:
    """Run the embedded Kafka-protocol broker (tansu) until Ctrl-C/SIGTERM."""
    from metaheal.durable import durable_broker

    stop = {"flag": False}

    def _term(*_: object) -> None:
        stop["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        with durable_broker(host, port, data_dir) as b:
            where = f"durable storage in {data_dir}" if data_dir else "in-memory storage (lost on stop)"
            typer.echo(f"metaheal broker: tansu ready on {b.bootstrap} with {where}", err=True)
            typer.echo(b.bootstrap)
            try:
                code = b.wait()
                raise typer.Exit(code or 1)
            except KeyboardInterrupt:
                typer.echo("metaheal broker: stopping", err=True)
    except BrokerError as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1) from None


@topics_app.command("ensure")
def topics_ensure(config: ConfigOpt = None, bootstrap: BootstrapOpt = None) -> None:
    """Create every declared topic that is missing (idempotent)."""
    settings = require_bootstrap(settings_from(config, bootstrap))
    try:
        created = ensure_topics(settings)
    except KafkaUnavailable as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1) from None
    typer.echo(f"created {len(created)} topic(s)" + (": " + ", ".join(created) if created else ""))


@topics_app.command("check")
def topics_check(config: ConfigOpt = None, bootstrap: BootstrapOpt = None) -> None:
    """Report topics missing or drifted from the declaration; exit 1 if any."""
    settings = require_bootstrap(settings_from(config, bootstrap))
    try:
        drifts = check_topics(settings)
    except KafkaUnavailable as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1) from None
    for d in drifts:
        typer.echo(f"DRIFT {d}")
    if drifts:
        raise typer.Exit(1)
    typer.echo("all topics match the declaration")


@config_app.command("check")
def config_check(file: Annotated[Path | None, typer.Argument(help="metaheal.yaml (default: $METAHEAL_CONFIG or ./metaheal.yaml)")] = None) -> None:
    """Validate a configuration file; print every error with file and field path."""
    try:
        settings = load_settings(file)
    except FileNotFoundError as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(2) from None
    except ValidationError as exc:
        for line in format_validation_error(exc, str(file or "configuration")):
            typer.echo(line, err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # YAML syntax errors come from the parser, not pydantic
        err_console.print(f"{file}: {exc}", markup=False)
        raise typer.Exit(1) from None
    typer.echo(f"{file or 'configuration'}: OK ({len(settings.services)} services, {len(settings.operators)} operators)")
