"""Several managers on one simulated etcd: elected, killed, frozen, cut off from etcd.

Each manager is a real :class:`~cube.manager.replica.Replica` (its real
:class:`~cube.manager.leader.Elector` over :class:`~cube.manager.leader.EtcdLeases`,
and, while it leads, a real :class:`~cube.manager.manager.Manager` on a real
:class:`~cube.manager.etcd_backend.EtcdBackend` fenced by its term), all of them on
:mod:`cube.sim.store` and run as separate processes would be: every coroutine of a
manager carries its name (:data:`cube.sim.loop.OWNER`), so that a **crash** cancels
all of them at once (a SIGKILL: no lease is revoked, nothing more reaches etcd or a
worker), and a **freeze** holds all of them (a SIGSTOP, a long pause) until it is
thawed, when the timers that came due meanwhile run at once: a stale leader waking up.

Every request a worker gets from a manager is recorded (which manager, which term, and
what the worker answered), for the invariants of :mod:`cube.sim.terms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI

from cube.manager.api import Leadership
from cube.manager.api import create_app as create_manager_app
from cube.manager.backend import Backend, Fence
from cube.manager.etcd_backend import EtcdBackend
from cube.manager.leader import Elector, EtcdLeases
from cube.manager.manager import Manager
from cube.manager.replica import Replica
from cube.sim.loop import OWNER, VirtualLoop
from cube.sim.store import SimClient, SimConnection, SimEtcd
from cube.transport import InProcessTransport
from cube.worker.client import WorkerClient
from cube.worker.fencing import Fence as WorkerFence

if TYPE_CHECKING:
    from cube.sim.world import World

PREFIX = "/cube/"
LEADER_KEY = f"{PREFIX}leader".encode()
TTL = 5  # the leader's lease, in (virtual) seconds
SENDER = "x-sim-manager"  # which simulated manager sent a request (the recorder's)


@dataclass
class SimManager:
    name: str  # "m1": also its coroutines' owner
    replica: Replica | None = None
    manager: Manager | None = None  # while it leads (or believes it does)
    client: SimClient | None = None
    serving: asyncio.Task[None] | None = None
    reachable: asyncio.Event = field(default_factory=asyncio.Event)  # up and not frozen

    @property
    def address(self) -> str:
        return f"http://{self.name}:7000"

    @property
    def up(self) -> bool:
        return self.replica is not None

    @property
    def frozen(self) -> bool:
        return self.up and not self.reachable.is_set()


@dataclass(frozen=True)
class Received:
    """A request a worker got from a manager, and what became of it."""

    worker: str
    sender: str
    term: int
    method: str
    path: str
    status: int
    newest: int  # the newest term the worker had taken when it arrived


class RecordingFence(WorkerFence):
    """The worker's own fence, and the newest term it ever took (a fence that went
    back to an older term still shows the newer one here)."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path)
        self.newest = self.term or 0

    def admit(self, term: int) -> bool:
        new = super().admit(term)
        self.newest = max(self.newest, term)
        return new


class Leaders:
    """The managers of a world in leader mode, their shared etcd, and what workers got."""

    def __init__(self, world: World, count: int) -> None:
        self.world = world
        self.store = SimEtcd()
        self.managers = [SimManager(f"m{i + 1}") for i in range(count)]
        self.received: list[Received] = []  # since the invariants last looked
        self.senders: dict[int, str] = {}  # term -> the manager that sent it first
        self.router = Router(self)

    @property
    def loop(self) -> VirtualLoop:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualLoop)
        return loop

    def by_address(self, host: str) -> SimManager | None:
        return next((m for m in self.managers if m.name == host), None)

    # --- who leads ----------------------------------------------------------------------

    def leader(self) -> Manager | None:
        """The manager that leads as etcd says (it holds the key, in the term it
        builds on), if it is up, awake and serving; None while there is none."""
        held = self.store.keys.get(LEADER_KEY)
        if held is None:
            return None
        for m in self.managers:
            replica = m.replica
            if replica is None or m.frozen or m.address != held.value.decode():
                continue
            if replica.leading is not None and replica.term == held.create_revision:
                return m.manager
        return None

    def leading(self) -> SimManager | None:
        held = self.store.keys.get(LEADER_KEY)
        if held is None:
            return None
        return next((m for m in self.managers if m.address == held.value.decode()), None)

    # --- a manager's life ----------------------------------------------------------------

    async def start(self, m: SimManager) -> None:
        if m.up:
            return
        world = self.world
        client = m.client = SimClient(self.store)
        elector = Elector(EtcdLeases(SimConnection(client)), PREFIX, m.address, TTL, world.clock)

        async def open_backend(fence: Fence) -> Backend:
            backend = EtcdBackend(SimConnection(client), PREFIX, fence)
            await backend._load()
            return backend

        def build(backend: Backend, term: int, step_down: Callable[[], None]) -> FastAPI:
            from cube.sim.world import SETTINGS

            def connect(url: str, token: str) -> WorkerClient:
                w = next(w for w in world.workers if url.endswith(w.name))
                wire = httpx.AsyncClient(transport=Sent(w.link, m, client), timeout=5.0)
                return WorkerClient(url, wire, token, term=term)

            m.manager = Manager(
                [w.name for w in world.workers if not w.joins],
                world.scheduler,
                backend,
                dataclasses.replace(SETTINGS, term=term),
                clock=world.clock,
                connect=connect,
                health_transport=world.health,
                step_down=step_down,
            )
            return create_manager_app(m.manager, Leadership(m.address, term))

        m.replica = Replica(elector, open_backend, build, clock=world.clock, transport=self.router)
        m.reachable.set()
        self.loop.track_owners()
        context = contextvars.copy_context()
        context.run(OWNER.set, m.name)  # every coroutine it makes is its own
        m.serving = self.loop.create_task(_serve(m.replica), context=context)

    async def crash(self, m: SimManager) -> None:
        """SIGKILL: every coroutine ends where it stands; nothing more gets out."""
        if not m.up:
            return
        assert m.client is not None
        m.client.dead = True
        m.replica = m.manager = None
        self.loop.thaw(m.name)
        m.reachable.clear()
        for _ in range(10):  # what a cancelled coroutine starts on its way out goes too
            tasks = self.loop.tasks_of(m.name)
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def freeze(self, m: SimManager) -> None:
        if m.up:
            self.loop.freeze(m.name)
            m.reachable.clear()

    def thaw(self, m: SimManager) -> None:
        if m.up:
            self.loop.thaw(m.name)
            m.reachable.set()

    async def close(self) -> None:
        for m in self.managers:
            await self.crash(m)

    def event_log(self) -> list[str]:
        """The cluster's stored events, in order, as etcd holds them (the trace's end)."""
        start = f"{PREFIX}events/".encode()
        stored = self.store.select(start, start[:-1] + b"0")
        return [f"event {kv.value.decode()}" for kv in stored]

    # --- the fault schedule's steps ----------------------------------------------------

    async def step(self, kind: str, a: dict[str, Any], later: Later) -> str:
        """Carry out a leaders' step; what it did, for the trace."""
        if kind == "etcd_down":
            self.store.fail(a["mode"])
            later(a["for"], self._recover)
            return f"  etcd down ({a['mode']})"
        if kind == "freeze":
            chosen = self.leading() if a["who"] == "leader" else None
            m = chosen or self.managers[int(a["who"] if a["who"] != "leader" else 0) % 3]
            if not m.up or m.frozen:
                return f"  {m.name} is not running"
            self.freeze(m)
            later(a["for"], lambda: self._thaw(m))
            return f"  froze {m.name}"
        if kind == "leader_crash":
            m = self.leading() or self.managers[0]
        else:  # manager_crash: any one
            m = self.managers[a.get("manager", 0) % len(self.managers)]
        if not m.up:
            return f"  {m.name} is down already"
        await self.crash(m)
        later(a["for"], lambda: self.start(m))
        return f"  killed {m.name}"

    async def _recover(self) -> None:
        self.store.recover()

    async def _thaw(self, m: SimManager) -> None:
        self.thaw(m)


Later = Callable[[float, Callable[[], Coroutine[Any, Any, None]]], None]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def _serve(replica: Replica) -> None:
    """The replica's lifespan, as a server runs it; it lasts until cancelled."""
    asked: list[str] = []

    async def receive() -> MutableMapping[str, Any]:
        if not asked:
            asked.append("startup")
            return {"type": "lifespan.startup"}
        await asyncio.Event().wait()  # no clean stop: a crash cancels this
        return {"type": "lifespan.shutdown"}

    async def send(_: MutableMapping[str, Any]) -> None:
        pass

    await replica({"type": "lifespan"}, receive, send)


class Sent(httpx.AsyncBaseTransport):
    """A manager's requests to a worker: marked with who sent them, and carried by the
    worker's link in no manager's context (the worker's handling is the worker's own:
    it is neither frozen nor killed with the sender)."""

    def __init__(self, link: httpx.AsyncBaseTransport, m: SimManager, client: SimClient) -> None:
        self.link = link
        self.m = m
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.client.dead:
            raise httpx.ConnectError("the sending process is dead", request=request)
        request.headers[SENDER] = self.m.name
        delivery = asyncio.get_running_loop().create_task(
            self.link.handle_async_request(request), context=contextvars.Context()
        )
        return await delivery


class Router(httpx.AsyncBaseTransport):
    """Requests to a manager (a joining worker's, a follower's forwards), handled in
    that manager's context: a frozen one answers nothing until thawed."""

    def __init__(self, leaders: Leaders) -> None:
        self.leaders = leaders

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        m = self.leaders.by_address(request.url.host)
        if m is None or m.replica is None:
            raise httpx.ConnectError(f"{request.url.host}: connection refused", request=request)
        if not m.reachable.is_set():
            connect = (request.extensions.get("timeout") or {}).get("connect") or 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(m.reachable.wait(), connect)
            if m.replica is None or not m.reachable.is_set():
                raise httpx.ConnectTimeout(f"{request.url.host}: no answer", request=request)
        context = contextvars.Context()
        context.run(OWNER.set, m.name)
        handling = asyncio.get_running_loop().create_task(
            InProcessTransport(m.replica).handle_async_request(request), context=context
        )
        return await handling


class Recorder:
    """A worker's app, with each request from a manager noted as it is answered."""

    def __init__(self, app: Any, worker: str, fence: RecordingFence, leaders: Leaders) -> None:
        self.app = app
        self.worker = worker
        self.fence = fence
        self.leaders = leaders

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or ())
        sender, term = headers.get(SENDER.encode()), headers.get(b"x-cube-term")
        if scope["type"] != "http" or sender is None or term is None:
            await self.app(scope, receive, send)
            return
        newest = self.fence.newest

        async def noted(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.leaders.received.append(
                    Received(
                        self.worker,
                        sender.decode(),
                        int(term),
                        scope["method"],
                        scope["path"],
                        int(message["status"]),
                        newest,
                    )
                )
            await send(message)

        await self.app(scope, receive, noted)
