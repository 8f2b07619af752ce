"""The manager: accepts tasks, and keeps them in the state users asked for.

It is a reconciler, in three kinds of part (docs/architecture.md draws them):

* the **state** (:mod:`cube.manager.state`): every task with its desired and observed
  state, the nodes, reservations; one write path, durable before any API answers;
* the **reconciler** (:mod:`cube.manager.reconciler`, :mod:`cube.manager.observe`):
  pure functions from state and time to actions: place, send, stop, restart at T,
  move off a lost node;
* **effectors** at the edges: :mod:`~cube.manager.dispatch` (sends and stops),
  :mod:`~cube.manager.tracking` (workers' changes, stats, liveness) and
  :mod:`~cube.manager.health` (probes).

This module wires them together. One loop reconciles whatever changed (every commit
marks its tasks) or fell due (a restart's backoff, a silent worker's timeout), places
in slices so the event loop stays responsive, commits the outcome in one write, and
hands the rest to the effectors. Every timer goes through the injected clock, every
worker through the injected ``connect``, so the whole manager runs in-process in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from cube.clock import Clock, SystemClock
from cube.config import log_lines
from cube.manager.auth import Tokens
from cube.manager.backend import Backend
from cube.manager.dispatch import Dispatcher
from cube.manager.events import EventLog, Retention
from cube.manager.health import UNHEALTHY, HealthChecker, HealthSettings
from cube.manager.jobs import Jobs
from cube.manager.membership import HeartbeatSettings, Membership, known_nodes
from cube.manager.metrics import ManagerMetrics
from cube.manager.observe import observe
from cube.manager.placement import place, undo
from cube.manager.reconciler import (
    Action,
    Finish,
    Move,
    Place,
    Policy,
    Restart,
    Send,
    Stop,
    StopCopy,
    Wake,
    reconcile,
    restartable,
    silent_nodes,
)
from cube.manager.settings import Settings
from cube.manager.state import State as ClusterState
from cube.manager.tracking import Tracker, TrackingSettings
from cube.node import Node
from cube.scheduler import Scheduler
from cube.task import (
    InvalidTransition,
    State,
    Task,
    TaskEvent,
    can_transition,
    recorded,
    transition,
)
from cube.tls import https
from cube.worker.client import Deposed, WorkerClient

log = logging.getLogger(__name__)

# Desired states that ask for a task to run (Completed asks for a stop).
_RUN = frozenset({State.PENDING, State.SCHEDULED, State.RUNNING})
# A task as it is accepted: Pending, with no trace of where or how it ran before.
_ACCEPTED: dict[str, Any] = {
    "State": State.PENDING,
    "DesiredState": State.RUNNING,
    "Node": "",
    "ContainerID": "",
    "HostPorts": None,
    "StartTime": None,
    "FinishTime": None,
    "RestartCount": 0,
    "Reason": "",
    "Placement": None,
    "Job": "",  # only a job's own tasks say they are of a job
    "JobVersion": 0,
}
# Tasks reconciled between two looks at the event loop (about 10 ms of work).
SLICE = 256
# Turns of the event loop between two slices: a send the slice queued starts in the
# first and has its request on the wire in the second, so the workers start on a
# burst while the manager still places it.
TURNS = 2
# After a failed commit, the same work is tried again this much later.
RETRY_AFTER = 1.0


class UnknownTask(KeyError):
    """No such task (the API answers 404)."""


class BadRequest(ValueError):
    """A request the manager cannot act on (the API answers 400)."""


Connect = Callable[[str, str], WorkerClient]  # (address, the worker's credential)


class Manager:
    def __init__(
        self,
        workers: Sequence[str],
        scheduler: Scheduler,
        backend: Backend,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        connect: Connect | None = None,
        health_transport: httpx.AsyncBaseTransport | None = None,
        metrics: ManagerMetrics | None = None,
        step_down: Callable[[], None] | None = None,
    ) -> None:
        """``step_down``: called when a worker says a newer term leads (a replica on
        etcd then stops this manager: cube.manager.replica)."""
        self.settings = s = settings or Settings()
        self.scheduler = scheduler
        self.clock: Clock = clock or SystemClock()
        # Its own registry: the simulator and the tests run many managers in one process.
        self.metrics = metrics or ManagerMetrics(self.clock)
        self.backend = backend
        worker_token = s.worker_token if s.worker_token is not None else s.token
        nodes = known_nodes(backend, workers, worker_token or "")
        self.policy = Policy(s.max_restarts, s.restart_backoff, s.restart_backoff_max)
        retention = Retention(count=s.event_retention_count, age=s.event_retention_age)
        self.events = EventLog(backend.stream, self.clock, retention, self.metrics)
        self.state = ClusterState(
            backend, nodes.values(), self.clock.monotonic, self._will_restart, self.events
        )
        connect = connect or (
            lambda url, token: WorkerClient.connect(
                https(url) if s.tls else url,
                s.request_timeout,
                token=token,
                tls=s.tls,
                term=s.term,
            )
        )
        self.clients = {name: connect(node.Api, node.Secret) for name, node in nodes.items()}
        self.dispatch = Dispatcher(
            self.state, self.clients, self.clock, self.report, s.send_concurrency, self._deposed
        )
        tracking = TrackingSettings(
            poll_interval=s.poll_interval,
            watch_heartbeat=s.watch_heartbeat,
            resync_interval=s.resync_interval,
            stats_interval=s.stats_interval,
            max_stats_rate=s.max_stats_rate,
            worker_timeout=s.worker_timeout,
            heartbeat_timeout=s.heartbeat_interval + s.heartbeat_grace,
        )
        self.tracker = Tracker(
            self.state, self.clients, self.clock, tracking, self.observed, self._deposed
        )
        health = HealthSettings(
            interval=s.health_interval,
            grace=s.health_grace,
            timeout=s.health_timeout,
            failures=s.health_failures,
            concurrency=s.health_concurrency,
        )
        self.health = HealthChecker(
            self.state, self.clock, health, self.report, health_transport, self.metrics
        )
        self.tokens = Tokens(backend, s.token)
        self.jobs = Jobs(self.state, backend, self.clock, self._will_restart, self.health.checks_ok)
        self.metrics.watch(self.state, self.jobs, self.tracker.streaming)
        self.members = Membership(
            self.state,
            self.tracker,
            self.dispatch,
            self.clients,
            backend,
            self.clock,
            connect,
            HeartbeatSettings(s.heartbeat_interval, s.heartbeat_grace, s.join_token),
            scheduler=scheduler,
        )
        self._wakes: list[tuple[float, uuid.UUID]] = []  # (monotonic time, task)
        # A failed write: the loop waits until then before its next pass, or a pass
        # that fails at once (etcd refusing) would retry at once, forever.
        self._retry_at = 0.0
        self._loops: list[asyncio.Task[None]] = []
        self._deposed_by: int | None = None  # the newest term a worker named, if any
        self.step_down: Callable[[], None] = step_down or (lambda: None)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loops; the state loaded from the backend is reconciled first thing."""
        # Every node remembered, -w ones too; one write, not one per node.
        await self.backend.save_nodes([node.record() for node in self.state.nodes.values()])
        loops: list[Awaitable[None]] = [
            self._reconcile_loop(),
            self.health.loop(),
            self.events.run(),
            *self.tracker.loops(),
        ]
        self._loops = [asyncio.ensure_future(loop) for loop in loops]

    async def close(self) -> None:
        """Stop the loops first, then what they fed, then the connections and the store."""
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        await self.dispatch.close()
        await self.tracker.close()
        await self.health.close()
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))
        with contextlib.suppress(Exception):  # what was emitted last, if the disk takes it
            await self.events.flush()
        self.backend.close()

    # --- requests -----------------------------------------------------------------------

    def list_tasks(self) -> list[Task]:
        return list(self.state.tasks.values())

    def get(self, task_id: uuid.UUID) -> Task:
        task = self.state.tasks.get(task_id)
        if task is None:
            raise UnknownTask(str(task_id))
        return task

    async def history(self, task_id: uuid.UUID) -> list[TaskEvent]:
        self.get(task_id)
        return await self.backend.history(task_id)

    def nodes(self) -> list[Node]:
        return list(self.state.nodes.values())

    async def submit(self, event: TaskEvent) -> Task:
        """Accept a task: durable before this returns, placed as soon as the loop runs.

        A TaskEvent whose desired state is Completed stops the task instead.
        """
        if event.State is State.COMPLETED:
            return await self.stop(event.Task.ID)
        if event.State not in _RUN:
            raise BadRequest(
                f"a TaskEvent's State must be Scheduled, Running or Completed, "
                f"not {event.State.label}"
            )
        return (await self.submit_many([event]))[0]

    async def submit_many(self, events: Sequence[TaskEvent]) -> list[Task]:
        """Accept several tasks at once, or none: one commit for all of them.

        Every event is checked before anything is stored. A task already known (a
        retried submission) is acknowledged again, as it is, and not stored twice.
        """
        if any(event.State not in _RUN for event in events):
            raise BadRequest(
                "an array of TaskEvents submits tasks: each State must be Scheduled or "
                "Running (stop a task with DELETE or a single TaskEvent)"
            )
        new: dict[uuid.UUID, Task] = {}
        records: list[TaskEvent] = []
        answers: list[Task] = []
        for event in events:
            task = new.get(event.Task.ID) or self.state.tasks.get(event.Task.ID)
            if task is None:
                task = event.Task.model_copy(update=_ACCEPTED)
                new[task.ID] = task
                records.append(event.model_copy(update={"Task": task}))
            answers.append(task)
        await self.state.commit(list(new.values()), records)
        return answers

    async def stop(self, task_id: uuid.UUID) -> Task:
        """Ask for a task to stop: stored on the task, so a crash cannot forget it.

        A Pending task is cancelled at once; the reconciler stops a placed one through
        the worker that runs it; a Failed one is not restarted again.
        """
        task = self.get(task_id)
        stopped = await self.state.ask_to_stop([task], "cancelled before placement")
        return stopped[0] if stopped else task

    def _will_restart(self, task: Task) -> bool:
        return restartable(task, self.policy)

    # --- what effectors report -------------------------------------------------------------

    async def report(self, task: Task, state: State, reason: str) -> None:
        """An effector learned how an incarnation ended (refused, unhealthy, never
        delivered): record it, unless the task moved on meanwhile."""
        current = self.state.tasks.get(task.ID)
        if (
            current is None
            or current.RestartCount != task.RestartCount
            or current.Node != task.Node
            or not can_transition(current.State, state)
            or current.State is state
        ):
            return
        if current.DesiredState is State.COMPLETED and state is State.FAILED:
            state, reason = State.COMPLETED, "stopped on request"  # whatever ended it
        log.info("task %s: %s (%s)", task.ID, state.label, reason)
        await self.state.commit([transition(current, state, reason=reason)])
        failed = state is State.FAILED and current.State is State.RUNNING
        if failed and not restartable(current, self.policy):
            # Unhealthy and not to be restarted: its container is not to run either.
            self.dispatch.stop_copy(current.Node, current)

    async def observed(self, node: str, tasks: list[Task], complete: bool) -> None:
        """A worker reported its tasks: fold them in, and act on what that shows."""
        held = self.state.held_on(node) if complete else ()
        found = observe(self.state.tasks, node, tasks, complete=complete, held=held)
        ours = self.state.tasks
        log_lines(
            log,
            logging.INFO,
            (
                f"task {task.ID}: {task.State.label} on {node}"
                for task in found.changes
                if task.State is not ours[task.ID].State
            ),
        )
        await self.state.commit(found.changes)
        self._carry_out(found.actions)

    def on_deposed(self, node: str, exc: Deposed) -> None:
        """A worker refused this manager's call: a newer leadership (``exc.newest``)
        commands it. The action was dropped; nothing is concluded about the task.
        Override (or assign) to step down; this logs, once per newer term."""
        if self._deposed_by == exc.newest:
            log.debug("worker %s: deposed by term %d: %s", node, exc.newest, exc)
            return
        self._deposed_by = exc.newest
        log.warning(
            "deposed: worker %s takes commands from term %d, not ours (%s)",
            node,
            exc.newest,
            self.settings.term,
        )
        self.step_down()

    def _deposed(self, node: str, exc: Deposed) -> None:
        """What the effectors call: looks ``on_deposed`` up at each call, so that one
        set on the instance after it was made is the one called."""
        self.on_deposed(node, exc)

    # --- reconciling ------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self.clock.wait(self.state.changed, self._until_next())
            self.state.changed.clear()
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile failed")
                await self.clock.sleep(RETRY_AFTER)
            if self._retry_at > self.clock.monotonic():
                await self.clock.sleep(self._retry_at - self.clock.monotonic())

    def _until_next(self) -> float:
        """Seconds until something falls due without anyone saying so."""
        waits = [self.tracker.next_check - self.clock.monotonic()]
        if self._wakes:
            waits.append(self._wakes[0][0] - self.clock.monotonic())
        for due in (self.jobs.next_due, self.members.next_due):
            if due is not None:
                waits.append(due - self.clock.monotonic())
        return max(min(waits), 0.0)

    async def reconcile_once(self) -> None:
        mono = self.clock.monotonic()
        silent: list[str] = []
        if self.tracker.next_check <= mono:
            # O(nodes): only when the earliest deadline seen last time has come (or, with
            # every node lost, a worker timeout later: one may be back by then).
            silent, due = silent_nodes(self.tracker.deadlines(), self.state.lost, mono)
            self.tracker.next_check = (
                due if due is not None else mono + self.settings.worker_timeout
            )
        for name in silent:
            log.warning("worker %s is down: not heard from in time", name)
            self.state.node_lost(name)
            self.tracker.lost(name)
        while self._wakes and self._wakes[0][0] <= mono:
            self.state.mark([heapq.heappop(self._wakes)[1]])
        dirty = self.state.take_dirty()
        tasks = self.state.tasks
        self.scheduler.begin_pass(sum(tasks[i].State is State.PENDING for i in dirty))
        for start in range(0, len(dirty), SLICE):
            if start:
                for _ in range(TURNS):  # let sends, requests and reports in between
                    await asyncio.sleep(0)
            some = [tasks[i] for i in dirty[start : start + SLICE]]
            ready, lost, known = self.state.ready, self.state.lost, self.state.nodes
            try:
                actions = reconcile(some, ready, lost, mono, self.policy, self.state.since, known)
                await self.apply(actions)
            except Exception:
                self.state.mark(dirty[start:])  # nothing taken is dropped: tried again
                raise
        await self.apply(await self.members.drain_pass(self.jobs))
        await self.jobs.reconcile()

    async def apply(self, actions: Sequence[Action]) -> None:
        """Carry out one slice of the reconciler's actions: what changes state is
        committed in one write, then the workers are told."""
        finished = [
            transition(a.task, a.state, reason=a.reason) for a in actions if isinstance(a, Finish)
        ]
        wanted = [a for a in actions if isinstance(a, Place | Move | Restart)]
        placements = place(wanted, self.state, self.scheduler)
        placed = placements.placed
        records = recorded(State.SCHEDULED, placed)
        counted = self.metrics.placing(placed, self.state.tasks, self.state.since)
        try:
            # The placements are sent below: no need to reconcile them again.
            settled = {task.ID for task in placed}
            await self.state.commit(
                finished + placements.updated + placed, records, settled=settled
            )
        except Exception:
            log.exception("storing %d placements failed; trying again shortly", len(placed))
            undo(placements, self.state)
            retry = self._retry_at = self.clock.monotonic() + RETRY_AFTER
            for action in actions:
                self._wake(action.task.ID, retry)
            return
        self.metrics.placed(counted)
        for task_id in placements.waiting:
            self.state.wait_for_room(task_id)
        log_lines(log, logging.INFO, (f"task {task.ID}: placed on {task.Node}" for task in placed))
        for task, record in zip(placed, records, strict=True):
            self.state.stop_waiting(task.ID)
            self.dispatch.send(task, event=record)  # the worker gets the stored event
        for action in wanted:
            old = action.task
            unhealthy = isinstance(action, Restart) and old.Reason.startswith(UNHEALTHY)
            drained = isinstance(action, Move) and action.stop_old
            if not (unhealthy or drained):
                continue
            new = self.state.tasks[old.ID]
            if new.RestartCount != old.RestartCount and new.Node != old.Node:
                # A new incarnation (elsewhere, or waiting for room): the old container
                # still runs where it was, and nothing replaces it there, so stop it.
                self.dispatch.stop_copy(old.Node, old)
        self._carry_out(actions)

    def _carry_out(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Place):
                continue  # placed above (a burst's actions are nearly all placements)
            if isinstance(action, Send):
                self.dispatch.send(action.task, again=action.again)
            elif isinstance(action, Stop):
                self.dispatch.stop(action.task)
            elif isinstance(action, StopCopy):
                self.dispatch.stop_copy(action.node, action.task)
            elif isinstance(action, Wake):
                self._wake(action.task.ID, action.at)

    def _wake(self, task_id: uuid.UUID, at: float) -> None:
        heapq.heappush(self._wakes, (at, task_id))
        self.state.changed.set()  # the loop recomputes how long it may sleep


__all__ = ["BadRequest", "InvalidTransition", "Manager", "UnknownTask"]
