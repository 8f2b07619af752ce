"""Helpers for tests that run real Cube processes against a real Docker engine.

Nothing here sleeps for a fixed time: every wait polls a condition against a deadline
and fails with what it last saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import docker
import docker.utils
import httpx

# One etcd starter for the tests and the benchmarks (re-exported: tests import it from here).
from bench.etcd import ETCD as ETCD
from bench.etcd import EtcdCluster as EtcdCluster
from bench.etcd import EtcdProcess as EtcdProcess

ROOT = Path(__file__).resolve().parent.parent
CUBE = [sys.executable, "-m", "cube"]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value seen
    (and ``detail()``, when given, to show the state that did not converge)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc  # not up yet: keep polling, report it if time runs out
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or check}: {last!r}{extra}"
            )
        time.sleep(interval)


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 15 s."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Process:
    """A `cube` subcommand running as a real child process, logging to a file."""

    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*CUBE, *self.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        out.close()
        return self

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class WorkerProcess(Process):
    name: str = ""
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        def ready() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.output()}")
            r = httpx.get(f"{self.url}/health", timeout=2)
            return r.status_code == 200 and bool(r.json().get("Docker"))

        def why() -> str:
            """The usual cause named: a worker answers, but its Docker engine does not."""
            try:
                health = httpx.get(f"{self.url}/health", timeout=2).json()
            except (httpx.HTTPError, ValueError) as exc:
                return f"/health: {exc!r}"
            if health.get("Docker") is False:
                return f"the worker cannot reach Docker (is dockerd running?): {health}"
            return f"/health: {health}"

        wait_for(ready, timeout, what=f"worker {self.name} ready", detail=why)
        return self


def worker_process(
    tmp: Path, *extra: str, name: str | None = None, port: int | None = None
) -> WorkerProcess:
    """A worker not started yet: start it, register it for clean-up, then wait_ready()."""
    name = name or f"test-{uuid.uuid4().hex[:8]}"
    port = port or free_port()
    args = [
        "worker",
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
        "-n",
        name,
        "--data-dir",
        str(tmp),
        "--reconcile-interval",
        "1",
        *extra,
    ]
    return WorkerProcess(args=args, log=tmp / f"{name}.log", name=name, port=port)


def containers_of(worker_name: str, all: bool = True) -> list[Any]:
    client = docker.from_env()
    try:
        return list(
            client.containers.list(all=all, filters={"label": f"cube.worker={worker_name}"})
        )
    finally:
        client.close()


def remove_containers(worker_name: str) -> None:
    """Remove a worker's containers, several at a time: one by one, the 200 of a chaos
    test took half a minute of its teardown."""
    ids = [c.id for c in containers_of(worker_name)]
    if not ids:
        return
    api = docker.APIClient(max_pool_size=8, **docker.utils.kwargs_from_env())

    def remove(container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(container_id, force=True)

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(remove, ids))
    finally:
        api.close()


def task_event(image: str = "cube/http:latest", **task: Any) -> dict[str, Any]:
    """A book-style TaskEvent body."""
    task_id = str(uuid.uuid4())
    body: dict[str, Any] = {"ID": task_id, "Name": f"t-{task_id[:8]}", "State": 1, "Image": image}
    body.update(task)
    return {"ID": str(uuid.uuid4()), "State": 2, "Task": body}


@dataclass
class ManagerProcess(Process):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """The management token it was started with (``--token``), as a header."""
        if "--token" in self.args:
            return {"Authorization": f"Bearer {self.args[self.args.index('--token') + 1]}"}
        return {}

    def wait_ready(self, workers: int = 0, timeout: float = 30.0) -> ManagerProcess:
        """Wait until the API answers and ``workers`` nodes are ready."""

        seen: list[str] = []

        def ready() -> bool:
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"manager exited early:\n{self.output()}")
            answer = httpx.get(f"{self.url}/nodes", timeout=2, headers=self.headers)
            seen[:] = [f"GET /nodes: {answer.status_code} {answer.text[:500]}"]
            if answer.status_code == 503:  # on etcd: not leading yet (an election)
                return False
            nodes = answer.json()
            return sum(n["Status"] == "ready" for n in nodes) >= workers

        def detail() -> str:
            tail = "\n".join(self.output().splitlines()[-40:])
            return f"{''.join(seen)}\nthe manager's log, last lines:\n{tail}"

        wait_for(ready, timeout, what="manager ready", detail=detail)
        return self

    def tasks(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/tasks", timeout=5, headers=self.headers)
        return answer.json()  # type: ignore[no-any-return]

    def task(self, task_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/tasks/{task_id}", timeout=5, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/tasks", json=body, timeout=10, headers=self.headers)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def wait_task(
        self,
        task_id: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float = 30,
        what: str = "",
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            task = self.task(task_id)
            return task if check(task) else None

        return wait_for(probe, timeout, what=what or f"task {task_id}")


def manager_process(
    tmp: Path, workers: list[WorkerProcess], *extra: str, port: int | None = None
) -> ManagerProcess:
    port = port or free_port()
    addresses = ",".join(w.address for w in workers)
    args = [
        "manager",
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        addresses,
        "--data-dir",
        str(tmp),
        "--poll-interval",
        "0.2",
        "--stats-interval",
        "0.2",
        *extra,
    ]
    return ManagerProcess(args=args, log=tmp / f"manager-{port}.log", port=port)


def cube_env(manager: ManagerProcess | str | None = None, **env: str) -> dict[str, str]:
    """The environment `cube` gets from a user's shell: none of the caller's CUBE_*
    variables (a developer's CUBE_MANAGER or CUBE_TOKEN would change what a test
    means), no colour, ``manager`` as CUBE_MANAGER, then ``env`` over all of it.

    A manager started with ``--token`` gets no CUBE_TOKEN from here: tests of tokens
    need the CLI without one, so a test that wants it passes ``CUBE_TOKEN=...``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CUBE_")}
    if manager is not None:
        clean["CUBE_MANAGER"] = manager if isinstance(manager, str) else manager.url
    return {**clean, "NO_COLOR": "1", **env}


def cube(
    *args: str,
    manager: ManagerProcess | str | None = None,
    stdin: str = "",
    timeout: float = 90,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run `cube ARGS` to its end as a user would (see :func:`cube_env`), from the
    repository root, ``stdin`` as its input; the result is for :func:`ok` or
    :func:`one_line_error` to judge."""
    return subprocess.run(
        [*CUBE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cube_env(manager, **env),
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """A command that worked: exit 0. Its stdout, for the test to read."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The contract for every user error: exit 1, exactly one stderr line, starting
    ``cube: ``, and no traceback anywhere. That line, for the test to read."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cube: "), result.stderr
    return lines[0]


async def eventually(
    check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """``wait_for`` for in-process async tests: poll ``check`` while the loop runs."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or check}: {value!r}"
            )
        await asyncio.sleep(interval)


class EngineProxy:
    """A unix-socket relay to the real engine that can vanish and come back.

    It stands in for a dockerd restart without disturbing anything else on the engine.
    """

    def __init__(self, path: str, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target = path, target
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_unix_server(self._relay, self.path)

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()
        os.unlink(self.path)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


class ThreadedEngineProxy:
    """An :class:`EngineProxy` served by a loop of its own, for tests that are not async
    (a ``cube worker`` process reaches the engine through it: ``DOCKER_HOST``)."""

    def __init__(self, path: str) -> None:
        self.proxy = EngineProxy(path)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"unix://{self.proxy.path}"

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.up(), self.loop).result(10)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.down(), self.loop).result(10)

    def close(self) -> None:
        if self.proxy.server is not None and self.proxy.server.is_serving():
            self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
