"""Options shared by the commands that talk to a manager, spelled once."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from cube.manager.client import DEFAULT_MANAGER


class Output(StrEnum):
    table = "table"
    json = "json"


Manager = Annotated[
    str,
    typer.Option(
        "-m",
        "--manager",
        envvar="CUBE_MANAGER",
        help="Manager address: host:port or a URL; several, comma-separated, for a "
        "cluster of managers (whichever answers is used).",
        show_default=True,
    ),
]
OutputFormat = Annotated[
    Output,
    typer.Option(
        "-o", "--output", help="table for people, json (what the API answers) for scripts."
    ),
]

__all__ = ["DEFAULT_MANAGER", "Manager", "Output", "OutputFormat"]
