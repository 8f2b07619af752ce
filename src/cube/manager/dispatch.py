"""Carrying the reconciler's Send, Stop and StopCopy to workers.

An effector: it talks to workers and reports back what only a worker can say (it
refused a task; it never had the task we asked it to stop) by calling
``report(task, state, reason)``, which commits through the manager's one write path.
Everything it sends is checked against the current state first, so a send or a stop
that was overtaken (the task moved, was restarted or stopped meanwhile) is dropped.

A worker that answers :class:`~cube.worker.client.Deposed` (a newer leadership
commands it) says nothing about the task: the action is dropped, and ``deposed`` is
called (the manager steps down), never ``report``.

Sends are batched per worker: whatever is placed there while a request is in flight,
or waits for one of the send slots, goes out in the next one, so a burst costs a
request or two per worker, not one per task. A send keeps its slot only while it is
young (``SLOT_HOLD``): the slots are there to make a burst queue into batches, and a
worker that does not answer must not keep them from the others for a whole request
timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cube.background import Background
from cube.clock import Clock
from cube.manager.state import State as ClusterState
from cube.task import State, Task, TaskEvent
from cube.worker.client import Deposed, WorkerClient, WorkerRejected, WorkerUnreachable

log = logging.getLogger(__name__)

Report = Callable[[Task, State, str], Awaitable[None]]
OnDeposed = Callable[[str, Deposed], None]  # (the worker, its answer)
FIRST_RETRY = 0.2
MAX_RETRY = 5.0
# How long a send counts against the send slots at most (it goes on after that).
SLOT_HOLD = 0.5


@dataclass
class _Outbox:
    events: dict[uuid.UUID, TaskEvent] = field(default_factory=dict)
    sending: bool = False


class Dispatcher:
    def __init__(
        self,
        state: ClusterState,
        clients: dict[str, WorkerClient],
        clock: Clock,
        report: Report,
        concurrency: int = 64,
        deposed: OnDeposed | None = None,
    ) -> None:
        self.state = state
        self.clients = clients
        self.clock = clock
        self.report = report
        self.deposed: OnDeposed = deposed or (lambda node, exc: log.warning("%s: %s", node, exc))
        self._slots = asyncio.Semaphore(concurrency)
        self._outboxes = {name: _Outbox() for name in clients}
        self._sent: dict[uuid.UUID, int] = {}  # task -> incarnation queued or sent
        self._stopping: set[uuid.UUID] = set()  # one stop in flight per task
        self.jobs = Background("dispatch")

    # --- sends ------------------------------------------------------------------------

    def send(self, task: Task, *, again: bool = False, event: TaskEvent | None = None) -> None:
        """Queue a placed task for its worker (once per incarnation, unless ``again``).

        ``event``: the Scheduled TaskEvent the placement was stored with, if there is
        one, sent as it is rather than a new one made for the send.
        """
        if again:
            self._sent.pop(task.ID, None)
        elif self._sent.get(task.ID) == task.RestartCount:
            return
        outbox = self._outboxes.get(task.Node)
        if outbox is None:
            if task.Node not in self.clients:
                return
            outbox = self._outboxes[task.Node] = _Outbox()  # a node that joined
        self._sent[task.ID] = task.RestartCount
        if event is None or event.Task is not task or event.State is not State.SCHEDULED:
            event = TaskEvent(State=State.SCHEDULED, Task=task)
        outbox.events[task.ID] = event
        if not outbox.sending:
            outbox.sending = True
            self.jobs.spawn(self._drain(task.Node, outbox))

    async def _drain(self, node: str, outbox: _Outbox) -> None:
        try:
            while outbox.events:
                # A slot first, the batch after: what is placed there while this waits
                # for a slot goes in the same request, so a busy manager sends bigger
                # batches, not more requests (and an idle one sends at once).
                async with self._slots:
                    batch, outbox.events = list(outbox.events.values()), {}
                    sending = await self._start(node, batch)
                await sending  # one request in flight per worker, slot or not
        finally:
            outbox.sending = False

    async def _start(self, node: str, batch: list[TaskEvent]) -> asyncio.Future[None]:
        """Start sending; return when it is done or ``SLOT_HOLD`` has passed."""
        sending = asyncio.ensure_future(self._send_batch(node, batch))
        done = asyncio.Event()
        sending.add_done_callback(lambda _: done.set())
        try:
            await self.clock.wait(done, SLOT_HOLD)
        except BaseException:
            sending.cancel()
            raise
        return sending

    def _due(self, task: Task) -> bool:
        """Is this still the placement to hand over (not stopped, moved or reported)?"""
        current = self.state.tasks.get(task.ID)
        return (
            current is not None
            and current.Node == task.Node
            and current.RestartCount == task.RestartCount
            and current.State is State.SCHEDULED
            and current.DesiredState is State.RUNNING
        )

    async def _send_batch(self, node: str, events: list[TaskEvent]) -> None:
        due = [e for e in events if self._due(e.Task)]
        if not due:
            return
        client = self.clients[node]
        try:  # the caller holds a slot
            if len(due) == 1:
                await client.submit(due[0])
            else:
                await client.submit_many(due)
        except Deposed as exc:
            self._dropped(node, due)
            self.deposed(node, exc)
        except (WorkerRejected, WorkerUnreachable) as exc:
            log.info("sending %d tasks to %s failed: %s", len(due), node, exc)
            for event in due:
                self.jobs.spawn(self._send_one(event))

    async def _send_one(self, event: TaskEvent) -> None:
        """Send one task, retrying with backoff while its node is not lost."""
        task = event.Task
        delay = FIRST_RETRY
        while self._due(task):
            try:
                async with self._slots:
                    await self.clients[task.Node].submit(event)
                return
            except Deposed as exc:
                self._dropped(task.Node, [event])
                self.deposed(task.Node, exc)
                return
            except WorkerRejected as exc:
                if exc.status != 409:
                    await self.report(task, State.FAILED, f"worker refused: {exc}")
                # 409: this incarnation already ran to its end there; tracking says how.
                return
            except WorkerUnreachable as exc:
                log.warning("task %s: sending to %s failed: %s", task.ID, task.Node, exc)
                if task.Node in self.state.lost:
                    self._sent.pop(task.ID, None)
                    return  # the reconciler moves it elsewhere
            await self.clock.sleep(delay)
            delay = min(delay * 2, MAX_RETRY)

    def _dropped(self, node: str, events: list[TaskEvent]) -> None:
        """Sends the worker refused as a deposed manager's: not sent, so a send of the
        same incarnation later (this manager leading again) is not skipped."""
        log.info("dropped %d sends to %s: this manager is deposed", len(events), node)
        for event in events:
            if self._sent.get(event.Task.ID) == event.Task.RestartCount:
                del self._sent[event.Task.ID]

    # --- stops --------------------------------------------------------------------------

    def stop(self, task: Task) -> None:
        if task.ID in self._stopping:
            return
        self._stopping.add(task.ID)
        self.jobs.spawn(self._stop(task))

    async def _stop(self, task: Task) -> None:
        try:
            await self._stop_until_sent(task)
        finally:
            self._stopping.discard(task.ID)

    async def _stop_until_sent(self, task: Task) -> None:
        delay = FIRST_RETRY
        while True:
            current = self.state.tasks.get(task.ID)
            if current is None or current.State not in (State.SCHEDULED, State.RUNNING):
                return
            client = self.clients.get(current.Node)
            if client is None or current.Node not in self.state.ready:
                return  # the reconciler acts again when the node is back, or lost
            try:
                await client.stop(task.ID)
                return
            except Deposed as exc:
                self.deposed(current.Node, exc)
                return
            except WorkerRejected as exc:
                if exc.status == 404:  # the worker never got it: nothing runs
                    await self.report(current, State.COMPLETED, "stopped on request")
                else:
                    log.warning("task %s: stop refused by %s: %s", task.ID, current.Node, exc)
                return
            except WorkerUnreachable as exc:
                log.warning("task %s: stop via %s failed: %s", task.ID, current.Node, exc)
            await self.clock.sleep(delay)
            delay = min(delay * 2, MAX_RETRY)

    def stop_copy(self, node: str, task: Task) -> None:
        """Stop a copy that should not run there (``task`` as the worker reported it);
        only that incarnation or older, should a newer one have been sent there since."""
        client = self.clients.get(node)
        if client is not None:
            log.info("task %s: stopping stray copy on %s", task.ID, node)
            stop = functools.partial(client.stop, task.ID, task.RestartCount)
            self.jobs.spawn(_quietly(stop, functools.partial(self.deposed, node)))

    async def close(self) -> None:
        await self.jobs.close()


async def _quietly(
    job: Callable[[], Awaitable[None]], deposed: Callable[[Deposed], None] | None = None
) -> None:
    """Run ``job()``, a worker's refusal or absence being no news (but its saying this
    manager is deposed is). It makes its call only once started: a job cancelled
    before it starts (the manager stopping) leaves no call made and never awaited
    behind it."""
    try:
        await job()
    except Deposed as exc:
        if deposed is not None:
            deposed(exc)
    except (WorkerUnreachable, WorkerRejected):
        pass
