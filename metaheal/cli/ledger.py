"""``metaheal ledger ...`` and ``metaheal keys ...`` (owned by the ledger work)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from metaheal.cli.options import (
    BootstrapOpt,
    ConfigOpt,
    err_console,
    require_bootstrap,
    settings_from,
)
from metaheal.config import Settings
from metaheal.errors import LedgerKeyError, ProofError
from metaheal.kafka.errors import KafkaUnavailable

# The ledger modules are imported inside the commands that use them: they load pynacl and the ledger's
# codecs (~0.1 s measured), which `metaheal --help` and every other command would pay otherwise.

ledger_app = typer.Typer(help="Replay, verify and prove the signed ledger.", no_args_is_help=True)
keys_app = typer.Typer(help="Create and list Ed25519 keys of actors and operators.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
KeysOpt = Annotated[Path | None, typer.Option("--keys", help="Keys folder (default: settings.keys).")]


def _fail(msg: str, code: int = 1) -> typer.Exit:
    err_console.print(f"error: {msg}", markup=False, highlight=False)
    return typer.Exit(code)


def _settings(
    config: Path | None, bootstrap: str | None, keys: Path | None = None, need_broker: bool = True
) -> Settings:
    s = settings_from(config, bootstrap)
    if keys is not None:
        s.keys = keys
    return require_bootstrap(s) if need_broker else s


# -- ledger ---------------------------------------------------------------------------------------


@ledger_app.command("verify")
def verify(
    cycle: Annotated[str | None, typer.Option("--cycle", help="Report only this cycle's entries.")] = None,
    since: Annotated[int, typer.Option("--since", help="Report only findings from this sequence on.")] = 0,
    checkpoint: Annotated[
        list[Path] | None, typer.Option("--checkpoint", help="A saved checkpoint note the ledger must still match.")
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Also require canonical JSON payloads.")] = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    keys: KeysOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Check signatures, chain, gaps, duplicates, authorisation, keys, checkpoints, tombstones.

    Exit 0 when clean; otherwise exit 1 with one line per finding naming the sequence.
    """
    from metaheal.ledger.verify import verify_ledger

    s = _settings(config, bootstrap, keys)
    notes = []
    for p in checkpoint or []:
        try:
            notes.append((str(p), p.read_text()))
        except OSError as exc:
            raise _fail(f"cannot read checkpoint {p}: {exc}", 2) from None
    try:
        report = verify_ledger(s, since=since, cycle=cycle, checkpoint_notes=notes, strict=strict)
    except (KafkaUnavailable, ValueError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        findings = [
            {"sequence": f.sequence, "offset": f.offset, "kind": f.kind, "detail": f.detail} for f in report.findings
        ]
        doc = {
            "ok": report.clean,
            "entries": report.entries,
            "last_sequence": report.last_sequence,
            "checkpoints": report.checkpoints,
            "findings": findings,
        }
        print(json.dumps(doc))
        if not report.clean:
            raise typer.Exit(1)
        return
    for f in report.findings:
        typer.echo(str(f))
    last = report.last_sequence if report.last_sequence is not None else "-"
    summary = f"{report.entries} entries, last sequence {last}, {report.checkpoints} checkpoints"
    if not report.clean:
        err_console.print(f"FAILED: {len(report.findings)} finding(s) in {summary}", markup=False)
        raise typer.Exit(1)
    typer.echo(f"OK: {summary}")


@ledger_app.command("replay")
def replay(
    cycle_id: Annotated[str, typer.Argument(help="The cycle to replay.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """A cycle's entries in order: a readable timeline, or ``--json`` one entry per line."""
    from metaheal.ledger import ImmutableLog

    s = _settings(config, bootstrap)
    log = ImmutableLog(s)
    try:
        entries = log.replay_cycle_sync(cycle_id)
    except KafkaUnavailable as exc:
        raise _fail(str(exc)) from None
    finally:
        log.close()
    if not entries:
        raise _fail(f"no entries for cycle {cycle_id!r}")
    for e in entries:
        if as_json:
            typer.echo(e.model_dump_json())
        else:
            typer.echo(
                f"[{e.sequence:>6}] {e.timestamp}  {e.actor:<16} {e.action:<20} {e.resource} -> {e.result}"
                f"  sig {e.signature[:12]}…"
            )
            typer.echo(f"         {e.payload[:200]}")


@ledger_app.command("outcomes")
def outcomes(
    subsystem: Annotated[str | None, typer.Option(help="Only this subsystem.")] = None,
    hours: Annotated[float, typer.Option(help="How far back.")] = 24.0,
    limit: Annotated[int, typer.Option(help="At most this many (newest).")] = 100,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Verified ``execution_outcome`` entries (what the learners consume)."""
    from metaheal.ledger import ImmutableLog

    s = _settings(config, bootstrap)
    log = ImmutableLog(s)
    try:
        entries = log.get_signed_outcomes_sync(subsystem, hours, limit)
    except KafkaUnavailable as exc:
        raise _fail(str(exc)) from None
    finally:
        log.close()
    for e in entries:
        if as_json:
            typer.echo(e.model_dump_json())
        else:
            p = json.loads(e.payload)
            typer.echo(
                f"[{e.sequence:>6}] {e.timestamp} {e.subsystem} {p.get('outcome_id', '-')} "
                f"{p.get('playbook', '-')} -> {e.result}"
            )
    if not entries:
        typer.echo("no signed outcomes", err=True)


@ledger_app.command("prove")
def prove_cmd(
    sequence: Annotated[int, typer.Argument(help="The entry to prove.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the proof bundle here (default stdout).")] = None,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    keys: KeysOpt = None,
) -> None:
    """Inclusion proof of an entry against the latest checkpoint (JSON, checkable offline)."""
    from metaheal.ledger.proof import prove

    s = _settings(config, bootstrap, keys)
    try:
        bundle = prove(s, sequence)
    except (ProofError, KafkaUnavailable) as exc:
        raise _fail(str(exc)) from None
    text = json.dumps(bundle, indent=2)
    if out:
        out.write_text(text + "\n")
        typer.echo(f"proof of sequence {sequence} in a tree of {bundle['tree_size']} written to {out}", err=True)
    else:
        typer.echo(text)


@ledger_app.command("check-proof")
def check_proof(
    bundle: Annotated[Path, typer.Argument(help="A bundle from `metaheal ledger prove`.")],
    registry: Annotated[
        Path | None, typer.Option("--registry", help="Keys folder whose registry.json to trust.")
    ] = None,
) -> None:
    """Verify an inclusion proof offline (no broker): exit 0 if it holds."""
    from metaheal.ledger.keys import KeyRegistry
    from metaheal.ledger.proof import check_inclusion

    try:
        doc = json.loads(bundle.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read proof {bundle}: {exc}", 2) from None
    problems = check_inclusion(doc, KeyRegistry.load(registry) if registry else None)
    for p in problems:
        typer.echo(f"sequence {doc.get('leaf_index', '?')}: {p}")
    if problems:
        raise typer.Exit(1)
    typer.echo(f"OK: sequence {doc['leaf_index']} is included in the signed checkpoint of size {doc['tree_size']}")


@ledger_app.command("checkpoint")
def checkpoint_cmd(config: ConfigOpt = None, bootstrap: BootstrapOpt = None) -> None:
    """Print the latest signed checkpoint note (keep a copy: `verify --checkpoint` detects truncation)."""
    from metaheal.ledger.proof import chain_entries
    from metaheal.ledger.verify import read_raw

    s = _settings(config, bootstrap)
    try:
        entries = chain_entries(read_raw(s))
    except KafkaUnavailable as exc:
        raise _fail(str(exc)) from None
    cps = [e for e in entries if e.action == "checkpoint" and e.actor == "ledger"]
    if not cps:
        raise _fail("no checkpoint yet")
    typer.echo(json.loads(cps[-1].payload)["note"], nl=False)


@ledger_app.command("explain")
def explain(
    id_: Annotated[str, typer.Argument(metavar="ID", help="An outcome, plan or directive id.")],
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: the id and the tree's lines.")] = False,
) -> None:
    """Provenance tree of an outcome or plan, each line pointing to its ledger sequence."""
    from metaheal.ledger.proof import chain_entries
    from metaheal.ledger.provenance import explain_lines
    from metaheal.ledger.verify import read_raw

    s = _settings(config, bootstrap)
    try:
        lines = explain_lines(chain_entries(read_raw(s)), id_)
    except KafkaUnavailable as exc:
        raise _fail(str(exc)) from None
    if not lines:
        raise _fail(f"no ledger entry mentions {id_!r}")
    if as_json:
        print(json.dumps({"id": id_, "lines": lines}))
        return
    for line in lines:
        typer.echo(line)


# -- keys -----------------------------------------------------------------------------------------


@keys_app.command("init")
def keys_init(
    operator: Annotated[str | None, typer.Option("--operator", help="Create a key for this human operator.")] = None,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    keys: KeysOpt = None,
) -> None:
    """Create keys for the system actors (idempotent), or for one operator."""
    from metaheal.ledger.keys import init_operator_key, init_system_keys

    s = _settings(config, bootstrap, keys, need_broker=False)
    try:
        if operator:
            path, pub = init_operator_key(s.keys, operator)
            typer.echo(f"operator:{operator} public_key={pub} private_key={path}")
        else:
            for actor, kid in init_system_keys(s.keys).items():
                typer.echo(f"{actor} key_id={kid}")
    except (LedgerKeyError, OSError) as exc:
        raise _fail(str(exc)) from None


@keys_app.command("list")
def keys_list(
    config: ConfigOpt = None, bootstrap: BootstrapOpt = None, keys: KeysOpt = None, as_json: JsonOpt = False
) -> None:
    """Every key in the registry (public parts only)."""
    from metaheal.ledger.keys import KeyRegistry

    s = _settings(config, bootstrap, keys, need_broker=False)
    for r in sorted(KeyRegistry.load(s.keys).records.values(), key=lambda r: (r.actor, r.valid_from)):
        state = "revoked" if r.revoked else ("retired" if r.valid_until else "active")
        if as_json:
            row = {"actor": r.actor, "key_id": r.key_id, "state": state, "valid_from": r.valid_from}
            print(json.dumps({**row, "valid_until": r.valid_until, "public_key": r.public_key}, default=str))
            continue
        typer.echo(
            f"{r.actor:<20} {r.key_id} {state:<8} from {r.valid_from} until {r.valid_until or '-'} {r.public_key}"
        )


@keys_app.command("rotate")
def keys_rotate(
    actor: Annotated[str, typer.Argument(help="Actor whose key to replace, e.g. executor or operator:alice.")],
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    keys: KeysOpt = None,
) -> None:
    """Retire the actor's key now and issue a new one (old entries stay verifiable)."""
    from metaheal.ledger.keys import rotate_key

    s = _settings(config, bootstrap, keys, need_broker=False)
    try:
        rec = rotate_key(s.keys, actor)
    except LedgerKeyError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{actor} new key_id={rec.key_id}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id to mark compromised.")],
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    keys: KeysOpt = None,
) -> None:
    """Mark a key compromised: `ledger verify` then reports every entry it signed."""
    from metaheal.ledger.keys import revoke_key

    s = _settings(config, bootstrap, keys, need_broker=False)
    try:
        rec = revoke_key(s.keys, key_id)
    except LedgerKeyError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"revoked {rec.key_id} of {rec.actor}")


__all__ = ["keys_app", "ledger_app"]
