"""The `cube` command: one Typer app, a module per group of subcommands."""

from __future__ import annotations

import typer

from cube.cli import errors, manager, nodes, tasks, up, worker

app = typer.Typer(
    name="cube",
    help=(
        "Cube: a small container orchestrator. A manager places tasks on workers, which run"
        " them as Docker containers, and keeps them running.\n\n"
        "Try it: `cube up`, then `cube run -f examples/hello.json --wait`, `cube status`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
worker.register(app)
manager.register(app)
tasks.register(app)
nodes.register(app)
up.register(app)


def main() -> None:
    errors.run(app)
