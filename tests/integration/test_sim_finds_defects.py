"""The simulator earns its keep: with a known defect put back, it finds it within the CI
seed budget, and the replay command it prints fails the same way again.

Each defect is a patch in tests/sim/, applied to a copy of src/ (the tree under test
stays as it is); the simulator then runs from that copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFECTS = sorted((ROOT / "tests" / "sim").glob("*.patch"))
CI_SEEDS = 500
LEADER_SEEDS = 150  # the CI budget of seeds with three managers (scripts/test.sh)

# patch -> the invariant its failure must break
EXPECTED = {
    "defect-1-move-keeps-restart-count.patch": ("exactly-once", "completed", "views"),
    "defect-stop-not-stored.patch": ("stopped-runs", "exactly-once", "views", "reservations"),
    "defect-stale-term-obeyed.patch": ("stale-term",),
}
# patch -> the managers its seeds run (a leaders' defect needs several)
MANAGERS = {"defect-stale-term-obeyed.patch": 3}


def _sim(src: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(src)}
    return subprocess.run(
        [sys.executable, "-m", "cube.sim", *args],
        cwd=src.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.parametrize("patch", DEFECTS, ids=lambda p: p.stem)
def test_the_simulator_finds_a_reintroduced_defect(patch: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src", tmp_path / "src")
    subprocess.run(["git", "apply", str(patch)], cwd=tmp_path, check=True)
    managers = MANAGERS.get(patch.name, 1)
    seeds = CI_SEEDS if managers == 1 else LEADER_SEEDS
    led = ("--managers", str(managers)) if managers > 1 else ()
    found = _sim(tmp_path / "src", *led, "--seeds", str(seeds), "--until-failure", "--no-shrink")
    assert found.returncode == 1, f"not found in {seeds} seeds:\n{found.stdout}"
    replay = re.escape(" ".join(["scripts/sim.sh", *led]))
    match = re.search(
        rf"^seed (\d+): (\S+): .*\n\s+replay: {replay} --seed \1$", found.stdout, re.M
    )
    assert match, found.stdout
    seed, invariant = match.group(1), match.group(2)
    assert invariant in EXPECTED[patch.name], found.stdout
    replayed = _sim(tmp_path / "src", *led, "--seed", seed)
    assert replayed.returncode == 1
    assert f"seed {seed}: {invariant}:" in replayed.stdout.splitlines()[-1]
    # And the same seed passes on the code as it is.
    clean = _sim(ROOT / "src", *led, "--seed", seed)
    assert clean.returncode == 0, clean.stdout.splitlines()[-1]
