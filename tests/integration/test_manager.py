"""The manager with real `cube worker` processes, a real `cube manager` and real Docker."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    ManagerProcess,
    WorkerProcess,
    containers_of,
    remove_containers,
    task_event,
    wait_for,
    worker_process,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]

RUNNING, COMPLETED, FAILED, PENDING = 2, 3, 4, 0


def running(task: dict[str, Any]) -> bool:
    return task["State"] == RUNNING


def worker_has(worker: WorkerProcess, task_id: str) -> bool:
    return httpx.get(f"{worker.url}/tasks/{task_id}", timeout=5).status_code == 200


def test_roundrobin_spreads_six_tasks_two_per_worker(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers() for _ in range(3)]
    manager = managers(nodes, "-s", "roundrobin")
    ids = [manager.submit(task_event())["ID"] for _ in range(6)]
    placed = [manager.wait_task(i, running, what="running") for i in ids]
    per_node = Counter(t["Node"] for t in placed)
    assert sorted(per_node) == sorted(w.address for w in nodes)
    assert set(per_node.values()) == {2}
    for worker in nodes:
        assert len(containers_of(worker.name, all=False)) == 2


def test_epvm_prefers_the_least_loaded_worker(workers: StartWorker, managers: StartManager) -> None:
    nodes = [workers() for _ in range(3)]
    manager = managers(nodes, "-s", "epvm")
    used: list[str] = []
    for _ in range(3):
        task = manager.submit(task_event())
        used.append(manager.wait_task(task["ID"], running)["Node"])
    assert sorted(used) == sorted(w.address for w in nodes)  # one each: always the emptiest


def test_task_too_big_waits_pending_until_memory_frees(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers("--memory", "256MiB") for _ in range(3)]
    manager = managers(nodes, "-s", "epvm")
    first = [manager.submit(task_event(Memory="200MiB"))["ID"] for _ in range(3)]
    placed = [manager.wait_task(i, running) for i in first]
    assert len({t["Node"] for t in placed}) == 3  # memory forces one per worker

    big = manager.submit(task_event(Memory="200MiB"))
    waiting = manager.wait_task(big["ID"], lambda t: "memory" in t["Reason"], what="reason")
    assert waiting["State"] == PENDING and "no feasible node" in waiting["Reason"]

    r = httpx.delete(f"{manager.url}/tasks/{first[1]}", timeout=5)
    assert r.status_code == 204
    moved = manager.wait_task(big["ID"], running, what="placed after memory freed")
    assert moved["Node"] == placed[1]["Node"]


def test_stop_reaches_only_the_worker_running_the_task(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers() for _ in range(3)]
    manager = managers(nodes, "-s", "roundrobin")
    ids = [manager.submit(task_event())["ID"] for _ in range(3)]
    tasks = [manager.wait_task(i, running) for i in ids]
    third = next(t for t in tasks if t["Node"] == nodes[2].address)

    assert httpx.delete(f"{manager.url}/tasks/{third['ID']}", timeout=5).status_code == 204
    stopped = manager.wait_task(third["ID"], lambda t: t["State"] == COMPLETED, what="stopped")
    assert stopped["FinishTime"] != "0001-01-01T00:00:00Z"
    on_third = httpx.get(f"{nodes[2].url}/tasks/{third['ID']}", timeout=5).json()
    assert on_third["State"] == COMPLETED
    assert not worker_has(nodes[0], third["ID"]) and not worker_has(nodes[1], third["ID"])
    for other in tasks:
        if other is not third:
            assert manager.task(other["ID"])["State"] == RUNNING
    assert len(containers_of(nodes[2].name, all=False)) == 0
    history = httpx.get(f"{manager.url}/tasks/{third['ID']}/events", timeout=5).json()
    assert [e["State"] for e in history][-1] == COMPLETED


def test_stopping_a_pending_task_cancels_it(workers: StartWorker, managers: StartManager) -> None:
    worker = workers("--memory", "64MiB")
    manager = managers([worker])
    task = manager.submit(task_event(Memory="1GiB"))
    manager.wait_task(task["ID"], lambda t: bool(t["Reason"]), what="pending reason")
    assert httpx.delete(f"{manager.url}/tasks/{task['ID']}", timeout=5).status_code == 204
    assert manager.task(task["ID"])["State"] == COMPLETED
    assert not worker_has(worker, task["ID"])


def test_killed_container_is_restarted(workers: StartWorker, managers: StartManager) -> None:
    worker = workers()
    manager = managers([worker], "--restart-backoff", "0.1")
    task = manager.submit(task_event())
    first = manager.wait_task(task["ID"], running)
    subprocess.run(["docker", "kill", first["ContainerID"]], check=True, capture_output=True)
    again = manager.wait_task(
        task["ID"], lambda t: running(t) and t["RestartCount"] == 1, what="restarted"
    )
    assert again["ContainerID"] != first["ContainerID"]
    assert again["Node"] == first["Node"]  # same worker while it is ready
    assert len(containers_of(worker.name, all=False)) == 1


def test_failing_task_stops_after_max_restarts(
    workers: StartWorker, managers: StartManager
) -> None:
    worker = workers()
    manager = managers([worker], "--restart-backoff", "0.05", "--max-restarts", "2")
    body = task_event("cube/busybox:latest", Cmd=["sh", "-c", "exit 1"])
    task = manager.submit(body)
    final = manager.wait_task(
        task["ID"], lambda t: t["State"] == FAILED and t["RestartCount"] == 2, what="gave up"
    )
    assert "exited with code 1" in final["Reason"]
    history = httpx.get(f"{manager.url}/tasks/{task['ID']}/events", timeout=5).json()
    sent = [e["Task"]["RestartCount"] for e in history if e["State"] == 1]
    assert sent == [0, 1, 2]


def test_restart_policy_no_leaves_a_failed_task(
    workers: StartWorker, managers: StartManager
) -> None:
    worker = workers()
    manager = managers([worker], "--restart-backoff", "0.05")
    body = task_event("cube/busybox:latest", Cmd=["sh", "-c", "exit 2"], RestartPolicy="no")
    task = manager.submit(body)
    failed = manager.wait_task(task["ID"], lambda t: t["State"] == FAILED)
    assert failed["RestartCount"] == 0


def test_unhealthy_task_is_restarted(workers: StartWorker, managers: StartManager) -> None:
    worker = workers()
    manager = managers(
        [worker], "--health-interval", "0.3", "--health-grace", "0.3", "--restart-backoff", "0.1"
    )
    body = task_event(ExposedPorts={"80/tcp": {}}, HealthCheck="/health")
    task = manager.submit(body)
    first = manager.wait_task(task["ID"], running)
    port = first["HostPorts"]["80/tcp"][0]["HostPort"]
    sick = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/cgi-bin/sick", timeout=2))
    assert sick.status_code == 200
    healed = manager.wait_task(
        task["ID"], lambda t: running(t) and t["RestartCount"] == 1, what="restarted"
    )
    assert healed["Reason"] == "restarting after: health check failed: HTTP 404"
    new_port = healed["HostPorts"]["80/tcp"][0]["HostPort"]
    ok = wait_for(lambda: httpx.get(f"http://127.0.0.1:{new_port}/health", timeout=2))
    assert ok.status_code == 200  # a fresh container is healthy again


def test_bad_requests_get_clear_errors(workers: StartWorker, managers: StartManager) -> None:
    manager = managers([workers()])
    cases = [
        (b"{", 400, "malformed JSON"),
        (b'{"State": 1, "Task": {"Image": "x", "Size": 3}}', 400, "unknown field"),
        (b'{"State": 1, "Task": {"Image": "x", "Memory": "much"}}', 400, "invalid size"),
    ]
    for body, status, message in cases:
        r = httpx.post(f"{manager.url}/tasks", content=body, timeout=5)
        assert r.status_code == status and message in r.json()["Message"], r.text
    assert httpx.get(f"{manager.url}/tasks/nope", timeout=5).status_code == 400
    assert httpx.get(f"{manager.url}/tasks/{uuid.uuid4()}", timeout=5).status_code == 404
    assert httpx.delete(f"{manager.url}/tasks/{uuid.uuid4()}", timeout=5).status_code == 404


def test_nodes_report_capacity_and_placements(workers: StartWorker, managers: StartManager) -> None:
    worker = workers("--memory", "1GiB", "--cpus", "2")
    manager = managers([worker])
    task = manager.submit(task_event(Memory="128MiB", Cpu=0.5))
    manager.wait_task(task["ID"], running)
    (node,) = httpx.get(f"{manager.url}/nodes", timeout=5).json()
    assert node["Name"] == worker.address and node["Status"] == "ready"
    assert node["Memory"] == 1024 * 1024  # kB
    assert node["MemoryAllocated"] == 128 * 1024
    assert node["Cores"] == 2 and node["CpuAllocated"] == 0.5
    assert node["TaskCount"] == 1 and node["Role"] == "worker"
    assert node["Stats"]["MemStats"]["mem_total"] > 0


def test_manager_sigkill_during_burst_loses_nothing(
    workers: StartWorker, managers: StartManager, tmp_path: Path
) -> None:
    nodes = [workers("-d", "persistent") for _ in range(2)]
    manager = managers(nodes, "-d", "persistent")
    acked: list[str] = []
    killed = threading.Event()

    def burst() -> None:
        with httpx.Client(timeout=5) as client:
            for _ in range(40):
                body = task_event()
                try:
                    r = client.post(f"{manager.url}/tasks", json=body)
                except httpx.HTTPError:
                    return
                if r.status_code == 201:
                    acked.append(body["Task"]["ID"])
                if len(acked) == 12:
                    killed.set()

    sender = threading.Thread(target=burst)
    sender.start()
    assert killed.wait(30)
    manager.kill()
    sender.join(30)
    assert len(acked) >= 12

    again = managers(nodes, "-d", "persistent", port=manager.port)
    for task_id in acked:
        again.wait_task(task_id, running, what=f"acked task {task_id} running")
    labels: Counter[str] = Counter()
    for worker in nodes:
        for container in containers_of(worker.name, all=False):
            labels[container.labels["cube.task"]] += 1
    assert all(labels[task_id] == 1 for task_id in acked), labels
    assert all(count == 1 for count in labels.values())


def test_a_worker_gets_tasks_once_its_docker_answers(
    managers: StartManager, tmp_path: Path
) -> None:
    # The worker's DOCKER_HOST names a socket that is not there yet: its engine is away.
    socket = tmp_path / "docker.sock"
    worker = worker_process(tmp_path)
    worker.env = {"DOCKER_HOST": f"unix://{socket}"}
    worker.start()
    try:
        wait_for(lambda: httpx.get(f"{worker.url}/health", timeout=2).json()["Docker"] is False)
        manager = managers([worker])
        task = manager.submit(task_event())
        waiting = manager.wait_task(task["ID"], lambda t: "no Docker engine" in t["Reason"])
        assert waiting["State"] == PENDING
        assert waiting["Reason"] == "no feasible node: 1 node has no Docker engine answering"

        socket.symlink_to(_engine_socket())  # the engine is back
        placed = manager.wait_task(task["ID"], running, what="running once docker answers")
        assert placed["Node"] == worker.address
        assert len(containers_of(worker.name, all=False)) == 1
    finally:
        worker.stop()
        remove_containers(worker.name)


def _engine_socket() -> Path:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert host.startswith("unix://"), f"this test needs a local engine socket, not {host}"
    return Path(host.removeprefix("unix://"))
