"""The one place where the CLI turns failures into a single line on stderr.

Commands raise; they never print errors or call ``sys.exit`` themselves. Anything a
user can cause (a manager that is down, a typo in a file, an unknown task ID) arrives
here as a :class:`CliError` or a :class:`~cube.manager.client.ManagerError` and leaves
as ``cube: <what went wrong>`` with exit code 1. Anything else is a bug in Cube, and
its traceback is what a bug report needs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from cube.manager.client import ManagerError


class CliError(Exception):
    """Something the user can fix; the message says what, on one line."""


EXPECTED: tuple[type[Exception], ...] = (CliError, ManagerError)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``cube: message`` as exactly one line and exit."""
    line = " ".join(message.split()) or "failed"
    print(f"cube: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def run(app: Callable[..., object]) -> None:
    try:
        app(prog_name="cube")
    except EXPECTED as exc:
        fail(str(exc))
