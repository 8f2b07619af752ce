"""The `cube` command: one Typer app, a module per group of subcommands."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

HELP = (
    "Cube: a small container orchestrator. A manager places tasks on workers, which run"
    " them as Docker containers, and keeps them running.\n\n"
    "Try it: `cube up`, then `cube run -f examples/hello.json --wait`, `cube status`."
)


def build_app() -> typer.Typer:
    from cube.cli import (
        events,
        images,
        jobs,
        logs,
        manager,
        migrate,
        nodes,
        plan,
        tasks,
        tls,
        tokens,
        up,
        worker,
    )

    app = typer.Typer(
        name="cube",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_global_options)
    worker.register(app)
    manager.register(app)
    tokens.register(app)
    events.register(app)
    tls.register(app)
    tasks.register(app)
    logs.register(app)
    nodes.register(app)
    jobs.register(app)
    plan.register(app)
    up.register(app)
    images.register(app)
    migrate.register(app)
    return app


def _worker_app() -> typer.Typer:
    """`cube worker` alone: a worker is a long-running server, and the rest of the CLI
    loads the client side too (httpx, Rich, YAML), ~7 MB of an idle worker's RSS."""
    from cube.cli import worker

    app = typer.Typer(name="cube", help=HELP, add_completion=False, pretty_exceptions_enable=False)
    app.callback()(_group)  # keeps `worker` a subcommand, as in the full app
    worker.register(app)
    return app


def _group() -> None:
    pass


def _global_options(
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="CUBE_TOKEN",
            help="API token sent to the manager (Authorization: Bearer).",
            show_envvar=True,
        ),
    ] = None,
    tls_ca: Annotated[
        str | None,
        typer.Option(
            "--tls-ca",
            envvar="CUBE_TLS_CA",
            help="The cluster CA (PEM) the manager's certificate is checked against; "
            "a --manager without a scheme is then https://.",
            show_envvar=True,
        ),
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option(
            "--tls-cert",
            envvar="CUBE_TLS_CERT",
            help="A client certificate (PEM) to present to the manager, with --tls-key.",
            show_envvar=True,
        ),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option(
            "--tls-key", envvar="CUBE_TLS_KEY", help="Its private key (PEM).", show_envvar=True
        ),
    ] = None,
) -> None:
    """Options for every command that talks to a manager."""
    given = {
        "CUBE_TOKEN": token,  # what ManagerClient sends
        "CUBE_TLS_CA": tls_ca,  # and how it checks the manager, and who it says it is
        "CUBE_TLS_CERT": tls_cert,
        "CUBE_TLS_KEY": tls_key,
    }
    os.environ.update({name: value for name, value in given.items() if value})
    if "CUBE_MANAGER" not in os.environ:
        from cube import clientconfig

        # A cluster `cube up` started is the default manager (its token goes with it).
        config = clientconfig.load()
        if config is not None:
            os.environ["CUBE_MANAGER"] = config.Manager


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        _worker_app()(prog_name="cube")
        return
    from cube.cli import errors

    errors.run(build_app())


def __getattr__(name: str) -> Any:
    if name == "app":  # the full app, for tests and tools that drive it (CliRunner)
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
