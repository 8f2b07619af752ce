"""Each benchmark in bench/ runs in its short --smoke mode and writes its result.

These check that the benchmarks still work (for breakage, not timing): the numbers
themselves are for `docs/performance.md`, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(name: str, out: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"bench.{name} failed:\n{done.stdout}\n{done.stderr}"
    result = json.loads((out / f"{name}.json").read_text())
    assert result["benchmark"] == name
    assert result["smoke"] is True
    assert result["rows"], "no measurements"
    assert result["command"].endswith(f"-m bench.{name} --smoke --out {out}")
    assert {"machine", "versions"} <= result.keys()
    return result


def test_scheduler_smoke(tmp_path: Path) -> None:
    result = run_smoke("scheduler", tmp_path)
    assert [row["workers"] for row in result["rows"]] == [10, 100]  # type: ignore[index]


def test_scale_smoke(tmp_path: Path) -> None:
    result = run_smoke("scale", tmp_path)
    assert result["settings"]["tasks"] == 200  # type: ignore[index]


@pytest.mark.docker
def test_containers_smoke(tmp_path: Path) -> None:
    result = run_smoke("containers", tmp_path)
    systems = {row["system"] for row in result["rows"]}  # type: ignore[attr-defined]
    assert {"cube, 1 worker", "cube, 3 workers"} <= systems


@pytest.mark.docker
def test_healing_smoke(tmp_path: Path) -> None:
    run_smoke("healing", tmp_path)


@pytest.mark.docker
def test_footprint_smoke(tmp_path: Path) -> None:
    run_smoke("footprint", tmp_path)
