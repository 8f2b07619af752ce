"""Jobs beside Docker Swarm: N replicas to Running, and a rolling update of them.

On one engine, in one run, both running their tasks under an init (``cube worker
--init``, ``docker service create --init``), so a stop is a SIGTERM obeyed at once:

- **replicas**: ``POST /jobs`` of an N-replica service until the manager reports N
  tasks Running, beside ``docker service create --replicas N`` until Swarm reports N
  running;
- **rolling update**: a new ``Env`` for the job (MaxParallel 2, MinHealthyTime 1 s,
  start-first) until its deployment is successful (N tasks of the new version healthy,
  none of the old left), beside ``docker service update --env-add`` with
  ``--update-parallelism 2 --update-monitor 1s --update-order start-first`` until
  Swarm's UpdateStatus is ``completed``.

Swarm is measured after Cube (``docker swarm init`` changes the engine), on a
single-node swarm made for the run and left afterwards; an engine already in a swarm is
not touched, and the Swarm rows are left out with the reason.

    .venv/bin/python -m bench.jobs              # 20 replicas, 3 runs of each
    .venv/bin/python -m bench.jobs --smoke      # 4 replicas, once
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import docker
import httpx

from bench.common import Cluster, Result, Target, main, wait_for, workdir
from bench.containers import SwarmUnavailable, docker_cli, remove_labelled, remove_service, swarm

IMAGE = "cube/busybox:latest"
CMD = ["sleep", "3600"]
RUNNING = 2
TARGET = 0.5  # Cube's time over Swarm's, for both


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each system")
    parser.add_argument("--no-swarm", action="store_true", help="skip Docker Swarm")


def _job(count: int, env: str) -> dict[str, Any]:
    return {
        "Name": "bench",
        "Count": count,
        "Task": {"Image": IMAGE, "Cmd": CMD, "Env": [env]},
        "Update": {"MaxParallel": 2, "MinHealthyTime": 1, "HealthyDeadline": 120},
    }


def cube_once(replicas: int) -> tuple[float, float]:
    """(seconds to N Running, seconds for the rolling update) on a fresh cluster."""
    run_id = uuid.uuid4().hex[:6]
    with workdir("jobs") as tmp:
        cluster = Cluster(tmp)
        name = f"jobs-{run_id}"
        cluster.start_worker(name, "--init")
        cluster.wait_workers()
        url = cluster.start_manager()
        cluster.wait_manager(1)
        try:
            with httpx.Client(base_url=url, timeout=10) as client:

                def running(version: int) -> bool:
                    tasks = client.get("/tasks", params={"job": "bench"}).json()
                    live = [t for t in tasks if t["State"] == RUNNING and t["DesiredState"] == 2]
                    return len(live) == replicas and {t["JobVersion"] for t in live} == {version}

                started = time.perf_counter()
                client.post("/jobs", json=_job(replicas, "V=1")).raise_for_status()
                wait_for(lambda: running(1), 300, "cube: replicas running", interval=0.02)
                up = time.perf_counter() - started

                def rolled() -> bool:
                    d = client.get("/jobs/bench").json()["Deployment"]
                    return bool(d["Version"] == 2 and d["Status"] == "successful")

                wait_for(
                    lambda: (
                        client.get("/jobs/bench").json()["Deployment"]["Status"] == "successful"
                    ),
                    120,
                    "cube: version 1 settled",
                )
                started = time.perf_counter()
                client.post("/jobs", json=_job(replicas, "V=2")).raise_for_status()
                wait_for(rolled, 600, "cube: rolled to version 2", interval=0.02)
                return up, time.perf_counter() - started
        finally:
            cluster.stop()
            remove_labelled(f"cube.worker={name}")


def swarm_once(api: docker.APIClient, replicas: int) -> tuple[float, float]:
    name = f"cube-bench-jobs-{uuid.uuid4().hex[:6]}"
    try:
        started = time.perf_counter()
        docker_cli(
            "service", "create", "--detach", "--no-resolve-image", "--init",
            "--name", name, "--replicas", str(replicas),
            "--update-parallelism", "2", "--update-monitor", "1s",
            "--update-order", "start-first", "--env", "V=1",
            IMAGE, *CMD,
        )  # fmt: skip

        def all_running() -> bool:
            tasks = api.tasks(filters={"service": name, "desired-state": "running"})
            return sum(t["Status"]["State"] == "running" for t in tasks) >= replicas

        wait_for(all_running, 300, "swarm: replicas running", interval=0.05)
        up = time.perf_counter() - started
        started = time.perf_counter()
        docker_cli("service", "update", "--detach", "--env-add", "V=2", name)

        def completed() -> bool:
            status = api.inspect_service(name).get("UpdateStatus") or {}
            return status.get("State") == "completed"

        wait_for(completed, 600, "swarm: update completed", interval=0.05)
        return up, time.perf_counter() - started
    finally:
        remove_service(api, name)


def run(args: argparse.Namespace) -> Result:
    replicas = 4 if args.smoke else args.replicas
    repeat = 1 if args.smoke else args.repeat
    cube = [cube_once(replicas) for _ in range(repeat)]
    swarm_runs: list[tuple[float, float]] = []
    skipped = "--no-swarm" if args.no_swarm else ""
    if not args.no_swarm:
        api = docker.APIClient(version="auto")
        try:
            with swarm():
                swarm_runs = [swarm_once(api, replicas) for _ in range(repeat)]
        except SwarmUnavailable as exc:
            skipped = str(exc)
        finally:
            api.close()
    return _result(replicas, repeat, cube, swarm_runs, skipped)


def _result(
    replicas: int,
    repeat: int,
    cube: list[tuple[float, float]],
    swarm_runs: list[tuple[float, float]],
    skipped: str,
) -> Result:
    rows: list[dict[str, Any]] = []
    targets: list[Target] = []
    for index, what in enumerate((f"{replicas} replicas to running", "rolling update")):
        cube_s = statistics.median(run[index] for run in cube)
        row: dict[str, Any] = {"measure": what, "cube (s)": cube_s}
        if swarm_runs:
            swarm_s = statistics.median(run[index] for run in swarm_runs)
            ratio = cube_s / swarm_s
            row.update({"swarm (s)": swarm_s, "cube / swarm": f"{ratio:.2f}x"})
            targets.append(Target(what, f"<= {TARGET}x swarm", f"{ratio:.2f}x", ratio <= TARGET))
        rows.append(row)
    notes = [
        "Both on one engine, tasks under an init; medians of the runs.",
        "Rolling update: MaxParallel 2, MinHealthyTime 1 s (Swarm: --update-monitor 1s), "
        "start-first on both sides; until Cube's deployment is successful / Swarm's "
        "UpdateStatus is completed.",
    ]
    if skipped:
        notes.append(f"swarm not measured: {skipped}")
    return Result(
        name="jobs",
        title=f"Jobs: {replicas} replicas and a rolling update, Cube beside Docker Swarm",
        columns=["measure", "cube (s)", "swarm (s)", "cube / swarm"],
        rows=rows,
        targets=targets,
        settings={"replicas": replicas, "repeat": repeat, "worker": "cube worker --init"},
        notes=notes,
        extra={"runs": {"cube": cube, "swarm": swarm_runs}},
    )


if __name__ == "__main__":
    main("jobs", run, configure, __doc__ or "")
