"""Cube's offline demo images, built from the installed package alone.

The recipe is ``build.sh`` beside this file, shipped as package data, so a machine with
Cube installed from a wheel (no checkout) builds the same images as a checkout's
``images/build.sh`` does: one recipe. Each image carries a hash of its inputs (busybox
and the recipe) as a label, so a build is a no-op when the images are up to date.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

IMAGES = ("cube/busybox:latest", "cube/http:latest")
DEFAULT_BUSYBOX = Path("/bin/busybox")
RECIPE = "build.sh"


class ImageBuildError(Exception):
    """The images could not be built; the message says why, on one line."""


def build(busybox: Path = DEFAULT_BUSYBOX) -> list[str]:
    """Run the recipe against the Docker engine the `docker` CLI reaches; return what it
    printed, one line per image it (re)built, none when they were up to date."""
    recipe = resources.files(__name__).joinpath(RECIPE)
    if not recipe.is_file():  # a broken install (package data left out): say so plainly
        raise ImageBuildError(f"{RECIPE} is missing from the installed cube package")
    for tool in ("bash", "docker"):
        if shutil.which(tool) is None:
            raise ImageBuildError(f"`{tool}` is not on PATH; the images need it to build")
    with resources.as_file(recipe) as script:
        done = subprocess.run(
            ["bash", str(script)],
            env={**os.environ, "BUSYBOX": str(busybox)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != 0:
        last = lines[-1].removeprefix("images: ") if lines else f"exit status {done.returncode}"
        raise ImageBuildError(f"building the images failed: {last}")
    return lines
