"""Control plane at scale: one manager, 1,000 simulated workers, 10,000 tasks with epvm.

The workers are real Cube workers (the same Worker class and FastAPI app, in one
process, see ``cube.worker.fleet``) whose containers are simulated, so what is measured
is the manager: accepting, placing, sending and tracking. Times come from the
manager's own log (one line when it places a task, one when it learns the task is
Running), so watching the run costs the manager nothing.

    .venv/bin/python -m bench.scale            # 1,000 workers, 10,000 tasks
    .venv/bin/python -m bench.scale --smoke    # 20 workers, 200 tasks
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    CUBE,
    Cluster,
    Proc,
    Result,
    Target,
    main,
    percentile,
    task_event,
    wait_for,
    workdir,
)

IMAGE = "cube/busybox:latest"
_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: task ([0-9a-f-]{36}): (.*)$"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument(
        "--clients", type=int, default=32, help="submissions in flight at once (connections)"
    )
    parser.add_argument(
        "--batch", type=int, default=100, help="TaskEvents per POST (1: the book's one per request)"
    )
    parser.add_argument("--start-latency", type=float, default=0.0, help="simulated start, s")
    parser.add_argument("--scheduler", default="epvm")
    parser.add_argument(
        "--dbtype",
        choices=["memory", "persistent"],
        default="memory",
        help="the manager's store (persistent: SQLite, every acknowledged task durable)",
    )
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")


def _log_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def read_log(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """When each task was placed, and when the manager first saw it Running."""
    placed: dict[str, float] = {}
    running: dict[str, float] = {}
    with path.open(errors="replace") as log:
        for line in log:
            match = _LINE.match(line)
            if match is None:
                continue
            stamp, task_id, what = match.groups()
            if what.startswith("placed on"):
                placed.setdefault(task_id, _log_time(stamp))
            elif what.startswith("Running on"):
                running.setdefault(task_id, _log_time(stamp))
    return placed, running


async def submit_all(
    url: str, bodies: list[dict[str, Any]], clients: int, batch: int
) -> dict[str, float]:
    """POST every task, ``clients`` requests at a time, ``batch`` TaskEvents per request.

    Returns when each task was acknowledged.
    """
    accepted: dict[str, float] = {}
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for start in range(0, len(bodies), batch):
        queue.put_nowait(bodies[start : start + batch])
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client() -> None:
            while not queue.empty():
                group = queue.get_nowait()
                response = await http.post("/tasks", json=group if batch > 1 else group[0])
                if response.status_code != 201:
                    raise RuntimeError(f"submission refused: {response.text}")
                now = time.time()
                for body in group:
                    accepted[body["Task"]["ID"]] = now

        await asyncio.gather(*(client() for _ in range(clients)))
    return accepted


def run(args: argparse.Namespace) -> Result:
    workers = 20 if args.smoke else args.workers
    tasks = 200 if args.smoke else args.tasks
    with workdir("scale") as tmp:
        fleet = Proc(
            [
                *CUBE[:2],
                "cube.worker.fleet",
                "--count",
                str(workers),
                "--addresses-file",
                str(tmp / "workers.txt"),
                "--start-latency",
                str(args.start_latency),
            ],
            tmp / "fleet.log",
        ).start()
        cluster = Cluster(tmp)
        try:
            addresses_file = tmp / "workers.txt"

            def fleet_up() -> list[str] | None:
                fleet.check_alive()
                return addresses_file.read_text().split(",") if addresses_file.exists() else None

            addresses = wait_for(fleet_up, 120, "simulated workers listening", interval=0.1)
            cluster.start_manager(
                "-s",
                args.scheduler,
                "--dbtype",
                args.dbtype,
                "--log-level",
                os.environ.get("BENCH_MANAGER_LOG", "info"),
                addresses=addresses,
            )
            assert cluster.manager is not None
            manager = cluster.manager
            cluster.wait_manager(workers, timeout=120)
            idle_rss = manager.rss_mb()

            bodies = [task_event(IMAGE, ["sleep", "3600"]) for _ in range(tasks)]
            ids = {b["Task"]["ID"] for b in bodies}
            cpu_before = manager.cpu_seconds(), fleet.cpu_seconds()
            first = time.time()
            accepted = asyncio.run(
                submit_all(cluster.manager_url, bodies, args.clients, args.batch)
            )
            submitted = time.time()

            def all_running() -> bool:
                manager.check_alive()
                _, running = read_log(manager.log)
                return ids <= running.keys()

            wait_for(all_running, 600, f"{tasks} tasks Running", interval=0.2)
            placed_at, running_at = read_log(manager.log)
            peak_rss = manager.peak_rss_mb()
            manager_cpu = manager.cpu_seconds() - cpu_before[0]
            fleet_cpu = fleet.cpu_seconds() - cpu_before[1]
            fleet_rss = fleet.rss_mb()
        finally:
            cluster.stop()
            fleet.stop()
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in tmp.glob("*.log"):
                    shutil.copy(log, args.logs / log.name)

    last_placed = max(placed_at[i] for i in ids)
    last_running = max(running_at[i] for i in ids)
    latencies = [max(placed_at[i] - accepted[i], 0.0) * 1000 for i in ids]
    to_placed = last_placed - first
    to_running = last_running - first
    rate = tasks / to_running
    rows = [
        {"measure": "workers (simulated)", "value": workers},
        {"measure": "tasks", "value": tasks},
        {"measure": "submission (s)", "value": submitted - first},
        {"measure": "first submission to all placed (s)", "value": to_placed},
        {"measure": "first submission to all Running (s)", "value": to_running},
        {"measure": "end to end (tasks/s)", "value": rate},
        {"measure": "scheduling latency p50 (ms)", "value": percentile(latencies, 50)},
        {"measure": "scheduling latency p99 (ms)", "value": percentile(latencies, 99)},
        {"measure": "manager CPU time (s)", "value": manager_cpu},
        {"measure": "simulated workers' CPU time (s)", "value": fleet_cpu},
        {"measure": "manager RSS idle (MB)", "value": idle_rss},
        {"measure": "manager peak RSS (MB)", "value": peak_rss},
        {"measure": "fleet process RSS (MB)", "value": fleet_rss},
    ]
    return Result(
        name="scale",
        title=(
            f"Control plane: {tasks:,} tasks on {workers:,} simulated workers "
            f"({args.scheduler}, {args.dbtype} store)"
        ),
        columns=["measure", "value"],
        rows=rows,
        targets=[
            Target(
                "throughput", ">= 2,000 tasks/s end to end", f"{rate:,.0f} tasks/s", rate >= 2000
            ),
            Target("manager memory", "<= 300 MB peak RSS", f"{peak_rss:.0f} MB", peak_rss <= 300),
        ],
        settings={
            "workers": workers,
            "tasks": tasks,
            "clients": args.clients,
            "batch": args.batch,
            "scheduler": args.scheduler,
            "dbtype": args.dbtype,
            "start_latency_s": args.start_latency,
            "manager_flags": "defaults (poll 1 s, stats 2 s), --log-level info",
        },
        notes=[
            "Scheduling latency: from the 201 of a submission to the manager placing it.",
            "Manager, simulated workers and the submitting client share the machine's cores.",
        ],
    )


if __name__ == "__main__":
    main("scale", run, configure, __doc__ or "")
