"""The manager's state: every task (desired and observed), the nodes, what each holds.

There is one way to change a task: :meth:`State.commit`. It writes the new versions
and their events through the :class:`~cube.manager.backend.Backend` (durable before it
returns), then updates the indexes here: which node each task holds resources on (so a
scheduling decision costs O(nodes), not O(tasks)), and which tasks changed and so need
reconciling. Nothing else writes tasks, so nothing else can forget one of those steps.

Nodes live here too, with their status as the manager sees it: *ready* (answering),
*lost* (silent past the worker timeout: its tasks are moved; it stays lost until it
answers again, then it is ready), or neither (not heard from yet since the manager
started): tasks on such a node wait.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from cube.clock import SystemClock
from cube.manager.backend import Backend, Change
from cube.manager.events import EventLog, node_draft, task_draft
from cube.node import DOWN, READY, Node
from cube.scheduler import release, reserve
from cube.task import State as TaskState
from cube.task import Task, TaskEvent, transition

_HOLDING = frozenset({TaskState.SCHEDULED, TaskState.RUNNING})


@dataclass
class _Write:
    """One caller's commit, waiting for a write to carry it (State.commit)."""

    changes: list[Change]
    events: list[TaskEvent]
    settled: Collection[uuid.UUID] = ()  # not to reconcile again (see State.commit)
    done: asyncio.Future[None] | None = None  # made when it has to wait

    def settle(self, error: Exception | None) -> None:
        if self.done is None or self.done.done():  # its caller gave up waiting
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


class State:
    def __init__(
        self,
        backend: Backend,
        nodes: Iterable[Node],
        now: Callable[[], float] = time.monotonic,
        restarts: Callable[[Task], bool] = lambda task: False,
        events: EventLog | None = None,
    ) -> None:
        self.backend = backend
        # What happened, for GET /events: task events go with the commit that made them.
        self.events = events or EventLog(backend.stream, SystemClock())
        self._now = now
        # Whether a Failed task is to be restarted: it then keeps its room on its node
        # (as a kubelet's crash-looping pod does), so a task waiting for room cannot
        # take it meanwhile, and an unhealthy container that still runs stays counted.
        self._restarts = restarts
        # When the manager learned each task entered its current state, in monotonic
        # seconds of its own clock: restart backoff and health-check grace count from
        # here, not from a worker's FinishTime or StartTime (clocks differ, and wall
        # clocks step). Not stored: after a manager restart they count from the restart.
        self.since: dict[uuid.UUID, float] = {}
        self.nodes: dict[str, Node] = {node.Name: node for node in nodes}
        self.lost: set[str] = set()
        self.ready: set[str] = {name for name, node in self.nodes.items() if node.is_ready}
        self.tasks: dict[uuid.UUID, Task] = {}
        # Each job's tasks, so a job's pass costs its own tasks, not every task.
        self.by_job: dict[str, dict[uuid.UUID, None]] = {}
        self._held: dict[uuid.UUID, str] = {}  # task -> node it holds resources on
        self._on_node: dict[str, set[uuid.UUID]] = {name: set() for name in self.nodes}
        # Insertion-ordered sets: tasks to reconcile, and tasks that fit nowhere yet.
        self._dirty: dict[uuid.UUID, None] = {}
        self._waiting: dict[uuid.UUID, None] = {}
        # Set whenever there is something to reconcile; the manager's loop waits on it.
        self.changed = asyncio.Event()
        # Group commit (see commit): a write on its way, the writes waiting for it.
        self._storing = False
        self._queued: list[_Write] = []
        self._draining: asyncio.Future[None] | None = None
        for task in backend.load():
            self._note(None, task)
            self.tasks[task.ID] = task
            self._settle(task)
            self._dirty[task.ID] = None
        if self._dirty:
            self.changed.set()

    # --- the write path ---------------------------------------------------------------

    async def commit(
        self,
        tasks: Sequence[Task],
        events: Sequence[TaskEvent] = (),
        *,
        settled: Collection[uuid.UUID] = (),
    ) -> None:
        """Store new versions of tasks (and events), durably; then index them, and mark
        them for the reconciler, except those ``settled``: versions the reconciler has
        just decided itself and acted on (a placement, sent at once), which another
        look would only decide again (10,000 placements: 10,000 Sends to drop, a tenth
        of a second with the event loop held).

        Group commit: while one write is on its way to the store, the writes that come
        meanwhile wait and then go together, in one write (a store across the network,
        etcd, takes a round trip per write, and one at a time they would queue behind
        each other; SQLite's writes never yield, so there each goes alone, as before).
        Each change names the version it replaces as of its call, so two writes of one
        task never share a write, and a stale one conflicts as it always did.
        """
        if not tasks and not events:
            return
        changes = [Change(self.tasks.get(task.ID), task) for task in tasks]
        write = _Write(changes, list(events), settled)
        if self._storing:
            write.done = asyncio.get_running_loop().create_future()
            self._queued.append(write)
            await write.done
            return
        self._storing = True
        try:
            await self._store([write])
        finally:
            if self._queued:  # the next batch: stored whatever becomes of this caller
                self._draining = asyncio.ensure_future(self._drain())
            else:
                self._storing = False

    @property
    def in_flight(self) -> bool:
        """Whether a write is on its way to the store or waiting for one (the
        placements it carries hold their room already: see :meth:`hold`)."""
        return self._storing or bool(self._queued) or self.events.writing.locked()

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch: list[_Write] = []
                ids: set[uuid.UUID] = set()
                for write in self._queued:
                    touched = {change.after.ID for change in write.changes}
                    if touched & ids:
                        break  # the same task twice: the later goes in the next write
                    batch.append(write)
                    ids |= touched
                del self._queued[: len(batch)]
                try:
                    await self._store(batch)
                except Exception as exc:
                    for write in batch:
                        write.settle(exc)
                else:
                    for write in batch:
                        write.settle(None)
        finally:
            self._storing = False

    async def _store(self, batch: Sequence[_Write]) -> None:
        changes = [change for write in batch for change in write.changes]
        settled = {task_id for write in batch for task_id in write.settled}
        events = [event for write in batch for event in write.events]
        async with self.events.writing:
            stream = self.events.number([task_draft(c.before, c.after) for c in changes])
            try:
                await self.backend.commit(changes, events, stream)
            except BaseException:
                self.events.abandon(stream)
                raise
            self.events.stored(stream)
        for change in changes:
            task = change.after
            self._note(change.before, task)
            self.tasks[task.ID] = task
            self._settle(task)
            if task.ID not in settled:
                self._dirty[task.ID] = None
        self.changed.set()

    def adopt(self, task: Task) -> None:
        """A version another manager stored (a follower's view, fed by etcd's watch:
        cube.manager.follower): indexed as a commit would be, neither stored again nor
        marked for this manager to reconcile."""
        before = self.tasks.get(task.ID)
        self._note(before, task)
        self.tasks[task.ID] = task
        self._settle(task)

    async def ask_to_stop(self, tasks: Sequence[Task], cancelled: str) -> list[Task]:
        """Store a stop on each task not already asked (a Pending one is cancelled at
        once, with reason ``cancelled``); the reconciler stops the placed ones."""
        stopped = []
        for task in tasks:
            if task.DesiredState is TaskState.COMPLETED:
                continue
            task = task.model_copy(update={"DesiredState": TaskState.COMPLETED})
            if task.State is TaskState.PENDING:
                task = transition(task, TaskState.COMPLETED, reason=cancelled)
            stopped.append(task)
        await self.commit(stopped, [TaskEvent(State=TaskState.COMPLETED, Task=t) for t in stopped])
        return stopped

    def _note(self, before: Task | None, after: Task) -> None:
        if before is None or before.State is not after.State:
            self.since[after.ID] = self._now()
        if before is None and after.Job:  # a task's job never changes
            self.by_job.setdefault(after.Job, {})[after.ID] = None

    # --- reservations -------------------------------------------------------------------

    def hold(self, task: Task) -> None:
        """Reserve a placement's resources before it is committed, so the next decision
        of the same pass sees them; :meth:`unhold` undoes it if the commit fails."""
        self._settle(task)

    def unhold(self, task: Task) -> None:
        committed = self.tasks.get(task.ID)
        if committed is not None:
            self._settle(committed)
        else:
            self._release(task)

    def _settle(self, task: Task) -> None:
        """Make the task's reservation match its version: on its node while it is
        Scheduled or Running there, or Failed there and to be restarted; else nowhere."""
        holds = task.State in _HOLDING or (
            task.State is TaskState.FAILED
            and task.DesiredState is TaskState.RUNNING
            and self._restarts(task)
        )
        want = task.Node if holds and task.Node in self.nodes else None
        have = self._held.get(task.ID)
        if want == have:
            return
        if have is not None:
            self._release(task)
        if want is not None:
            reserve(self.nodes[want], task)
            self._held[task.ID] = want
            self._on_node[want].add(task.ID)

    def _release(self, task: Task, *, wake: bool = True) -> None:
        name = self._held.pop(task.ID, None)
        if name is None:
            return
        self._on_node[name].discard(task.ID)
        release(self.nodes[name], task)  # a task's resources are the same in every version
        if wake:
            self.room()

    def held_on(self, node: str) -> list[uuid.UUID]:
        return list(self._on_node.get(node, ()))

    # --- what to reconcile ----------------------------------------------------------------

    def mark(self, task_ids: Iterable[uuid.UUID]) -> None:
        before = len(self._dirty)
        self._dirty.update(dict.fromkeys(task_ids))
        if len(self._dirty) != before:
            self.changed.set()

    def take_dirty(self) -> list[uuid.UUID]:
        dirty, self._dirty = list(self._dirty), {}
        return dirty

    def wait_for_room(self, task_id: uuid.UUID) -> None:
        """The task fits nowhere now: reconcile it again when capacity may appear."""
        self._waiting[task_id] = None

    def release(self, task: Task) -> None:
        """Give up a task's room for now (a restart looks for room, its own included).

        Waiting tasks are not woken: the restart either takes the room back or moves,
        and the caller says when room really appeared (:meth:`room`). Waking them here
        woke the restart itself when it fit nowhere: a reconcile loop spinning forever.
        """
        self._release(task, wake=False)

    def stop_waiting(self, task_id: uuid.UUID) -> None:
        self._waiting.pop(task_id, None)

    def room(self) -> None:
        """Capacity may have appeared (a task let go, a node is back): retry the waiting."""
        if self._waiting:
            self.mark(self._waiting)
            self._waiting = {}

    # --- nodes ------------------------------------------------------------------------------

    def add_node(self, node: Node) -> None:
        """A node joined (or was loaded from the store): known, not ready until heard."""
        self.nodes[node.Name] = node
        self._on_node.setdefault(node.Name, set())
        if node.is_ready:
            self.ready.add(node.Name)
        self.events.emit(node_draft("NodeJoined", node))

    def remove_node(self, name: str) -> None:
        """Forget a node (``cube node rm``). Tasks still on it count as on a lost node
        (the reconciler's ``known`` rule) and are moved or finished."""
        for task_id in self.held_on(name):
            self._release(self.tasks[task_id])
        node = self.nodes.pop(name, None)
        if node is not None:
            self.events.emit(node_draft("NodeRemoved", node))
        self._on_node.pop(name, None)
        self.ready.discard(name)
        self.lost.discard(name)
        self.mark(t.ID for t in self.tasks.values() if t.Node == name)

    def node_ready(self, name: str) -> None:
        """A node answers: place work there again, and act on what waited for it."""
        node = self.nodes[name]
        self.lost.discard(name)
        if name not in self.ready:
            node.Status = READY
            self.ready.add(name)
            self.mark(self.held_on(name))
            self.room()
            self.events.emit(node_draft("NodeReady", node))

    def node_lost(self, name: str) -> None:
        """Silent past the worker timeout: its tasks are to be moved elsewhere."""
        node = self.nodes[name]
        node.Status = DOWN
        self.ready.discard(name)
        self.lost.add(name)
        self.mark(self.held_on(name))
        self.events.emit(node_draft("NodeDown", node))

    def docker_is(self, name: str, ok: bool) -> bool:
        """Record whether a node's engine answers; say whether that changed anything."""
        node = self.nodes[name]
        if node.Docker == ok:
            return False
        node.Docker = ok
        if ok:
            self.room()
        self.events.emit(node_draft("NodeDockerUp" if ok else "NodeDockerDown", node))
        return True
