"""How the manager follows workers: batches in, a watch stream of changes out.

Real `cube worker` (with the simulated runtime: no containers needed) and `cube manager`
processes over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support import (
    ManagerProcess,
    WorkerProcess,
    manager_process,
    task_event,
    wait_for,
    worker_process,
)

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
RUNNING, PENDING = 2, 0


def test_worker_takes_a_batch_and_reports_changes_since(workers: StartWorker) -> None:
    worker = workers("--runtime", "simulated")
    events = [task_event() for _ in range(3)]
    ids = {e["Task"]["ID"] for e in events}
    answer = httpx.post(f"{worker.url}/tasks", json=events, timeout=10)
    assert answer.status_code == 201, answer.text
    assert {t["ID"] for t in answer.json()} == ids

    def all_running() -> httpx.Response | None:
        r = httpx.get(f"{worker.url}/tasks", timeout=10)
        return r if all(t["State"] == RUNNING for t in r.json()) else None

    full = wait_for(all_running, what="batch running")
    assert full.headers["X-Cube-Complete"] == "1"
    epoch, version = full.headers["X-Cube-Epoch"], int(full.headers["X-Cube-Version"])
    params = {"since": version, "epoch": epoch, "wait": 0}
    nothing = httpx.get(f"{worker.url}/tasks", params=params, timeout=10)
    assert nothing.json() == [] and nothing.headers["X-Cube-Complete"] == "0"
    restarted = httpx.get(f"{worker.url}/tasks", params=params | {"epoch": "x"}, timeout=10)
    assert {t["ID"] for t in restarted.json()} == ids

    watch = {"watch": "true", "stats": 1, "since": version, "epoch": epoch}
    with httpx.stream("GET", f"{worker.url}/tasks", params=watch, timeout=10) as stream:
        assert stream.headers["content-type"].startswith("application/x-ndjson")
        first = json.loads(next(stream.iter_lines()))
    assert first["Epoch"] == epoch and first["Tasks"] == [] and not first["Complete"]
    assert first["Stats"]["Cores"] >= 1

    bad = [task_event(), {"ID": "nope"}]
    assert httpx.post(f"{worker.url}/tasks", json=bad, timeout=10).status_code == 400


def test_manager_takes_a_batch_and_learns_of_it_running(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers("--runtime", "simulated") for _ in range(2)]
    manager = managers(nodes)
    events = [task_event() for _ in range(6)]
    answer = httpx.post(f"{manager.url}/tasks", json=events, timeout=10)
    assert answer.status_code == 201, answer.text
    assert [t["State"] for t in answer.json()] == [PENDING] * 6
    for event in events:
        task = manager.wait_task(event["Task"]["ID"], lambda t: t["State"] == RUNNING)
        assert task["Node"] in {n.address for n in nodes}

    health = httpx.get(f"{manager.url}/health", timeout=10).json()
    assert health == {
        "Role": "manager",
        "Workers": 2,
        "WorkersReady": 2,
        "Tasks": 6,
        "Tokens": False,
        "Leading": True,  # a single manager leads itself
    }

    mixed = [task_event(), task_event(Image="")]
    refused = httpx.post(f"{manager.url}/tasks", json=mixed, timeout=10)
    assert refused.status_code == 400
    assert len(manager.tasks()) == 6  # all or nothing


def test_no_tasks_go_to_a_worker_whose_docker_is_away(
    workers: StartWorker, managers: StartManager, tmp_path: Path
) -> None:
    good = workers("--runtime", "simulated")
    # A worker whose engine cannot be reached: DOCKER_HOST names a socket nobody serves.
    away = worker_process(tmp_path, name=f"away-{tmp_path.name[-6:]}")
    away.env = {"DOCKER_HOST": f"unix://{tmp_path}/nobody.sock"}
    away.start()
    try:
        wait_for(lambda: httpx.get(f"{away.url}/health", timeout=2).json()["Docker"] is False)
        manager = managers([good, away])
        ids = [manager.submit(task_event())["ID"] for _ in range(6)]
        for task_id in ids:
            task = manager.wait_task(task_id, lambda t: t["State"] == RUNNING)
            assert task["Node"] == good.address
        nodes = {n["Name"]: n for n in httpx.get(f"{manager.url}/nodes", timeout=5).json()}
        assert nodes[away.address]["Docker"] is False and nodes[away.address]["Status"] == "ready"
        assert nodes[good.address]["Docker"] is True
        assert nodes[good.address]["TaskCount"] == 6 and nodes[away.address]["TaskCount"] == 0
    finally:
        away.stop()


def test_manager_health_answers_with_no_worker_ready(tmp_path: Path) -> None:
    # A worker address nobody listens on: the manager is alive, its cluster is not.
    manager = manager_process(tmp_path, [worker_process(tmp_path)]).start()
    try:
        manager.wait_ready(0)
        answer = httpx.get(f"{manager.url}/health", timeout=10)
        assert answer.status_code == 200
        assert answer.json() == {
            "Role": "manager",
            "Workers": 1,
            "WorkersReady": 0,
            "Tasks": 0,
            "Tokens": False,
            "Leading": True,
        }
    finally:
        manager.stop()
