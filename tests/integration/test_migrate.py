"""`cube migrate` with real processes: a manager on SQLite (`-d persistent`) with tasks,
a stopped one, a job of two versions and an API token is stopped, copied into a real
etcd, and a manager started with `--store etcd://` carries on with all of it: the same
token lets the same client in, and the event log numbers on from where it was."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    EtcdProcess,
    ManagerProcess,
    WorkerProcess,
    cube,
    ok,
    task_event,
    wait_for,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
RUNNING, COMPLETED = 2, 3
SECRET = "migrate-test-management-token"
FAST = ("--health-interval", "0.5", "--health-grace", "0", "--health-failures", "1")


def get(manager: ManagerProcess, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else manager.headers
    answer = httpx.get(f"{manager.url}{path}", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def events(manager: ManagerProcess, after: int = 0) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{manager.url}/events",
        params={"index": after, "follow": "false"},
        headers=manager.headers,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return [e for e in map(json.loads, answer.text.splitlines()) if e]


def deploy(manager: ManagerProcess, env: str, version: int) -> None:
    job = {
        "Name": "web",
        "Count": 1,
        "Task": {
            "Image": "cube/http:latest",
            "ExposedPorts": {"80/tcp": {}},
            "HealthCheck": "/health",
            "Env": [env],
        },
        "Update": {"MaxParallel": 1, "MinHealthyTime": 1, "HealthyDeadline": 30},
    }
    posted = httpx.post(f"{manager.url}/jobs", json=job, headers=manager.headers, timeout=10)
    assert posted.status_code in (200, 201), posted.text

    def done() -> bool:
        deployment = get(manager, "/jobs/web")["Deployment"]
        return bool(deployment["Status"] == "successful" and deployment["Version"] == version)

    wait_for(done, 90, what=f"job web version {version} deployed")


def snapshot(manager: ManagerProcess) -> dict[str, Any]:
    """What the manager shows of everything it keeps."""
    tasks = {t["ID"]: t for t in manager.tasks()}
    return {
        "tasks": {i: (t["State"], t["DesiredState"], t["Name"]) for i, t in tasks.items()},
        "history": {i: get(manager, f"/tasks/{i}/events") for i in tasks},
        "job": get(manager, "/jobs/web"),
        "versions": get(manager, "/jobs/web/versions"),
        "nodes": sorted(n["Name"] for n in get(manager, "/nodes")),
        "tokens": get(manager, "/tokens"),
    }


def test_a_sqlite_manager_moves_to_etcd_with_everything(
    tmp_path: Path, etcd: EtcdProcess, workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers("--token", SECRET)]
    manager = managers(nodes, "-d", "persistent", "--token", SECRET, *FAST)
    made = cube("token", "create", "--name", "ci", manager=manager, CUBE_TOKEN=SECRET)
    reader = ok(made).splitlines()[0]
    submitted = [
        manager.submit(task_event("cube/busybox:latest", Cmd=["sleep", "600"]))["ID"]
        for _ in range(3)
    ]
    for task_id in submitted:
        manager.wait_task(task_id, lambda t: t["State"] == RUNNING, what=f"{task_id} running")
    stopped = submitted[0]
    gone = httpx.delete(f"{manager.url}/tasks/{stopped}", headers=manager.headers, timeout=10)
    assert gone.status_code == 204, gone.text
    manager.wait_task(stopped, lambda t: t["State"] == COMPLETED, what="the stopped task")
    deploy(manager, "V=1", 1)
    deploy(manager, "V=2", 2)
    wait_for(
        lambda: all(
            t["State"] == t["DesiredState"] or (t["DesiredState"] == COMPLETED and t["State"] > 2)
            for t in manager.tasks()
        ),
        60,
        what="every task where it is meant to be",
    )
    before = snapshot(manager)
    logged = events(manager)
    assert [e["Index"] for e in logged] == list(range(1, len(logged) + 1))
    assert [v["Version"] for v in before["versions"]] == [2, 1]
    manager.stop()

    target = etcd.url(f"migrate-{uuid.uuid4().hex[:8]}")
    said = ok(cube("migrate", "--from", f"sqlite:{tmp_path}", "--to", target)).strip()
    history = sum(map(len, before["history"].values()))
    assert said.startswith(
        f"copied {len(before['tasks'])} tasks, {history} task events, "
        f"{len(logged)} events (indexes 1-{len(logged)}), 1 jobs, 1 nodes, 1 tokens to {target}"
    ), said

    again = managers(nodes, "--store", target, "--token", SECRET, *FAST)
    after = snapshot(again)
    assert after["tasks"] == before["tasks"]  # desired and observed state, stopped included
    for task_id, changes in before["history"].items():
        assert after["history"][task_id][: len(changes)] == changes, task_id
    assert after["job"] == before["job"]  # its version and its deployment
    assert after["versions"] == before["versions"]
    assert after["nodes"] == before["nodes"]
    assert after["tokens"] == before["tokens"]
    assert get(again, "/tokens/self", token=reader)["Name"] == "ci"  # the same secret

    # The log goes on from where SQLite left it: the old events as they were, then new
    # ones numbered on with no gap.
    resumed = events(again)
    assert resumed[: len(logged)] == logged
    again.submit(task_event("cube/busybox:latest", Cmd=["sleep", "600"]))
    newer = wait_for(lambda: events(again, len(logged)), 20, what="events after the move")
    assert newer[0]["Index"] == len(logged) + 1
    indexes = [e["Index"] for e in events(again)]
    assert indexes == list(range(1, len(indexes) + 1))

    # A second copy into the same prefix would mix two clusters: refused, in one line.
    again.stop()
    refused = cube("migrate", "--from", f"sqlite:{tmp_path}/manager.db", "--to", target)
    assert refused.returncode == 1 and "--force replaces them" in refused.stderr
