"""``metaheal ledger ...`` and ``metaheal keys ...`` (owned by the ledger work)."""

import typer

ledger_app = typer.Typer(help="Replay, verify and prove the signed ledger.", no_args_is_help=True)
keys_app = typer.Typer(help="Create and list Ed25519 keys of actors and operators.", no_args_is_help=True)
