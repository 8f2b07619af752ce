"""A manager keeping its state in a real etcd (``--store etcd://``), with real workers
and Docker: SIGKILLed and started again on the same etcd, it has lost nothing."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support import (
    EtcdProcess,
    ManagerProcess,
    WorkerProcess,
    containers_of,
    task_event,
    wait_for,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
RUNNING = 2
SECRET = "etcd-store-test-management-token"
FAST = ("--health-interval", "0.5", "--health-grace", "0", "--health-failures", "1")


def events(manager: ManagerProcess, after: int = 0) -> list[dict[str, Any]]:
    """GET /events without following: what the log holds after ``after``."""
    answer = httpx.get(
        f"{manager.url}/events",
        params={"index": after, "follow": "false"},
        headers=manager.headers,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return [e for e in map(json.loads, answer.text.splitlines()) if e]


def get(manager: ManagerProcess, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else manager.headers
    answer = httpx.get(f"{manager.url}{path}", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def containers_per_task(nodes: list[WorkerProcess]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for worker in nodes:
        for container in containers_of(worker.name, all=False):
            seen[container.labels["cube.task"]] += 1
    return seen


def test_a_manager_sigkilled_comes_back_from_etcd_with_everything(
    etcd: EtcdProcess, workers: StartWorker, managers: StartManager
) -> None:
    store = ("--store", etcd.url(f"it-{uuid.uuid4().hex[:8]}"), "--token", SECRET, *FAST)
    nodes = [workers("--token", SECRET) for _ in range(2)]
    manager = managers(nodes, *store)
    auth = manager.headers

    made = httpx.post(
        f"{manager.url}/tokens", json={"Role": "read", "Name": "ci"}, headers=auth, timeout=10
    )
    assert made.status_code == 201, made.text
    reader = made.json()["Secret"]
    submitted = [
        manager.submit(task_event("cube/busybox:latest", Cmd=["sleep", "600"]))["ID"]
        for _ in range(4)
    ]
    job = {
        "Name": "web",
        "Count": 2,
        "Task": {
            "Image": "cube/http:latest",
            "ExposedPorts": {"80/tcp": {}},
            "HealthCheck": "/health",
        },
        "Update": {"MaxParallel": 2, "MinHealthyTime": 1, "HealthyDeadline": 30},
    }
    posted = httpx.post(f"{manager.url}/jobs", json=job, headers=auth, timeout=10)
    assert posted.status_code == 201, posted.text

    def settled() -> bool:
        tasks = manager.tasks()
        done = get(manager, "/jobs/web")["Deployment"]["Status"] == "successful"
        return done and len(tasks) == 6 and all(t["State"] == RUNNING for t in tasks)

    wait_for(settled, 90, what="4 tasks and a job of 2 running, its deployment done")
    before = {t["ID"]: t for t in manager.tasks()}
    job_before = get(manager, "/jobs/web")
    versions_before = get(manager, "/jobs/web/versions")
    nodes_before = sorted(n["Name"] for n in get(manager, "/nodes"))
    tokens_before = get(manager, "/tokens")
    logged = events(manager)
    assert [e["Index"] for e in logged] == list(range(1, len(logged) + 1))

    manager.kill()
    again = managers(nodes, *store, port=manager.port)

    after = {t["ID"]: t for t in again.tasks()}
    assert after.keys() == before.keys() and set(submitted) <= after.keys()
    for task_id in after:
        again.wait_task(task_id, lambda t: t["State"] == RUNNING, what=f"{task_id} running")
    assert get(again, "/jobs/web") == job_before  # the job, its version, its deployment
    assert get(again, "/jobs/web/versions") == versions_before
    assert sorted(n["Name"] for n in get(again, "/nodes")) == nodes_before
    assert get(again, "/tokens") == tokens_before
    assert get(again, "/tokens/self", token=reader)["Name"] == "ci"  # its hash came back
    history = get(again, f"/tasks/{submitted[0]}/events")
    assert history and history[0]["Task"]["ID"] == submitted[0]
    # Every task runs exactly once: the new manager adopted what the workers run.
    wait_for(
        lambda: containers_per_task(nodes) == Counter(dict.fromkeys(before, 1)),
        30,
        what="one container per task",
        detail=lambda: containers_per_task(nodes),
    )

    # The event log goes on from where it was: the old events as they were, then new
    # ones numbered on with no gap.
    resumed = events(again)
    assert resumed[: len(logged)] == logged
    httpx.post(
        f"{again.url}/tasks",
        json=task_event("cube/busybox:latest", Cmd=["sleep", "600"]),
        headers=auth,
        timeout=10,
    ).raise_for_status()
    newer = wait_for(lambda: events(again, len(logged)), 20, what="events after the restart")
    assert newer[0]["Index"] == len(logged) + 1
    indexes = [e["Index"] for e in events(again)]
    assert indexes == list(range(1, len(indexes) + 1))
