"""Jobs with real `cube` processes and real Docker: replicas, rolling updates, AutoRevert,
scaling, batch jobs, and a manager killed mid-deployment."""

from __future__ import annotations

import json
import subprocess
import threading
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
    cube,
    one_line_error,
    wait_for,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
RUNNING, COMPLETED = 2, 3
FAST = ("--health-interval", "0.5", "--health-grace", "0", "--health-failures", "1")


def job(count: int = 6, env: str = "V=1", health: str = "/health", **update: Any) -> dict[str, Any]:
    return {
        "Name": "web",
        "Count": count,
        "Task": {
            "Image": "cube/http:latest",
            "ExposedPorts": {"80/tcp": {}},
            "HealthCheck": health,
            "Env": [env],
        },
        "Update": {"MaxParallel": 2, "MinHealthyTime": 1, "HealthyDeadline": 20, **update},
    }


def run_job(manager: ManagerProcess, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`cube job run` follows the deployment to its end: a rolling update takes a while."""
    return cube("job", "run", "-f", "-", manager=manager, stdin=json.dumps(body), timeout=180)


def tasks(manager: ManagerProcess, name: str = "web") -> list[dict[str, Any]]:
    r = httpx.get(f"{manager.url}/tasks", params={"job": name}, timeout=5)
    return r.json()  # type: ignore[no-any-return]


def serving(manager: ManagerProcess) -> list[dict[str, Any]]:
    return [t for t in tasks(manager) if t["State"] == RUNNING and t["DesiredState"] == RUNNING]


def containers_by_version(manager: ManagerProcess, nodes: list[WorkerProcess]) -> Counter[int]:
    """Running containers per job version, by their `docker ps` labels."""
    version = {t["ID"]: t["JobVersion"] for t in tasks(manager)}
    seen: Counter[int] = Counter()
    for worker in nodes:
        for container in containers_of(worker.name, all=False):
            seen[version.get(container.labels["cube.task"], -1)] += 1
    return seen


def test_replicas_spread_and_roll_two_at_a_time(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers() for _ in range(3)]
    manager = managers(nodes, *FAST)
    first = run_job(manager, job())
    assert first.returncode == 0, first.stdout + first.stderr
    assert "successful" in first.stdout
    assert sorted(Counter(t["Node"] for t in serving(manager)).values()) == [2, 2, 2]

    lowest, stop = 6, threading.Event()

    def watch() -> None:
        nonlocal lowest
        while not stop.is_set():
            lowest = min(lowest, len(serving(manager)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        second = run_job(manager, job(env="V=2"))
    finally:
        stop.set()
        watcher.join()
    assert second.returncode == 0, second.stdout + second.stderr
    assert lowest >= 4, lowest  # never below Count - MaxParallel
    assert Counter(t["JobVersion"] for t in serving(manager)) == {2: 6}
    wait_for(lambda: containers_by_version(manager, nodes) == {2: 6}, 30, what="only v2 left")


def test_a_failing_version_reverts_and_scaling(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers() for _ in range(2)]
    manager = managers(nodes, *FAST)
    assert run_job(manager, job(AutoRevert=True)).returncode == 0
    bad = run_job(manager, job(env="V=2", health="/nope", AutoRevert=True, HealthyDeadline=8))
    assert bad.returncode == 1
    assert "failed" in bad.stderr, bad.stderr
    status = httpx.get(f"{manager.url}/jobs/web", timeout=5).json()
    assert status["Version"] == 3 and status["Task"]["Env"] == ["V=1"]  # v1's spec again

    def healthy_v3() -> bool:
        live = serving(manager)
        return len(live) == 6 and {t["JobVersion"] for t in live} == {3}

    wait_for(healthy_v3, 60, what="6 of version 3")
    for count in (10, 3):
        done = cube("job", "scale", "web", str(count), manager=manager)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(serving(manager)) == count, 60, what=f"{count} running")  # noqa: B023
        wait_for(
            lambda: sum(containers_by_version(manager, nodes).values()) == count,  # noqa: B023
            30,
            what=f"{count} containers",
        )
    listed = cube("job", "list", manager=manager)
    assert "web" in listed.stdout and listed.returncode == 0
    history = cube("job", "history", "web", "-o", "json", manager=manager)
    assert [v["Version"] for v in json.loads(history.stdout)] == [3, 2, 1]


def test_a_batch_job_runs_count_to_completion(workers: StartWorker, managers: StartManager) -> None:
    nodes = [workers() for _ in range(2)]
    manager = managers(nodes, *FAST)
    batch = {
        "Name": "crunch",
        "Type": "batch",
        "Count": 5,
        "Task": {"Image": "cube/busybox:latest", "Cmd": ["sh", "-c", "echo done"]},
    }
    done = run_job(manager, batch)
    assert done.returncode == 0, done.stdout + done.stderr
    completed = [t for t in tasks(manager, "crunch") if t["State"] == COMPLETED]
    assert len(completed) == 5


def test_a_failing_batch_task_is_retried_per_policy_then_fails_the_job(
    workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([workers()], "--max-restarts", "2", "--restart-backoff", "0.1")
    flaky = {
        "Name": "flaky",
        "Type": "batch",
        "Count": 1,
        "Task": {
            "Image": "cube/busybox:latest",
            "Cmd": ["sh", "-c", "exit 1"],
            "RestartPolicy": "on-failure",
        },
    }
    done = run_job(manager, flaky)
    assert done.returncode == 1 and "failed for good" in done.stderr, done.stdout + done.stderr
    (task,) = tasks(manager, "flaky")
    assert task["RestartCount"] == 2 and task["State"] == 4  # retried twice, then Failed


def test_manager_killed_mid_rollout_finishes_it(
    workers: StartWorker, managers: StartManager
) -> None:
    nodes = [workers("-d", "persistent") for _ in range(3)]
    manager = managers(nodes, "-d", "persistent", *FAST)
    assert run_job(manager, job()).returncode == 0
    started = cube(
        "job", "run", "-f", "-", "--detach", manager=manager, stdin=json.dumps(job(env="V=2"))
    )
    assert started.returncode == 0, started.stderr
    wait_for(lambda: any(t["JobVersion"] == 2 for t in serving(manager)), 60, what="rollout")
    manager.kill()
    again = managers(nodes, "-d", "persistent", *FAST, port=manager.port)

    def finished() -> bool:
        d = httpx.get(f"{again.url}/jobs/web", timeout=5).json()["Deployment"]
        return bool(d["Status"] == "successful" and d["Version"] == 2)

    wait_for(finished, 120, what="the rollout finished")
    wait_for(lambda: containers_by_version(again, nodes) == {2: 6}, 30, what="6 of v2 only")
    labels: Counter[str] = Counter()
    for worker in nodes:
        for container in containers_of(worker.name, all=False):
            labels[container.labels["cube.task"]] += 1
    assert set(labels.values()) == {1}  # every replica exactly once


def test_bad_job_files_get_one_line(
    workers: StartWorker, managers: StartManager, tmp_path: Path
) -> None:
    manager = managers([workers()])
    bad = tmp_path / "job.yaml"
    bad.write_text("Name: Web!\nTask: {Image: x}\n")
    line = one_line_error(cube("job", "run", "-f", str(bad), manager=manager))
    assert line.startswith("cube: invalid job:"), line
    assert "job nope not found" in one_line_error(cube("job", "status", "nope", manager=manager))
