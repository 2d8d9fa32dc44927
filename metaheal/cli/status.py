"""``metaheal status``: current cycle, pending approvals, last outcomes (owned by the meta-loop work)."""

import typer


def status() -> None:
    """Show the current cycle, pending approvals and last outcomes (not implemented yet)."""
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(2)
