"""The systemd units in contrib/systemd parse, as systemd itself reads them.

`systemd-analyze verify` loads a unit the way systemd does and reports what it would
ignore (a misspelt key or value is ignored at boot with a line in the journal, which
is how a unit ends up without Restart= unnoticed). The ExecStart binary must exist for
it, so the check runs on a copy pointing at this venv's `cube`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "contrib" / "systemd"
INSTALLED_CUBE = "/opt/cube/bin/cube"


def unit_names() -> list[str]:
    return sorted(p.name for p in UNITS.glob("*.service"))


def test_the_manager_and_worker_units_are_shipped() -> None:
    assert unit_names() == ["cube-manager.service", "cube-worker.service"]
    for unit in unit_names():
        env = UNITS / unit.replace(".service", ".env")
        assert env.is_file(), f"{unit} has no example environment file"


@pytest.mark.parametrize("unit", unit_names())
def test_systemd_accepts_the_unit(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (UNITS / unit).read_text()
    assert INSTALLED_CUBE in text
    cube = Path(sys.executable).parent / "cube"
    copy = tmp_path / unit
    copy.write_text(text.replace(INSTALLED_CUBE, str(cube)))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("unit", unit_names())
def test_the_unit_restarts_on_failure_after_docker(unit: str) -> None:
    keys = {
        line.partition("=")[0]: line.partition("=")[2]
        for line in (UNITS / unit).read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert keys["Restart"] == "on-failure"
    assert keys["EnvironmentFile"].startswith("/etc/cube/")
    assert "-d persistent" in keys["ExecStart"]
    if unit == "cube-worker.service":
        assert "docker.service" in keys["After"].split()
