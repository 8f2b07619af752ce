"""What every benchmark shares: flags, real Cube processes, tables and result files.

A benchmark is a module with a ``run(args) -> Result`` function; :func:`main` parses
the common flags (``--smoke``, ``--out``), runs it, prints its table and writes
``<out>/<name>.json`` with the machine, the versions and the exact command, so a
number in docs/performance.md can always be traced to the run that produced it.

Nothing here sleeps to synchronise: waits poll a condition against a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CUBE = [sys.executable, "-m", "cube"]
T = TypeVar("T")

RUNNING = 2


# --- results -------------------------------------------------------------------------


@dataclass
class Target:
    """One of the project's performance targets and whether this run met it."""

    name: str
    goal: str
    measured: str
    met: bool


@dataclass
class Table:
    """A further table of a result, printed (and rendered in the docs) after the main one."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]


@dataclass
class Result:
    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    targets: list[Target] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024**2, 1),
    }


def versions() -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    for package in ("cube", "fastapi", "uvicorn", "httpx", "pydantic", "docker"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        engine = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if engine.returncode == 0:
            found["docker_engine"] = engine.stdout.strip()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            found["cube_commit"] = commit.stdout.strip()
    return found


def command_line() -> str:
    module = sys.modules["__main__"].__spec__
    name = module.name if module is not None else sys.argv[0]
    return shlex.join([".venv/bin/python", "-m", name, *sys.argv[1:]])


def write_result(result: Result, out: Path, smoke: bool, started: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": result.name,
        "title": result.title,
        "command": command_line(),
        "smoke": smoke,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(),
        "versions": versions(),
        "settings": result.settings,
        "columns": result.columns,
        "rows": result.rows,
        "tables": [vars(t) for t in result.tables],
        "targets": [vars(t) for t in result.targets],
        "notes": result.notes,
        **result.extra,
    }
    path = out / f"{result.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def table_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def table_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def print_result(result: Result) -> None:
    print(f"\n{result.title}\n")
    print(table_text(result.columns, result.rows))
    for table in result.tables:
        print(f"\n{table.title}\n")
        print(table_text(table.columns, table.rows))
    if result.targets:
        print()
        for target in result.targets:
            mark = "met" if target.met else "NOT met"
            print(f"target {target.name}: {target.goal}; measured {target.measured}: {mark}")
    for note in result.notes:
        print(f"note: {note}")


def main(
    name: str,
    run: Callable[[argparse.Namespace], Result],
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    description: str = "",
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    parser.add_argument(
        "--smoke", action="store_true", help="a short run that checks the benchmark works"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="directory for the JSON result (bench/results)"
    )
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    # A benchmark stopped with SIGTERM (a timeout) still stops its processes and containers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_file_limit()
    started = time.monotonic()
    result = run(args)
    print_result(result)
    path = write_result(result, args.out, args.smoke, started)
    print(f"\nresult written to {path}")


# --- processes -----------------------------------------------------------------------


def raise_file_limit() -> None:
    """Hundreds of connections need more descriptors than some shells allow by default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {last!r}")
        time.sleep(interval)


@dataclass
class Proc:
    """A child process (a `cube` command, usually) logging to a file."""

    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{shlex.join(self.args[:4])} exited:\n{tail}")

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return _status_kb(self.pid, "VmHWM") / 1024


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU time a process (this one by default) has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Cluster:
    """Real `cube worker` and `cube manager` processes on loopback, as `cube up` starts them."""

    workdir: Path
    workers: list[tuple[Proc, str]] = field(default_factory=list)  # (process, address)
    manager: Proc | None = None
    manager_url: str = ""
    worker_names: list[str] = field(default_factory=list)

    def start_worker(self, name: str, *extra: str) -> str:
        port = free_port()
        proc = Proc(
            [
                *CUBE,
                "worker",
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
                "-n",
                name,
                "--data-dir",
                str(self.workdir),
                "--log-level",
                "warning",
                *extra,
            ],
            self.workdir / f"{name}.log",
        ).start()
        address = f"127.0.0.1:{port}"
        self.workers.append((proc, address))
        self.worker_names.append(name)
        return address

    def wait_workers(self, timeout: float = 60.0) -> None:
        for proc, address in self.workers:

            def ready(proc: Proc = proc, address: str = address) -> bool:
                proc.check_alive()
                r = httpx.get(f"http://{address}/health", timeout=2)
                return r.status_code == 200 and bool(r.json().get("Docker"))

            wait_for(ready, timeout, f"worker {address}")

    def start_manager(
        self, *extra: str, addresses: list[str] | None = None, env: dict[str, str] | None = None
    ) -> str:
        """Start `cube manager`; ``env`` adds to its environment (another tree's code, say)."""
        port = free_port()
        workers = ",".join(addresses if addresses is not None else [a for _, a in self.workers])
        self.manager = Proc(
            [
                *CUBE,
                "manager",
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
                "--data-dir",
                str(self.workdir),
                "--log-level",
                "warning",
                *extra,
            ],
            self.workdir / "manager.log",
        )
        # The worker list can be long (a thousand simulated workers): pass it by environment.
        self.manager.start(env={**(env or {}), "CUBE_WORKERS": workers})
        self.manager_url = f"http://127.0.0.1:{port}"
        return self.manager_url

    def wait_manager(self, ready_workers: int, timeout: float = 60.0) -> None:
        assert self.manager is not None
        manager = self.manager

        def ready() -> bool:
            manager.check_alive()
            answer = httpx.get(f"{self.manager_url}/nodes", timeout=10)
            if answer.status_code == 503:  # on etcd: not leading yet
                return False
            nodes = answer.json()
            return bool(sum(n["Status"] == "ready" for n in nodes) >= ready_workers)

        wait_for(ready, timeout, "manager and its workers ready", interval=0.1)
        wait_for(lambda: self._followed(ready_workers), timeout, "every worker followed", 0.05)

    def _followed(self, workers: int) -> bool:
        """Whether the manager follows every ready worker's watch stream, and is quiet.

        It polls a worker first and opens its stream once the worker is ready, so a
        thousand streams are still opening for a moment after every worker is ready
        (bench.floor's clock, too, starts once every stream is open). The gauge
        ``cube_nodes_streaming`` counts them, on a manager that has it; then, for
        every manager alike, it must be quiet: less than a twentieth of a core in a
        tenth of a second, so that no run starts with work left from the start-up.
        """
        assert self.manager is not None
        text = httpx.get(f"{self.manager_url}/metrics", timeout=10).text
        found = re.search(r"^cube_nodes_streaming (\S+)$", text, re.MULTILINE)
        if found is not None and float(found.group(1)) < workers:
            return False
        before = self.manager.cpu_seconds()
        time.sleep(0.1)
        return self.manager.cpu_seconds() - before < 0.005

    def stop(self) -> None:
        if self.manager is not None:
            self.manager.stop()
        for proc, _ in self.workers:
            proc.stop()


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"cube-bench-{prefix}-") as tmp:
        yield Path(tmp)


def task_event(image: str, cmd: list[str] | None = None, **task: Any) -> dict[str, Any]:
    """A book-style TaskEvent body for a new task."""
    import uuid

    task_id = str(uuid.uuid4())
    body: dict[str, Any] = {"ID": task_id, "Name": f"bench-{task_id[:8]}", "Image": image}
    if cmd:
        body["Cmd"] = cmd
    body.update(task)
    return {"ID": str(uuid.uuid4()), "State": 2, "Task": body}


def interleaved(systems: dict[str, Callable[[], T]], repeat: int) -> dict[str, list[T]]:
    """Each system measured ``repeat`` times, in turns, A B C then C B A.

    Whatever drifts during a run (an engine that slows down as containers pile up, a
    machine warming up) falls on whatever is measured last; in turns, on whichever comes
    last in each round. Reversing the order every other round (ABBA counterbalancing)
    gives every system the same average place in the sequence, so a steady drift
    cancels out over an even number of rounds.
    """
    runs: dict[str, list[T]] = {name: [] for name in systems}
    for round_ in range(repeat):
        order = list(systems.items())
        if round_ % 2:
            order.reverse()
        for name, measure in order:
            runs[name].append(measure())
    return runs


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]
