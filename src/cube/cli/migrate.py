"""`cube migrate`: a single manager's SQLite state, copied into etcd (docs/operations.md,
"Upgrading from a single manager")."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)


def migrate(
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="sqlite:PATH: a stopped manager's manager.db, or its --data-dir.",
        ),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to",
            # No square brackets: the help is Rich markup, where "[/prefix]" is a tag.
            help="etcd://HOST:PORT, more endpoints after commas, then /PREFIX if the keys "
            "are not to be under /cube/: as `cube manager --store` will be given.",
        ),
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace whatever the prefix holds (every key under it)."),
    ] = False,
) -> None:
    """Copy a stopped manager's state (tasks, histories, events, jobs, nodes, tokens) from
    SQLite into etcd, for `cube manager --store etcd://...`."""
    # Imported here: etcd's client (gRPC) is for this command and the manager alone.
    from cube.cli.errors import CliError
    from cube.manager.migrate import MigrateError
    from cube.manager.migrate import migrate as copy

    try:
        copied = copy(source, target, force=force)
    except MigrateError as exc:
        raise CliError(str(exc)) from None
    print(copied.summary(target))
