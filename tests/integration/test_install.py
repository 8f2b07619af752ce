"""Cube on a second machine: built into a wheel, pip-installed into a fresh venv far from
this checkout, it runs and builds the offline images from the package alone.

The venv gets its dependencies from the package index, held to requirements.lock's
versions; everything runs from a directory outside the checkout, so nothing can come
from src/ by accident.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from tests.support import ROOT, free_port, terminate, wait_for

pytestmark = pytest.mark.docker

RECIPE = "cube/images/build.sh"
IMAGES = ("cube/busybox:latest", "cube/http:latest")


@dataclass(frozen=True)
class Install:
    wheel: Path
    sdist: Path
    venv: Path
    home: Path  # a directory outside the checkout to run from

    @property
    def cube(self) -> str:
        return str(self.venv / "bin" / "cube")

    def env(self) -> dict[str, str]:
        """The environment of a shell on another machine: no trace of this checkout."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CUBE_"))}
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cube, *args],
            cwd=self.home,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """scripts/dist.sh's wheel, pip-installed into a new venv as docs/operations.md says."""
    tmp = tmp_path_factory.mktemp("install")
    out = run(ROOT / "scripts" / "dist.sh", tmp / "dist").stdout.split()
    wheels = [Path(p) for p in out if p.endswith(".whl")]
    sdists = [Path(p) for p in out if p.endswith(".tar.gz")]
    assert (len(wheels), len(sdists)) == (1, 1), f"dist.sh printed {out}"
    venv = tmp / "venv"
    # The interpreter under this venv, as a machine without a checkout would have it.
    run(Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", venv)
    run(
        venv / "bin" / "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-c",
        ROOT / "requirements.lock",
        wheels[0],
        cwd=tmp,
    )
    home = tmp / "elsewhere"
    home.mkdir()
    return Install(wheel=wheels[0], sdist=sdists[0], venv=venv, home=home)


def test_the_wheel_carries_the_images_recipe(installed: Install) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        assert RECIPE in names, f"{RECIPE} not in the wheel"
        recipe = whl.read(RECIPE)
    assert recipe == (ROOT / "src" / RECIPE).read_bytes()


def test_the_sdist_carries_the_lock_and_the_systemd_units(installed: Install) -> None:
    """What a machine without a checkout needs beside the package (docs/operations.md)."""
    with tarfile.open(installed.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    wanted = {
        "requirements.lock",
        "contrib/systemd/cube-manager.service",
        "contrib/systemd/cube-worker.service",
        "contrib/systemd/cube-manager.env",
        "contrib/systemd/cube-worker.env",
        "src/" + RECIPE,
    }
    assert wanted <= names, f"missing from the sdist: {sorted(wanted - names)}"


def test_the_installed_cube_is_the_wheel_not_the_checkout(installed: Install) -> None:
    done = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", "import cube; print(cube.__file__)"],
        cwd=installed.home,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    where = Path(done.stdout.strip())
    assert where.is_relative_to(installed.venv), where


def test_the_installed_cli_answers(installed: Install) -> None:
    top = installed.run("--help")
    assert top.returncode == 0, top.stderr
    for command in ("worker", "manager", "node", "images"):
        assert command in top.stdout, f"{command} missing from cube --help:\n{top.stdout}"
    worker = installed.run("worker", "--help")
    assert worker.returncode == 0, worker.stderr
    assert "--port" in worker.stdout


def test_the_installed_package_builds_the_demo_images(installed: Install) -> None:
    """From the installed recipe alone; up to date here, so nothing is rebuilt, and the
    images carry the hash of exactly that recipe (and this machine's busybox)."""
    done = installed.run("images", "build", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"up to date: {', '.join(IMAGES)}"
    site = next((installed.venv / "lib").glob("python3*/site-packages"))
    recipe = (site / RECIPE).read_bytes()
    busybox = Path(os.environ.get("BUSYBOX", "/bin/busybox")).read_bytes()
    expected = hashlib.sha256(busybox + recipe).hexdigest()[:16]
    client = docker.from_env()
    try:
        for tag in IMAGES:
            labels = client.images.get(tag).labels
            assert labels.get("cube.image.hash") == expected, (tag, labels)
    finally:
        client.close()


def test_the_installed_images_command_fails_in_one_line(installed: Install) -> None:
    done = installed.run("images", "build", "--busybox", str(installed.home / "no-busybox"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"cube: building the images failed: {installed.home / 'no-busybox'} not found"
        " (install busybox-static)"
    ]


@pytest.fixture
def installed_worker(installed: Install) -> Iterator[tuple[str, Path]]:
    """The installed `cube worker` serving on a free port: its URL and its log."""
    port = free_port()
    name = f"test-install-{uuid.uuid4().hex[:8]}"
    path = installed.home / f"{name}.log"
    log = path.open("w")
    proc = subprocess.Popen(
        [installed.cube, "worker", "-H", "127.0.0.1", "-p", str(port), "-n", name],
        cwd=installed.home,
        env=installed.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}", path
    finally:
        terminate(proc)
        log.close()


def test_the_installed_worker_serves_with_docker(installed_worker: tuple[str, Path]) -> None:
    """Its dependencies came with the wheel: the API answers and reaches Docker."""
    url, log = installed_worker

    def ready() -> bool:
        r = httpx.get(f"{url}/health", timeout=2)
        return r.status_code == 200 and r.json().get("Docker") is True

    wait_for(ready, 30, what="the installed worker's /health with Docker", detail=log.read_text)
