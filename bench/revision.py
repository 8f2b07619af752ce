"""An older commit's Cube, to measure beside this tree's in the same run.

Absolute figures move between machines and between runs on a busy one, so "no worse
than before" is only a fair claim when before and after are measured side by side.
:func:`source_tree` extracts a commit's ``src/`` into a temporary directory
(``git archive``, which leaves no worktree registered behind, even if the run is
killed); :func:`python_env` runs a Python process on it, with this tree's interpreter
and installed dependencies.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import ROOT


def commit_of(rev: str) -> str:
    """The full commit REV names here; if none, exit with one line saying so."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if found.returncode != 0 or not found.stdout.strip():
        raise SystemExit(f"error: --compare {rev}: not a commit of this repository")
    return found.stdout.strip()


@contextlib.contextmanager
def source_tree(rev: str) -> Iterator[tuple[Path, str]]:
    """REV's ``src`` directory in a temporary directory, and REV's short commit."""
    commit = commit_of(rev)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with tempfile.TemporaryDirectory(prefix=f"cube-bench-{commit[:8]}-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp) / "src"
        check_imports_from(src)
        yield src, commit[:7]


def python_env(src: Path) -> dict[str, str]:
    """Environment for a ``python -m cube`` that imports ``src``'s cube, not this tree's.

    ``PYTHONPATH`` comes before site-packages, where this tree's editable install
    puts its own ``src``.
    """
    return {"PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}


def check_imports_from(src: Path) -> None:
    """Fail unless a process started with :func:`python_env` really runs ``src``'s code."""
    found = subprocess.run(
        [sys.executable, "-c", "import cube; print(cube.__file__)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **python_env(src)},
        timeout=60,
    )
    where = Path(found.stdout.strip() or "?")
    if found.returncode != 0 or not where.is_relative_to(src):
        raise RuntimeError(f"cube imported from {where}, not from {src}: {found.stderr.strip()}")
