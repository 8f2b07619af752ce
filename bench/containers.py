"""Real containers: N tasks to Running through Cube, beside Docker itself and Docker Swarm.

For each N (20 and 50), in the same run and on the same engine:

- **docker API**: the same N containers (same image, command, labels, init) created and
  started straight through the Docker SDK, as many at once as Cube's workers would
  start them (each worker starts up to 32 at a time) — the machine's physical limit;
- **swarm**: a Docker Swarm service with N replicas (``docker swarm init`` on this
  engine, advertised on 127.0.0.1, left afterwards), from ``docker service create``
  until N tasks are running;
- **cube, 1 worker** and **cube, 3 workers**: a cluster started with ``cube up``
  (persistent state, default settings), N tasks submitted concurrently (one POST each,
  as ``cube run`` does), from the first submission until the manager reports all N
  Running.

Each measurement is repeated (``--repeat``, default 6), Docker and Cube in turns, the
order reversed every other round (see ``_interleaved``), and the median reported;
every container is removed afterwards.

    .venv/bin/python -m bench.containers            # N = 20 and 50
    .venv/bin/python -m bench.containers --smoke    # N = 3, once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import ssl
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx

from bench.common import (
    CUBE,
    ROOT,
    Result,
    Target,
    free_port,
    interleaved,
    main,
    task_event,
    wait_for,
    workdir,
)
from bench.plot import bar_chart

IMAGE = "cube/busybox:latest"
CMD = ["sleep", "3600"]
WORKER_CONCURRENCY = 32  # cube worker --concurrency default
RUNNING = 2
COMPLETED = 3
DIRECT_TARGET = 1.05  # Cube's time over the Docker API's at the same concurrency, at most


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="20,50", help="comma-separated N")
    parser.add_argument(
        "--repeat", type=int, default=6, help="runs of each measurement (even: see _interleaved)"
    )
    parser.add_argument("--no-swarm", action="store_true", help="skip Docker Swarm")
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "docs" / "img" / "containers.svg", help="SVG chart"
    )


# --- Docker directly -----------------------------------------------------------------


def docker_direct(n: int, concurrency: int, run_id: str) -> float:
    """Seconds to create and start n containers, ``concurrency`` at a time."""
    api = docker.APIClient(version="auto", max_pool_size=concurrency + 4, timeout=120)
    labels = {"cube.bench": run_id}

    def start(index: int) -> None:
        host_config = api.create_host_config(init=True)
        created = api.create_container(
            IMAGE,
            command=CMD,
            name=f"bench-direct-{run_id}-{index}",
            labels=labels,
            host_config=host_config,
            detach=True,
        )
        api.start(created["Id"])

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(start, range(n)))
        elapsed = time.perf_counter() - started
        running = api.containers(filters={"label": f"cube.bench={run_id}", "status": "running"})
        if len(running) != n:
            raise RuntimeError(f"docker: {len(running)} of {n} containers running")
        return elapsed
    finally:
        remove_labelled(f"cube.bench={run_id}")
        api.close()


def remove_labelled(label: str) -> None:
    """Force-remove every container carrying ``label`` (key=value), concurrently."""
    api = docker.APIClient(version="auto", max_pool_size=20)
    try:
        ids = [c["Id"] for c in api.containers(all=True, filters={"label": label})]
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda cid: _remove(api, cid), ids))
    finally:
        api.close()


def _remove(api: docker.APIClient, container_id: str) -> None:
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        api.remove_container(container_id, force=True, v=True)


# --- Docker Swarm --------------------------------------------------------------------


def docker_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker command line (Swarm's services have no SDK call this file uses)."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=check
    )


class SwarmUnavailable(RuntimeError):
    """This engine cannot host a swarm for the benchmark (it is in one already, say)."""


@contextlib.contextmanager
def swarm() -> Iterator[None]:
    """A single-node swarm on this engine for the block, left afterwards.

    An engine already in a swarm is somebody else's: it is not touched, and
    :class:`SwarmUnavailable` says so, as it does when ``docker swarm init`` fails.
    """
    state = docker_cli("info", "--format", "{{.Swarm.LocalNodeState}}", check=False)
    if state.returncode != 0:
        raise SwarmUnavailable(f"docker info failed: {state.stderr.strip()}")
    if state.stdout.strip() != "inactive":
        raise SwarmUnavailable(
            f"this engine's swarm state is {state.stdout.strip()!r}: not touching it"
        )
    init = docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1", check=False)
    if init.returncode != 0:
        raise SwarmUnavailable(f"docker swarm init failed: {init.stderr.strip()}")
    try:
        yield
    finally:
        docker_cli("swarm", "leave", "--force", check=False)


def swarm_service(n: int, run_id: str) -> float:
    """Seconds from ``docker service create`` to n running replicas."""
    name = f"cube-bench-{run_id}"
    api = docker.APIClient(version="auto")
    # Count the replicas' start events rather than poll the engine, which would take
    # CPU from the very engine being measured.
    events = api.events(
        filters={
            "type": "container",
            "event": "start",
            "label": f"com.docker.swarm.service.name={name}",
        },
        decode=True,
    )
    try:
        started = time.perf_counter()
        docker_cli(
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            name,
            "--replicas",
            str(n),
            IMAGE,
            *CMD,
        )

        for count, _ in enumerate(events, start=1):
            if count >= n:
                break

        # Then until Swarm itself reports them running (what `docker service ls` shows),
        # as Cube's time is until its manager reports them: a few polls at most.
        def all_running() -> bool:
            tasks = api.tasks(filters={"service": name, "desired-state": "running"})
            return sum(t["Status"]["State"] == "running" for t in tasks) >= n

        wait_for(all_running, 120, f"swarm reporting {n} replicas running")
        return time.perf_counter() - started
    finally:
        events.close()
        remove_service(api, name)
        api.close()


def remove_service(api: docker.APIClient, name: str) -> None:
    """Remove a Swarm service and wait until its containers are gone too.

    They go away asynchronously: waiting keeps the next measurement (or the
    ``swarm leave``) from running beside them.
    """
    docker_cli("service", "rm", name, check=False)
    wait_for(
        lambda: (
            not api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={name}"})
        ),
        120,
        "swarm containers removed",
        interval=0.2,
    )


# --- Cube ------------------------------------------------------------------------------


class UpCluster:
    """A cluster started with ``cube up --detach`` and stopped with ``cube down --purge``."""

    def __init__(self, tmp: Path, workers: int, name: str) -> None:
        self.data = tmp / name
        self.workers = workers
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http_options: dict[str, Any] = {}

    def __enter__(self) -> UpCluster:
        worker_port = _free_run(self.workers)
        up = subprocess.run(
            [
                *CUBE,
                "up",
                "--detach",
                "-n",
                str(self.workers),
                "--port",
                str(self.port),
                "--worker-port",
                str(worker_port),
                "--data-dir",
                str(self.data),
                "--name",
                self.name,
                # Info: the manager logs each task it sees Running, with the time.
                "--log-level",
                "info",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
        )
        if up.returncode != 0:
            raise RuntimeError(f"cube up failed:\n{up.stdout}\n{up.stderr}")
        # `cube up` runs over mutual TLS with a token: talk to it as the CLI does.
        config = json.loads((self.data / "client.json").read_text())
        self.url = config["Manager"]
        self.http_options = {
            "headers": {"Authorization": f"Bearer {config['Token']}"},
            "verify": ssl.create_default_context(cafile=config["TlsCa"]),
        }
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(
            [*CUBE, "down", "--purge", "--data-dir", str(self.data)],
            capture_output=True,
            timeout=180,
            cwd=ROOT,
        )
        for index in range(1, self.workers + 1):
            remove_labelled(f"cube.worker={self.name}-{index}")

    def tasks(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = httpx.get(
            f"{self.url}/tasks", timeout=30, **self.http_options
        ).json()
        return data

    def run(self, n: int) -> float:
        """Seconds from the first of n submissions to the manager reporting all Running."""
        bodies = [task_event(IMAGE, CMD) for _ in range(n)]
        ids = {b["Task"]["ID"] for b in bodies}

        async def submit() -> None:
            limits = httpx.Limits(max_connections=n)
            async with httpx.AsyncClient(
                base_url=self.url, timeout=60, limits=limits, **self.http_options
            ) as http:
                answers = await asyncio.gather(*(http.post("/tasks", json=b) for b in bodies))
            refused = [a.text for a in answers if a.status_code != 201]
            if refused:
                raise RuntimeError(f"submissions refused: {refused[:3]}")

        started = time.time()
        asyncio.run(submit())

        # When the manager saw each task Running, from its log: asking its API every
        # few milliseconds would take CPU from the very engine being measured.
        def all_running() -> float | None:
            seen = read_running(self.data / "logs" / "manager.log", ids)
            return max(seen.values()) if len(seen) == n else None

        last = wait_for(all_running, 300, f"{n} Cube tasks Running", interval=0.05)
        states = {t["ID"]: t["State"] for t in self.tasks() if t["ID"] in ids}
        if sorted(states.values()) != [RUNNING] * n:
            raise RuntimeError(f"the manager's log and API disagree: {states}")
        self.stop(ids)
        return last - started

    def stop(self, ids: set[str]) -> None:
        with httpx.Client(base_url=self.url, timeout=30, **self.http_options) as http:
            for task_id in ids:
                http.delete(f"/tasks/{task_id}")

        def all_stopped() -> bool:
            states = [t["State"] for t in self.tasks() if t["ID"] in ids]
            return all(s == COMPLETED for s in states)

        wait_for(all_stopped, 300, "Cube tasks stopped", interval=0.2)


_RUNNING_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: task ([0-9a-f-]{36}): Running on"
)


def read_running(log: Path, ids: set[str]) -> dict[str, float]:
    """When the manager first logged each of ``ids`` Running (its clock is ours)."""
    seen: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError), log.open(errors="replace") as lines:
        for line in lines:
            match = _RUNNING_LINE.match(line)
            if match and match.group(2) in ids and match.group(2) not in seen:
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                seen[match.group(2)] = stamp.timestamp()
    return seen


def _free_run(count: int) -> int:
    """A first port with ``count`` free ports from it."""
    for _ in range(50):
        first = free_port()
        if first + count >= 65535:
            continue
        try:
            for port in range(first, first + count):
                with contextlib.closing(__import__("socket").socket()) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no run of free ports")


# --- the benchmark -------------------------------------------------------------------------


def _median(measure: Callable[[], float], repeat: int) -> tuple[float, list[float]]:
    runs = [measure() for _ in range(repeat)]
    return statistics.median(runs), runs


def _interleaved(
    systems: dict[str, Callable[[], float]], repeat: int
) -> dict[str, tuple[float, list[float]]]:
    """Each system's median over ``repeat`` runs, taken in turns (see ``interleaved``).

    The engine slows down as a run goes on (twenty containers started straight
    through its API took 1.95 s in the first round and 2.75 s in the fifth), so
    whatever is measured later is measured on a slower engine.
    """
    runs = interleaved(systems, repeat)
    return {name: (statistics.median(times), times) for name, times in runs.items()}


def run(args: argparse.Namespace) -> Result:
    sizes = [3] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.smoke else args.repeat
    run_id = uuid.uuid4().hex[:8]
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    swarm_note = ""
    with (
        workdir("containers") as tmp,
        UpCluster(tmp, 1, f"bench1-{run_id}") as one,
        UpCluster(tmp, 3, f"bench3-{run_id}") as three,
    ):
        for n in sizes:
            systems: dict[str, Callable[[], float]] = {}
            for workers in (1, 3):
                concurrency = min(n, WORKER_CONCURRENCY * workers)
                systems[f"docker API (x{concurrency})"] = lambda c=concurrency, n=n: docker_direct(
                    n, c, run_id
                )
            systems["cube, 1 worker"] = lambda n=n: one.run(n)
            systems["cube, 3 workers"] = lambda n=n: three.run(n)
            measured = _interleaved(systems, repeat)
            if not args.no_swarm:
                try:
                    with swarm():
                        measured["swarm"] = _median(lambda n=n: swarm_service(n, run_id), repeat)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    swarm_note = f"swarm not measured: {exc}"
            raw[str(n)] = {k: v[1] for k, v in measured.items()}
            direct_1 = measured[f"docker API (x{min(n, WORKER_CONCURRENCY)})"][0]
            direct_3 = measured[f"docker API (x{min(n, WORKER_CONCURRENCY * 3)})"][0]
            swarm_s = measured.get("swarm", (None, []))[0]
            for name, direct in (("cube, 1 worker", direct_1), ("cube, 3 workers", direct_3)):
                cube_s = measured[name][0]
                rows.append(
                    {
                        "N": n,
                        "system": name,
                        "seconds": cube_s,
                        "vs docker API": f"{cube_s / direct:.2f}x",
                        "vs swarm": f"{cube_s / swarm_s:.2f}x" if swarm_s else "",
                    }
                )
            for name, (seconds, _) in measured.items():
                if not name.startswith("cube"):
                    rows.append({"N": n, "system": name, "seconds": seconds})
    targets = []
    for row in rows:
        if str(row["system"]).startswith("cube"):
            ratio = float(str(row["vs docker API"]).rstrip("x"))
            targets.append(
                Target(
                    f"N={row['N']}, {row['system']}: vs docker API",
                    f"<= {DIRECT_TARGET:.2f}x",
                    f"{ratio:.2f}x",
                    ratio <= DIRECT_TARGET,
                )
            )
            if row.get("vs swarm"):
                vs = float(str(row["vs swarm"]).rstrip("x"))
                targets.append(
                    Target(
                        f"N={row['N']}, {row['system']}: vs swarm",
                        "faster (< 1.00x)",
                        f"{vs:.2f}x",
                        vs < 1.0,
                    )
                )
    if not args.smoke:
        groups = [
            (
                f"N = {n}",
                {str(r["system"]): float(r["seconds"]) for r in rows if r["N"] == n},
            )
            for n in sizes
        ]
        names = sorted({name for _, values in groups for name in values}, key=_order)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        args.plot.write_text(
            bar_chart("N containers to running (median, s)", "seconds", groups, names)
        )
    notes = [
        "docker API (xC): the N containers started directly, C at a time; each Cube row "
        "is compared with the docker API row at its own concurrency (32 per worker).",
        "Cube: cube up --detach (persistent state, default settings), one POST per task.",
    ]
    if swarm_note:
        notes.append(swarm_note)
    return Result(
        name="containers",
        title="Real containers: first submission to all Running (median seconds)",
        columns=["N", "system", "seconds", "vs docker API", "vs swarm"],
        rows=rows,
        targets=targets,
        settings={"sizes": sizes, "repeat": repeat, "image": IMAGE, "cmd": CMD},
        notes=notes,
        extra={"runs": json.loads(json.dumps(raw))},
    )


def _order(name: str) -> tuple[int, str]:
    order = ("docker", "swarm", "cube, 1", "cube, 3")
    return next((i for i, p in enumerate(order) if name.startswith(p)), 9), name


if __name__ == "__main__":
    main("containers", run, configure, __doc__ or "")
