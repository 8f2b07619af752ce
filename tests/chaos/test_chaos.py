"""Chaos: kill workers, the manager and Docker itself; nothing acknowledged is lost.

Every check of "exactly once" is made against Docker's own list of running
containers (their cube.task labels), not only against what the API says.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.support import ManagerProcess, WorkerProcess, task_event, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.chaos]

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
RUNNING, COMPLETED = 2, 3
SLEEPER: dict[str, Any] = {"Cmd": ["sleep", "86400"]}


def sleeper() -> dict[str, Any]:
    return task_event("cube/busybox:latest", **SLEEPER)


def running_copies(workers: list[WorkerProcess]) -> Counter[str]:
    """How many running containers each task has, across the given workers."""
    names = {w.name for w in workers}
    client = docker.from_env()
    try:
        copies: Counter[str] = Counter()
        for container in client.containers.list(filters={"label": "cube.task"}):
            if container.labels.get("cube.worker") in names:
                copies[container.labels["cube.task"]] += 1
        return copies
    finally:
        client.close()


def all_stopped_containers(workers: list[WorkerProcess]) -> list[str]:
    names = {w.name for w in workers}
    client = docker.from_env()
    try:
        return [
            c.name
            for c in client.containers.list(all=True, filters={"status": "exited"})
            if c.labels.get("cube.worker") in names
        ]
    finally:
        client.close()


def exactly_once(manager: ManagerProcess, expected: set[str], workers: list[WorkerProcess]) -> bool:
    tasks = {t["ID"]: t for t in manager.tasks()}
    if not all(tasks[i]["State"] == RUNNING for i in expected):
        return False
    copies = running_copies(workers)
    return set(copies) == expected and all(n == 1 for n in copies.values())


def submit_all(manager: ManagerProcess, count: int) -> set[str]:
    return {manager.submit(sleeper())["ID"] for _ in range(count)}


def test_lost_worker_tasks_move_and_run_once_when_it_returns(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers("-d", "persistent") for _ in range(3)]
    manager = managers(nodes, "--worker-timeout", "3", "--restart-backoff", "0.1")
    ids = submit_all(manager, 30)
    wait_for(lambda: exactly_once(manager, ids, nodes), 120, what="30 tasks running once")

    victim = nodes[0]
    on_victim = {t["ID"] for t in manager.tasks() if t["Node"] == victim.address}
    assert on_victim, "round of placement left the first worker empty"
    victim.kill()  # its containers keep running in Docker, as after a real crash

    survivors = nodes[1:]

    def moved() -> bool:
        tasks = {t["ID"]: t for t in manager.tasks()}
        return all(
            tasks[i]["State"] == RUNNING and tasks[i]["Node"] != victim.address for i in on_victim
        )

    wait_for(moved, 3 + 10, what="the lost worker's tasks running elsewhere")
    copies = running_copies(survivors)
    assert all(copies[i] == 1 for i in ids), copies

    back = workers("-d", "persistent", name=victim.name, port=victim.port)
    nodes[0] = back
    # The returning worker re-adopts its old containers; the manager stops those copies.
    wait_for(lambda: exactly_once(manager, ids, nodes), 60, what="every task exactly once")


def submit_then_kill(
    manager: ManagerProcess,
    budget: int,
    kill_after: int,
    acked: set[str],
    unanswered: list[dict[str, Any]],
) -> None:
    """Submit up to ``budget`` tasks from a thread; SIGKILL the manager mid-stream.

    A submission the kill left without an answer goes to ``unanswered``: the manager
    may or may not have stored it, and a client learns which only by sending it again.
    """
    stop = threading.Event()
    before = len(acked)

    def burst() -> None:
        with httpx.Client(timeout=5) as client:
            for _ in range(budget):
                if stop.is_set():
                    return
                body = sleeper()
                try:
                    r = client.post(f"{manager.url}/tasks", json=body)
                except httpx.HTTPError:
                    unanswered.append(body)
                    return
                if r.status_code == 201:
                    acked.add(body["Task"]["ID"])

    sender = threading.Thread(target=burst)
    sender.start()
    target = min(kill_after, budget)
    wait_for(lambda: len(acked) - before >= target or not sender.is_alive(), 60, what="acks")
    manager.kill()
    stop.set()
    sender.join(30)


def test_manager_sigkilled_during_submissions_loses_nothing(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers("-d", "persistent") for _ in range(3)]
    manager = managers(nodes, "-d", "persistent")
    rng = random.Random(6)
    acked: set[str] = set()
    unanswered: list[dict[str, Any]] = []
    kills = 0
    while len(acked) < 200:
        submit_then_kill(manager, 200 - len(acked), rng.randint(10, 60), acked, unanswered)
        kills += 1
        manager = managers(nodes, "-d", "persistent", port=manager.port)
        # What a client does with a request a crash left unanswered: send it again. A
        # task the manager had stored is acknowledged again, not stored twice.
        while unanswered:
            body = unanswered.pop()
            assert manager.submit(body)["ID"] == body["Task"]["ID"]
            acked.add(body["Task"]["ID"])
    assert kills >= 3
    assert len(manager.tasks()) == len(acked)  # nothing stored that nobody was told of
    wait_for(lambda: exactly_once(manager, acked, nodes), 240, what="200 tasks running once")


def test_worker_killed_repeatedly_leaves_no_orphans(
    workers: StartWorker, managers: StartManager
) -> None:
    # Exited containers count as leftovers here: none is kept for its logs (a stop cut
    # short by the kill leaves one whose task the restarted worker finds exited).
    worker = workers("-d", "persistent", "--keep-exited", "0")
    manager = managers([worker], "--worker-timeout", "30", "--restart-backoff", "0.1")
    rng = random.Random(5)
    keep: set[str] = set()
    stopped: set[str] = set()
    for _round in range(5):
        new = submit_all(manager, 6)
        keep |= new
        victims = rng.sample(sorted(keep), 2)
        for task_id in victims:
            assert httpx.delete(f"{manager.url}/tasks/{task_id}", timeout=5).status_code == 204
            keep.discard(task_id)
            stopped.add(task_id)
        worker.kill()  # mid-flight: some starts and stops are under way
        worker = workers(
            "-d", "persistent", "--keep-exited", "0", name=worker.name, port=worker.port
        )

    def state() -> dict[str, Any]:
        tasks = {t["ID"]: t for t in manager.tasks()}
        return {
            "not stopped": [tasks[i] for i in stopped if tasks[i]["State"] != COMPLETED],
            "not running": [tasks[i] for i in keep if tasks[i]["State"] != RUNNING],
            "copies": running_copies([worker]),
            "leftovers": all_stopped_containers([worker]),
        }

    def converged() -> bool:
        now = state()
        quiet = not (now["not stopped"] or now["not running"] or now["leftovers"])
        return quiet and exactly_once(manager, keep, [worker])

    wait_for(converged, 120, what="kept running once, stopped gone, no leftovers", detail=state)


@pytest.fixture
def dockerd_restart() -> Iterator[Callable[[], None]]:
    """Stop and start the Docker engine the way scripts/setup.sh started it."""

    def pid() -> int | None:
        found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
        return int(found.stdout.split()[0]) if found.stdout.strip() else None

    def answers() -> bool:
        return subprocess.run(["docker", "info"], capture_output=True).returncode == 0

    def restart() -> None:
        current = pid()
        if current is None:
            pytest.skip("dockerd is not a process this test can restart (no pgrep match)")
        cmdline = Path(f"/proc/{current}/cmdline").read_bytes().split(b"\0")
        args = [a.decode() for a in cmdline if a]
        os.kill(current, signal.SIGTERM)
        wait_for(lambda: pid() is None, 60, what="dockerd stopped")
        log = open("/var/log/cube-dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon
        subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        log.close()
        wait_for(answers, 60, interval=0.2, what="dockerd answering again")

    yield restart
    if not answers():
        restart()


@pytest.mark.restarts_docker
def test_docker_restart_converges_back(
    workers: StartWorker, managers: StartManager, dockerd_restart: Callable[[], None]
) -> None:
    nodes = [workers("-d", "persistent") for _ in range(2)]
    manager = managers(nodes, "--restart-backoff", "0.2", "--worker-timeout", "30")
    ids = submit_all(manager, 6)
    wait_for(lambda: exactly_once(manager, ids, nodes), 60, what="tasks running")
    before = {t["ID"]: t["ContainerID"] for t in manager.tasks()}
    dockerd_restart()

    def converged() -> bool:
        tasks = {t["ID"]: t for t in manager.tasks()}
        fresh = all(tasks[i]["ContainerID"] != before[i] for i in ids)
        return fresh and exactly_once(manager, ids, nodes)

    wait_for(converged, 90, what="every task running again after the Docker restart")
