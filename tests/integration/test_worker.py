"""The worker API against a real `cube worker` process and a real Docker engine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.support import (
    ThreadedEngineProxy,
    WorkerProcess,
    containers_of,
    remove_containers,
    task_event,
    wait_for,
    worker_process,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]


def post(worker: WorkerProcess, body: Any) -> httpx.Response:
    return httpx.post(f"{worker.url}/tasks", json=body, timeout=10)


def get_task(worker: WorkerProcess, task_id: str) -> dict[str, Any]:
    r = httpx.get(f"{worker.url}/tasks/{task_id}", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_state(
    worker: WorkerProcess, task_id: str, state: int, timeout: float = 20
) -> dict[str, Any]:
    return wait_for(
        lambda: (t := get_task(worker, task_id))["State"] == state and t,
        timeout,
        what=f"task {task_id} in state {state}",
    )


def docker_inspect(container_id: str) -> dict[str, Any]:
    client = docker.from_env()
    try:
        return client.api.inspect_container(container_id)  # type: ignore[no-any-return]
    finally:
        client.close()


def test_book_task_event_runs_and_serves_http(workers: StartWorker) -> None:
    worker = workers()
    body = task_event(ExposedPorts={"80/tcp": {}}, Memory="64MiB", Cpu=0.5)
    r = post(worker, body)
    assert r.status_code == 201, r.text
    assert r.json()["ID"] == body["Task"]["ID"]
    task = wait_state(worker, body["Task"]["ID"], 2)
    port = task["HostPorts"]["80/tcp"][0]["HostPort"]
    assert task["ContainerID"] and task["StartTime"] != "0001-01-01T00:00:00Z"
    page = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2), what="httpd")
    assert page.status_code == 200 and page.text.strip() == "ok"

    # The limits are really applied to the container.
    host_config = docker_inspect(task["ContainerID"])["HostConfig"]
    assert host_config["Memory"] == 64 * 1024 * 1024
    assert host_config["NanoCpus"] == 500_000_000
    labels = docker_inspect(task["ContainerID"])["Config"]["Labels"]
    assert labels["cube.worker"] == worker.name and labels["cube.task"] == body["Task"]["ID"]

    listed = httpx.get(f"{worker.url}/tasks", timeout=5).json()
    assert [t["ID"] for t in listed] == [body["Task"]["ID"]]


def test_delete_stops_and_removes_the_container(workers: StartWorker) -> None:
    worker = workers("--stop-timeout", "2")
    body = task_event()
    assert post(worker, body).status_code == 201
    task = wait_state(worker, body["Task"]["ID"], 2)
    r = httpx.delete(f"{worker.url}/tasks/{task['ID']}", timeout=5)
    assert r.status_code == 204 and r.content == b""
    done = wait_state(worker, task["ID"], 3)
    assert done["FinishTime"] != "0001-01-01T00:00:00Z"
    wait_for(lambda: not containers_of(worker.name), what="container removed")


def test_killed_container_fails_the_task(workers: StartWorker) -> None:
    worker = workers("--reconcile-interval", "60")  # only Docker events can notice in time
    body = task_event()
    post(worker, body)
    task = wait_state(worker, body["Task"]["ID"], 2)
    subprocess.run(["docker", "kill", task["ContainerID"]], check=True, capture_output=True)
    failed = wait_state(worker, task["ID"], 4, timeout=2)
    assert "exited with code 137" in failed["Reason"]


def test_exit_zero_completes_and_nonzero_fails(workers: StartWorker) -> None:
    worker = workers()
    ok = task_event("cube/busybox:latest", Cmd=["sh", "-c", "echo hello"])
    bad = task_event("cube/busybox:latest", Cmd=["sh", "-c", "exit 3"])
    assert post(worker, ok).status_code == 201
    assert post(worker, bad).status_code == 201
    done = wait_state(worker, ok["Task"]["ID"], 3)
    assert done["Reason"] == "exited with code 0"
    # Even a run too short to be seen running has both times.
    assert "0001-01-01T00:00:00Z" not in (done["StartTime"], done["FinishTime"])
    started, finished = (datetime.fromisoformat(done[k]) for k in ("StartTime", "FinishTime"))
    assert started <= finished
    assert wait_state(worker, bad["Task"]["ID"], 4)["Reason"] == "exited with code 3"


def test_env_reaches_the_container(workers: StartWorker) -> None:
    worker = workers()
    body = task_event("cube/busybox:latest", Env=["WANT=7"], Cmd=["sh", "-c", 'test "$WANT" = 7'])
    post(worker, body)
    assert wait_state(worker, body["Task"]["ID"], 3)["Reason"] == "exited with code 0"


def test_missing_image_fails_with_reason(workers: StartWorker) -> None:
    worker = workers()
    body = task_event("cube/does-not-exist:1")
    assert post(worker, body).status_code == 201
    failed = wait_state(worker, body["Task"]["ID"], 4)
    assert "cube/does-not-exist:1" in failed["Reason"]


def test_repeated_event_starts_one_container(workers: StartWorker) -> None:
    worker = workers()
    body = task_event()
    for _ in range(3):
        assert post(worker, body).status_code == 201
    wait_state(worker, body["Task"]["ID"], 2)
    assert len(containers_of(worker.name)) == 1


def test_restart_event_replaces_the_container(workers: StartWorker) -> None:
    worker = workers()
    body = task_event()
    post(worker, body)
    first = wait_state(worker, body["Task"]["ID"], 2)
    body["Task"]["RestartCount"] = 1
    body["ID"] = str(uuid.uuid4())
    assert post(worker, body).status_code == 201
    second = wait_for(
        lambda: (
            (t := get_task(worker, first["ID"]))["State"] == 2
            and t["ContainerID"] != first["ContainerID"]
            and t
        ),
        what="restarted",
    )
    assert second["RestartCount"] == 1
    wait_for(lambda: len(containers_of(worker.name)) == 1, what="old container removed")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b'{"ID": "x", "State": 2, "Task": {"Image": "a"}}', 400, "ID"),
        (b'{"State": 2, "Task": {"Image": "a", "Colour": "red"}}', 400, "unknown field"),
        (b'{"State": 2, "Task": {"Name": "no image"}}', 400, "Image"),
        (b'{"State": 2}', 400, "Task"),
        (b'{"State": 0, "Task": {"Image": "a"}}', 400, "must be Scheduled, Running or Completed"),
        (b"[1, 2]", 400, ""),
    ],
)
def test_bad_posts_are_400_with_a_message(
    workers: StartWorker, body: bytes, status: int, message: str
) -> None:
    worker = workers()
    r = httpx.post(
        f"{worker.url}/tasks", content=body, timeout=5, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.json()["HTTPStatusCode"] == status
    assert message in r.json()["Message"]


def test_bad_and_unknown_ids(workers: StartWorker) -> None:
    worker = workers()
    for method in ("GET", "DELETE"):
        r = httpx.request(method, f"{worker.url}/tasks/not-a-uuid", timeout=5)
        assert r.status_code == 400 and "UUID" in r.json()["Message"]
        r = httpx.request(method, f"{worker.url}/tasks/{uuid.uuid4()}", timeout=5)
        assert r.status_code == 404 and "not found" in r.json()["Message"]


def test_rerunning_a_completed_run_is_a_conflict(workers: StartWorker) -> None:
    worker = workers()
    body = task_event("cube/busybox:latest", Cmd=["true"])
    post(worker, body)
    wait_state(worker, body["Task"]["ID"], 3)
    body["ID"] = str(uuid.uuid4())  # a new event for the same, finished, incarnation
    r = post(worker, body)
    assert r.status_code == 409 and "Completed" in r.json()["Message"]


def test_a_new_incarnation_of_a_completed_task_runs(workers: StartWorker) -> None:
    """A manager that moved a task away (its copy here was stopped) may move it back."""
    worker = workers("--stop-timeout", "1")
    body = task_event()
    post(worker, body)
    first = wait_state(worker, body["Task"]["ID"], 2)
    assert httpx.delete(f"{worker.url}/tasks/{first['ID']}", timeout=5).status_code == 204
    wait_state(worker, first["ID"], 3)
    body["Task"]["RestartCount"] = 1
    assert post(worker, body).status_code == 201
    again = wait_state(worker, first["ID"], 2)
    assert again["RestartCount"] == 1 and again["ContainerID"] != first["ContainerID"]
    assert len(containers_of(worker.name)) == 1


def test_stats_have_real_numbers(workers: StartWorker) -> None:
    worker = workers("--stats-interval", "0.2")
    body = task_event()
    post(worker, body)
    wait_state(worker, body["Task"]["ID"], 2)
    stats = wait_for(
        lambda: (s := httpx.get(f"{worker.url}/stats", timeout=5).json())["TaskCount"] == 1 and s,
        what="TaskCount 1",
    )
    assert stats["MemStats"]["mem_total"] > 0
    assert stats["MemStats"]["mem_available"] <= stats["MemStats"]["mem_total"]
    assert stats["DiskStats"]["all"] > 0
    assert stats["CpuStats"]["idle"] > 0
    assert stats["Cores"] >= 1
    assert 0 <= stats["CpuPercent"] <= 100
    assert stats["LoadStats"]["process_total"] > 0


def test_persistent_worker_readopts_after_sigkill(workers: StartWorker) -> None:
    worker = workers("-d", "persistent")
    bodies = [task_event() for _ in range(3)]
    for body in bodies:
        post(worker, body)
    before = {
        b["Task"]["ID"]: wait_state(worker, b["Task"]["ID"], 2)["ContainerID"] for b in bodies
    }
    worker.kill()

    again = workers("-d", "persistent", name=worker.name, port=worker.port)
    after = {t["ID"]: t for t in httpx.get(f"{again.url}/tasks", timeout=5).json()}
    assert set(after) == set(before)
    for task_id, container_id in before.items():
        assert after[task_id]["State"] == 2
        assert after[task_id]["ContainerID"] == container_id
    running = containers_of(worker.name, all=False)
    assert sorted(c.id for c in running) == sorted(before.values())
    # Re-sending the same events is harmless: still one container per task.
    for body in bodies:
        assert post(again, body).status_code == 201
    assert len(containers_of(worker.name)) == 3


def test_persistent_worker_marks_vanished_containers_failed(workers: StartWorker) -> None:
    worker = workers("-d", "persistent")
    body = task_event()
    post(worker, body)
    task = wait_state(worker, body["Task"]["ID"], 2)
    worker.kill()
    subprocess.run(["docker", "rm", "-f", task["ContainerID"]], check=True, capture_output=True)
    again = workers("-d", "persistent", name=worker.name, port=worker.port)
    failed = wait_state(again, task["ID"], 4)
    assert "vanished" in failed["Reason"]
    assert not containers_of(worker.name)


class SilentRegistry:
    """A registry that takes connections and never answers: a pull from it hangs until
    Docker's own timeouts (25 s here), like a pull of a big image or from a slow host."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connected = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.conns.append(conn)
            self.connected.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_worker_stopped_during_an_image_pull_exits_at_once(
    workers: StartWorker, sig: signal.Signals
) -> None:
    """The pull's thread must not hold the process: Python waits for every thread of a
    ThreadPoolExecutor at exit, and the pull would last until Docker gives up."""
    worker = workers()
    registry = SilentRegistry()
    try:
        body = task_event(image=f"127.0.0.1:{registry.port}/cube/never:latest")
        assert post(worker, body).status_code == 201
        wait_for(registry.connected.is_set, what="docker pulling from the silent registry")
        assert worker.proc is not None
        asked = time.monotonic()
        worker.proc.send_signal(sig)
        try:
            worker.proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker still ran 20 s after {sig.name}:\n{worker.output()}")
        took = time.monotonic() - asked
    finally:
        registry.close()
    assert took < 5, f"the worker took {took:.1f}s to exit:\n{worker.output()}"
    assert "Traceback" not in worker.output()


def test_a_stop_docker_could_not_take_is_done_when_docker_is_back(tmp_path: Path) -> None:
    """The engine goes away (its socket is a relay the test cuts) while a task runs; a
    stop asked meanwhile is done as soon as the engine answers again, with no manager
    around to ask twice and no periodic reconcile to stumble on it."""
    if not os.path.exists("/var/run/docker.sock"):
        pytest.skip("needs the engine on /var/run/docker.sock")
    proxy = ThreadedEngineProxy(str(tmp_path / "docker.sock"))
    proxy.up()
    worker = worker_process(tmp_path, "--reconcile-interval", "3600")
    worker.env["DOCKER_HOST"] = proxy.url
    try:
        worker.start().wait_ready()
        body = task_event()
        task_id = body["Task"]["ID"]
        assert post(worker, body).status_code == 201
        container = wait_state(worker, task_id, 2)["ContainerID"]

        proxy.down()
        wait_for(
            lambda: not httpx.get(f"{worker.url}/health", timeout=2).json()["Docker"],
            what="the worker to see Docker gone",
        )
        assert httpx.delete(f"{worker.url}/tasks/{task_id}", timeout=5).status_code == 204
        wait_for(
            lambda: f"task {task_id}: docker unavailable" in worker.output(),
            what="the stop to be refused",
        )
        assert get_task(worker, task_id)["State"] == 2
        assert docker_inspect(container)["State"]["Running"]

        proxy.up()
        stopped = wait_state(worker, task_id, 3, timeout=30)
        assert stopped["Reason"] == "stopped on request"
        assert not containers_of(worker.name)
    finally:
        worker.stop()
        proxy.close()
        remove_containers(worker.name)
