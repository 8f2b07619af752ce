"""Fixtures for real processes; every one cleans up what it started, containers included."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import (
    ETCD,
    EtcdProcess,
    ManagerProcess,
    WorkerProcess,
    manager_process,
    remove_containers,
    worker_process,
)

RESTART_DOCKER_ENV = "CUBE_TEST_RESTART_DOCKER"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--restart-docker",
        action="store_true",
        help=f"also run the tests that restart the Docker engine (or {RESTART_DOCKER_ENV}=1)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Running Cube's tests must never restart someone's Docker unasked: CI opts in."""
    if config.getoption("--restart-docker") or os.environ.get(RESTART_DOCKER_ENV) == "1":
        return
    skip = pytest.mark.skip(
        reason="restarts this machine's Docker engine: opt in with --restart-docker "
        f"or {RESTART_DOCKER_ENV}=1 (.ci/run does)"
    )
    for item in items:
        if "restarts_docker" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """A real etcd for this module's tests (each keeps its keys under a prefix of its
    own), stopped afterwards. Skipped, saying why, where Debian's etcd-server is not
    installed (scripts/setup.sh installs it)."""
    if not ETCD.exists():
        pytest.skip(f"{ETCD} is missing: scripts/setup.sh installs Debian's etcd-server")
    server = EtcdProcess(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `cube worker` processes; stop them and remove their containers afterwards."""
    started: list[WorkerProcess] = []

    def start(*extra: str, name: str | None = None, port: int | None = None) -> WorkerProcess:
        worker = worker_process(tmp_path, *extra, name=name, port=port)
        started.append(worker)
        return worker.start().wait_ready()

    yield start
    for worker in started:
        worker.stop()
    for name in {w.name for w in started}:
        remove_containers(name)


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[Callable[..., ManagerProcess]]:
    """Start `cube manager` processes for given workers; stop them afterwards."""
    started: list[ManagerProcess] = []

    def start(workers: list[WorkerProcess], *extra: str, port: int | None = None) -> ManagerProcess:
        manager = manager_process(tmp_path, workers, *extra, port=port)
        started.append(manager)
        return manager.start().wait_ready(len(workers))

    yield start
    for manager in started:
        manager.stop()
