"""Options shared by every command, and the one way commands obtain settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from metaheal.config import ConfigError, Settings, load_settings

err_console = Console(stderr=True)

BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap", envvar="METAHEAL_BOOTSTRAP", help="Kafka bootstrap HOST:PORT."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar="METAHEAL_CONFIG", help="metaheal.yaml to load."),
]


def format_validation_error(exc: ValidationError, source: str) -> list[str]:
    """One line per problem: ``file: field.path: message (got value)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {err['msg']}{shown}")
    return lines


def settings_from(config: Path | None, bootstrap: str | None = None) -> Settings:
    """Load settings or exit 2 with every validation error named by file and field."""
    try:
        settings = load_settings(config)
    except (FileNotFoundError, ConfigError) as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        for line in format_validation_error(exc, str(config or "environment/defaults")):
            err_console.print(line, markup=False, highlight=False)
        raise typer.Exit(2) from None
    if bootstrap:
        settings.kafka.bootstrap = bootstrap
    return settings


def require_bootstrap(settings: Settings) -> Settings:
    if not settings.kafka.bootstrap:
        err_console.print("error: no Kafka bootstrap: pass --bootstrap HOST:PORT or set METAHEAL_BOOTSTRAP")
        raise typer.Exit(2)
    return settings
