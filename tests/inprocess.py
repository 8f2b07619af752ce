"""A whole cluster in one event loop: a real Manager, real Worker apps, no sockets.

Each worker is the real thing (:class:`~cube.worker.worker.Worker` behind its FastAPI
app) on a :class:`~cube.runtime.simulated.SimulatedRuntime`; the manager reaches it
through a :class:`Link` over :class:`~cube.transport.InProcessTransport`, which a test
can cut (requests fail, open watch streams break) and heal. The manager runs on a
:class:`~cube.clock.ManualClock`: worker timeouts and restart backoffs happen when the
test moves time on, not after real seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from cube.clock import ManualClock
from cube.events import Event
from cube.manager.backend import Backend, Change, SqliteBackend
from cube.manager.manager import Manager
from cube.manager.settings import Settings
from cube.runtime.base import ContainerInfo
from cube.runtime.simulated import SimulatedRuntime
from cube.scheduler import Epvm
from cube.sim.world import kill
from cube.stats import StatsSampler
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.transport import InProcessTransport, lifespan
from cube.worker.api import create_app
from cube.worker.client import WorkerClient
from cube.worker.worker import LABEL_TASK, Capacity, Worker

T = TypeVar("T")


class Link(httpx.AsyncBaseTransport):
    """A network link that can be cut: new requests fail to connect, and every response
    body still being read (a watch stream) breaks, as over a real network."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.up = True
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._open: set[_Breakable] = set()

    def cut(self) -> None:
        self.up = False
        for body in list(self._open):
            body.broken.set()

    def freeze(self) -> None:
        """Packets stop but connections stay: requests and open streams hang until
        :meth:`heal`, then go on where they were (a stream that outlived the fault)."""
        self.flowing.clear()

    def heal(self) -> None:
        self.up = True
        self.flowing.set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("link is down", request=request)
        await self.flowing.wait()
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        body = _Breakable(response.stream, self)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=body,
            request=request,
            extensions=response.extensions,
        )


class _Breakable(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, link: Link) -> None:
        self.inner = inner
        self.link = link
        self.broken = asyncio.Event()
        link._open.add(self)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self.inner.__aiter__()
        while True:
            nxt = asyncio.ensure_future(chunks.__anext__())
            broken = asyncio.ensure_future(self.broken.wait())
            try:
                await asyncio.wait({nxt, broken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                broken.cancel()
                if not nxt.done() or self.broken.is_set():
                    nxt.cancel()
                    await asyncio.wait({nxt})
                    if not nxt.cancelled():
                        nxt.exception()  # retrieved: it is the link's failure that counts
            if self.broken.is_set():
                raise httpx.ReadError("link is down")
            try:
                chunk = nxt.result()
            except StopAsyncIteration:
                return
            await self.link.flowing.wait()
            yield chunk

    async def aclose(self) -> None:
        self.link._open.discard(self)
        await self.inner.aclose()


class GatedRuntime(SimulatedRuntime):
    """Holds every inspect until the test opens the gate (to force an interleaving),
    and records being closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.closed = False

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        self.waiting += 1
        await self.gate.wait()
        return await super().inspect(container_id)

    async def close(self) -> None:
        self.closed = True
        await super().close()


class FaultyBackend(SqliteBackend):
    """SQLite, and a SIGKILL injected before or after the commit numbered ``crash_at``.

    At that point every coroutine of the manager is cancelled at once (``kill``) and
    nothing is written any more: what is on disk is what a killed process leaves.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits = 0
        self.crash_at: int | None = None
        self.after = False
        self.crashed = False
        self.kill: Callable[[], None] = lambda: None

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        if self.crashed:
            raise asyncio.CancelledError
        self.commits += 1
        if self.commits == self.crash_at and not self.after:
            self._die()
        await super().commit(changes, events, stream)
        if self.commits == self.crash_at and self.after:
            self._die()

    def _die(self) -> None:
        self.crashed = True
        self.kill()
        raise asyncio.CancelledError


@dataclass
class Node:
    name: str
    worker: Worker
    runtime: SimulatedRuntime
    link: Link

    def running(self) -> dict[str, int]:
        """Running containers per task ID."""
        counts: dict[str, int] = {}
        for info in self.runtime.containers:
            if info.running:
                task = info.labels[LABEL_TASK]
                counts[task] = counts.get(task, 0) + 1
        return counts


SETTINGS = Settings(
    worker_timeout=10.0,
    stats_interval=1.0,
    poll_interval=0.5,
    watch_heartbeat=5.0,
    restart_backoff=1.0,
)


@dataclass
class Cluster:
    """Workers that outlive managers: a test may crash a manager and start another."""

    nodes: list[Node]
    clock: ManualClock = field(default_factory=ManualClock)
    manager: Manager | None = None
    term: int | None = None  # the leadership term the manager's clients send
    _apps: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def m(self) -> Manager:
        assert self.manager is not None
        return self.manager

    def connect(self, url: str, token: str = "") -> WorkerClient:
        node = next(n for n in self.nodes if url.endswith(n.name))
        return WorkerClient(url, httpx.AsyncClient(transport=node.link), token, self.term)

    async def start_manager(
        self, backend: Backend, settings: Settings = SETTINGS, *, static: int = -1, **kw: Any
    ) -> Manager:
        """``static``: how many of the workers the manager is given with ``-w`` (the
        others may join); default all of them."""
        names = [n.name for n in self.nodes][: static if static >= 0 else None]
        self.manager = Manager(
            names, Epvm(), backend, settings, clock=self.clock, connect=self.connect, **kw
        )
        await self.manager.start()
        await self.until(lambda: len(self.m.state.ready) == len(names), what="ready")
        return self.manager

    async def crash_manager(self) -> None:
        """Gone without a goodbye: its loops stop, its connections drop; the file stays."""
        if self.manager is not None:
            kill(self.manager)
            await self.manager.close()
            self.manager = None

    async def until(
        self, check: Callable[[], T | None], virtual: float = 120.0, what: str = ""
    ) -> T:
        """Move virtual time on in small steps until ``check`` holds.

        Real time runs too (the workers and the in-process transport run on it), so
        each step also yields to the loop for a moment.
        """
        deadline = time.monotonic() + 30.0
        step = min(0.1, virtual)  # 0: virtual time stands still, only the loop runs
        elapsed = 0.0
        while True:
            value = check()
            if value:
                return value
            if (elapsed + step > virtual + 1e-9 and step) or time.monotonic() > deadline:
                raise AssertionError(f"never happened: {what or check} ({elapsed:.1f} s virtual)")
            await self.clock.advance(step)
            elapsed += step
            await asyncio.sleep(0.002)

    async def settle(self, virtual: float) -> None:
        """Let ``virtual`` seconds pass with everything running."""
        for _ in range(int(virtual / 0.1)):
            await self.clock.advance(0.1)
            await asyncio.sleep(0.002)

    def copies(self) -> dict[str, int]:
        """Running containers per task, over every worker."""
        total: dict[str, int] = {}
        for node in self.nodes:
            for task, n in node.running().items():
                total[task] = total.get(task, 0) + n
        return total

    def task(self, task_id: uuid.UUID) -> Task:
        return self.m.get(task_id)

    async def close(self) -> None:
        await self.crash_manager()
        await self._apps.aclose()


@contextlib.asynccontextmanager
async def cluster(count: int = 2) -> AsyncIterator[Cluster]:
    nodes: list[Node] = []
    stack = contextlib.AsyncExitStack()
    for index in range(count):
        name = f"w{index + 1}:5556"
        runtime = SimulatedRuntime()
        worker = Worker(name, MemoryStore(), runtime, reconcile_interval=3600)
        sampler = StatsSampler(interval=3600, task_count=worker.running_count)
        capacity = Capacity(cores=4, memory=8 * 2**30, disk=100 * 2**30)
        app = create_app(worker, sampler, capacity)
        await stack.enter_async_context(lifespan(app))
        nodes.append(Node(name, worker, runtime, Link(InProcessTransport(app))))
    result = Cluster(nodes, _apps=stack)
    try:
        yield result
    finally:
        await result.close()


def sleeper(**task: Any) -> TaskEvent:
    return TaskEvent(State=State.RUNNING, Task=Task(Image="cube/busybox", **task))
