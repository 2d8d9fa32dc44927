"""``metaheal score`` and ``metaheal bench`` and the streams worker (owned by the streams work)."""

import typer

streams_app = typer.Typer(help="Run the telemetry streams worker.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print measured numbers.", no_args_is_help=True)
