"""``metaheal services``: the service registry on ``<prefix>services`` (list, register, remove).

A deployment registers its services the way ``metaheal simulate`` does, so a running
``metaheal up`` can act on them without a restart or a config edit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from pydantic import ValidationError

from metaheal.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    format_validation_error,
    require_bootstrap,
    settings_from,
)
from metaheal.config import Settings
from metaheal.errors import LedgerKeyError
from metaheal.events import ServiceRegistration
from metaheal.kafka import KafkaUnavailable
from metaheal.registry import RegistryPublisher, check, read_registry, registered_by

T = TypeVar("T")

services_app = typer.Typer(
    help="The service registry: what `metaheal up` knows about services it may heal.", no_args_is_help=True
)

Criticality = Annotated[str, typer.Option(help="low|medium|high|critical")]


@services_app.command("list")
def list_services(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per registration")] = False,
) -> None:
    """Print the registry as of now (latest registration per service; rejected records last)."""
    settings = require_bootstrap(settings_from(config, bootstrap))
    try:
        snap = read_registry(settings)
    except KafkaUnavailable as exc:
        typer.echo(f"error: kafka: {exc}", err=True)
        raise typer.Exit(1) from None
    except LedgerKeyError as exc:  # registrations are signed with the registrar key of settings.keys
        typer.echo(f"error: cannot sign the registration: {exc} (run `metaheal keys init`)", err=True)
        raise typer.Exit(1) from None
    if as_json:
        for reg in snap.services.values():
            typer.echo(reg.model_dump_json())
        return
    if not snap.services:
        typer.echo(f"no services registered on {settings.topics.name('services')}")
    now = time.time()
    for reg in sorted(snap.services.values(), key=lambda r: r.name):
        deps = ",".join(reg.dependencies) or "-"
        typer.echo(
            f"{reg.name:<16} {reg.admin_url or '-':<28} deps={deps:<24} {reg.criticality:<8} "
            f"owner={reg.owner or '-'} by={reg.registered_by} {now - reg.ts:.0f}s ago"
        )
    for offset, key, error in snap.rejected:
        typer.echo(f"rejected offset {offset} key {key!r}: {error}")


@services_app.command("register")
def register(
    name: Annotated[str | None, typer.Argument(help="service name (or use --file)")] = None,
    admin_url: Annotated[str | None, typer.Option(help="base URL of the service's admin API (http[s]://...)")] = None,
    depends_on: Annotated[list[str] | None, typer.Option("--depends-on", help="a dependency (repeatable)")] = None,
    criticality: Criticality = "medium",
    owner: Annotated[str | None, typer.Option(help="owning team")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="YAML with a `services:` list (same shape as in metaheal.yaml)")
    ] = None,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Register one service from flags, or every service of a YAML file; invalid input is rejected, naming the field."""
    if (name is None) == (file is None):
        typer.echo("error: give a service NAME or --file FILE (not both)", err=True)
        raise typer.Exit(2)
    by = registered_by("metaheal services register")
    entries: list[tuple[str, dict[str, Any]]]
    if file is not None:
        entries = _entries_from_file(file)
    else:
        entries = [
            (
                "flags",
                {
                    "name": name,
                    "admin_url": admin_url,
                    "dependencies": depends_on or [],
                    "criticality": criticality,
                    "owner": owner,
                },
            )
        ]
    regs: list[ServiceRegistration] = []
    problems: list[str] = []
    for source, doc in entries:
        try:
            regs.append(check(ServiceRegistration.model_validate({**doc, "registered_by": by, "ts": time.time()})))
        except ValidationError as exc:
            problems.extend(format_validation_error(exc, source))
        except ValueError as exc:
            problems.append(f"{source}: {exc}")
    if problems:
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    settings = require_bootstrap(settings_from(config, bootstrap))
    n, topic = _publish(settings, lambda p: p.register(regs))
    typer.echo(f"registered {n} service(s) on {topic}: {', '.join(r.name for r in regs)}")


@services_app.command("remove")
def remove(
    names: Annotated[list[str], typer.Argument(help="service names to deregister")],
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Deregister services (a tombstone per name); configured services stay as configured."""
    settings = require_bootstrap(settings_from(config, bootstrap))
    _, topic = _publish(settings, lambda p: p.deregister(names))
    typer.echo(f"deregistered {', '.join(names)} on {topic}")


def _publish(settings: Settings, act: Callable[[Any], T]) -> tuple[T, str]:
    """Run ``act`` on a registry publisher; a broker that cannot be reached exits 1 with the reason."""
    publisher = RegistryPublisher(settings)
    try:
        return act(publisher), publisher.topic
    except KafkaUnavailable as exc:
        typer.echo(f"error: kafka: {exc}", err=True)
        raise typer.Exit(1) from None
    except LedgerKeyError as exc:  # registrations are signed with the registrar key of settings.keys
        typer.echo(f"error: cannot sign the registration: {exc} (run `metaheal keys init`)", err=True)
        raise typer.Exit(1) from None
    finally:
        publisher.close()


def _entries_from_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``services:`` entries of a YAML file, each labelled ``FILE: services.N`` for error messages."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        typer.echo(f"error: {path}: {exc}", err=True)
        raise typer.Exit(2) from None
    items = doc.get("services") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        typer.echo(
            f"error: {path}: expected a `services:` list of mappings (name, admin_url, dependencies, ...)", err=True
        )
        raise typer.Exit(2)
    return [(f"{path}: services.{i}", item) for i, item in enumerate(items)]
