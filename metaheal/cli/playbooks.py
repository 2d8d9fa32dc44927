"""``metaheal playbooks list|check|render|schema``: onboard a service without reading code.

* ``list``: the playbooks ``up`` would load (the configured folder, else the shipped defaults);
* ``check [FILES]``: validate playbook files (default: that folder), every error with file,
  line and field, non-zero exit when any is broken;
* ``render NAME --service S``: the steps, verifications and rollback exactly as the
  executor would render them for service S (its ``admin_url`` from the configuration or
  the service registry), with ``--var name=value`` for the values the executor takes from
  live telemetry (``dependency``);
* ``schema``: the JSON Schema of a playbook (for editors: yaml-language-server).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from metaheal.agents.common.playbooks import Playbook, load_playbook, load_playbooks
from metaheal.cli.options import BootstrapOpt, ConfigOpt, err_console, settings_from
from metaheal.config import ServiceSettings, Settings
from metaheal.errors import PlaybookError
from metaheal.events import Directive, DirectiveAdvice
from metaheal.runtime import resolve_playbooks

playbooks_app = typer.Typer(help="List, check, render playbooks; print their JSON Schema.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(msg: str, code: int = 1) -> typer.Exit:
    err_console.print(f"error: {msg}", markup=False, highlight=False)
    return typer.Exit(code)


def _folder(settings: Settings) -> Path:
    return resolve_playbooks(settings.playbooks)


def summary(pb: Playbook) -> dict[str, Any]:
    return {
        "name": pb.name,
        "description": pb.description,
        "focus_areas": pb.applies_to.focus_areas,
        "root_causes": pb.applies_to.root_causes,
        "impact": pb.impact,
        "blast_radius": pb.blast_radius,
        "prior_success": pb.prior_success,
        "steps": len(pb.steps),
        "verifications": len(pb.verifications),
        "rollback": len(pb.rollback),
    }


@playbooks_app.command("list")
def list_playbooks(as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """The playbooks `metaheal up` would load, one line each."""
    settings = settings_from(config)
    folder = _folder(settings)
    try:
        books = load_playbooks(folder)
    except PlaybookError as exc:
        raise _fail(str(exc)) from None
    rows = [summary(pb) for _, pb in sorted(books.items())]
    if as_json:
        print(json.dumps({"folder": str(folder), "playbooks": rows}))
        return
    print(f"{folder}:")
    for r in rows:
        print(
            f"  {r['name']:<22} impact={r['impact']:<6} blast={r['blast_radius']} prior={r['prior_success']:.2f} "
            f"focus={','.join(r['focus_areas'])}  {r['description']}"
        )


@playbooks_app.command("check")
def check(
    files: Annotated[list[Path] | None, typer.Argument(help="playbook files (default: the configured folder)")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Validate playbooks; every error names its file, line and field (exit 1 when any is broken)."""
    if not files:
        folder = _folder(settings_from(config))
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
        if not files:
            raise _fail(f"{folder}: no playbooks (*.yaml) found", 2)
    results: list[dict[str, Any]] = []
    names: dict[str, Path] = {}
    for path in files:
        try:
            pb = load_playbook(path)
        except FileNotFoundError:
            results.append({"file": str(path), "ok": False, "errors": [f"{path}: file not found"]})
            continue
        except PlaybookError as exc:
            results.append({"file": str(path), "ok": False, "errors": str(exc).splitlines()})
            continue
        if pb.name in names:
            err = f"{path}: name: duplicate playbook {pb.name!r} (also in {names[pb.name]})"
            results.append({"file": str(path), "ok": False, "errors": [err]})
            continue
        names[pb.name] = path
        results.append({"file": str(path), "ok": True, "name": pb.name, "errors": []})
    bad = [r for r in results if not r["ok"]]
    if as_json:
        print(json.dumps({"ok": not bad, "results": results}))
    else:
        for r in results:
            if r["ok"]:
                print(f"{r['file']}: OK ({r['name']})")
            else:
                for line in r["errors"]:
                    typer.echo(line, err=True)  # not wrapped: editors jump to file:line
    if bad:
        raise typer.Exit(1)


def _service(settings: Settings, name: str) -> ServiceSettings:
    svc = next((s for s in settings.services if s.name == name), None)
    if svc is not None or not settings.kafka.bootstrap:
        return svc or ServiceSettings(name=name)
    from metaheal.registry import read_registry, to_service

    reg = read_registry(settings).services.get(name)
    return to_service(reg) if reg is not None else ServiceSettings(name=name)


@playbooks_app.command("render")
def render(
    name: str,
    service: Annotated[str, typer.Option("--service", help="the service to render it for")],
    var: Annotated[
        list[str] | None, typer.Option("--var", help="NAME=VALUE template variable (e.g. dependency=db)")
    ] = None,
    root_cause: Annotated[str, typer.Option(help="the advisors' top cause ({{ root_cause }})")] = "unknown",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Show NAME's steps, verifications and rollback as the executor would render them for a service."""
    from metaheal.agents.executor.planner import build_plan
    from metaheal.errors import TemplateError

    settings = settings_from(config, bootstrap)
    try:
        books = load_playbooks(_folder(settings))
    except PlaybookError as exc:
        raise _fail(str(exc)) from None
    pb = books.get(name)
    if pb is None:
        raise _fail(f"NAME: no playbook {name!r}; known: {', '.join(sorted(books))}", 2)
    extra: dict[str, str] = {}
    for item in var or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"--var: expected NAME=VALUE, got {item!r}", 2)
        extra[key] = value
    svc = _service(settings, service)
    directive = Directive(
        directive_id=f"render-{name}-{service}",
        cycle_id="render",
        ts=time.time(),
        service=service,
        focus_area=pb.applies_to.focus_areas[0],
        guardrail_level="maintain",
        ml_advice=DirectiveAdvice(root_causes=[root_cause], recommended_playbooks=[name]),
        confidence=1.0,
        time_budget_seconds=600,
    )
    try:
        plan = build_plan(directive, pb, svc, extra=extra)
    except TemplateError as exc:
        hint = "" if svc.admin_url else f" (service {service} has no admin_url in the configuration or registry)"
        raise _fail(f"{name} cannot be rendered for {service}: {exc}{hint}") from None
    doc = {
        "playbook": name,
        "service": svc.model_dump(),
        "steps": [{"action": s.action, "params": json.loads(s.params_json), "timeout": s.timeout} for s in plan.steps],
        "verifications": [{"type": v.type, **json.loads(v.spec_json)} for v in plan.verifications],
        "rollback": [{"action": s.action, "params": json.loads(s.params_json)} for s in plan.rollback_plan],
        "risk": plan.risk_assessment.model_dump(),
    }
    if as_json:
        print(json.dumps(doc))
        return
    print(f"{name} for {service} (admin_url {svc.admin_url or '-'}):")
    for section in ("steps", "verifications", "rollback"):
        print(f"  {section}:")
        for i, entry in enumerate(doc[section], 1):
            print(f"    {i}. {json.dumps(entry)}")
    print(f"  risk: {json.dumps(doc['risk'])}")


@playbooks_app.command("schema")
def schema() -> None:
    """The JSON Schema of a playbook, for editors (`# yaml-language-server: $schema=playbook.schema.json`)."""
    doc = Playbook.model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "metaheal playbook"
    print(json.dumps(doc, indent=2))
