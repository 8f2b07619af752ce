"""Where the manager's state is kept: the seam between its memory and its disk.

The manager's :class:`~cube.manager.state.State` is the one writer; it hands every
change to a :class:`Backend` as one :meth:`~Backend.commit` — the tasks that changed and
the events that changed them — and answers nobody until that commit returns. The seam is
asynchronous and each change names the version it replaces, so that a store with
compare-and-swap sits behind it too: :mod:`cube.manager.etcd_backend` turns the
``before`` of each change into a revision compare in one transaction and raises
:class:`Conflict` when another writer got there first. The two backends here are the
only writers of their data, and check ``before`` against what they last stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cube.events import Event
from cube.job import JobRecord
from cube.manager.auth import TokenRecord
from cube.manager.eventstore import EventStore, MemoryEvents, SqliteEvents
from cube.node import NodeRecord
from cube.store import Database, SqliteStore
from cube.task import Task, TaskEvent


@dataclass(frozen=True)
class Fence:
    """A leader's writes hold only while it leads: a store shared by several managers
    checks, with each write, that the leader key is still the one made in ``term``
    (cube.manager.leader), so a manager whose lease expired while it was frozen can
    store nothing; it raises :class:`Deposed`, after telling ``on_deposed``."""

    key: bytes
    term: int
    on_deposed: Callable[[], None] = lambda: None


@dataclass(frozen=True, slots=True)
class Change:
    """A task's new version, and the one it replaces (None: a new task)."""

    before: Task | None
    after: Task


class Conflict(Exception):
    """A change's ``before`` is not what the store holds: someone else wrote first."""


class StoreUnavailable(Exception):
    """The store did not answer (etcd without quorum, or unreachable): nothing was
    stored that the caller can count on, and the API answers 503, to be tried again."""


class Deposed(StoreUnavailable):
    """This manager no longer leads: the store refused a write fenced by its term.
    Another manager takes the request, so the API answers 503 as for an outage."""


class Backend(Protocol):
    # The cluster's event stream (cube.manager.events): its own writes, and the task
    # events a commit carries.
    stream: EventStore

    def load(self) -> list[Task]:
        """Every task, as last committed (at start-up)."""
        ...

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        """Store all of it, durably, or none of it: the tasks, the TaskEvents that
        changed them, and the stream's events that describe the changes."""
        ...

    async def history(self, task_id: uuid.UUID) -> list[TaskEvent]:
        """A task's events, oldest first (read when asked: they are not kept in
        memory, and a store across the network answers with a round trip)."""
        ...

    def load_jobs(self) -> list[JobRecord]:
        """Every job, as last saved (at start-up)."""
        ...

    async def save_job(self, record: JobRecord) -> None:
        """Store a job's record, durably. Its tasks say which job they are of, so a
        job and its tasks need no common transaction: the job reconciler counts."""
        ...

    def load_nodes(self) -> list[NodeRecord]:
        """Every node the manager knew (at start-up): a worker that vanished while the
        manager was down is still known, so it is declared lost and its tasks moved."""
        ...

    async def save_nodes(self, records: Sequence[NodeRecord]) -> None:
        """Store these nodes' records, in one write."""
        ...

    async def delete_node(self, name: str) -> None: ...

    def load_tokens(self) -> list[TokenRecord]:
        """Every API token made with ``cube token create`` (hashes, not secrets)."""
        ...

    async def save_token(self, record: TokenRecord) -> None: ...

    async def delete_token(self, token_id: str) -> None: ...

    def close(self) -> None: ...


class _Checked:
    """The compare half of compare-and-swap, for a backend that is its data's only writer."""

    def __init__(self) -> None:
        self._current: dict[uuid.UUID, Task] = {}

    def _check(self, changes: Sequence[Change]) -> None:
        for change in changes:
            held = self._current.get(change.after.ID)
            if held is not change.before and held != change.before:
                raise Conflict(f"task {change.after.ID} changed meanwhile")

    def _keep(self, changes: Sequence[Change]) -> None:
        for change in changes:
            self._current[change.after.ID] = change.after


class MemoryBackend(_Checked):
    """``--dbtype memory``: gone with the process."""

    def __init__(self) -> None:
        super().__init__()
        self._events: dict[uuid.UUID, list[TaskEvent]] = {}
        self.stream: EventStore = MemoryEvents()
        self._jobs: dict[str, JobRecord] = {}
        self._nodes: dict[str, NodeRecord] = {}
        self._tokens: dict[str, TokenRecord] = {}

    def load_tokens(self) -> list[TokenRecord]:
        return list(self._tokens.values())

    async def save_token(self, record: TokenRecord) -> None:
        self._tokens[record.ID] = record

    async def delete_token(self, token_id: str) -> None:
        self._tokens.pop(token_id, None)

    def load_nodes(self) -> list[NodeRecord]:
        return list(self._nodes.values())

    async def save_nodes(self, records: Sequence[NodeRecord]) -> None:
        self._nodes.update((r.Name, r) for r in records)

    async def delete_node(self, name: str) -> None:
        self._nodes.pop(name, None)

    def load_jobs(self) -> list[JobRecord]:
        return list(self._jobs.values())

    async def save_job(self, record: JobRecord) -> None:
        self._jobs[record.Job.Name] = record

    def load(self) -> list[Task]:
        return list(self._current.values())

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        self._check(changes)
        self._keep(changes)
        await self.stream.append(stream)
        for event in events:
            self._events.setdefault(event.Task.ID, []).append(event)

    async def history(self, task_id: uuid.UUID) -> list[TaskEvent]:
        return list(self._events.get(task_id, ()))

    def close(self) -> None:
        pass


def _group(event: TaskEvent) -> str:
    return str(event.Task.ID)


class SqliteBackend(_Checked):
    """``--dbtype persistent``: tasks and events in one SQLite file, one transaction each.

    Writing the two together is what keeps a stop from living in the event log alone:
    a crash either keeps the task with its new desired state and its event, or neither.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.db = Database(path)
        self._tasks: SqliteStore[Task] = self.db.store("tasks", Task)
        self._events: SqliteStore[TaskEvent] = self.db.store("events", TaskEvent, _group)
        self._jobs: SqliteStore[JobRecord] = self.db.store("jobs", JobRecord)
        self._nodes: SqliteStore[NodeRecord] = self.db.store("nodes", NodeRecord)
        self._tokens: SqliteStore[TokenRecord] = self.db.store("tokens", TokenRecord)
        self._stream = SqliteEvents(self.db)
        self.stream: EventStore = self._stream

    def load_tokens(self) -> list[TokenRecord]:
        return self._tokens.list()

    async def save_token(self, record: TokenRecord) -> None:
        self._tokens.put(record.ID, record)

    async def delete_token(self, token_id: str) -> None:
        self._tokens.delete(token_id)

    def load_nodes(self) -> list[NodeRecord]:
        return self._nodes.list()

    async def save_nodes(self, records: Sequence[NodeRecord]) -> None:
        self._nodes.put_many((r.Name, r) for r in records)

    async def delete_node(self, name: str) -> None:
        self._nodes.delete(name)

    def load_jobs(self) -> list[JobRecord]:
        return self._jobs.list()

    async def save_job(self, record: JobRecord) -> None:
        self.db.write([(self._jobs, [(record.Job.Name, record)])])

    def load(self) -> list[Task]:
        tasks = self._tasks.list()
        self._current = {task.ID: task for task in tasks}
        return tasks

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        self._check(changes)
        self.db.write(
            [
                (self._events, [(str(e.ID), e) for e in events]),
                (self._tasks, [(str(c.after.ID), c.after) for c in changes]),
                (self._stream, [("", e) for e in stream]),
            ]
        )
        self._keep(changes)

    async def history(self, task_id: uuid.UUID) -> list[TaskEvent]:
        return self._events.list(group=str(task_id))

    def close(self) -> None:
        self.db.close()
