"""`cube images build` says in one line what it lacks, before running anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from cube import images


def test_the_recipe_ships_inside_the_package() -> None:
    recipe = Path(images.__file__).with_name(images.RECIPE)
    assert recipe.is_file()
    assert "docker import" in recipe.read_text()


@pytest.mark.parametrize("tool", ["bash", "docker"])
def test_a_missing_tool_is_named(
    tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATH holding every tool but one: the error names that one."""
    for other in {"bash", "docker"} - {tool}:
        (tmp_path / other).write_text("#!/bin/sh\n")
        (tmp_path / other).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(images.ImageBuildError, match=f"`{tool}` is not on PATH"):
        images.build()
