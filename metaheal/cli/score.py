"""``metaheal score FILE.csv``: offline backtest with the streaming scorer (owned by the scorer work)."""

import typer


def score() -> None:
    """Score a timestamp,value CSV with the streaming anomaly scorer (not implemented yet)."""
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(2)
