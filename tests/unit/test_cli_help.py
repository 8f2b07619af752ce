"""Every command's --help renders: its text is Rich markup, where a stray ``[/x]`` is a
closing tag and a crash (``cube manager --help`` once died on ``[/prefix]``)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cube.cli import build_app

app = build_app()


def commands() -> list[list[str]]:
    """Every command's words, from the app itself: a new one is covered at once."""
    found: list[list[str]] = [[]]
    group = typer.main.get_command(app)

    def walk(command: Any, words: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            found.append([*words, name])
            walk(sub, [*words, name])

    walk(group, [])
    return found


@pytest.mark.parametrize("words", commands(), ids=lambda w: " ".join(w) or "cube")
def test_every_commands_help_renders(words: list[str]) -> None:
    result = CliRunner().invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Usage" in result.output
