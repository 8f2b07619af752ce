"""The manager: accepts tasks, places them, and keeps them in the state users asked for.

The flow, as in the book but event-driven:

* ``submit`` stores the task (Pending) and its event, then wakes the scheduler loop; a
  201 therefore means the task is durable, and placement starts at once.
* The scheduler loop places every Pending task it can (feasibility, score, pick),
  records the placement (Scheduled, on a node) and sends the task to that worker.
  Tasks that fit nowhere stay Pending with the reason, and are retried whenever
  capacity may have appeared (a task finished, a node came back).
* Tracking polls each worker's ``/tasks``: the worker is the source of truth about
  containers, so its state, container and ports are copied here.
* A Failed or unhealthy task is restarted per its RestartPolicy with exponential
  backoff, on the same worker when it is ready, another otherwise.
* A worker that stops answering for ``worker_timeout`` is marked down and its tasks
  are placed elsewhere; if it comes back, the copies it still runs are stopped.

Resource bookkeeping (what each node has been promised) is kept incrementally in
``_placed`` so a decision costs O(nodes), not O(tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

import httpx

from cube.background import Background
from cube.node import DOWN, READY, Node
from cube.scheduler import Scheduler, release, reserve
from cube.store import Store
from cube.task import InvalidTransition, State, Task, TaskEvent, can_transition, transition
from cube.worker.client import WorkerClient, WorkerRejected, WorkerUnreachable

log = logging.getLogger(__name__)

# What the tracker copies from a worker's view of a task.
OBSERVED = ("State", "ContainerID", "HostPorts", "StartTime", "FinishTime", "Reason")
RESTART_ALWAYS = ("always", "unless-stopped")
# Desired states that ask for a task to run (Completed asks for a stop).
_RUN = frozenset({State.PENDING, State.SCHEDULED, State.RUNNING})
# A task as it is accepted: Pending, with no trace of where or how it ran before.
_ACCEPTED: dict[str, Any] = {
    "State": State.PENDING,
    "Node": "",
    "ContainerID": "",
    "HostPorts": None,
    "StartTime": None,
    "FinishTime": None,
    "RestartCount": 0,
    "Reason": "",
}
# Placements made between two looks at the event loop (about 20-50 ms of work).
SCHEDULE_SLICE = 256


class UnknownTask(KeyError):
    """No such task (the API answers 404)."""


class BadRequest(ValueError):
    """A request the manager cannot act on (the API answers 400)."""


@dataclass
class Settings:
    """Every interval is a flag; these are the defaults of `cube manager`."""

    poll_interval: float = 1.0
    # Tracking follows each worker's stream of changes; a worker sends a line at least
    # this often, and the whole list is fetched again every resync_interval.
    watch_heartbeat: float = 10.0
    resync_interval: float = 30.0
    stats_interval: float = 2.0
    # Stats polls per second over the whole cluster, at most: a large cluster's workers
    # are each polled less often (1,000 workers: every 5 s), as Nomad caps heartbeats.
    max_stats_rate: float = 200.0
    health_interval: float = 10.0
    health_grace: float = 5.0
    health_timeout: float = 2.0
    max_restarts: int = 3
    restart_backoff: float = 1.0
    restart_backoff_max: float = 30.0
    worker_timeout: float = 10.0
    request_timeout: float = 5.0
    send_concurrency: int = 64


@dataclass
class Member:
    """A worker in the cluster: the node the scheduler sees plus how to reach it."""

    node: Node
    client: WorkerClient
    last_seen: float = 0.0
    capacity: dict[str, Any] | None = None
    # Where tracking left off: the worker's epoch and version of its last answer.
    epoch: str | None = None
    version: int | None = None
    last_full: float = 0.0
    # Placed tasks waiting to be sent, and whether a send to this worker is under way.
    outbox: list[TaskEvent] = default(default_factory=list)
    sending: bool = False
    stats_at: float = 0.0  # when the watch stream last brought stats


class Manager:
    def __init__(
        self,
        workers: list[str],
        scheduler: Scheduler,
        tasks: Store[Task],
        events: Store[TaskEvent],
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.scheduler = scheduler
        self.tasks = tasks
        self.events = events
        # For health checks; each worker gets a connection pool of its own (see connect).
        self.http = httpx.AsyncClient(
            timeout=self.settings.request_timeout, limits=httpx.Limits(max_connections=100)
        )
        self.members: dict[str, Member] = {}
        for address in workers:
            node = Node.for_worker(address)
            client = WorkerClient.connect(node.Api, self.settings.request_timeout)
            self.members[node.Name] = Member(node, client)
        self._placed: dict[uuid.UUID, str] = {}  # task -> node it holds resources on
        self._placed_on: dict[str, set[uuid.UUID]] = {}  # node -> tasks placed there
        self._pending: dict[uuid.UUID, None] = {}  # insertion-ordered set
        self._stopping: set[uuid.UUID] = set()
        self._stops_in_flight: set[uuid.UUID] = set()
        self._restart_at: dict[uuid.UUID, float] = {}
        self._wake = asyncio.Event()
        self._send_slots = asyncio.Semaphore(self.settings.send_concurrency)
        self._background: list[asyncio.Task[None]] = []
        self._jobs = Background("manager")

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Resume from the store: placements, pending work, stops and restarts in flight."""
        last_event: dict[uuid.UUID, TaskEvent] = {}
        for event in self.events.list():
            last_event[event.Task.ID] = event
        for task in self.tasks.list():
            if task.State is State.PENDING:
                self._pending[task.ID] = None
            elif task.State in (State.SCHEDULED, State.RUNNING) and task.Node:
                self._hold(task)
            latest = last_event.get(task.ID)
            if latest is not None and latest.State is State.COMPLETED:
                self._stopping.add(task.ID)
            elif task.State is State.FAILED:
                self._note_failure(task)
        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [
            self._schedule_loop,
            self._track_loop,
            self._stats_loop,
            self._health_loop,
            self._restart_loop,
        ]
        self._background = [asyncio.create_task(loop()) for loop in loops]
        # Tasks caught between placement and the worker's answer: send again (the
        # worker ignores a repeat), and stops that were asked for but not confirmed.
        for task in self.tasks.list():
            if task.ID in self._stopping and task.State in (State.SCHEDULED, State.RUNNING):
                self._spawn_stop(task)
            elif task.State is State.SCHEDULED and task.Node:
                self._jobs.spawn(self._send(task, again=True))

    async def close(self) -> None:
        await self._jobs.close()
        for job in self._background:
            job.cancel()
        for job in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await self.http.aclose()
        await asyncio.gather(*(m.client.aclose() for m in self.members.values()))

    # --- requests -----------------------------------------------------------------------

    def list_tasks(self) -> list[Task]:
        return self.tasks.list()

    def get(self, task_id: uuid.UUID) -> Task:
        task = self.tasks.get(str(task_id))
        if task is None:
            raise UnknownTask(str(task_id))
        return task

    def history(self, task_id: uuid.UUID) -> list[TaskEvent]:
        self.get(task_id)
        return self.events.list(group=str(task_id))

    def nodes(self) -> list[Node]:
        return [member.node for member in self.members.values()]

    def submit(self, event: TaskEvent) -> Task:
        """Accept a task: durable before this returns, placed as soon as the loop runs.

        A TaskEvent whose desired state is Completed stops the task instead.
        """
        if event.State is State.COMPLETED:
            return self.stop(event.Task.ID)
        if event.State not in _RUN:
            raise BadRequest(
                f"a TaskEvent's State must be Scheduled, Running or Completed, "
                f"not {event.State.label}"
            )
        return self.submit_many([event])[0]

    def submit_many(self, events: Sequence[TaskEvent]) -> list[Task]:
        """Accept several tasks at once, or none: one write to each store for all of them.

        Every event is checked before anything is stored. With ``-d persistent`` a write
        is a SQLite transaction, and a hundred tasks in one request then cost two
        commits rather than two hundred. A task already known (a retried submission)
        is acknowledged again, as it is, and not stored twice.
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
            task = new.get(event.Task.ID) or self.tasks.get(str(event.Task.ID))
            if task is None:
                task = event.Task.model_copy(update=_ACCEPTED)
                new[task.ID] = task
                records.append(event.model_copy(update={"Task": task}))
            answers.append(task)
        if new:
            self.events.put_many((str(event.ID), event) for event in records)
            self.tasks.put_many((str(task.ID), task) for task in new.values())
            self._pending.update(dict.fromkeys(new))
            self._wake.set()
        return answers

    def stop(self, task_id: uuid.UUID) -> Task:
        """Stop a task through the worker that runs it; a Pending one is simply cancelled."""
        task = self.get(task_id)
        self._record(TaskEvent(State=State.COMPLETED, Task=task))
        self._restart_at.pop(task.ID, None)
        if task.State is State.PENDING:
            self._pending.pop(task.ID, None)
            task = self._save(
                transition(task, State.COMPLETED, reason="cancelled before placement")
            )
        elif task.State in (State.SCHEDULED, State.RUNNING):
            self._stopping.add(task.ID)
            self._spawn_stop(task)
        elif task.State is State.FAILED:
            self._stopping.add(task.ID)  # no more restarts
        return task

    def _record(self, event: TaskEvent) -> None:
        self.events.put(str(event.ID), event)

    def _save(self, task: Task) -> Task:
        self.tasks.put(str(task.ID), task)
        if task.State not in (State.SCHEDULED, State.RUNNING):
            self._release(task.ID)
        return task

    # --- resource bookkeeping -------------------------------------------------------------

    def _hold(self, task: Task) -> None:
        self._release(task.ID)
        member = self.members.get(task.Node)
        if member is None:
            return
        reserve(member.node, task)
        self._placed[task.ID] = member.node.Name
        self._placed_on.setdefault(member.node.Name, set()).add(task.ID)

    def _release(self, task_id: uuid.UUID) -> None:
        name = self._placed.pop(task_id, None)
        if name is not None:
            self._placed_on[name].discard(task_id)
        task = self.tasks.get(str(task_id))
        if name is None or task is None:
            return
        release(self.members[name].node, task)
        self._wake.set()  # room appeared: pending tasks may fit now

    # --- scheduling -------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._schedule_pass()
            except Exception:
                log.exception("scheduling pass failed")

    async def _schedule_pass(self) -> None:
        """:meth:`schedule_pending`, a slice at a time, letting other work run between.

        Placing ten thousand tasks takes a second or more; an event loop blocked that
        long would time out its own requests and take silent workers for dead. The
        sends wait for the end of the pass, so that each worker gets one request.
        """
        queue = list(self._pending)
        placed: list[Task] = []
        for start in range(0, len(queue), SCHEDULE_SLICE):
            if start:
                await asyncio.sleep(0)
            placed += self._place(queue[start : start + SCHEDULE_SLICE])
        self._dispatch(placed)

    def schedule_pending(self) -> None:
        """Place every Pending task that fits somewhere; record why the others wait."""
        self._dispatch(self._place(list(self._pending)))

    def _place(self, task_ids: list[uuid.UUID]) -> list[Task]:
        nodes = self.nodes()
        placed: list[Task] = []
        for task_id in task_ids:
            task = self.tasks.get(str(task_id))
            if task is None or task.State is not State.PENDING:
                self._pending.pop(task_id, None)
                continue
            placement = self.scheduler.place(task, nodes)
            if placement.node is None:
                if task.Reason != placement.reason:
                    self.tasks.put(
                        str(task.ID), task.model_copy(update={"Reason": placement.reason})
                    )
                continue
            task = transition(task, State.SCHEDULED).model_copy(
                update={"Node": placement.node.Name}
            )
            self._hold(task)
            self._pending.pop(task_id, None)
            placed.append(task)
        if placed:
            self.tasks.put_many((str(t.ID), t) for t in placed)
        return placed

    def _dispatch(self, placed: list[Task]) -> None:
        """Record and log the placements, and queue them for their workers."""
        events = [TaskEvent(State=State.SCHEDULED, Task=task) for task in placed]
        self.events.put_many((str(event.ID), event) for event in events)
        for event in events:
            log.info("task %s: placed on %s", event.Task.ID, event.Task.Node)
            member = self.members.get(event.Task.Node)
            if member is None:
                continue
            member.outbox.append(event)
            if not member.sending:
                member.sending = True
                self._jobs.spawn(self._drain(member))

    async def _drain(self, member: Member) -> None:
        """Send a worker what was placed on it, one request at a time.

        Whatever is placed there while a request is in flight goes out in the next one,
        so a burst costs a request per worker rather than per task, and a busy manager
        sends bigger batches instead of more requests.
        """
        try:
            while member.outbox:
                batch, member.outbox = member.outbox, []
                await self._send_batch(member, batch)
        finally:
            member.sending = False

    async def _send_batch(self, member: Member, events: list[TaskEvent]) -> None:
        """Hand placed tasks to their worker in one request.

        If that fails, each task is sent on its own, with :meth:`_send`'s checks and
        retries (a worker ignores an event it already has).
        """
        # Only what is still to be sent: a task may have been stopped or moved meanwhile.
        due = [e for e in events if self._placed.get(e.Task.ID) == member.node.Name]
        due = [e for e in due if e.Task.ID not in self._stopping]
        if not due:
            return
        try:
            async with self._send_slots:
                if len(due) == 1:
                    await member.client.submit(due[0])
                else:
                    await member.client.submit_many(due)
            return
        except (WorkerRejected, WorkerUnreachable) as exc:
            log.info("sending %d tasks to %s failed: %s", len(due), member.node.Name, exc)
        for event in due:
            self._jobs.spawn(self._send(event.Task, event))

    async def _send(
        self, task: Task, event: TaskEvent | None = None, *, again: bool = False
    ) -> None:
        """Hand a placed task to its worker, retrying with backoff while it is reachable.

        The history gets one event per placement; sending the same placement ``again``
        (after a restart of the manager, or to a worker that lost it) adds none.
        """
        if event is None:
            event = TaskEvent(State=State.SCHEDULED, Task=task)
            if not again:
                self._record(event)
        delay = 0.2
        while True:
            current = self.tasks.get(str(task.ID))
            if (
                current is None
                or current.Node != task.Node
                or current.RestartCount != task.RestartCount
                or current.State is not State.SCHEDULED
                or task.ID in self._stopping
            ):
                return  # superseded: stopped, moved or already reported
            member = self.members.get(task.Node)
            if member is None:
                return
            try:
                async with self._send_slots:
                    await member.client.submit(event)
                return
            except WorkerRejected as exc:
                if exc.status == 409:
                    return  # it already ran to completion there; tracking records that
                refused = transition(current, State.FAILED, reason=f"worker refused: {exc}")
                self._note_failure(self._save(refused))
                return
            except WorkerUnreachable as exc:
                log.warning("task %s: sending to %s failed: %s", task.ID, task.Node, exc)
                if member.node.Status == DOWN:
                    return  # the down-node handling moves it elsewhere
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _spawn_stop(self, task: Task) -> None:
        """One stop in flight per task, however often the tracker asks for it."""
        if task.ID in self._stops_in_flight:
            return
        self._stops_in_flight.add(task.ID)
        self._jobs.spawn(self._send_stop(task))

    async def _send_stop(self, task: Task) -> None:
        try:
            await self._stop_until_sent(task)
        finally:
            self._stops_in_flight.discard(task.ID)

    async def _stop_until_sent(self, task: Task) -> None:
        delay = 0.2
        while task.ID in self._stopping:
            current = self.tasks.get(str(task.ID))
            if current is None or current.State in (State.COMPLETED, State.FAILED):
                return
            member = self.members.get(current.Node)
            if member is None:
                self._save(transition(current, State.COMPLETED, reason="stopped on request"))
                return
            try:
                await member.client.stop(task.ID)
                return
            except WorkerRejected as exc:
                if exc.status == 404:  # the worker never got it: nothing runs
                    self._save(transition(current, State.COMPLETED, reason="stopped on request"))
                    return
                log.warning("task %s: stop refused by %s: %s", task.ID, current.Node, exc)
                return
            except WorkerUnreachable as exc:
                log.warning("task %s: stop via %s failed: %s", task.ID, current.Node, exc)
                if not member.node.is_ready:
                    return  # marked down: the stop is recorded then, see _worker_lost
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # --- tracking --------------------------------------------------------------------------

    async def _every(self, interval: float, step: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """A periodic loop that survives a failing step (logged) and never spins."""
        while True:
            try:
                await step()
            except Exception:
                log.exception("%s failed", getattr(step, "__name__", step))
            await asyncio.sleep(interval)

    async def _track_loop(self) -> None:
        """One tracker per worker, each a long poll (see :meth:`_track`)."""
        await asyncio.gather(*(self._track_worker(m) for m in self.members.values()))

    async def _track_worker(self, member: Member) -> None:
        while True:
            if member.node.Status != READY:
                member.epoch = None  # when it is back, start again from the full list
                await asyncio.sleep(self.settings.poll_interval)
                continue
            try:
                waited = await self._track(member)
            except Exception:
                log.exception("tracking %s failed", member.node.Name)
                waited = False
            if not waited:
                await asyncio.sleep(self.settings.poll_interval)

    async def _track(self, member: Member) -> bool:
        """Follow a worker's changes as they happen, and fold each into our view.

        The worker streams its tasks' changes (``GET /tasks?watch=true``, as
        Kubernetes' watch does), so a change is known here at once and costs no
        request of its own: polling a thousand workers' task lists every second would
        cost a thousand requests a second. The stream starts from where the last one
        left off, or from the whole list at first, after the worker was down, and every
        ``resync_interval``; a line at least every ``watch_heartbeat`` seconds shows the
        worker is alive, and the stream brings the worker's stats every
        ``stats_interval`` too, so they need no polling of their own. Returns whether
        the worker streams (an older one answers with its list once: then wait
        ``poll_interval`` before asking again).
        """
        now = time.monotonic()
        full = member.epoch is None or now - member.last_full >= self.settings.resync_interval
        since, epoch = (None, None) if full else (member.version, member.epoch)
        streams = False
        changes = member.client.watch(
            since, epoch, self.settings.watch_heartbeat, self.settings.stats_interval
        )
        try:
            async with contextlib.aclosing(changes):
                async for answer in changes:
                    if member.node.Status != READY:
                        break  # marked down meanwhile: start again from the whole list
                    member.last_seen = time.monotonic()
                    if answer.complete:
                        member.last_full = member.last_seen
                    member.epoch, member.version = answer.epoch, answer.version
                    streams = answer.epoch is not None
                    self.observe(member.node.Name, answer.tasks, complete=answer.complete)
                    if answer.stats is not None:
                        member.stats_at = member.last_seen
                        self._took_stats(member, answer.stats)
                    if answer.docker is not None:
                        self._docker_is(member, answer.docker)
                    if member.last_seen - member.last_full >= self.settings.resync_interval:
                        break
        except (WorkerUnreachable, WorkerRejected) as exc:
            log.debug("tracking %s failed: %s", member.node.Name, exc)
            return False
        return streams

    def observe(self, node_name: str, reported: list[Task], *, complete: bool = True) -> None:
        """Fold a worker's tasks into the manager's view.

        ``complete`` says ``reported`` is every task the worker has (not only those
        that changed), so that a task placed there but missing is known to be lost.
        """
        seen = set()
        changed: list[Task] = []
        for theirs in reported:
            seen.add(theirs.ID)
            ours = self.tasks.get(str(theirs.ID))
            if ours is None:
                # Never heard of it: what a second manager, or one restarted without
                # its store, would see. Stopping it could take a working cluster down.
                continue
            if _stray(ours, theirs, node_name):
                # Not to run there (moved while the worker was away, or finished here
                # while it was unreachable): stop that copy.
                if theirs.State in (State.SCHEDULED, State.RUNNING):
                    member = self.members[node_name]
                    log.info("task %s: stopping stray copy on %s", theirs.ID, node_name)
                    self._jobs.spawn(_quietly(member.client.stop(theirs.ID)))
                continue
            if theirs.RestartCount != ours.RestartCount:
                continue  # the worker has not seen the latest incarnation yet
            if ours.ID in self._stopping and theirs.State in (State.SCHEDULED, State.RUNNING):
                self._spawn_stop(ours)  # the worker lost our stop (it restarted): again
            update = {
                f: getattr(theirs, f) for f in OBSERVED if getattr(theirs, f) != getattr(ours, f)
            }
            if not theirs.Reason and ours.Reason.startswith("restarting"):
                update.pop("Reason", None)  # keep why it restarted visible while it runs
            if not update:
                continue
            if theirs.State is not ours.State and not can_transition(ours.State, theirs.State):
                continue
            if ours.ID in self._stopping and theirs.State is State.FAILED:
                # However it ended (killed at the end of a stop's grace period, or found
                # dead by a worker that restarted mid-stop), the user asked for a stop.
                update.update(State=State.COMPLETED, Reason="stopped on request")
            task = ours.model_copy(update=update)
            if task.State is not ours.State:
                log.info("task %s: %s on %s", task.ID, task.State.label, node_name)
            changed.append(task)
        # Placed here and Scheduled/Running here, but the worker does not know it (it
        # restarted without its store, or our send never arrived): send it again.
        for task_id in list(self._placed_on.get(node_name, ())) if complete else ():
            if task_id not in seen:
                ours = self.tasks.get(str(task_id))
                if ours is not None and ours.State is State.SCHEDULED:
                    self._jobs.spawn(self._send(ours, again=True))
                elif ours is not None and ours.State is State.RUNNING:
                    lost = transition(ours, State.FAILED, reason=f"lost by worker {node_name}")
                    changed.append(lost)
        if changed:
            self.tasks.put_many((str(t.ID), t) for t in changed)
            for task in changed:
                if task.State in (State.COMPLETED, State.FAILED):
                    self._release(task.ID)
                if task.State is State.COMPLETED:
                    self._stopping.discard(task.ID)
                elif task.State is State.FAILED:
                    self._note_failure(task)

    # --- restarts ---------------------------------------------------------------------------

    def _note_failure(self, task: Task) -> None:
        """Decide whether a Failed task is restarted, and when."""
        if task.ID in self._stopping:
            return
        policy = task.RestartPolicy
        if policy == "no":
            return
        if policy not in RESTART_ALWAYS and task.RestartCount >= self.settings.max_restarts:
            log.info("task %s: not restarted, %d restarts already", task.ID, task.RestartCount)
            return
        doublings = min(task.RestartCount, 32)  # "always" may restart forever: no overflow
        delay = min(self.settings.restart_backoff * 2**doublings, self.settings.restart_backoff_max)
        self._restart_at[task.ID] = time.monotonic() + delay

    async def _restart_loop(self) -> None:
        while True:
            now = time.monotonic()
            due = [tid for tid, at in self._restart_at.items() if at <= now]
            for task_id in due:
                self._restart_at.pop(task_id, None)
                try:
                    self.restart(task_id)
                except Exception:
                    log.exception("task %s: restart failed", task_id)
            upcoming = min(self._restart_at.values(), default=now + 0.5)
            await asyncio.sleep(min(max(upcoming - time.monotonic(), 0.01), 0.5))

    def restart(self, task_id: uuid.UUID) -> None:
        """Start a new incarnation: same worker when ready, another otherwise."""
        task = self.tasks.get(str(task_id))
        if task is None or task.ID in self._stopping:
            return
        if task.State is State.SCHEDULED and not task.Node:
            self._replace(task)
            return
        if task.State not in (State.FAILED, State.RUNNING):
            return
        member = self.members.get(task.Node)
        candidate = task.model_copy(update={"Node": ""})
        nodes = self.nodes()
        if member is not None and member.node.is_ready:
            self._release(task.ID)
            nodes = [member.node]
        placement = self.scheduler.place(candidate, nodes)
        if placement.node is None and member is not None and member.node.is_ready:
            placement = self.scheduler.place(candidate, self.nodes())
        if placement.node is None:
            self._save(task.model_copy(update={"Reason": f"restart waits: {placement.reason}"}))
            self._restart_at[task.ID] = time.monotonic() + self.settings.restart_backoff_max
            return
        why = f"restarting after: {task.Reason}" if task.Reason else "restarting"
        restarted = transition(task, State.SCHEDULED, reason=why).model_copy(
            update={"RestartCount": task.RestartCount + 1, "Node": placement.node.Name}
        )
        self._hold(restarted)
        self._save(restarted)
        log.info("task %s: restart %d on %s", task.ID, restarted.RestartCount, restarted.Node)
        self._jobs.spawn(self._send(restarted))

    # --- health checks -------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        await asyncio.sleep(self.settings.health_interval)
        await self._every(self.settings.health_interval, self._check_all_health)

    async def _check_all_health(self) -> None:
        checks = [
            self._check_health(t)
            for t in self.tasks.list()
            if t.State is State.RUNNING and t.HealthCheck and t.ID not in self._stopping
        ]
        await asyncio.gather(*checks)

    async def _check_health(self, task: Task) -> None:
        started = task.StartTime.timestamp() if task.StartTime else time.time()
        if time.time() - started < self.settings.health_grace:
            return
        member = self.members.get(task.Node)
        port = task.first_host_port()
        if member is None or port is None or not member.node.is_ready:
            return
        url = f"http://{member.node.Ip}:{port}{task.HealthCheck}"
        try:
            response = await self.http.get(url, timeout=self.settings.health_timeout)
            healthy = response.status_code == 200
            detail = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            healthy, detail = False, type(exc).__name__
        if healthy:
            return
        current = self.tasks.get(str(task.ID))
        if current is None or current.State is not State.RUNNING:
            return
        if current.RestartCount != task.RestartCount:
            return
        log.info("task %s: health check %s failed (%s)", task.ID, url, detail)
        # Unhealthy is a failure like any other: the same policy, backoff and limit.
        # The container stays until its replacement starts (or, with no restart due,
        # until the tracker stops the copy that should no longer run).
        failed = self._save(
            transition(current, State.FAILED, reason=f"health check failed: {detail}")
        )
        self._note_failure(failed)

    # --- nodes ---------------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        """Poll every worker's stats once per round, spread evenly over the round.

        A round lasts ``stats_interval``, or longer on a cluster so large that this
        would exceed ``max_stats_rate`` polls a second; spreading the polls keeps a
        thousand requests from landing in the same instant.
        """
        members = list(self.members.values())
        in_flight: set[str] = set()

        async def poll(member: Member) -> None:
            try:
                await self._poll_node(member)
            finally:
                in_flight.discard(member.node.Name)

        while True:
            period = max(self.settings.stats_interval, len(members) / self.settings.max_stats_rate)
            step = period / max(len(members), 1)
            started = time.monotonic()
            for index, member in enumerate(members):
                # Not a worker whose watch stream brings its stats; not one still answering.
                streamed = time.monotonic() - member.stats_at < 2 * self.settings.stats_interval
                if not streamed and member.node.Name not in in_flight:
                    in_flight.add(member.node.Name)
                    self._jobs.spawn(poll(member))
                await asyncio.sleep(max(started + (index + 1) * step - time.monotonic(), 0))
            if not members:
                await asyncio.sleep(period)

    async def _poll_nodes(self) -> None:
        await asyncio.gather(*(self._poll_node(m) for m in self.members.values()))

    async def _poll_node(self, member: Member) -> None:
        node = member.node
        try:
            if member.capacity is None or node.Status == DOWN:
                member.capacity = await member.client.health()
                docker = member.capacity.get("Docker")
                if isinstance(docker, bool):
                    self._docker_is(member, docker)
            stats = await member.client.stats()
        except (WorkerUnreachable, WorkerRejected) as exc:
            silent = time.monotonic() - member.last_seen
            if node.Status == READY and silent >= self.settings.worker_timeout:
                log.warning("worker %s is down: %s", node.Name, exc)
                node.Status = DOWN
                self._worker_lost(node.Name)
            return
        self._took_stats(member, stats)

    def _took_stats(self, member: Member, stats: dict[str, Any]) -> None:
        """A worker's stats arrived (polled, or in its watch stream): it is alive."""
        node = member.node
        member.last_seen = time.monotonic()
        node.apply_stats(stats)
        capacity = member.capacity or {}
        for field, key in (("Cores", "Cores"), ("Memory", "Memory"), ("Disk", "Disk")):
            value = capacity.get(key)
            if isinstance(value, int | float) and value > 0:
                setattr(node, field, int(value))
        if node.Status != READY:
            log.info("worker %s is ready", node.Name)
            node.Status = READY
            self._wake.set()

    def _docker_is(self, member: Member, ok: bool) -> None:
        """A worker said whether its Docker engine answers: place tasks there or not.

        Tasks already there stay: the worker starts them when its engine is back.
        """
        node = member.node
        if ok == node.Docker:
            return
        node.Docker = ok
        if ok:
            log.info("worker %s: Docker engine answers again", node.Name)
            self._wake.set()  # pending tasks may fit there now
        else:
            log.warning("worker %s: Docker engine unavailable, placing nothing there", node.Name)

    def _worker_lost(self, node_name: str) -> None:
        """Move the tasks a down worker was running to ready workers (respecting policy)."""
        for task_id, name in list(self._placed.items()):
            if name != node_name:
                continue
            task = self.tasks.get(str(task_id))
            if task is None:
                continue
            if task.ID in self._stopping:
                # Nothing can reach it to stop it; if the worker comes back, the tracker
                # stops the copy it still runs.
                self._save(transition(task, State.COMPLETED, reason="stopped (worker down)"))
                continue
            if task.State is State.RUNNING:
                failed = transition(task, State.FAILED, reason=f"worker {node_name} is down")
                self._save(failed)
                if task.RestartPolicy != "no":
                    self._restart_at[task.ID] = time.monotonic()
            elif task.State is State.SCHEDULED:
                self._release(task.ID)
                moved = transition(task, State.SCHEDULED, reason=f"worker {node_name} is down")
                moved = moved.model_copy(update={"Node": "", "RestartCount": task.RestartCount})
                self._save(moved)
                self._replace(moved)

    def _replace(self, task: Task) -> None:
        placement = self.scheduler.place(task, self.nodes())
        if placement.node is None:
            self._restart_at[task.ID] = time.monotonic() + self.settings.restart_backoff
            return
        placed = task.model_copy(update={"Node": placement.node.Name, "Reason": ""})
        self._hold(placed)
        self._save(placed)
        self._jobs.spawn(self._send(placed))


def _stray(ours: Task, theirs: Task, node_name: str) -> bool:
    """Is the worker's copy one that should not run: moved away, or already over?"""
    if ours.Node != node_name:
        return True
    over = ours.State is State.COMPLETED or (
        ours.State is State.FAILED and theirs.RestartCount == ours.RestartCount
    )
    return over and theirs.State in (State.SCHEDULED, State.RUNNING)


async def _quietly(job: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(WorkerUnreachable, WorkerRejected):
        await job


__all__ = ["BadRequest", "InvalidTransition", "Manager", "Settings", "UnknownTask"]
