"""A list of managers with real processes: the first address is dead (nothing listens
on 127.0.0.1:1), the second is a real `cube manager`. The CLI and a joining
`cube worker` use the one that answers; with none answering, one line names them all."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support import (
    ManagerProcess,
    WorkerProcess,
    cube,
    free_port,
    ok,
    one_line_error,
    wait_for,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
TOKEN = "join-failover-5d1e"
DEAD = "127.0.0.1:1"


def node_status(manager: ManagerProcess, name: str) -> str:
    nodes = httpx.get(f"{manager.url}/nodes", timeout=5).json()
    return next((n["Status"] for n in nodes if n["Name"] == name), "")


def test_the_cli_and_a_worker_use_the_manager_that_answers(
    workers: StartWorker, managers: StartManager
) -> None:
    # Down after 1.5 s without a heartbeat: the worker must keep reaching this one.
    manager = managers([], "--join-token", TOKEN, "--heartbeat-grace", "0.5")
    both = f"{DEAD},127.0.0.1:{manager.port}"
    worker = workers("--join", both, "--join-token", TOKEN, name="failover-w")
    wait_for(lambda: node_status(manager, worker.name) == "ready", 20, what="joined, ready")

    out = ok(cube("run", "-f", "examples/batch.json", "--wait", manager=both))
    assert f"submitted to {manager.url}" in out
    task_id = out.split()[1]
    wait_for(lambda: manager.task(task_id)["State"] == 3, 60, what="batch completed")
    assert manager.task(task_id)["Node"] == worker.name
    assert task_id[:8] in ok(cube("status", manager=both))
    assert "counting" in ok(cube("logs", task_id, manager=both))
    assert "NodeJoined" in ok(cube("events", "--topic", "node", manager=both))

    assert node_status(manager, worker.name) == "ready"  # still heartbeating
    assert "joined the manager at " + manager.url in worker.output()

    nobody = f"127.0.0.1:{free_port()}"
    line = one_line_error(cube("status", manager=f"{DEAD},{nobody}"))
    assert line == (
        f"cube: no manager answered: http://{DEAD} (connection refused), "
        f"http://{nobody} (connection refused)"
    )
