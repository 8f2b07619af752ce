"""The simulated cluster: the real manager and real workers, started, crashed, restarted.

Each worker is the real :class:`~cube.worker.worker.Worker` behind its real FastAPI app,
on a :class:`~cube.runtime.simulated.SimulatedRuntime` standing in for that machine's
Docker engine: the engine (and its containers) outlives the worker process, as on a
real machine, so a crashed worker that comes back finds its containers still there.
Its store is SQLite on disk, kept or wiped when it comes back.

The manager is the real :class:`~cube.manager.manager.Manager` on SQLite in the run's
directory: a crash cancels every coroutine it runs at once (what is on disk is what a
SIGKILL leaves) and a restart loads the file through the real recovery code. With
``managers`` above one, they are replicas electing a leader on a simulated etcd
instead (:mod:`cube.sim.leaders`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cube.events import Event
from cube.feasible import Candidates, TaskRequest
from cube.job import JobRecord
from cube.manager.api import create_app as create_manager_app
from cube.manager.backend import Change, SqliteBackend
from cube.manager.manager import Manager
from cube.manager.settings import Settings
from cube.node import Node, NodeRecord
from cube.runtime.simulated import SimulatedRuntime
from cube.scheduler import Epvm, Placement, Scheduler
from cube.sim.leaders import Leaders, Recorder, RecordingFence
from cube.sim.loop import LoopClock
from cube.sim.net import Link
from cube.stats import Stats, StatsSampler
from cube.store import Database
from cube.task import Task, TaskEvent
from cube.transport import InProcessTransport
from cube.worker.api import create_app
from cube.worker.client import WorkerClient
from cube.worker.credentials import Credentials
from cube.worker.join import Joiner, wait_and_run
from cube.worker.metrics import WorkerMetrics
from cube.worker.worker import LABEL_TASK, Capacity, Worker

CORES = 2.0
MEMORY = 1 << 30  # bytes a worker offers

TOKEN = "sim-join-token"
WORKER_TOKEN = "sim-worker-token"  # the -w workers'
SETTINGS = Settings(
    join_token=TOKEN,
    worker_token=WORKER_TOKEN,
    worker_timeout=10.0,
    stats_interval=2.0,
    watch_heartbeat=5.0,
    health_interval=5.0,
    health_grace=2.0,
    health_timeout=1.0,
    restart_backoff=1.0,
    restart_backoff_max=8.0,
)


class FixedSampler(StatsSampler):
    """Machine figures that are the same in every run (a real sampler reads /proc)."""

    def sample(self) -> Stats:
        self._latest = Stats(task_count=self._task_count(), cores=int(CORES))
        return self._latest


class CrashingBackend(SqliteBackend):
    """SQLite with a crash that can be armed at a commit: before it reaches the disk,
    or just after (the caller never hears that it did)."""

    def __init__(self, path: Path, crash: Callable[[], None]) -> None:
        super().__init__(path)
        self.crash = crash
        self.armed: tuple[int, bool] | None = None  # (commits from now, after the write)
        self.dead = False

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        if self.dead:
            raise asyncio.CancelledError  # a killed process writes nothing more
        if self.armed is None:
            return await super().commit(changes, events, stream)
        left, after = self.armed
        if left > 0:
            self.armed = (left - 1, after)
            return await super().commit(changes, events, stream)
        self.armed = None
        if after:
            await super().commit(changes, events, stream)
        self.dead = True
        self.crash()
        raise asyncio.CancelledError

    async def save_job(self, record: JobRecord) -> None:
        if self.dead:
            raise asyncio.CancelledError
        await super().save_job(record)

    async def save_nodes(self, records: Sequence[NodeRecord]) -> None:
        if self.dead:
            raise asyncio.CancelledError
        await super().save_nodes(records)

    async def delete_node(self, name: str) -> None:
        if self.dead:
            raise asyncio.CancelledError
        await super().delete_node(name)


@dataclass
class SimWorker:
    name: str
    runtime: SimulatedRuntime
    link: Link
    db: Path
    worker: Worker | None = None
    # A worker that joins (``cube worker --join``) rather than one given with ``-w``:
    # it registers and heartbeats over ``uplink``, its path to the manager.
    joins: bool = False
    uplink: Link | None = None
    heartbeats: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.worker is not None

    def running(self) -> dict[uuid.UUID, int]:
        """Running containers per task on this machine, whatever the worker thinks."""
        counts: dict[uuid.UUID, int] = {}
        for info in self.runtime.containers:
            if info.running and LABEL_TASK in info.labels:
                task = uuid.UUID(info.labels[LABEL_TASK])
                counts[task] = counts.get(task, 0) + 1
        return counts


@dataclass
class World:
    root: Path
    workers: list[SimWorker]
    clock: LoopClock = field(default_factory=LoopClock)
    manager: Manager | None = None
    backend: CrashingBackend | None = None
    health: HealthEndpoints | None = None
    restart_after: float = 0.0  # how long an armed crash keeps the manager down
    scheduler: Watched = field(default_factory=lambda: Watched(Epvm()))
    leaders: Leaders | None = None  # several managers, electing one (None: one manager)
    _restart: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        root: Path,
        count: int,
        links: Callable[[str], Link],
        joining: int = 0,
        managers: int = 1,
    ) -> World:
        """``joining``: how many of the ``count`` workers (the last ones) join;
        ``managers``: more than one, and they elect a leader on a simulated etcd."""
        clock = LoopClock()
        workers = []
        for index in range(count):
            name = f"w{index + 1}:5556"
            runtime = SimulatedRuntime(now=clock.now)
            w = SimWorker(name, runtime, links(name), root / f"worker-{index + 1}.db")
            if index >= count - joining:
                w.joins, w.uplink = True, links(f"{name}/up")
            workers.append(w)
        world = cls(root, workers, clock)
        world.health = HealthEndpoints(world)
        if managers > 1:
            world.leaders = Leaders(world, managers)
        return world

    # --- workers ----------------------------------------------------------------------

    async def start_worker(self, w: SimWorker, *, keep_store: bool = True) -> None:
        if w.worker is not None:
            return
        term = w.db.with_suffix(".term")  # the newest term it took, kept as cube worker does
        if not keep_store:
            w.db.unlink(missing_ok=True)
            term.unlink(missing_ok=True)
        store = Database(w.db).store("tasks", Task)
        # Its metrics time engine calls and requests on virtual time, as the manager's do.
        metrics = WorkerMetrics(self.clock)
        worker = Worker(
            w.name, store, w.runtime, concurrency=4, reconcile_interval=15.0, metrics=metrics
        )
        sampler = FixedSampler(task_count=worker.running_count, interval=3600)
        capacity = Capacity(cores=CORES, memory=MEMORY, disk=1 << 40)
        # As in real life: only the manager's credential for this worker commands it.
        credentials = Credentials(self.secret(w) if w.joins else WORKER_TOKEN)
        fence = RecordingFence(term) if self.leaders is not None else None
        app = create_app(worker, sampler, capacity, credentials=credentials, fence=fence)
        await worker.start()
        w.worker = worker
        if self.leaders is not None and fence is not None:
            w.link.attach(InProcessTransport(Recorder(app, w.name, fence, self.leaders)))
        else:
            w.link.attach(InProcessTransport(app))
        if w.joins:
            self._join(w)

    def _join(self, w: SimWorker) -> None:
        assert w.uplink is not None
        registration = {"Name": w.name, "Api": f"http://{w.name}", "Secret": self.secret(w)}
        managers = "http://manager"
        if self.leaders is not None:  # it knows them all, and tries the next when one fails
            managers = ",".join(m.address for m in self.leaders.managers)
            w.uplink.attach(self.leaders.router)
        joiner = Joiner(managers, TOKEN, registration, clock=self.clock, transport=w.uplink)
        w.heartbeats = asyncio.create_task(wait_and_run(joiner))

    async def crash_worker(self, w: SimWorker) -> None:
        """The process dies: its loops stop mid-step, its connections reset; the engine
        and its containers stay."""
        worker, w.worker = w.worker, None
        if worker is None:
            return
        w.link.attach(None)
        if w.heartbeats is not None:
            w.heartbeats.cancel()
            await asyncio.gather(w.heartbeats, return_exceptions=True)
            w.heartbeats = None
        loops, worker._background = worker._background, []
        for job in loops:
            job.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await worker._checks.close()
        worker.store.close()

    # --- the manager ------------------------------------------------------------------

    @staticmethod
    def secret(w: SimWorker) -> str:
        """A joining worker's credential (fixed, not random: a seed replays exactly)."""
        return f"secret-of-{w.name}"

    def connect(self, url: str, token: str) -> WorkerClient:
        w = next(w for w in self.workers if url.endswith(w.name))
        return WorkerClient(url, httpx.AsyncClient(transport=w.link, timeout=5.0), token)

    def follow_leader(self) -> None:
        """Several managers: the one the user and the invariants talk to is the one
        etcd says leads, if it is up and awake."""
        if self.leaders is not None:
            self.manager = self.leaders.leader()

    async def start_manager(self) -> None:
        if self.leaders is not None:
            for m in self.leaders.managers:
                self.leaders.thaw(m)
                await self.leaders.start(m)
            return
        if self.manager is not None:
            return
        self.backend = CrashingBackend(self.root / "manager.db", self._crash_now)
        self.manager = Manager(
            [w.name for w in self.workers if not w.joins],
            self.scheduler,
            self.backend,
            SETTINGS,
            clock=self.clock,
            connect=self.connect,
            health_transport=self.health,
        )
        await self.manager.start()
        api = InProcessTransport(create_manager_app(self.manager))  # its lifespan unused
        for w in self.workers:
            if w.uplink is not None:
                w.uplink.attach(api)

    def _crash_now(self) -> None:
        """An armed crash went off: every coroutine of the manager ends where it stands
        and nothing more reaches its disk; :meth:`crash_manager` clears up after it."""
        if self.manager is not None:
            kill(self.manager)
        for w in self.workers:
            if w.uplink is not None:
                w.uplink.attach(None)  # its API is gone with it

    @property
    def manager_dead(self) -> bool:
        return self.backend is not None and self.backend.dead

    async def bury_manager(self) -> None:
        """After an armed crash went off: clear up, and start again ``restart_after`` on."""
        self.follow_leader()
        if not self.manager_dead:
            return
        await self.crash_manager()

        async def restart() -> None:
            await asyncio.sleep(self.restart_after)
            await self.start_manager()

        self._restart = asyncio.create_task(restart())

    async def crash_manager(self) -> None:
        manager, self.manager, self.backend = self.manager, None, None
        if manager is None:
            return
        for w in self.workers:
            if w.uplink is not None:
                w.uplink.attach(None)
        kill(manager)
        if isinstance(manager.backend, CrashingBackend):
            manager.backend.dead = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await manager.close()

    async def close(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
        if self.leaders is not None:
            await self.leaders.close()
        await self.crash_manager()
        for w in self.workers:
            await self.crash_worker(w)
            await w.runtime.close()


class Watched:
    """The scheduler, watched: a placement on a node that takes no new work is noted
    (the ``placed_where_eligible`` invariant reads it)."""

    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner
        self.misplaced: list[str] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def select_candidates(self, task: TaskRequest, nodes: Sequence[Node]) -> Candidates:
        return self.inner.select_candidates(task, nodes)

    def score(self, task: TaskRequest, candidates: Sequence[Node]) -> dict[str, float]:
        return self.inner.score(task, candidates)

    def pick(self, scores: Mapping[str, float], candidates: Sequence[Node]) -> Node:
        return self.inner.pick(scores, candidates)

    def begin_pass(self, count: int) -> None:
        self.inner.begin_pass(count)

    def place(self, task: TaskRequest, nodes: Sequence[Node]) -> Placement:
        choice = self.inner.place(task, nodes)
        if choice.node is not None and not choice.node.Eligible:
            self.misplaced.append(f"eligible: {str(task.ID)[:8]} placed on {choice.node.Name}")
        return choice


def kill(manager: Manager) -> None:
    """Cancel every coroutine the manager runs, as SIGKILL ends them (a harness's
    reach into its loops and job sets; tests/inprocess.py uses it too)."""
    for job in [*manager._loops, *manager.dispatch.jobs._jobs, *manager.tracker.jobs._jobs]:
        job.cancel()


class HealthEndpoints(httpx.AsyncBaseTransport):
    """Every task's health endpoint, reached over the same links as its worker.

    A probe reaches the container that holds the host port on that machine, if one
    runs; ``failing`` tasks answer 500 and ``slow`` ones not before the probe gives up.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.failing: set[uuid.UUID] = set()
        self.slow: set[uuid.UUID] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host, port = request.url.host, str(request.url.port)
        w = next((w for w in self.world.workers if w.name.split(":")[0] == host), None)
        if w is None or w.link.partition == "refuse":
            raise httpx.ConnectError("no route", request=request)
        read = (request.extensions.get("timeout") or {}).get("read") or 5.0
        if w.link.partition == "blackhole":
            await asyncio.sleep(read)
            raise httpx.ConnectTimeout("no route (partitioned)", request=request)
        for info in w.runtime.containers:
            ports = [b.get("HostPort") for bs in info.host_ports.values() for b in bs]
            if info.running and port in ports:
                task = uuid.UUID(info.labels[LABEL_TASK])
                if task in self.slow:
                    await asyncio.sleep(read)
                    raise httpx.ReadTimeout("endpoint too slow", request=request)
                status = 500 if task in self.failing else 200
                return httpx.Response(status, content=b"ok", request=request)
        raise httpx.ConnectError("connection refused", request=request)
