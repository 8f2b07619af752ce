"""Healing: how long until Cube has a task running again after a failure.

Two failures, on a cluster of real processes (a manager and 2 workers, started as
``cube up`` starts them but directly, so the benchmark can kill one) with the manager's
**default settings** (restart backoff 1 s, worker timeout 10 s, stats every 2 s):

- **container killed**: ``docker kill`` of a task's container, until the manager reports
  the task Running again (its first restart, RestartCount 1);
- **worker killed**: SIGKILL of a worker process running tasks, until the manager
  reports every one of those tasks Running on the other worker. The manager only
  declares a worker down after ``--worker-timeout`` (10 s) of silence, which bounds this.

    .venv/bin/python -m bench.healing
    .venv/bin/python -m bench.healing --smoke
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import docker
import httpx

from bench.common import Cluster, Result, Target, main, task_event, wait_for, workdir
from bench.containers import remove_labelled

IMAGE = "cube/busybox:latest"
CMD = ["sleep", "3600"]
RUNNING = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3, help="runs of each failure")
    parser.add_argument("--tasks", type=int, default=4, help="tasks on the killed worker")


def _task(url: str, task_id: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{url}/tasks/{task_id}", timeout=10).json()
    return data


def _submit(url: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        body = task_event(IMAGE, CMD)
        answer = httpx.post(f"{url}/tasks", json=body, timeout=10)
        if answer.status_code != 201:
            raise RuntimeError(f"submission refused: {answer.text}")
        ids.append(body["Task"]["ID"])
    return ids


def _running(url: str, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        tasks = [_task(url, i) for i in ids]
        return tasks if all(t["State"] == RUNNING for t in tasks) else None

    return wait_for(check, timeout, f"{len(ids)} tasks Running", interval=0.02)


def container_killed(cluster: Cluster, engine: docker.DockerClient) -> float:
    (task_id,) = _submit(cluster.manager_url, 1)
    (task,) = _running(cluster.manager_url, [task_id])
    engine.api.kill(task["ContainerID"])
    killed = time.perf_counter()

    def restarted() -> bool:
        again = _task(cluster.manager_url, task_id)
        return again["State"] == RUNNING and again["RestartCount"] >= 1

    wait_for(restarted, 60, "the task running again", interval=0.02)
    return time.perf_counter() - killed


def worker_killed(cluster: Cluster, tasks: int) -> tuple[float, int]:
    ids = _submit(cluster.manager_url, tasks * 2)
    placed = _running(cluster.manager_url, ids)
    # The worker running the most of them.
    victim_proc, victim = max(cluster.workers, key=lambda w: sum(t["Node"] == w[1] for t in placed))
    on_victim = [t["ID"] for t in placed if t["Node"] == victim]
    victim_proc.kill()
    killed = time.perf_counter()

    def moved() -> bool:
        now = [_task(cluster.manager_url, i) for i in on_victim]
        return all(t["State"] == RUNNING and t["Node"] != victim for t in now)

    wait_for(moved, 120, "the lost worker's tasks running elsewhere", interval=0.05)
    return time.perf_counter() - killed, len(on_victim)


def _cluster(tmp: Any, run_id: str) -> Cluster:
    cluster = Cluster(tmp)
    for index in (1, 2):
        cluster.start_worker(f"heal-{run_id}-{index}")
    cluster.wait_workers()
    cluster.start_manager()  # default settings: what a user gets
    cluster.wait_manager(2)
    return cluster


def run(args: argparse.Namespace) -> Result:
    repeat = 1 if args.smoke else args.repeat
    per_worker = 1 if args.smoke else args.tasks
    engine = docker.from_env()
    restarts: list[float] = []
    moves: list[float] = []
    moved_counts: list[int] = []
    try:
        for _ in range(repeat):
            run_id = uuid.uuid4().hex[:6]
            with workdir("healing") as tmp:
                cluster = _cluster(tmp, run_id)
                try:
                    restarts.append(container_killed(cluster, engine))
                    seconds, count = worker_killed(cluster, per_worker)
                    moves.append(seconds)
                    moved_counts.append(count)
                finally:
                    cluster.stop()
                    for name in cluster.worker_names:
                        remove_labelled(f"cube.worker={name}")
    finally:
        engine.close()
    restart = statistics.median(restarts)
    move = statistics.median(moves)
    rows = [
        {
            "failure": "container killed -> running again",
            "median (s)": restart,
            "max (s)": max(restarts),
            "runs": len(restarts),
        },
        {
            "failure": f"worker killed -> its {moved_counts[0]} tasks running elsewhere",
            "median (s)": move,
            "max (s)": max(moves),
            "runs": len(moves),
        },
    ]
    return Result(
        name="healing",
        title="Healing with default settings (seconds)",
        columns=["failure", "median (s)", "max (s)", "runs"],
        rows=rows,
        targets=[
            Target("container restart", "<= 2 s", f"{restart:.2f} s", restart <= 2.0),
            Target("worker loss", "<= 15 s", f"{move:.2f} s", move <= 15.0),
        ],
        settings={
            "manager": "defaults: --restart-backoff 1, --worker-timeout 10, --stats-interval 2",
            "workers": 2,
            "repeat": repeat,
        },
        notes=[
            "The first restart waits the restart backoff (1 s) by design; a lost worker "
            "is declared down after --worker-timeout (10 s) of silence.",
        ],
        extra={"runs": {"container_killed": restarts, "worker_killed": moves}},
    )


if __name__ == "__main__":
    main("healing", run, configure, __doc__ or "")
