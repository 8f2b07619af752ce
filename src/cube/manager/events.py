"""The manager's event log: it numbers events, stores them, and serves readers.

Task events travel with the task changes they describe, in the same write
(:meth:`State.commit`), so a crash keeps both or neither and the log never tells of a
change that did not happen nor misses one that did. Events of nodes, jobs and
deployments are :meth:`emit`-ted and written by :meth:`run` as soon as the loop is
free, several to a write under load.

Readers pull: :meth:`after` hands out what follows an index (the newest events from
memory, older ones from the store) and :meth:`wait` parks until there is more. No
reader has a buffer the manager fills, so a slow one (a browser on a bad link) costs
the manager nothing; it just reads further behind. Indexes are numbered from the
store's last one, so they go on growing across restarts, and an index is only ever
given to an event that was stored: a reader resuming after N sees no gap and no repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cube.clock import Clock
from cube.events import Draft, Event, Numbered, ready
from cube.job import JobRecord
from cube.manager.eventstore import EventStore, Kept
from cube.node import Node
from cube.task import Task

if TYPE_CHECKING:
    from cube.manager.metrics import ManagerMetrics

log = logging.getLogger(__name__)

# Emitted events waiting for their write, at most: past it the oldest are dropped
# (and logged) rather than let a stalled disk grow the manager's memory.
MAX_QUEUED = 100_000


@dataclass(frozen=True)
class Retention:
    count: int = 50_000  # events kept, at most
    age: float = 24 * 3600.0  # seconds an event is kept, at most
    interval: float = 60.0  # seconds between trims
    memory: int = 4096  # newest events kept in memory for readers


class EventLog:
    def __init__(
        self,
        store: EventStore,
        clock: Clock,
        retention: Retention | None = None,
        metrics: ManagerMetrics | None = None,
    ):
        self.store = store
        self.metrics = metrics  # counts what is stored, and dropped
        self.clock = clock
        self.retention = retention or Retention()
        self.last = store.last_index()
        self._next = self.last + 1
        self._recent = Kept()  # the newest events (retention.memory of them), for readers
        self._recent.add(store.recent(self.retention.memory))
        self._queue: deque[Draft] = deque()
        self._queued = asyncio.Event()
        self._grew = asyncio.Event()  # set, then replaced, whenever events are stored
        # Held from numbering to storing, so indexes reach readers in order even over
        # a store whose writes yield (etcd's do: a round trip).
        self.writing = asyncio.Lock()
        self.dropped = 0

    # --- writing ---------------------------------------------------------------------

    def number(self, drafts: Sequence[Draft]) -> Numbered:
        """Index and stamp events about to be stored (by the caller, or by :meth:`run`);
        each is made when first read (:class:`~cube.events.Numbered`)."""
        events = Numbered(self._next, self.clock.now(), drafts)
        self._next += len(events)
        return events

    def stored(self, events: Numbered) -> None:
        """They are on disk: readers may see them."""
        if not events:
            return
        self._recent.add(events)
        self._recent.bound(self.retention.memory)
        self.last = events.last
        if self.metrics is not None:
            self.metrics.stored(events.kinds())
        self.wake()

    def wake(self) -> None:
        """Wake every reader waiting (the server is stopping: their streams end)."""
        grew, self._grew = self._grew, asyncio.Event()
        grew.set()

    def abandon(self, events: Numbered) -> None:
        """Their write failed: give their indexes back (nothing was numbered since,
        as writes do not interleave with numbering), so the log has no gap."""
        if events and events.last == self._next - 1:
            self._next = events.first

    def emit(self, *drafts: Draft) -> None:
        """Queue events for the next write (:meth:`run` makes it)."""
        if not drafts:
            return
        self._queue.extend(drafts)
        while len(self._queue) > MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.events_dropped.inc()
        self._queued.set()

    async def flush(self) -> None:
        """Write what is queued, in one write."""
        async with self.writing:
            await self._flush()

    async def _flush(self) -> None:
        drafts = list(self._queue)
        self._queue.clear()
        self._queued.clear()
        events = self.number(drafts)
        try:
            await self.store.append(events)
        except BaseException:
            self.abandon(events)
            raise
        self.stored(events)

    async def run(self) -> None:
        """Write emitted events as they come, and trim by the retention at most once a
        ``retention.interval`` as it writes (a quiet log has nothing new to trim for).

        It waits on the queue alone, with no timer: a timed wait here (``wait_for``
        racing a cancellation) could leave a manager being stopped waiting for it."""
        due = self.clock.monotonic()
        while True:
            if self.clock.monotonic() >= due:
                due = self.clock.monotonic() + self.retention.interval
                await self._trim()
            self._queued.clear()
            if self._queue:
                try:
                    await self.flush()
                except Exception:
                    log.exception("storing %d events", len(self._queue))
                    await self.clock.sleep(1.0)
                    continue
            await self._queued.wait()

    async def _trim(self) -> None:
        before = self.clock.now() - timedelta(seconds=self.retention.age)
        with contextlib.suppress(Exception):
            dropped = await self.store.trim(before, self.retention.count)
            if dropped:
                log.debug("event retention dropped %d events", dropped)
        # What readers get from memory goes by the same rule.
        self._recent.drop(self.last - self.retention.count, before)
        if self.dropped:
            log.warning("%d events were dropped: their writes could not keep up", self.dropped)
            self.dropped = 0

    # --- reading ---------------------------------------------------------------------

    def after(self, index: int, topics: Collection[str] = (), limit: int = 500) -> list[Event]:
        """Up to ``limit`` events after ``index``, oldest first (of ``topics``; all when
        empty). An index older than what is kept starts at the oldest kept."""
        oldest = self._recent.oldest
        if oldest is None or index + 1 < oldest:
            return ready(self.store.after(index, limit, topics))
        return ready(self._recent.after(index, limit, topics))

    async def wait(self, index: int, timeout: float) -> bool:
        """Until there is an event after ``index`` (True) or ``timeout`` passes."""
        if self.last > index:
            return True
        return await self.clock.wait(self._grew, timeout)


# --- what happened, as events ---------------------------------------------------------


def task_draft(before: Task | None, after: Task) -> Draft:
    """One event per change of a task, named by what matters most in it."""
    if before is None:
        kind = "TaskSubmitted"
    elif after.Node and after.Node != before.Node:
        kind = "TaskPlaced"
    elif after.RestartCount > before.RestartCount:
        kind = "TaskRestarted"
    elif after.State is not before.State:
        kind = f"Task{after.State.label}"
    elif after.DesiredState is not before.DesiredState:
        kind = "TaskStopRequested"
    else:
        kind = "TaskUpdated"
    return Draft.of("Task", kind, after.ID, after)  # its Key and Payload made when read


def job_drafts(before: JobRecord | None, after: JobRecord) -> list[Draft]:
    """A job saved: what changed in it, and in its deployment."""
    job, name = after.Job, after.Job.Name
    drafts = []
    kind = None
    if before is None or job.Version != before.Job.Version:
        kind = "JobRegistered"
    elif job.Stopped and not before.Job.Stopped:
        kind = "JobStopped"
    elif job.Count != before.Job.Count or job.Stopped != before.Job.Stopped:
        kind = "JobScaled"
    if kind is not None:
        payload = job.model_dump(mode="json")
        drafts.append(Draft(Topic="Job", Type=kind, Key=name, Payload=payload))
    deployment = after.Deployment
    old = before.Deployment if before is not None else None
    if deployment is not None and deployment != old:
        if old is None or old.Version != deployment.Version:
            kind = "DeploymentStarted"
        elif old.Status != deployment.Status:
            kind = f"Deployment{deployment.Status.capitalize()}"
        else:
            kind = "DeploymentProgress"
        payload = {"Job": name, **deployment.model_dump(mode="json")}
        drafts.append(Draft(Topic="Deployment", Type=kind, Key=name, Payload=payload))
    return drafts


def node_draft(kind: str, node: Node) -> Draft:
    payload: dict[str, Any] = node.to_wire()
    payload.pop("Stats", None)  # the machine's figures change every second: not news
    return Draft(Topic="Node", Type=kind, Key=node.Name, Payload=payload)
