"""``metaheal status`` and ``metaheal approvals ...`` (owned by the meta-loop and agentic work)."""

import typer

approvals_app = typer.Typer(help="List, approve and deny pending approval requests.", no_args_is_help=True)
