"""Many simulated workers in one process, for measuring the manager at scale.

Kubernetes measures its control plane against kubemark's hollow nodes; this is Cube's
equivalent. Every worker here is the real thing — a :class:`~cube.worker.worker.Worker`
behind the real FastAPI app of :mod:`cube.worker.api`, with its own store, queue and
consumers — except that its containers live in a
:class:`~cube.runtime.simulated.SimulatedRuntime`. One uvicorn server listens on one
port per worker and hands each connection to the app of the port it arrived on, so a
manager sees ``count`` separate workers at ``127.0.0.1:<port>``.

Run it as ``python -m cube.worker.fleet --count 1000 --addresses-file workers.txt``;
it writes the workers' addresses (comma-separated, ready for ``cube manager -w``) once
every port is listening, and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from cube.config import setup_logging, tune_gc
from cube.runtime.simulated import SimulatedRuntime
from cube.stats import Stats, StatsSampler
from cube.store import MemoryStore
from cube.task import Task, parse_size
from cube.worker.api import create_app
from cube.worker.worker import Capacity, Worker

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _SharedSampler(StatsSampler):
    """One machine sample shared by every worker, each with its own TaskCount.

    The hollow workers all live on this machine: sampling /proc once per worker would
    measure the same thing a thousand times over and load the very CPU being measured.
    """

    def __init__(self, machine: StatsSampler, task_count: Callable[[], int]) -> None:
        super().__init__(task_count=task_count, interval=machine.interval)
        self._machine = machine

    def sample(self) -> Stats:
        return self._machine.current()

    def current(self) -> Stats:
        return self._machine.current().model_copy(update={"task_count": self._task_count()})

    async def run(self) -> None:
        return  # the fleet samples the machine once for everybody


class Fleet:
    """An ASGI app that routes each request to the worker app owning its local port."""

    def __init__(
        self,
        count: int,
        *,
        name_prefix: str = "sim",
        start_latency: float = 0.0,
        concurrency: int = 4,
        capacity: Capacity | None = None,
        reconcile_interval: float = 5.0,
        stats_interval: float = 2.0,
    ) -> None:
        self.capacity = capacity or Capacity(cores=4, memory=16 * 1024**3, disk=100 * 1024**3)
        self.machine = StatsSampler(interval=stats_interval)
        self.sockets: list[socket.socket] = []
        self.apps: dict[int, FastAPI] = {}
        self.workers: dict[int, Worker] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        for index in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.set_inheritable(True)
            port = int(sock.getsockname()[1])
            worker = Worker(
                f"{name_prefix}-{index}",
                MemoryStore[Task](),
                SimulatedRuntime(start_latency),
                concurrency=concurrency,
                reconcile_interval=reconcile_interval,
            )
            sampler = _SharedSampler(self.machine, worker.running_count)
            self.sockets.append(sock)
            self.workers[port] = worker
            self.apps[port] = create_app(worker, sampler, self.capacity)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.apps]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        server = scope.get("server") or ("", 0)
        app = self.apps.get(int(server[1]))
        if app is None:
            raise RuntimeError(f"no simulated worker on port {server[1]}")
        path = scope.get("path", "")
        self.requests[
            f"{scope.get('method', '')} {'/tasks' if path.startswith('/tasks') else path}"
        ] += 1
        await app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async with contextlib.AsyncExitStack() as stack:
            message = await receive()
            assert message["type"] == "lifespan.startup"
            try:
                for app in self.apps.values():
                    await stack.enter_async_context(app.router.lifespan_context(app))
                    await _warm(app)
                sampling = asyncio.create_task(self.machine.run())
                stack.callback(sampling.cancel)
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            # What the manager asked of the workers, for the benchmark's report.
            log.warning("requests served: %s", json.dumps(dict(self.requests)))
        await send({"type": "lifespan.shutdown.complete"})


async def _warm(app: FastAPI) -> None:
    """Send the app an empty batch (``POST /tasks`` with ``[]``), which changes nothing.

    A web framework does some work on the first request an endpoint serves (FastAPI
    reads the endpoint's source for its error context: a millisecond). A real worker
    pays it once, on its own machine, before anybody measures; a thousand simulated
    ones in one process would pay it a thousand times during the benchmark, on the
    cores the manager being measured needs.
    """
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/tasks",
        "raw_path": b"/tasks",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"[]", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    if status != 201:
        raise RuntimeError(f"warming a simulated worker: POST /tasks answered {status}")


def _raise_file_limit() -> None:
    """Each worker needs a listening socket, and each manager connection another."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cube.worker.fleet", description="Serve many simulated Cube workers."
    )
    parser.add_argument("--count", type=int, default=100, help="how many workers")
    parser.add_argument("--addresses-file", type=Path, required=True)
    parser.add_argument("--name-prefix", default="sim")
    parser.add_argument("--start-latency", type=float, default=0.0, help="seconds per start")
    parser.add_argument("--concurrency", type=int, default=4, help="starts at once per worker")
    parser.add_argument("--cpus", type=float, default=4.0, help="cores each worker offers")
    parser.add_argument("--memory", default="16GiB", help="memory each worker offers")
    parser.add_argument("--disk", default="100GiB", help="disk each worker offers")
    parser.add_argument("--reconcile-interval", type=float, default=5.0)
    parser.add_argument("--stats-interval", type=float, default=2.0)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    setup_logging(args.log_level)
    _raise_file_limit()
    fleet = Fleet(
        args.count,
        name_prefix=args.name_prefix,
        start_latency=args.start_latency,
        concurrency=args.concurrency,
        capacity=Capacity(
            cores=args.cpus, memory=parse_size(args.memory), disk=parse_size(args.disk)
        ),
        reconcile_interval=args.reconcile_interval,
        stats_interval=args.stats_interval,
    )
    config = uvicorn.Config(
        fleet,
        log_level=args.log_level,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=75,  # as cube.config.serve
        backlog=4096,
    )
    server = uvicorn.Server(config)
    tune_gc()  # as `cube worker` does (cube.config.serve)

    async def serve() -> None:
        # Announce the addresses only once every port accepts connections.
        serving = asyncio.create_task(server.serve(sockets=fleet.sockets))
        while not server.started:
            if serving.done():
                await serving
                return
            await asyncio.sleep(0.05)
        tmp = args.addresses_file.with_suffix(".tmp")
        tmp.write_text(",".join(fleet.addresses))
        os.replace(tmp, args.addresses_file)
        log.info("serving %d simulated workers", len(fleet.apps))
        await serving

    try:
        import uvloop  # uvicorn's own choice when it runs the loop itself

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
