"""Following the workers: their tasks' changes, their stats, whether they answer.

An effector at the edge: it reads from workers and hands what it learns to the
manager — a worker's tasks through ``observed(node, tasks, complete)``, its liveness,
capacity and engine status into :class:`~cube.manager.state.State`. Whether a silent
worker is lost is not decided here but by the reconciler's clock rule
(:func:`~cube.manager.reconciler.silent_nodes`), from ``last_seen``.

Each worker streams its tasks' changes (``GET /tasks?watch=true``, as Kubernetes'
watch does), so a change is known at once and costs no request of its own. The
stream starts from where the last one left off, or from the whole list at first,
after the worker was away, and every ``resync_interval``; a line at least every
``watch_heartbeat`` seconds shows the worker is alive, and the stream carries the
worker's stats every ``stats_interval`` (less often on a cluster too large for
``max_stats_rate``: :attr:`Tracker.stats_period`). Only a worker whose stream does not
bring stats (an older one, or one whose stream is broken) is polled on ``/stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cube.background import Background
from cube.clock import Clock
from cube.manager.state import State as ClusterState
from cube.task import Task
from cube.worker.client import Deposed, WorkerClient, WorkerRejected, WorkerUnreachable

log = logging.getLogger(__name__)

Observed = Callable[[str, list[Task], bool], Awaitable[None]]
OnDeposed = Callable[[str, Deposed], None]  # (the worker, its answer)


@dataclass
class TrackingSettings:
    poll_interval: float = 1.0
    watch_heartbeat: float = 10.0
    resync_interval: float = 30.0
    stats_interval: float = 2.0
    # Stats per second over the whole cluster (streamed or polled), at most: a large
    # cluster's workers each send theirs less often (1,000 workers: every 5 s), as
    # Nomad caps heartbeats.
    max_stats_rate: float = 200.0
    # A worker must be heard from well within this (see stats_period).
    worker_timeout: float = 10.0
    # A joined worker heartbeats: silent past this (interval plus grace), it is down.
    heartbeat_timeout: float = 3.0


@dataclass
class _Worker:
    name: str
    client: WorkerClient
    last_seen: float
    capacity: dict[str, Any] | None = None
    epoch: str | None = None  # where the stream left off: the worker's epoch, version
    version: int | None = None
    last_full: float = 0.0
    stats_at: float = -1e9  # when the stream last brought stats
    session: asyncio.Future[bool] | None = None  # the stream being followed


class Tracker:
    def __init__(
        self,
        state: ClusterState,
        clients: dict[str, WorkerClient],
        clock: Clock,
        settings: TrackingSettings,
        observed: Observed,
        deposed: OnDeposed | None = None,
    ) -> None:
        """``deposed``: called when a worker says a newer leadership commands it (what
        it reports is then not read: this manager no longer acts on it)."""
        self.state = state
        self.clock = clock
        self.settings = settings
        self.observed = observed
        self.deposed: OnDeposed = deposed or (lambda node, exc: log.warning("%s: %s", node, exc))
        start = clock.monotonic()
        self.workers = {name: _Worker(name, c, last_seen=start) for name, c in clients.items()}
        self.jobs = Background("tracking")
        # When to look for silent workers next (the manager's loop reads and sets it):
        # at once, then at the earliest deadline; at once again when a worker joins.
        self.next_check = start
        self._follows: dict[str, asyncio.Task[None]] = {}
        self._following = False
        self._poking: set[str] = set()
        # Workers whose stream has answered and is being followed (cube_nodes_streaming).
        self.streaming: set[str] = set()

    def deadlines(self) -> dict[str, float]:
        """When each worker is down if not heard from before (see silent_nodes)."""
        s, nodes = self.settings, self.state.nodes
        deadlines = {}
        for name, worker in self.workers.items():
            node = nodes.get(name)
            joined = node is not None and node.Joined
            deadlines[name] = worker.last_seen + (
                s.heartbeat_timeout if joined else s.worker_timeout
            )
        return deadlines

    def loops(self) -> list[Awaitable[None]]:
        return [self._stats_loop(), self._followers()]

    # --- membership -------------------------------------------------------------------

    def add(self, name: str, client: WorkerClient) -> None:
        """Follow a worker that joined, and ask it for its capacity at once."""
        self.workers[name] = worker = _Worker(name, client, last_seen=self.clock.monotonic())
        self.next_check = min(self.next_check, worker.last_seen)  # its deadline counts
        self.state.changed.set()
        if self._following:
            self._follows[name] = asyncio.ensure_future(self._follow(worker))
            self.poke(name)

    def replace(self, name: str, client: WorkerClient) -> None:
        """The worker is reached at a new address: follow it there from its whole list."""
        worker = self.workers[name]
        worker.client, worker.capacity = client, None
        self.lost(name)
        self.poke(name)

    def remove(self, name: str) -> None:
        self.workers.pop(name, None)
        follow = self._follows.pop(name, None)
        if follow is not None:
            follow.cancel()

    def poke(self, name: str) -> None:
        """Poll the worker now (one poll in flight per worker)."""
        if name in self.workers and name not in self._poking:
            self._poking.add(name)

            async def poll() -> None:
                try:
                    await self.poll(name)
                finally:
                    self._poking.discard(name)

            self.jobs.spawn(poll())

    def heard(self, name: str) -> None:
        """A heartbeat (or anything else) came from the worker."""
        worker = self.workers.get(name)
        if worker is not None:
            self._heard(worker)

    async def _followers(self) -> None:
        """Follow every worker, those that join later too, until cancelled."""
        self._following = True
        try:
            for worker in self.workers.values():
                self._follows[worker.name] = asyncio.ensure_future(self._follow(worker))
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            self._following = False
            follows, self._follows = list(self._follows.values()), {}
            for follow in follows:
                follow.cancel()
            await asyncio.gather(*follows, return_exceptions=True)

    # --- the watch stream -------------------------------------------------------------

    async def _follow(self, worker: _Worker) -> None:
        while worker.name in self.workers:
            if worker.name not in self.state.ready:
                worker.epoch = None  # when it is back, start again from the whole list
                await self.clock.sleep(self.settings.poll_interval)
                continue
            worker.session = session = asyncio.ensure_future(self._track(worker))
            try:
                streams = await session
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # shutting down
                continue  # lost meanwhile (see lost): from the whole list once it is back
            except Exception:
                log.exception("tracking %s failed", worker.name)
                streams = False
            _still_wanted()
            if not streams:
                await self.clock.sleep(self.settings.poll_interval)

    def lost(self, name: str) -> None:
        """The worker was declared lost: drop its stream now, even one that still
        hangs on a cut link, so that when it is back its whole list is read at once
        (and the copies moved away meanwhile are stopped), not where it left off."""
        worker = self.workers.get(name)
        if worker is None:
            return
        worker.epoch = None
        if worker.session is not None and not worker.session.done():
            worker.session.cancel()

    async def _track(self, worker: _Worker) -> bool:
        """Fold a worker's stream of changes in; return whether it streams at all."""
        now = self.clock.monotonic()
        full = worker.epoch is None or now - worker.last_full >= self.settings.resync_interval
        since, epoch = (None, None) if full else (worker.version, worker.epoch)
        streams = False
        changes = worker.client.watch(
            since, epoch, self.settings.watch_heartbeat, self.stats_period
        )
        try:
            async with contextlib.aclosing(changes):
                async for answer in changes:
                    if worker.name not in self.state.ready:
                        break  # lost meanwhile: start again from the whole list
                    self._heard(worker)
                    if answer.complete:
                        worker.last_full = worker.last_seen
                    await self.observed(worker.name, answer.tasks, answer.complete)
                    # Only now: a report that failed to fold in is asked for again.
                    worker.epoch, worker.version = answer.epoch, answer.version
                    streams = answer.epoch is not None
                    if streams:
                        self.streaming.add(worker.name)
                    if answer.stats is not None:
                        worker.stats_at = worker.last_seen
                        self._took_stats(worker, answer.stats)
                    if answer.docker is not None:
                        self._docker_is(worker, answer.docker)
                    if worker.last_seen - worker.last_full >= self.settings.resync_interval:
                        break
        except Deposed as exc:
            _still_wanted()
            self.deposed(worker.name, exc)
            return False
        except (WorkerUnreachable, WorkerRejected) as exc:
            _still_wanted()
            log.debug("tracking %s failed: %s", worker.name, exc)
            return False
        finally:
            self.streaming.discard(worker.name)
        return streams

    # --- stats and liveness -----------------------------------------------------------

    @property
    def stats_period(self) -> float:
        """How often each worker's stats are wanted: ``stats_interval``, or longer on a
        cluster so large that this would exceed ``max_stats_rate`` a second (streamed
        or polled, each stats body costs the manager the same to read and apply); but
        at most half the worker timeout, as the stats lines are what shows a quiet
        worker alive between heartbeats."""
        s = self.settings
        spread = min(len(self.workers) / s.max_stats_rate, s.worker_timeout / 2)
        return max(s.stats_interval, spread)

    async def _stats_loop(self) -> None:
        """Poll the stats of workers whose stream does not bring them, spread evenly.

        A round lasts ``stats_interval``, or longer on a cluster so large that this
        would exceed ``max_stats_rate`` polls a second; spreading the polls keeps a
        thousand requests from landing in the same instant.
        """
        in_flight: set[str] = set()

        async def poll(worker: _Worker) -> None:
            try:
                await self.poll(worker.name)
            finally:
                in_flight.discard(worker.name)

        while True:
            workers = list(self.workers.values())  # those that joined meanwhile too
            period = max(self.settings.stats_interval, len(workers) / self.settings.max_stats_rate)
            step = period / max(len(workers), 1)
            started = self.clock.monotonic()
            for index, worker in enumerate(workers):
                streamed = self.clock.monotonic() - worker.stats_at
                if streamed >= 2 * self.stats_period and worker.name not in in_flight:
                    in_flight.add(worker.name)
                    self.jobs.spawn(poll(worker))
                next_at = started + (index + 1) * step
                await self.clock.sleep(next_at - self.clock.monotonic())
            if not workers:
                await self.clock.sleep(period)

    async def poll(self, name: str) -> None:
        """Ask a worker directly for its capacity (first time, or after it was away),
        engine status and stats."""
        worker = self.workers.get(name)
        if worker is None:
            return
        try:
            if worker.capacity is None or name not in self.state.ready:
                worker.capacity = await worker.client.health()
                docker = worker.capacity.get("Docker")
                if isinstance(docker, bool):
                    self._docker_is(worker, docker)
            stats = await worker.client.stats()
        except Deposed as exc:
            self.deposed(name, exc)
            return
        except (WorkerUnreachable, WorkerRejected) as exc:
            log.debug("polling %s failed: %s", name, exc)
            return
        self._heard(worker)
        self._took_stats(worker, stats)

    def _heard(self, worker: _Worker) -> None:
        worker.last_seen = self.clock.monotonic()

    def _took_stats(self, worker: _Worker, stats: dict[str, Any]) -> None:
        node = self.state.nodes.get(worker.name)
        if node is None or self.workers.get(worker.name) is not worker:
            return  # removed meanwhile
        node.apply_stats(stats)
        capacity = worker.capacity or {}
        for attr in ("Cores", "Memory", "Disk"):
            value = capacity.get(attr)
            if isinstance(value, int | float) and value > 0:
                setattr(node, attr, int(value))
        if worker.name not in self.state.ready:
            log.info("worker %s is ready", worker.name)
            self.state.node_ready(worker.name)

    def _docker_is(self, worker: _Worker, ok: bool) -> None:
        """Tasks already there stay: the worker starts them when its engine is back."""
        if self.state.docker_is(worker.name, ok):
            if ok:
                log.info("worker %s: Docker engine answers again", worker.name)
            else:
                log.warning("worker %s: Docker engine unavailable, placing none", worker.name)

    async def close(self) -> None:
        await self.jobs.close()


def _still_wanted() -> None:
    """Raise CancelledError if this task is being cancelled.

    A cancel of a task that awaits another is handed to that one; if it ends some
    other way (here: the stream's close failed under the cancel, and that failure
    became WorkerUnreachable), the cancel is lost and the waiting task runs on. The
    simulator found a manager that could never stop so (seed 613: its follower
    started a new watch, again and again, for ever).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
