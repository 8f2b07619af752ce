"""The `cube` command: one Typer app, a module per group of subcommands."""

from __future__ import annotations

import typer

from cube.cli import manager, worker

app = typer.Typer(
    name="cube",
    help="Cube: a small container orchestrator. Run a manager and workers, then submit tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
worker.register(app)
manager.register(app)


def main() -> None:
    app()
