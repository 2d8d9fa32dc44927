"""``metaheal console``: the web console, read from the topics and the ledger."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from metaheal.cli.options import BootstrapOpt, ConfigOpt, require_bootstrap, settings_from
from metaheal.kafka import KafkaUnavailable

TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="METAHEAL_CONSOLE_TOKEN",
        help="Require this bearer token (header, or open the console once as /?token=...). Set it when exposed.",
    ),
]
HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default).")]


def console(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one).")] = 8765,
    token: TokenOpt = None,
) -> None:
    """Serve the web console: fleet overview, cycles, approvals signed in the browser, outcomes."""
    # imported here, as the runtime in run.py: starlette, uvicorn and the readers the console folds
    # topics with cost about 0.4 s, which every other command would pay otherwise
    from metaheal.console import ConsoleServer, ConsoleUnavailable
    from metaheal.runtime import configure_logging, run_until_signal

    settings = require_bootstrap(settings_from(config, bootstrap))
    configure_logging()
    warn_exposed(host, token)
    server = ConsoleServer(settings, host=host, port=port, token=token)

    async def main(stop: asyncio.Event) -> None:
        await server.start()
        typer.echo(f"metaheal console on {server.url} (Ctrl-C stops it)")
        await server.run(stop)

    try:
        run_until_signal(main)
    except (ConsoleUnavailable, KafkaUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def warn_exposed(host: str, token: str | None) -> None:
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        logging.getLogger("metaheal.console").warning(
            "console_exposed host=%s token=none: anyone who reaches this address sees the fleet; pass --token", host
        )
