"""Every route of both APIs, walked from the OpenAPI documents the real `cube manager`
and `cube worker` processes serve: 401 with no token and with a wrong one, 403 for a
read token writing, 2xx with the right token (issue 14's first "must show").

The in-process tests (tests/unit/test_tokens_api.py, test_worker_credentials.py) check
the guards on every route too; this one checks them through real processes, over real
sockets, and asks each route for a real success, not merely "not 401 or 403". Each
operation has a request here that succeeds; an operation the document lists without
one here fails the test, so a new route cannot skip it. The worker runs the simulated
runtime: nothing here starts a container.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support import ManagerProcess, WorkerProcess, containers_of, task_event, wait_for

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
MANAGEMENT, JOIN, WORKER = "routes-mgmt-41c2", "routes-join-8d0e", "routes-worker-5a7f"
RUNNING = 2
READS = {"get", "head"}


@dataclass(frozen=True)
class Call:
    """The request that should succeed on one operation."""

    url: str
    body: Any = None


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def operations(base: str) -> set[tuple[str, str]]:
    doc = httpx.get(f"{base}/openapi.json", timeout=5).json()
    return {(method, path) for path, methods in doc["paths"].items() for method in methods}


def send(base: str, method: str, call: Call, token: str | None) -> httpx.Response:
    return httpx.request(
        method, f"{base}{call.url}", json=call.body, headers=bearer(token), timeout=15
    )


def job(name: str) -> dict[str, Any]:
    return {"Name": name, "Count": 1, "Task": {"Image": "cube/busybox:latest"}}


def test_every_manager_route_wants_the_right_token(
    workers: StartWorker, managers: StartManager
) -> None:
    worker = workers("--runtime", "simulated", "--token", WORKER)
    manager = managers(
        [worker], "--token", MANAGEMENT, "--join-token", JOIN, "--worker-token", WORKER
    )
    manager.wait_ready(workers=1)
    url, auth = manager.url, bearer(MANAGEMENT)

    def made(path: str, body: Any, headers: dict[str, str] = auth) -> Any:
        answer = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=15)
        assert answer.status_code == 201, (path, answer.text)
        return answer.json()

    # What the routes act on: a running task to read, one to stop, a job to read and
    # change, one to delete, a token to revoke, and a node that joined at an address
    # nobody answers at (never ready: it may be drained, changed and removed).
    kept = made("/tasks", task_event("cube/busybox:latest"))["ID"]
    stopped = made("/tasks", task_event("cube/busybox:latest"))["ID"]
    for task_id in (kept, stopped):
        manager.wait_task(task_id, lambda t: t["State"] == RUNNING, what="Running")
    made("/jobs", job("web"))
    made("/jobs", job("gone"))
    reader = made("/tokens", {"Role": "read", "Name": "reader"})["Secret"]
    revoked = made("/tokens", {"Role": "read", "Name": "revoked"})["ID"]
    ghost = {"Name": "ghost", "Api": "127.0.0.1:9"}
    made("/nodes/register", ghost, bearer(JOIN))

    # In order: the deletions after what reads the same thing.
    calls: dict[tuple[str, str], Call] = {
        ("get", "/health"): Call("/health"),
        ("get", "/metrics"): Call("/metrics"),
        ("get", "/events"): Call("/events?follow=false"),
        ("get", "/tasks"): Call("/tasks"),
        ("post", "/tasks"): Call("/tasks", task_event("cube/busybox:latest")),
        ("get", "/tasks/{task_id}"): Call(f"/tasks/{kept}"),
        ("get", "/tasks/{task_id}/events"): Call(f"/tasks/{kept}/events"),
        ("get", "/tasks/{task_id}/logs"): Call(f"/tasks/{kept}/logs?follow=false"),
        ("delete", "/tasks/{task_id}"): Call(f"/tasks/{stopped}"),
        ("post", "/plan"): Call("/plan", task_event("cube/busybox:latest")),
        ("get", "/jobs"): Call("/jobs"),
        ("post", "/jobs"): Call("/jobs", job("more")),
        ("get", "/jobs/{name}"): Call("/jobs/web"),
        ("get", "/jobs/{name}/versions"): Call("/jobs/web/versions"),
        ("post", "/jobs/{name}/plan"): Call("/jobs/web/plan", job("web")),
        ("post", "/jobs/{name}/scale"): Call("/jobs/web/scale", {"Count": 2}),
        ("post", "/jobs/{name}/revert"): Call("/jobs/web/revert", {"Version": 1}),
        ("delete", "/jobs/{name}"): Call("/jobs/gone"),
        ("get", "/nodes"): Call("/nodes"),
        ("post", "/nodes/register"): Call("/nodes/register", ghost),
        ("post", "/nodes/{name}/heartbeat"): Call("/nodes/ghost/heartbeat"),
        ("get", "/nodes/{name}"): Call("/nodes/ghost"),
        ("post", "/nodes/{name}/eligibility"): Call(
            "/nodes/ghost/eligibility", {"Eligible": False}
        ),
        ("post", "/nodes/{name}/drain"): Call("/nodes/ghost/drain", {"Deadline": 60}),
        ("delete", "/nodes/{name}"): Call("/nodes/ghost"),
        ("get", "/tokens"): Call("/tokens"),
        ("get", "/tokens/self"): Call("/tokens/self"),
        ("post", "/tokens"): Call("/tokens", {"Role": "read"}),
        ("delete", "/tokens/{token_id}"): Call(f"/tokens/{revoked}"),
    }
    assert set(calls) == operations(url)  # every operation the document lists, no more

    open_routes = {("get", "/health")}
    joining = {("post", "/nodes/register"), ("post", "/nodes/{name}/heartbeat")}
    for (method, path), call in calls.items():
        where = f"{method.upper()} {path}"
        if (method, path) in open_routes:
            assert send(url, method, call, None).status_code == 200, where
            continue
        right = JOIN if (method, path) in joining else MANAGEMENT
        # The join routes take the join token alone: an API token is a wrong one there.
        wrong = ["wrong", right + "x", MANAGEMENT if right == JOIN else JOIN]
        for token in [None, *wrong]:
            refused = send(url, method, call, token)
            assert refused.status_code == 401, (where, token, refused.text)
            assert refused.json()["Message"], where
        as_reader = send(url, method, call, reader)
        if (method, path) in joining:
            assert as_reader.status_code == 401, (where, as_reader.text)
        elif method not in READS or (path.startswith("/tokens") and path != "/tokens/self"):
            assert as_reader.status_code == 403, (where, as_reader.text)
            assert as_reader.json()["Message"], where
        else:  # a read token reads
            assert 200 <= as_reader.status_code < 300, (where, as_reader.text)
        answer = send(url, method, call, right)
        assert 200 <= answer.status_code < 300, (where, answer.status_code, answer.text)

    # The writes did what they say: the refused attempts before them did nothing.
    tasks = {t["ID"]: t for t in manager.tasks()}
    assert tasks[stopped]["DesiredState"] != tasks[kept]["DesiredState"]
    jobs = {j["Name"]: j for j in httpx.get(f"{url}/jobs", headers=auth).json()}
    assert {name: j["Stopped"] for name, j in jobs.items()} == {
        "web": False,
        "more": False,
        "gone": True,
    }
    nodes = [n["Name"] for n in httpx.get(f"{url}/nodes", headers=auth).json()]
    assert nodes == [worker.address]
    tokens = httpx.get(f"{url}/tokens", headers=auth).json()
    assert sorted(t["Name"] for t in tokens) == ["", "reader"]
    assert not containers_of(worker.name)


def test_every_worker_route_wants_its_managers_credential(workers: StartWorker) -> None:
    worker = workers("--runtime", "simulated", "--token", WORKER)
    url = worker.url
    kept, stopped = task_event("cube/busybox:latest"), task_event("cube/busybox:latest")
    for body in (kept, stopped):
        answer = httpx.post(f"{url}/tasks", json=body, headers=bearer(WORKER), timeout=10)
        assert answer.status_code == 201, answer.text

    def running() -> bool:
        listed: list[dict[str, Any]] = httpx.get(
            f"{url}/tasks", headers=bearer(WORKER), timeout=5
        ).json()
        return [t["State"] for t in listed].count(RUNNING) == 2

    wait_for(running, what="both tasks Running on the worker")
    kept_id, stopped_id = kept["Task"]["ID"], stopped["Task"]["ID"]
    calls: dict[tuple[str, str], Call] = {
        ("get", "/health"): Call("/health"),
        ("get", "/metrics"): Call("/metrics"),
        ("get", "/stats"): Call("/stats"),
        ("get", "/tasks"): Call("/tasks"),
        ("post", "/tasks"): Call("/tasks", task_event("cube/busybox:latest")),
        ("get", "/tasks/{task_id}"): Call(f"/tasks/{kept_id}"),
        ("get", "/tasks/{task_id}/logs"): Call(f"/tasks/{kept_id}/logs?follow=false"),
        ("delete", "/tasks/{task_id}"): Call(f"/tasks/{stopped_id}?restartCount=0"),
    }
    assert set(calls) == operations(url)
    # /health for supervisors and joins; /metrics for scrapers, who cannot hold the
    # secret a worker shares with its manager alone (its listener decides who reaches
    # it: loopback, or mutual TLS; tests/integration/test_tls.py).
    open_routes = {("get", "/health"), ("get", "/metrics")}
    for (method, path), call in calls.items():
        where = f"{method.upper()} {path}"
        if (method, path) in open_routes:
            assert send(url, method, call, None).status_code == 200, where
            continue
        for token in (None, "wrong", WORKER + "x", MANAGEMENT):
            refused = send(url, method, call, token)
            assert refused.status_code == 401, (where, token, refused.text)
            assert "from its manager only" in refused.json()["Message"], where
        answer = send(url, method, call, WORKER)
        assert 200 <= answer.status_code < 300, (where, answer.status_code, answer.text)

    listed = httpx.get(f"{url}/tasks", headers=bearer(WORKER), timeout=5).json()
    states = {t["ID"]: t["State"] for t in listed}
    assert states[kept_id] == RUNNING and states[stopped_id] != RUNNING
    assert len(states) == 3  # the POST made one; none of the refused ones did
    assert json.loads(send(url, "get", calls[("get", "/tasks/{task_id}")], WORKER).text)
    assert not containers_of(worker.name)
