"""The ``metaheal`` command: one Typer app; each area registers its sub-commands here."""

from __future__ import annotations

import typer

from metaheal.cli import agents, console, core, ledger, playbooks, run, score, services, status, streams

app = typer.Typer(
    help="metaheal: Kafka-native, meta-coordinated self-healing control plane.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# foundation
app.command("broker")(core.broker)
app.add_typer(core.topics_app, name="topics")
app.add_typer(core.config_app, name="config")

# ledger
app.add_typer(ledger.ledger_app, name="ledger")
app.add_typer(ledger.keys_app, name="keys")

# streams
app.add_typer(streams.streams_app, name="streams")
app.add_typer(streams.bench_app, name="bench")
app.command("score")(score.score)

# agents (meta loop, advisors, executors)
app.add_typer(agents.approvals_app, name="approvals")
app.add_typer(playbooks.playbooks_app, name="playbooks")
app.command("status")(status.status)

# the main job
app.command("demo")(run.demo)  # the full self-healing demo (`make demo`)
app.command("simulate")(run.simulate)
app.command("up")(run.up)
app.add_typer(services.services_app, name="services")  # the service registry `up` follows

# the web console
app.command("console")(console.console)


def main() -> None:
    app()
