"""``metaheal score FILE.csv``: offline backtest with the streaming scorer (owned by the scorer work)."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from metaheal.cli.options import err_console
from metaheal.streams.backtest import BacktestError, score_csv


def score(
    file: Annotated[str, typer.Argument(help="CSV with timestamp,value rows (header optional); '-' reads stdin.")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Where to write the scored CSV; '-' (default) is stdout.")
    ] = "-",
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="Keep going on bad rows: write them with an empty score and warn on stderr."),
    ] = False,
    details: Annotated[bool, typer.Option("--details", help="Also write baseline and confidence columns.")] = False,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", min=0.0, max=1.0, help="Threshold for the alarm count in the summary (~ Numenta's red zone)."
        ),
    ] = 0.9988,
) -> None:
    """Score a timestamp,value CSV with the streaming anomaly scorer; writes the rows plus anomaly_score.

    Timestamps are epoch seconds (milliseconds if > 1e11) or ISO-8601. Same scorer as the streams worker,
    so thresholds tuned here hold live.
    """
    with ExitStack() as stack:
        try:
            src = sys.stdin if file == "-" else stack.enter_context(Path(file).open(newline="", encoding="utf-8"))
            dst = sys.stdout if out == "-" else stack.enter_context(Path(out).open("w", newline="", encoding="utf-8"))
        except OSError as exc:
            err_console.print(f"error: {exc}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        try:
            summary = score_csv(src, dst, skip_bad=skip_bad, details=details, threshold=threshold)
        except BacktestError as exc:
            err_console.print(f"error: {file}: {exc}", markup=False, highlight=False)
            raise typer.Exit(1) from None
        except UnicodeDecodeError as exc:
            err_console.print(f"error: {file}: not UTF-8 text ({exc.reason})", markup=False, highlight=False)
            raise typer.Exit(1) from None
    err_console.print(
        f"scored {summary.rows} rows, skipped {summary.skipped}, {summary.alarms} with anomaly_score >= {threshold}",
        markup=False,
        highlight=False,
    )
