"""``metaheal status [--json]``: current cycle, guardrails, probes, pending approvals, last outcomes.

Everything is read from the topics (``metaheal.agents.meta.status``), so the command works
on any machine that reaches the brokers, with or without a running meta loop.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from metaheal.agents.meta.status import StatusClient
from metaheal.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    err_console,
    require_bootstrap,
    settings_from,
)
from metaheal.kafka import KafkaUnavailable


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _result(o: dict) -> str:
    """An outcome's result with what qualifies it (who confirmed it, how late it was settled)."""
    text = o["result"]
    if o.get("confirmed_by"):
        text += f" (confirmed by {o['confirmed_by']})"
    elif o["result"] == "inconclusive" and o.get("verdict_request_id"):
        text += " (change kept, awaiting verdict)"
    if o.get("settled_after_seconds") is not None:
        text += f" after {o['settled_after_seconds']:.0f}s"
    return text


def status(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    outcomes: Annotated[int, typer.Option("--outcomes", min=0, help="How many recent outcomes to show.")] = 10,
) -> None:
    """Show the current cycle, guardrails, probes, pending approvals, plans in flight (halted too), outcomes."""
    settings = require_bootstrap(settings_from(config, bootstrap))
    try:
        snap = StatusClient(settings).snapshot(outcomes=outcomes)
    except KafkaUnavailable as exc:
        err_console.print(f"error: cannot read status from {settings.kafka.bootstrap}: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(snap, indent=2, sort_keys=True))
        return
    out = Console()
    cycle = snap["current_cycle"]
    leader = snap["leader"]
    lead = (
        f"{leader['holder']} (epoch {leader['epoch']}, {'alive' if leader['alive'] else 'lease expired'})"
        if leader
        else "none"
    )
    out.print(f"[bold]Meta loop leader:[/bold] {lead}")
    out.print(f"[bold]Guardrail level:[/bold] {snap['guardrail_level']}")
    if cycle is None:
        out.print("[bold]Current cycle:[/bold] none yet")
    else:
        out.print(
            f"[bold]Current cycle:[/bold] {cycle['cycle_id']} at {_when(cycle['ts'])} "
            f"focus={cycle['focus_area']} confidence={cycle['confidence']:.2f} trigger={cycle['trigger']}"
        )
        out.print(
            f"  guardrails {cycle['guardrail_adjustment']} -> {cycle['guardrail_level']}; "
            f"budget {cycle['time_budget_seconds']}s; targets {', '.join(cycle['target_services']) or '-'}; "
            f"probes {', '.join(cycle['extra_probes']) or '-'}"
        )
        for line in cycle["reasoning"]:
            out.print(f"  - {line}", markup=False, highlight=False)
    probes = snap["active_probes"]
    out.print(f"[bold]Active probes:[/bold] {', '.join(sorted({p['probe'] for p in probes})) or 'none'}")
    table = Table("plan_id", "service", "playbook", "reason", "expires", title="Pending approvals")
    for r in snap["pending_approvals"]:
        table.add_row(r["plan_id"], r["service"], r["playbook"], r["reason"], _when(r["expires_at"]))
    out.print(table if snap["pending_approvals"] else "[bold]Pending approvals:[/bold] none")
    if snap["awaiting_verdict"]:
        table = Table(
            "plan", "service", "playbook", "unverified since", "expires", "then", "evidence", title="Awaiting verdict"
        )
        for v in snap["awaiting_verdict"]:
            expires = _when(v["expires_at"]) if v["expires_at"] else "-"
            then = "answered" if v["answered"] else str(v["on_expiry"] or "-")
            table.add_row(v["plan_id"], v["service"], v["playbook"], _when(v["since"]), expires, then, v["evidence"])
        out.print(table)
        out.print("  answer with: metaheal approvals keep|rollback PLAN_ID --key KEYFILE")
    table = Table("plan", "service", "status", "steps", "halted because", "next resume", title="Plans in flight")
    for p in snap.get("plans_in_flight", []):
        steps = f"{p['steps_done']}/{p['steps']}" if p["steps"] is not None else "-"
        resume = f"{_when(p['next_resume_at'])} (attempt {p['resume_attempts']})" if p["next_resume_at"] else "-"
        table.add_row(p["plan_id"] or p["directive_id"], p["service"], p["status"], steps, p["halted"] or "-", resume)
    out.print(table if snap.get("plans_in_flight") else "[bold]Plans in flight:[/bold] none")
    table = Table("time", "service", "playbook", "result", "duration", "cycle", title="Last outcomes")
    for o in snap["last_outcomes"]:
        table.add_row(
            _when(o["ts"]), o["service"], o["playbook"], _result(o), f"{o['duration_seconds']:.0f}s", o["cycle_id"]
        )
    out.print(table if snap["last_outcomes"] else "[bold]Last outcomes:[/bold] none")
