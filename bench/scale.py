"""Control plane at scale: one manager, 1,000 simulated workers, 10,000 tasks with epvm.

The workers are real Cube workers (the same Worker class and FastAPI app, in one
process, see ``cube.worker.fleet``) whose containers are simulated, so what is measured
is the manager: accepting, placing, sending and tracking. Times come from the
manager's own log (one line when it places a task, one when it learns the task is
Running), so watching the run costs the manager nothing.

Absolute figures move 2-3x between machines of the same kind, so each run measures,
side by side and on fleets started the same way:

- **cube**: this tree's manager, the tasks submitted to it 100 per request;
- **floor**: the same task events sent straight to the workers, batched per worker,
  no manager (``bench.floor``); Cube's time over the floor's is the figure to compare
  between machines (target <= 1.5x);
- **cube @REV** (with ``--compare REV``): that commit's manager (and its simulated
  fleet, which must speak the same wire format), for "manager CPU
  seconds no worse than before" measured in one run.

Each is measured ``--repeat`` times in turns (A B C, then C B A) and the medians
reported.

    .venv/bin/python -m bench.scale                   # 1,000 workers, 10,000 tasks
    .venv/bin/python -m bench.scale --compare main    # ... beside main's manager
    .venv/bin/python -m bench.scale --smoke           # 20 workers, 200 tasks, once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import floor
from bench.common import (
    CUBE,
    Cluster,
    Proc,
    Result,
    Table,
    Target,
    cpu_seconds,
    interleaved,
    main,
    percentile,
    task_event,
    wait_for,
    workdir,
)
from bench.revision import commit_of, python_env, source_tree
from cube.config import tune_gc

IMAGE = "cube/busybox:latest"
CUBE_NAME, FLOOR_NAME = "cube", "floor"
FLOOR_TARGET = 1.5  # Cube's time over the floor's, at most
CPU_TOLERANCE = 1.05  # manager CPU seconds over REV's: no worse, within their run-to-run noise
_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: task ([0-9a-f-]{36}): (.*)$"
)

# The measures of one run, in the order the detail table shows them.
SUBMISSION = "submission (s)"
PLACED = "first submission to all placed (s)"
RUNNING = "first submission to all Running (s)"
RATE = "end to end (tasks/s)"
P50 = "scheduling latency p50 (ms)"
P99 = "scheduling latency p99 (ms)"
MANAGER_CPU = "manager CPU time (s)"
FLOOR_CPU = "floor's client CPU time (s)"
FLEET_CPU = "simulated workers' CPU time (s)"
IDLE_RSS = "manager RSS idle (MB)"
PEAK_RSS = "manager peak RSS (MB)"
FLEET_RSS = "fleet process RSS (MB)"
MEASURES = [
    SUBMISSION,
    PLACED,
    RUNNING,
    RATE,
    P50,
    P99,
    MANAGER_CPU,
    FLOOR_CPU,
    FLEET_CPU,
    IDLE_RSS,
    PEAK_RSS,
    FLEET_RSS,
]


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
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each system, in turns (--smoke: 1)"
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also measure the manager of this commit (e.g. main, HEAD~3), same fleet and flags",
    )
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")


def _log_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class LogFollower:
    """The manager's log, read as it grows: each call to :meth:`read` parses only the
    lines written since the last, and leaves the timestamps as text until :meth:`times`.

    Waiting for all Running re-read the whole log five times a second, timestamps
    parsed and all: by the end of a run ~0.2 s of CPU a read, most of a core taken from
    the manager and the fleet on a two-core machine, which the floor (it waits on its
    streams in-process) never paid.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.placed: dict[str, str] = {}
        self.running: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def read(self) -> None:
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += end
        for line in data[:end].decode(errors="replace").splitlines():
            match = _LINE.match(line)
            if match is None:
                continue
            stamp, task_id, what = match.groups()
            if what.startswith("placed on"):
                self.placed.setdefault(task_id, stamp)
            elif what.startswith("Running on"):
                self.running.setdefault(task_id, stamp)
            elif what.startswith("Failed"):
                self.failed.setdefault(task_id, what)

    def times(self) -> tuple[dict[str, float], dict[str, float]]:
        """When each task was placed, and when it was first seen Running."""
        placed = {task_id: _log_time(stamp) for task_id, stamp in self.placed.items()}
        running = {task_id: _log_time(stamp) for task_id, stamp in self.running.items()}
        return placed, running


async def submit_all(
    url: str,
    bodies: list[dict[str, Any]],
    clients: int,
    batch: int,
    on_start: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """POST every task, ``clients`` requests at a time, ``batch`` TaskEvents per request.

    ``on_start`` is called when the client is made, just before the first request (the
    floor's clock starts once its clients are made, too: see bench.floor.deliver).
    Returns when each task was acknowledged.
    """
    accepted: dict[str, float] = {}
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for start in range(0, len(bodies), batch):
        queue.put_nowait(bodies[start : start + batch])
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        on_start()

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


@contextlib.contextmanager
def fleet(
    tmp: Path, workers: int, start_latency: float, env: dict[str, str] | None = None
) -> Iterator[tuple[Proc, list[str]]]:
    """A fresh simulated fleet (this tree's, or another's with ``env``), its process
    and its workers' addresses.

    The fleet is of the same revision as the manager under test: workers and manager
    share the task's wire format, and an older manager refuses fields it does not know.
    """
    addresses_file = tmp / "workers.txt"
    proc = Proc(
        [
            *CUBE[:2],
            "cube.worker.fleet",
            "--count",
            str(workers),
            "--addresses-file",
            str(addresses_file),
            "--start-latency",
            str(start_latency),
        ],
        tmp / "fleet.log",
    ).start(env)
    try:

        def up() -> list[str] | None:
            proc.check_alive()
            return addresses_file.read_text().split(",") if addresses_file.exists() else None

        yield proc, wait_for(up, 120, "simulated workers listening", interval=0.1)
    finally:
        proc.stop()


def measure_cube(
    args: argparse.Namespace,
    tmp: Path,
    bodies: list[dict[str, Any]],
    workers: int,
    env: dict[str, str] | None = None,
    store: list[str] | None = None,
) -> dict[str, float]:
    """One run through a manager (this tree's, or another's with ``env``), its store
    as ``--dbtype`` says unless ``store`` gives other flags (bench.store's etcd)."""
    ids = {b["Task"]["ID"] for b in bodies}
    with fleet(tmp, workers, args.start_latency, env) as (fleet_proc, addresses):
        cluster = Cluster(tmp)
        try:
            cluster.start_manager(
                "-s",
                args.scheduler,
                *(store if store is not None else ["--dbtype", args.dbtype]),
                "--log-level",
                os.environ.get("BENCH_MANAGER_LOG", "info"),
                addresses=addresses,
                env=env,
            )
            assert cluster.manager is not None
            manager = cluster.manager
            cluster.wait_manager(workers, timeout=120)
            idle_rss = manager.rss_mb()
            cpu_before = 0.0, 0.0
            first = 0.0

            def on_start() -> None:
                nonlocal cpu_before, first
                cpu_before = manager.cpu_seconds(), fleet_proc.cpu_seconds()
                first = time.time()

            accepted = asyncio.run(
                submit_all(cluster.manager_url, bodies, args.clients, args.batch, on_start)
            )
            submitted = time.time()

            follower = LogFollower(manager.log)

            def all_running() -> bool:
                manager.check_alive()
                follower.read()
                if lost := follower.failed.keys() & ids:
                    # None fails on simulated workers: a manager that cannot talk to
                    # them (an older one, say, that does not speak their protocol).
                    example = follower.failed[next(iter(lost))]
                    raise RuntimeError(f"{len(lost)} tasks Failed, e.g. {example[:300]}")
                return ids <= follower.running.keys()

            wait_for(all_running, 600, f"{len(ids)} tasks Running", interval=0.2)
            manager_cpu = manager.cpu_seconds() - cpu_before[0]
            fleet_cpu = fleet_proc.cpu_seconds() - cpu_before[1]
            placed_at, running_at = follower.times()
            peak_rss = manager.peak_rss_mb()
            fleet_rss = fleet_proc.rss_mb()
        finally:
            cluster.stop()
    latencies = [max(placed_at[i] - accepted[i], 0.0) * 1000 for i in ids]
    to_running = max(running_at[i] for i in ids) - first
    return {
        SUBMISSION: submitted - first,
        PLACED: max(placed_at[i] for i in ids) - first,
        RUNNING: to_running,
        RATE: len(ids) / to_running,
        P50: percentile(latencies, 50),
        P99: percentile(latencies, 99),
        MANAGER_CPU: manager_cpu,
        FLEET_CPU: fleet_cpu,
        IDLE_RSS: idle_rss,
        PEAK_RSS: peak_rss,
        FLEET_RSS: fleet_rss,
    }


def measure_floor(
    args: argparse.Namespace, tmp: Path, bodies: list[dict[str, Any]], workers: int
) -> dict[str, float]:
    """One run of the same events straight to the workers (see ``bench.floor``)."""
    with fleet(tmp, workers, args.start_latency) as (fleet_proc, addresses):
        shares = floor.scheduled(bodies, addresses)
        tune_gc()  # as the manager does before it serves
        before: list[float] = []

        def on_start() -> None:
            before[:] = [fleet_proc.cpu_seconds(), cpu_seconds()]

        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            done = runner.run(floor.deliver(shares, timeout=600, on_start=on_start))
        fleet_cpu, own_cpu = fleet_proc.cpu_seconds() - before[0], cpu_seconds() - before[1]
        fleet_rss = fleet_proc.rss_mb()
    if len(done.running) != len(bodies):
        raise RuntimeError(f"floor: {len(done.running)} of {len(bodies)} tasks Running")
    to_running = max(done.running.values()) - done.started
    return {
        SUBMISSION: done.sent - done.started,
        RUNNING: to_running,
        RATE: len(bodies) / to_running,
        FLOOR_CPU: own_cpu,
        FLEET_CPU: fleet_cpu,
        FLEET_RSS: fleet_rss,
    }


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: the manager's loop (uvicorn's choice), for the floor too."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _median(runs: list[dict[str, float]], measure: str) -> float | None:
    values = [run[measure] for run in runs if measure in run]
    return statistics.median(values) if values else None


def run(args: argparse.Namespace) -> Result:
    workers = 20 if args.smoke else args.workers
    tasks = 200 if args.smoke else args.tasks
    repeat = 1 if args.smoke else args.repeat
    if repeat < 1:
        raise SystemExit("error: --repeat must be at least 1")
    if args.compare:
        commit_of(args.compare)  # a bad REV is refused before anything starts
    # The very same events for every system and round: each run gets a fresh fleet.
    bodies = [task_event(IMAGE, ["sleep", "3600"]) for _ in range(tasks)]
    with workdir("scale") as tmp, contextlib.ExitStack() as stack:
        counter = iter(range(1_000_000))

        def place(name: str) -> Path:
            where = tmp / f"{next(counter):02d}-{name.replace(' ', '-').replace('@', '')}"
            where.mkdir()
            return where

        systems: dict[str, Callable[[], dict[str, float]]] = {
            CUBE_NAME: lambda: measure_cube(args, place(CUBE_NAME), bodies, workers),
            FLOOR_NAME: lambda: measure_floor(args, place(FLOOR_NAME), bodies, workers),
        }
        before = ""
        if args.compare:
            src, short = stack.enter_context(source_tree(args.compare))
            before = f"cube @{short}"
            env = python_env(src)
            systems[before] = lambda: measure_cube(args, place(before), bodies, workers, env)
        try:
            runs = interleaved(systems, repeat)
        finally:
            if args.logs:
                for log in tmp.glob("*/*.log"):
                    target = args.logs / log.parent.name
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, target / log.name)
    return _result(args, workers, tasks, repeat, runs, before)


def _result(
    args: argparse.Namespace,
    workers: int,
    tasks: int,
    repeat: int,
    runs: dict[str, list[dict[str, float]]],
    before: str,
) -> Result:
    medians = {name: {m: _median(r, m) for m in MEASURES} for name, r in runs.items()}
    floor_s = medians[FLOOR_NAME][RUNNING]
    assert floor_s is not None
    columns = ["system", "all Running (s)", "tasks/s", "vs floor", "manager CPU (s)"]
    if before:
        columns.append(f"manager CPU vs {before}")
    columns += ["workers' CPU (s)", "manager peak RSS (MB)"]
    rows: list[dict[str, Any]] = []
    for name, m in medians.items():
        row: dict[str, Any] = {
            "system": name,
            "all Running (s)": m[RUNNING],
            "tasks/s": m[RATE],
            "manager CPU (s)": m[MANAGER_CPU],
            "workers' CPU (s)": m[FLEET_CPU],
            "manager peak RSS (MB)": m[PEAK_RSS],
        }
        if name != FLOOR_NAME:
            row["vs floor"] = f"{m[RUNNING] / floor_s:.2f}x"  # type: ignore[operator]
        rows.append(row)
    cube = medians[CUBE_NAME]
    ratio = cube[RUNNING] / floor_s  # type: ignore[operator]
    peak = cube[PEAK_RSS] or 0.0
    targets = [
        Target(
            "vs floor",
            f"<= {FLOOR_TARGET:.1f}x the floor's time",
            f"{ratio:.2f}x",
            ratio <= FLOOR_TARGET,
        ),
        Target("manager memory", "<= 300 MB peak RSS", f"{peak:.0f} MB", peak <= 300),
    ]
    if before:
        cpu = cube[MANAGER_CPU] / medians[before][MANAGER_CPU]  # type: ignore[operator]
        rows[0][f"manager CPU vs {before}"] = f"{cpu:.2f}x"
        targets.append(
            Target(
                f"manager CPU vs {before}",
                f"no worse (<= {CPU_TOLERANCE:.2f}x, the noise of CPU seconds)",
                f"{cpu:.2f}x",
                cpu <= CPU_TOLERANCE,
            )
        )
    detail = Table(
        f"Medians of {repeat} run(s) each",
        ["measure", *medians],
        [
            {"measure": m, **{name: medians[name][m] for name in medians}}
            for m in MEASURES
            if any(medians[name][m] is not None for name in medians)
        ],
    )
    return Result(
        name="scale",
        title=(
            f"Control plane: {tasks:,} tasks on {workers:,} simulated workers "
            f"({args.scheduler}, {args.dbtype} store)"
        ),
        columns=columns,
        rows=rows,
        tables=[detail],
        targets=targets,
        settings={
            "workers": workers,
            "tasks": tasks,
            "clients": args.clients,
            "batch": args.batch,
            "scheduler": args.scheduler,
            "dbtype": args.dbtype,
            "start_latency_s": args.start_latency,
            "repeat": repeat,
            "compare": args.compare,
            "manager_flags": "defaults (poll 1 s, stats 2 s), --log-level info",
            "floor": (
                f"the same events, worker i % {workers} gets the i-th, one batch per worker, "
                f"{floor.SEND_CONCURRENCY} requests in flight, followed by watch streams"
            ),
        },
        notes=[
            "vs floor: Cube's time to all Running over the floor's (the same events sent "
            "straight to the same kind of fleet, no manager), each the median of its runs.",
            "Scheduling latency: from the 201 of a submission to the manager placing it.",
            "Manager, simulated workers and the submitting client share the machine's cores.",
        ],
        extra={"runs": runs, "compare": {"rev": args.compare, "system": before or None}},
    )


if __name__ == "__main__":
    main("scale", run, configure, __doc__ or "")
