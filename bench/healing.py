"""Healing: how long until a task runs again after a failure, Cube beside Docker Swarm.

Failures on a cluster of real processes (a manager and 2 workers that join it, started
as ``cube up`` starts them but directly, so the benchmark can kill one) with the
manager's **default settings** (heartbeats every 1 s, down after 2 s more of silence):

- **container killed**: ``docker kill`` of a task's container, until the manager reports
  the task Running again (its first restart, RestartCount 1). In the same run, the
  same for a Docker Swarm service of one replica created with ``--restart-delay 0s``
  (Swarm waits 5 s by default): ``docker kill`` of its container until Swarm reports
  a new task running. The ratio of the two is the figure to compare between machines.
  Swarm is measured after Cube (``docker swarm init`` changes the engine), on a
  single-node swarm made for the run and left afterwards; an engine already in a
  swarm is not touched, and the Swarm row is left out with the reason.
- **worker killed**: SIGKILL of a worker process running tasks, until the manager
  reports every one of those tasks Running on the other worker; the same for a worker
  **frozen** (SIGSTOP: its connections stay open, its containers keep running); and,
  for comparison, a worker given with ``-w`` (the book's flow, before workers joined),
  which is declared down after ``--worker-timeout`` (10 s) of silence.
- **false downs under load**: both cores saturated by other processes for
  ``--load-seconds``, every worker alive; how many times a node is declared down (the
  target is none).

    .venv/bin/python -m bench.healing
    .venv/bin/python -m bench.healing --smoke
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import docker
import httpx

from bench.common import Cluster, Result, Target, main, task_event, wait_for, workdir
from bench.containers import SwarmUnavailable, docker_cli, remove_labelled, remove_service, swarm

IMAGE = "cube/busybox:latest"
CMD = ["sleep", "3600"]
RUNNING = 2
SWARM = "swarm, --restart-delay 0s"
RESTART_TARGET = 0.5  # seconds from killed to Running again (the first restart)
TOKEN = "bench-healing"
MOVE_TARGET = 5.0  # seconds until a lost worker's tasks run elsewhere, default settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3, help="runs of each failure")
    parser.add_argument("--tasks", type=int, default=4, help="tasks on the killed worker")
    parser.add_argument("--no-swarm", action="store_true", help="skip Docker Swarm")
    parser.add_argument("--load-seconds", type=float, default=30.0, help="saturated for")


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
        return bool(again["State"] == RUNNING and again["RestartCount"] >= 1)

    wait_for(restarted, 60, "the task running again", interval=0.02)
    return time.perf_counter() - killed


def worker_killed(cluster: Cluster, tasks: int, how: str = "kill") -> tuple[float, int]:
    """``how``: "kill" (SIGKILL) or "stop" (SIGSTOP, resumed once measured)."""
    ids = _submit(cluster.manager_url, tasks * 2)
    placed = _running(cluster.manager_url, ids)

    # The worker running the most of them (a node is named as its worker when it
    # joined, by its address when given with -w).
    def held(index: int) -> int:
        names = (cluster.worker_names[index], cluster.workers[index][1])
        return sum(t["Node"] in names for t in placed)

    index = max(range(len(cluster.workers)), key=held)
    victim_proc, address = cluster.workers[index]
    victim = {cluster.worker_names[index], address}
    on_victim = [t["ID"] for t in placed if t["Node"] in victim]
    if how == "kill":
        victim_proc.kill()
    else:
        os.kill(victim_proc.pid, signal.SIGSTOP)
    killed = time.perf_counter()

    def moved() -> bool:
        now = [_task(cluster.manager_url, i) for i in on_victim]
        return all(t["State"] == RUNNING and t["Node"] not in victim for t in now)

    try:
        wait_for(moved, 120, "the lost worker's tasks running elsewhere", interval=0.05)
        return time.perf_counter() - killed, len(on_victim)
    finally:
        if how == "stop":
            os.kill(victim_proc.pid, signal.SIGCONT)


def false_downs(cluster: Cluster, seconds: float) -> int:
    """Nodes declared down while both cores are saturated by other processes."""
    burn = f"import time\nend = time.time() + {seconds!r}\nwhile time.time() < end: pass"
    hogs = [
        subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2 * (os.cpu_count() or 2))
    ]
    downs = 0
    was_ready: dict[str, bool] = {}
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for node in httpx.get(f"{cluster.manager_url}/nodes", timeout=30).json():
                ready = node["Status"] == "ready"
                if was_ready.get(node["Name"], True) and not ready:
                    downs += 1
                was_ready[node["Name"]] = ready
            time.sleep(0.2)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return downs


def swarm_container_killed(api: docker.APIClient, repeat: int, run_id: str) -> list[float]:
    """Seconds from ``docker kill`` of a one-replica service's container to a new one running.

    The service restarts at once (``--restart-delay 0s``; Swarm's default is 5 s), so
    one service serves every run: each kill is measured from the replica Swarm
    reports running, until Swarm reports a running task with another container, as
    Cube's time runs until its manager reports the task Running again.
    """
    name = f"cube-bench-heal-{run_id}"
    docker_cli(
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        name,
        "--replicas",
        "1",
        "--restart-condition",
        "any",
        "--restart-delay",
        "0s",
        # As Cube starts containers: under an init, which makes removal quick too
        # (busybox's sleep as PID 1 ignores SIGTERM, and would hold it 10 s).
        "--init",
        IMAGE,
        *CMD,
    )
    try:
        seconds = []
        for _ in range(repeat):
            first = wait_for(lambda: _swarm_running(api, name), 120, "the swarm replica running")
            api.kill(first)
            killed = time.perf_counter()

            def again(first: str = first) -> str | None:
                return _swarm_running(api, name, other_than=first)

            wait_for(again, 60, "swarm running the replica again", interval=0.02)
            seconds.append(time.perf_counter() - killed)
        return seconds
    finally:
        remove_service(api, name)


def _swarm_running(api: docker.APIClient, service: str, other_than: str = "") -> str | None:
    """The container of a task of ``service`` that Swarm reports running, if any."""
    tasks: list[dict[str, Any]] = api.tasks(  # type: ignore[no-untyped-call]
        filters={"service": service, "desired-state": "running"}
    )
    for task in tasks:
        status = task.get("Status", {})
        container = str(status.get("ContainerStatus", {}).get("ContainerID", ""))
        if status.get("State") == "running" and container and container != other_than:
            return container
    return None


def _cluster(tmp: Any, run_id: str, joined: bool = True) -> Cluster:
    """Default settings, what a user gets: workers that join (as `cube up` starts them),
    or (``joined=False``) workers given to the manager with -w, the book's flow."""
    cluster = Cluster(tmp)
    if not joined:
        for index in (1, 2):
            cluster.start_worker(f"heal-{run_id}-{index}")
        cluster.wait_workers()
        cluster.start_manager()
        cluster.wait_manager(2)
        return cluster
    url = cluster.start_manager("--join-token", TOKEN, addresses=[])
    for index in (1, 2):
        join = ["--join", url.removeprefix("http://"), "--join-token", TOKEN]
        cluster.start_worker(f"heal-{run_id}-{index}", *join)
    cluster.wait_workers()
    cluster.wait_manager(2)
    return cluster


def run(args: argparse.Namespace) -> Result:
    repeat = 1 if args.smoke else args.repeat
    per_worker = 1 if args.smoke else args.tasks
    engine = docker.from_env()
    restarts: list[float] = []
    moves: dict[str, list[float]] = {"kill": [], "stop": [], "static": []}
    moved_counts: list[int] = []
    downs: list[int] = []
    swarm_restarts: list[float] = []
    swarm_skipped = "--no-swarm" if args.no_swarm else ""
    try:
        for _ in range(repeat):
            run_id = uuid.uuid4().hex[:6]
            for case in ("kill", "stop", "static"):
                with workdir("healing") as tmp:
                    cluster = _cluster(tmp, f"{run_id}{case[0]}", joined=case != "static")
                    try:
                        if case == "kill":
                            restarts.append(container_killed(cluster, engine))
                            if not downs:  # once: it takes --load-seconds
                                seconds = 3.0 if args.smoke else args.load_seconds
                                downs.append(false_downs(cluster, seconds))
                        how = "stop" if case == "stop" else "kill"
                        seconds, count = worker_killed(cluster, per_worker, how)
                        moves[case].append(seconds)
                        moved_counts.append(count)
                    finally:
                        cluster.stop()
                        for name in cluster.worker_names:
                            remove_labelled(f"cube.worker={name}")
        if not args.no_swarm:
            try:
                with swarm():
                    swarm_restarts = swarm_container_killed(
                        engine.api, repeat, uuid.uuid4().hex[:6]
                    )
            except SwarmUnavailable as exc:
                swarm_skipped = str(exc)
    finally:
        engine.close()
    load = 3.0 if args.smoke else args.load_seconds
    return _result(
        repeat, restarts, moves, moved_counts, swarm_restarts, swarm_skipped, downs, load
    )


def _result(
    repeat: int,
    restarts: list[float],
    moves: dict[str, list[float]],
    moved_counts: list[int],
    swarm_restarts: list[float],
    swarm_skipped: str,
    downs: list[int],
    load: float,
) -> Result:
    restart = statistics.median(restarts)
    move = statistics.median(moves["kill"])
    killed = "container killed -> running again"
    rows: list[dict[str, Any]] = [
        {
            "failure": killed,
            "system": "cube",
            "median (s)": restart,
            "max (s)": max(restarts),
            "runs": len(restarts),
        }
    ]
    if swarm_restarts:
        swarm_s = statistics.median(swarm_restarts)
        rows[0]["vs swarm"] = f"{restart / swarm_s:.2f}x"
        rows.append(
            {
                "failure": killed,
                "system": SWARM,
                "median (s)": swarm_s,
                "max (s)": max(swarm_restarts),
                "runs": len(swarm_restarts),
            }
        )
    for case, label in (
        ("kill", "worker killed (SIGKILL)"),
        ("stop", "worker frozen (SIGSTOP)"),
        ("static", "-w worker killed (SIGKILL)"),
    ):
        runs = moves[case]
        rows.append(
            {
                "failure": f"{label} -> its {moved_counts[0]} tasks running elsewhere",
                "system": "cube" if case != "static" else "cube, -w (book's flow)",
                "median (s)": statistics.median(runs),
                "max (s)": max(runs),
                "runs": len(runs),
            }
        )
    rows.append(
        {
            "failure": f"nodes falsely declared down, both cores saturated {load:g} s",
            "system": "cube",
            "median (s)": downs[0],
            "max (s)": downs[0],
            "runs": 1,
        }
    )
    notes = [
        "Cube: the manager's defaults; the time includes whatever it waits before a first "
        "restart. A joined worker is declared down after a missed heartbeat (every 1 s) "
        "and 2 s of grace; a -w worker after --worker-timeout (10 s) of silence.",
        "False downs: a count, not seconds (both columns); the target is 0.",
        "Swarm: a one-replica service with --restart-delay 0s (its default is 5 s), "
        "measured after Cube on a single-node swarm made for the run.",
    ]
    if swarm_skipped:
        notes.append(f"swarm not measured: {swarm_skipped}")
    return Result(
        name="healing",
        title="Healing with default settings (seconds)",
        columns=["failure", "system", "median (s)", "max (s)", "runs", "vs swarm"],
        rows=rows,
        targets=[
            Target(
                "container restart",
                f"<= {RESTART_TARGET} s",
                f"{restart:.2f} s",
                restart <= RESTART_TARGET,
            ),
            Target("worker loss", f"<= {MOVE_TARGET} s", f"{move:.2f} s", move <= MOVE_TARGET),
            Target(
                "frozen worker",
                f"<= {MOVE_TARGET} s",
                f"{statistics.median(moves['stop']):.2f} s",
                statistics.median(moves["stop"]) <= MOVE_TARGET,
            ),
            Target("false downs under load", "0", str(downs[0]), downs[0] == 0),
        ],
        settings={
            "manager": "defaults (--heartbeat-interval 1, --heartbeat-grace 2, "
            "--worker-timeout 10 for -w workers, --stats-interval 2)",
            "load": f"{load:g} s of {2 * (os.cpu_count() or 2)} busy-looping processes",
            "workers": 2,
            "repeat": repeat,
            "swarm": "one replica, --restart-delay 0s, --restart-condition any, --init",
        },
        notes=notes,
        extra={
            "runs": {
                "container_killed": restarts,
                "worker_killed": moves["kill"],
                "worker_frozen": moves["stop"],
                "static_worker_killed": moves["static"],
                "false_downs": downs,
                "swarm_container_killed": swarm_restarts,
            },
            "swarm": {"measured": bool(swarm_restarts), "skipped": swarm_skipped or None},
        },
    )


if __name__ == "__main__":
    main("healing", run, configure, __doc__ or "")
