"""`cube images build`: the offline demo images on a machine that has no checkout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cube import images
from cube.cli.errors import CliError

app = typer.Typer(
    help="Cube's offline demo images (cube/busybox, cube/http): no registry needed.",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="images")


@app.command("build")
def build(
    busybox: Annotated[
        Path,
        typer.Option(
            "--busybox",
            envvar="BUSYBOX",
            help="A static busybox binary (Debian's busybox-static) to build them from.",
        ),
    ] = images.DEFAULT_BUSYBOX,
) -> None:
    """Build cube/busybox:latest and cube/http:latest in the local Docker engine.

    Each image is rebuilt only when busybox or the recipe changed, so this is cheap to
    run again (after an upgrade, say)."""
    try:
        built = images.build(busybox)
    except images.ImageBuildError as exc:
        raise CliError(str(exc)) from exc
    for line in built:
        print(line, file=sys.stderr)
    print(f"up to date: {', '.join(images.IMAGES)}")
