"""``metaheal approvals list|show|approve|deny|keep|rollback`` (owned by the agentic work).

Operators answer approval requests from a terminal: the decision is signed here
with the operator's private key file and published on ``<prefix>approvals``;
the executor checks the signature against the operator registry
(``settings.operators``) before it counts.

``keep`` and ``rollback`` answer a *verdict* request: a change is in place but its
verification could not decide (the evidence vanished); they sign ``approve`` (keep) or
``deny`` (roll back) for that request, and refuse to answer a plain approval request.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from metaheal.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    err_console,
    require_bootstrap,
    settings_from,
)
from metaheal.config import Settings
from metaheal.errors import DecodeError
from metaheal.events import ApprovalDecision, ApprovalRequest
from metaheal.kafka import Consumer, KafkaUnavailable, Producer
from metaheal.kafka.serializers import AvroSerializer

# The executor's approval module is imported inside the commands that use it: it loads pynacl and the
# executor (~0.15 s measured), which `metaheal --help` and every other command would pay otherwise.

approvals_app = typer.Typer(
    help="List and answer pending requests: approve/deny a plan, keep/rollback an unverified change.",
    no_args_is_help=True,
)

KeyOpt = Annotated[
    Path,
    typer.Option(
        "--key", envvar="METAHEAL_OPERATOR_KEY", help="The operator's private key file (from `metaheal keys`)."
    ),
]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why; recorded with the decision.")]
PlanHashOpt = Annotated[
    str | None,
    typer.Option(
        "--plan-hash",
        help="The plan hash (or a prefix of it) you reviewed (`approvals list`); refuse to sign if the plan changed.",
    ),
]
OperatorOpt = Annotated[
    str | None, typer.Option("--operator", help="Operator name (default: found by the key in settings.operators).")
]


def _fail(msg: str, code: int = 1) -> typer.Exit:
    err_console.print(f"error: {msg}", markup=False, highlight=False)
    return typer.Exit(code)


def _read(settings: Settings) -> tuple[dict[str, ApprovalRequest], dict[str, list[ApprovalDecision]]]:
    from metaheal.agents.executor.approvals import DECODER

    # a plan may have two requests (approval to run, then a verdict on its change): the latest one counts
    requests: dict[str, ApprovalRequest] = {}
    decisions: dict[str, list[ApprovalDecision]] = {}  # by request id
    try:
        with Consumer(settings.kafka) as c:
            for m in c.read_to_end(settings.topics.name("approvals")):
                try:
                    ev = DECODER(m.value() or b"")
                except DecodeError:
                    continue
                if isinstance(ev, ApprovalRequest):
                    requests[ev.plan_id] = ev
                elif isinstance(ev, ApprovalDecision):
                    decisions.setdefault(ev.request_id, []).append(ev)
    except KafkaUnavailable as exc:
        raise _fail(str(exc)) from None
    return requests, decisions


@approvals_app.command("list")
def list_requests(
    all_: Annotated[bool, typer.Option("--all", help="Include answered and expired requests.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Pending approval requests (newest last)."""
    s = require_bootstrap(settings_from(config, bootstrap))
    requests, decisions = _read(s)
    now = time.time()
    rows = []
    for req in sorted(requests.values(), key=lambda r: r.requested_at):
        answered = decisions.get(req.request_id, [])
        state = "expired" if now > req.expires_at else ("answered" if answered else "pending")
        if state == "pending" or all_:
            rows.append((req, state, answered))
    if as_json:
        for req, state, answered in rows:
            kind = "verdict" if req.asks_verdict else "approval"
            doc = {**req.model_dump(), "kind": kind, "state": state, "decisions": [d.decision for d in answered]}
            print(json.dumps(doc))
        return
    table = Table("plan_id", "kind", "service", "playbook", "plan hash", "reason", "expires in", "state")
    for req, state, _ in rows:
        kind = "verdict (keep/rollback)" if req.asks_verdict else "approval"
        table.add_row(
            req.plan_id,
            kind,
            req.service,
            req.playbook,
            req.plan_hash[:12],
            req.reason,
            f"{req.expires_at - now:.0f}s",
            state,
        )
    Console().print(table)


@approvals_app.command("show")
def show(
    plan_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """What PLAN_ID would do and why: rendered steps, risk, evidence and provenance."""
    from metaheal.cli.plan_view import find_plan, render_plan

    s = require_bootstrap(settings_from(config, bootstrap))
    try:
        view = find_plan(s, plan_id)
    except KafkaUnavailable as exc:
        raise _fail(str(exc)) from None
    if view is None:
        raise _fail(f"PLAN_ID: no plan {plan_id} on {s.topics.name('plans')}")
    if as_json:
        print(json.dumps(view, default=str))
        return
    Console().print(render_plan(view), markup=False, highlight=False)


def _decide(
    plan_id: str,
    key: Path,
    reason: str,
    operator: str | None,
    decision: Literal["approve", "deny"],
    config: Path | None,
    bootstrap: str | None,
    verdict: str | None = None,
    expect_hash: str | None = None,
) -> None:
    from metaheal.agents.executor.approvals import VERDICT_MEANING, load_signing_key, sign_for
    from metaheal.ledger.keys import key_id_of

    s = require_bootstrap(settings_from(config, bootstrap))
    try:
        sk = load_signing_key(key)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    pub = sk.verify_key.encode().hex()
    if operator is None:
        match = next((o for o in s.operators if o.public_key == pub), None)
        if match is None:
            raise _fail(
                f"--key: key {key_id_of(bytes.fromhex(pub))} is not registered in settings.operators "
                "(pass --operator, or add the operator's public_key)",
                2,
            )
        operator = match.name
    requests, _ = _read(s)
    req = requests.get(plan_id)
    if req is None:
        raise _fail(f"PLAN_ID: no approval request for plan {plan_id}")
    if verdict is not None and not req.asks_verdict:
        raise _fail(f"PLAN_ID: plan {plan_id} waits for an approval, not a verdict (use approve/deny)")
    if time.time() > req.expires_at:
        if req.asks_verdict:
            raise _fail(f"PLAN_ID: the verdict request for plan {plan_id} expired; the playbook's default applied")
        raise _fail(f"PLAN_ID: the request for plan {plan_id} expired; the plan was cancelled")
    if expect_hash is not None and len(expect_hash) < 8:
        raise _fail(f"--plan-hash: give at least 8 hex digits of the plan hash, got {expect_hash!r}", 2)
    if expect_hash is not None and not req.plan_hash.startswith(expect_hash.lower()):
        raise _fail(
            f"--plan-hash: plan {plan_id} is now {req.plan_hash[:12]}, not the {expect_hash} you reviewed: "
            "review it again (`metaheal approvals show`)"
        )
    signed = sign_for(sk, req, operator=operator, decision=decision, reason=reason)
    try:
        with Producer(s.kafka) as p:
            p.send(s.topics.name("approvals"), AvroSerializer(ApprovalDecision)(signed), key=plan_id)
    except KafkaUnavailable as exc:
        raise _fail(str(exc)) from None
    said = verdict or (VERDICT_MEANING[decision] if req.asks_verdict else decision)
    print(f"{said} {plan_id} by {operator} (decision {signed.decision_id}, plan hash {req.plan_hash[:12]})")


def _decision_command(name: str, decision: Literal["approve", "deny"], verdict: str | None, doc: str) -> None:
    """Register ``approvals NAME``: sign ``decision`` (for a verdict request: ``verdict``) for a plan."""

    def command(
        plan_id: str,
        key: KeyOpt,
        reason: ReasonOpt = "",
        operator: OperatorOpt = None,
        plan_hash: PlanHashOpt = None,
        config: ConfigOpt = None,
        bootstrap: BootstrapOpt = None,
    ) -> None:
        _decide(plan_id, key, reason, operator, decision, config, bootstrap, verdict=verdict, expect_hash=plan_hash)

    command.__doc__ = doc
    command.__name__ = name
    approvals_app.command(name)(command)


_decision_command("approve", "approve", None, "Sign and publish an approval for PLAN_ID.")
_decision_command(
    "deny", "deny", None, "Sign and publish a denial for PLAN_ID (the plan ends with outcome ``denied``)."
)
_decision_command(
    "keep", "approve", "keep", "Keep the unverified change of PLAN_ID (the plan ends as success, confirmed by you)."
)
_decision_command(
    "rollback",
    "deny",
    "rollback",
    "Roll back the unverified change of PLAN_ID (the executor runs the playbook's rollback).",
)
