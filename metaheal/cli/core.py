"""Foundation commands: ``broker``, ``topics ensure|check``, ``config check|example``."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel, ValidationError

from metaheal.broker import BrokerError
from metaheal.cli.config_check import check_references
from metaheal.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    err_console,
    format_validation_error,
    require_bootstrap,
    settings_from,
)
from metaheal.config import ConfigError, Settings, load_settings
from metaheal.kafka.errors import KafkaUnavailable
from metaheal.topics import check_topics, ensure_topics

# metaheal.durable is imported inside `broker`: it loads httpx and rich (~0.15 s measured).

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
    from metaheal.durable import describe_storage, durable_broker

    def _term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        with durable_broker(host, port, data_dir) as b:
            typer.echo(f"metaheal broker: tansu ready on {b.bootstrap}, storage {describe_storage(data_dir)}", err=True)
            typer.echo(b.bootstrap)
            code = b.wait()
            err_console.print(f"error: tansu exited unexpectedly with code {code}")
            raise typer.Exit(code or 1)
    except KeyboardInterrupt:
        typer.echo("metaheal broker: stopped", err=True)
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
def topics_check(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Report topics missing or drifted from the declaration; exit 1 if any."""
    settings = require_bootstrap(settings_from(config, bootstrap))
    try:
        drifts = check_topics(settings)
    except KafkaUnavailable as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps({"ok": not drifts, "drifts": [{"topic": d.topic, "problem": d.problem} for d in drifts]}))
        if drifts:
            raise typer.Exit(1)
        return
    for d in drifts:
        typer.echo(f"DRIFT {d}")
    if drifts:
        raise typer.Exit(1)
    typer.echo("all topics match the declaration")


@config_app.command("check")
def config_check(
    file: Annotated[
        Path | None, typer.Argument(help="metaheal.yaml (default: $METAHEAL_CONFIG or ./metaheal.yaml)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Validate a configuration file, the playbooks and the knowledge map it names; print every error."""
    source = str(file or "configuration")
    try:
        settings = load_settings(file)
    except FileNotFoundError as exc:
        if as_json:
            print(json.dumps({"ok": False, "errors": [str(exc)]}))
        else:
            err_console.print(f"error: {exc}")
        raise typer.Exit(2) from None
    except ValidationError as exc:
        errors = format_validation_error(exc, source)
        if as_json:
            print(json.dumps({"ok": False, "errors": errors}))
        else:
            for line in errors:
                typer.echo(line, err=True)
        raise typer.Exit(1) from None
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "errors": [str(exc)]}))
        else:
            typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    report = check_references(settings)
    if as_json:
        print(json.dumps({"ok": not report["errors"], "file": source, **report}))
    elif report["errors"]:
        for line in report["errors"]:
            typer.echo(line, err=True)
    else:
        typer.echo(
            f"{source}: OK ({len(settings.services)} services, {len(settings.operators)} operators, "
            f"{len(report['playbooks'])} playbooks from {report['playbooks_folder']}, "
            f"knowledge map {report['knowledge_map']} with {report['causes']} causes)"
        )
    if report["errors"]:
        raise typer.Exit(1)


EXAMPLE_HEADER = """\
# metaheal configuration: copy to metaheal.yaml (or pass --config / METAHEAL_CONFIG)
# and check it with `metaheal config check metaheal.yaml`.
#
# Generated by `metaheal config example` from metaheal/config.py: every key with
# its design default. Every key can be overridden from the environment with the
# METAHEAL_ prefix and `__` between nested keys, e.g.
#   METAHEAL_KAFKA__BOOTSTRAP=localhost:9092
#   METAHEAL_CYCLE__CYCLE_SECONDS=60
#   METAHEAL_GUARDRAILS__LEVELS__TIGHT__MAX_BLAST_RADIUS=0
# Unknown keys are errors, so a typo never silently falls back to a default.
"""

# Lists have no useful default; the example shows one realistic entry of each.
EXAMPLE_ENTRIES: dict[str, list[dict[str, Any]]] = {
    "services": [
        {
            "name": "checkout",
            "admin_url": "http://127.0.0.1:8081",
            "dependencies": ["payments", "inventory-db"],
            "criticality": "high",
            "owner": "team-checkout",
        },
        {
            "name": "payments",
            "admin_url": "http://127.0.0.1:8082",
            "dependencies": [],
            "criticality": "critical",
            "owner": "team-payments",
        },
    ],
    "operators": [{"name": "alice", "public_key": "00" * 32, "services": ["*"]}],
}

EXAMPLE_DOCS = {
    "services": "The services metaheal watches and may act on.",
    "operators": "Humans who may approve what the guardrails do not auto-approve (Ed25519 public keys, hex).",
    "playbooks": "Folder of declarative remediation playbooks (YAML).",
    "keys": "Folder of the system actors' Ed25519 signing keys (created by `metaheal keys init`).",
}


def _section_type(name: str) -> type[BaseModel] | None:
    ann = Settings.model_fields[name].annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def example_config() -> str:
    """``metaheal.yaml.example``: every section and key with its default and description.

    Built from the models (not from ``Settings()``, which would read the environment),
    so it cannot drift from the code: a test compares it with the committed file.
    """
    out = [EXAMPLE_HEADER]
    for name, field in Settings.model_fields.items():
        section = _section_type(name)
        if name in EXAMPLE_ENTRIES:
            value: Any = EXAMPLE_ENTRIES[name]
        else:
            default = field.get_default(call_default_factory=True)
            value = (
                default.model_dump(mode="json")
                if isinstance(default, BaseModel)
                else (str(default) if isinstance(default, Path) else default)
            )
        doc = (
            (section.__doc__ or "").strip().splitlines()[0]
            if section and section.__doc__
            else (field.description or EXAMPLE_DOCS.get(name))
        )
        if doc:
            out.append(f"# {doc}")
        text = yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
        described = {k: f.description for k, f in section.model_fields.items() if f.description} if section else {}
        for line in text.splitlines():
            key = line[2:].split(":", 1)[0] if line.startswith("  ") and not line.startswith("   ") else None
            out.append(f"{line}  # {described[key]}" if key in described else line)
        out.append("")
    return "\n".join(out)


@config_app.command("example")
def config_example() -> None:
    """Print an example metaheal.yaml with every key and its default."""
    typer.echo(example_config(), nl=False)
