"""The Backend contract, run over every store a manager can have: memory, SQLite, and a
real etcd (its own process, tests.support.EtcdProcess). What one store does, the others
must: a commit is all or nothing, loads return what was committed, a task's history
comes back oldest first, a stale write is a Conflict, and the event log keeps what its
retention allows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aetcd
import pytest

from cube.clock import ManualClock
from cube.events import Draft, Event
from cube.job import Job, JobRecord, TaskTemplate
from cube.manager.auth import TokenRecord
from cube.manager.backend import (
    Backend,
    Change,
    Conflict,
    MemoryBackend,
    SqliteBackend,
    StoreUnavailable,
)
from cube.manager.etcd_backend import DEFAULT_PREFIX, EtcdBackend, _Connection, parse_url
from cube.manager.events import EventLog, Retention, task_draft
from cube.node import NodeRecord
from cube.task import State, Task, TaskEvent
from tests.support import EtcdProcess

pytestmark = pytest.mark.anyio

Opener = Callable[[], Awaitable[Backend]]


@pytest.fixture(params=["memory", "sqlite", "etcd"])
async def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens the store again over the same data, as a restarted manager does (memory
    has no other process to survive: it is the same backend again)."""
    opened: list[Backend] = []
    memory = MemoryBackend()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    server: EtcdProcess | None = (
        request.getfixturevalue("etcd") if request.param == "etcd" else None
    )

    async def open_() -> Backend:
        backend: Backend
        if request.param == "memory":
            return memory
        if request.param == "sqlite":
            backend = SqliteBackend(tmp_path / "m.db")
        else:
            assert server is not None
            backend = await EtcdBackend.open(server.url(prefix))
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        if isinstance(backend, EtcdBackend):
            await backend.aclose()
        else:
            backend.close()


def placed(task: Task, node: str) -> Task:
    return task.model_copy(update={"State": State.SCHEDULED, "Node": node})


def events(start: int, *keys: str, time: datetime | None = None) -> list[Event]:
    at = time or datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Event.of(start + i, at, Draft(Topic="Node", Type="NodeReady", Key=key))
        for i, key in enumerate(keys)
    ]


async def test_a_commit_is_loaded_again_with_its_history_oldest_first(reopen: Opener) -> None:
    backend = await reopen()
    a, b = Task(Image="a"), Task(Image="b")
    submitted = [TaskEvent(State=State.RUNNING, Task=a), TaskEvent(State=State.RUNNING, Task=b)]
    await backend.commit([Change(None, a), Change(None, b)], submitted, events(1, "x"))
    moved = placed(a, "w1")
    # Two events of one task in one commit keep their order too.
    both = [
        TaskEvent(State=State.SCHEDULED, Task=moved),
        TaskEvent(State=State.COMPLETED, Task=moved),
    ]
    await backend.commit([Change(a, moved)], both, events(2, "y"))

    again = await reopen()
    assert {t.ID: t for t in again.load()} == {a.ID: moved, b.ID: b}
    assert [e.State for e in await again.history(a.ID)] == [
        State.RUNNING,
        State.SCHEDULED,
        State.COMPLETED,
    ]
    assert [e.Task.Image for e in await again.history(b.ID)] == ["b"]
    assert await again.history(uuid.uuid4()) == []
    assert [(e.Index, e.Key) for e in again.stream.after(0, 10)] == [(1, "x"), (2, "y")]
    assert again.stream.last_index() == 2


async def test_a_stale_write_is_a_conflict_and_stores_nothing(reopen: Opener) -> None:
    backend = await reopen()
    task = Task(Image="a")
    await backend.commit([Change(None, task)], [TaskEvent(State=State.RUNNING, Task=task)])
    await backend.commit([Change(task, placed(task, "w1"))], [])
    stale = placed(task, "w2")
    with pytest.raises(Conflict):
        await backend.commit([Change(task, stale)], [TaskEvent(Task=stale)], events(1, "lost"))
    with pytest.raises(Conflict):  # a "new" task that is not new
        await backend.commit([Change(None, task)], [])
    again = await reopen()
    assert [t.Node for t in again.load()] == ["w1"]
    assert len(await again.history(task.ID)) == 1
    assert again.stream.after(0, 10) == []


async def test_jobs_nodes_and_tokens_are_kept(reopen: Opener) -> None:
    backend = await reopen()
    job = Job(Name="web", Count=2, Task=TaskTemplate(Image="x"), Version=1)
    await backend.save_job(JobRecord(Job=job, Versions=[job]))
    await backend.save_job(JobRecord(Job=job.model_copy(update={"Count": 3}), Versions=[job]))
    await backend.save_nodes([NodeRecord(Name="w1", Api="http://w1"), NodeRecord(Name="w2")])
    await backend.delete_node("w2")
    await backend.save_token(TokenRecord(ID="t1", Name="ci", Hash="ab"))
    await backend.save_token(TokenRecord(ID="t2"))
    await backend.delete_token("t2")

    again = await reopen()
    assert [(r.Job.Name, r.Job.Count, len(r.Versions)) for r in again.load_jobs()] == [
        ("web", 3, 1)
    ]
    assert [(r.Name, r.Api) for r in again.load_nodes()] == [("w1", "http://w1")]
    assert [(r.ID, r.Name, r.Hash) for r in again.load_tokens()] == [("t1", "ci", "ab")]


async def test_the_event_log_resumes_and_keeps_what_its_retention_allows(
    reopen: Opener,
) -> None:
    backend = await reopen()
    clock = ManualClock()
    log = EventLog(backend.stream, clock, Retention(count=5, age=60.0, memory=2))
    for i in range(8):
        log.emit(Draft(Topic="Node", Type="NodeReady", Key=f"old-{i}"))
    await log.flush()
    await log._trim()
    assert [e.Index for e in backend.stream.after(0, 100)] == [4, 5, 6, 7, 8]
    assert [e.Index for e in backend.stream.after(5, 2)] == [6, 7]
    assert [e.Index for e in backend.stream.recent(2)] == [7, 8]

    again = await reopen()  # a restarted manager numbers on from the last one
    resumed = EventLog(again.stream, clock, Retention(count=5, age=60.0, memory=2))
    assert [e.Index for e in resumed.after(3)] == [4, 5, 6, 7, 8]
    clock._wall += timedelta(seconds=61)
    resumed.emit(Draft(Topic="Node", Type="NodeReady", Key="young"))
    await resumed.flush()
    await resumed._trim()
    assert [(e.Index, e.Key) for e in again.stream.after(0, 100)] == [(9, "young")]
    last = await reopen()
    assert [(e.Index, e.Key) for e in last.stream.after(0, 100)] == [(9, "young")]


# --- etcd's own ---------------------------------------------------------------------


async def test_etcd_refuses_a_write_over_another_writers(etcd: EtcdProcess) -> None:
    """The compare is etcd's mod revision, not only this manager's memory: a second
    writer's change makes the first one's next write of that task a Conflict, and
    nothing of that commit (its history, its events) is stored."""
    url = etcd.url(f"cas-{uuid.uuid4().hex[:8]}")
    first = await EtcdBackend.open(url)
    task = Task(Image="a")
    await first.commit([Change(None, task)], [])
    second = await EtcdBackend.open(url)
    await second.commit([Change(task, placed(task, "w2"))], [])
    with pytest.raises(Conflict):
        await first.commit(
            [Change(task, placed(task, "w1"))], [TaskEvent(Task=task)], events(1, "x")
        )
    await first.stream.append(events(1, "mine"))
    with pytest.raises(Conflict):  # an index another writer gave out
        await second.stream.append(events(1, "theirs"))
    third = await EtcdBackend.open(url)
    assert [t.Node for t in third.load()] == ["w2"]
    assert await third.history(task.ID) == []
    assert [e.Key for e in third.stream.after(0, 10)] == ["mine"]
    for backend in (first, second, third):
        await backend.aclose()


async def test_etcd_urls() -> None:
    assert parse_url("etcd://a:1,b:2") == parse_url("etcd://a:1,b:2/")
    assert parse_url("etcd://a:1,b").endpoints == (("a", 1), ("b", 2379))
    assert parse_url("etcd://a:1").prefix == DEFAULT_PREFIX
    assert parse_url("etcd://a:1/team/cube").prefix == "/team/cube/"
    for bad in ("etcd://", "http://a:1", "etcd://a:port", "etcd://:1"):
        with pytest.raises(ValueError):
            parse_url(bad)


async def test_etcd_unreachable_is_said_plainly() -> None:
    from cube.manager.etcd_backend import StoreUnavailable
    from tests.support import free_port

    with pytest.raises(StoreUnavailable, match="no etcd endpoint answers"):
        await EtcdBackend.open(f"etcd://127.0.0.1:{free_port()}")


def test_the_manager_command_opens_the_store_it_is_told(tmp_path: Path, etcd: EtcdProcess) -> None:
    """--store names the store; without it -d does, as it always did; a store that
    cannot be had stops the manager with one line saying why."""
    from cube.cli.errors import CliError
    from cube.cli.manager import _backend, _check_etcd
    from cube.cli.worker import DbType
    from tests.support import free_port

    assert isinstance(_backend(None, DbType.memory, tmp_path), MemoryBackend)
    sqlite = _backend(None, DbType.persistent, tmp_path)
    assert isinstance(sqlite, SqliteBackend) and (tmp_path / "manager.db").exists()
    sqlite.close()
    assert isinstance(_backend("memory", DbType.memory, tmp_path), MemoryBackend)
    # etcd is checked at once (each leadership loads it anew: cube.manager.replica).
    _check_etcd(etcd.url("cli"))
    for store, dbtype, says in [
        ("etcd", DbType.memory, "memory, sqlite or etcd://"),
        ("memory", DbType.persistent, "disagree"),
    ]:
        with pytest.raises(CliError, match=says):
            _backend(store, dbtype, tmp_path)
    for store, says in [
        ("etcd://h:port", "the port must be a number"),
        (f"etcd://127.0.0.1:{free_port()}", "no etcd endpoint answers"),
    ]:
        with pytest.raises(CliError, match=says):
            _check_etcd(store)


async def test_etcd_a_write_whose_answer_was_lost_is_known_to_be_done(etcd: EtcdProcess) -> None:
    """etcd applied the transaction but its answer never came (a timeout, a link cut
    after the commit): the backend reads the tasks back, finds them as it wrote them,
    and goes on from their new revisions rather than conflicting with itself forever."""

    backend = await EtcdBackend.open(etcd.url(f"lost-{uuid.uuid4().hex[:8]}"))
    task = Task(Image="a")
    await backend.commit([Change(None, task)], [])
    call = backend.conn.call

    async def answer_lost(fn: Callable[[object], Awaitable[object]]) -> object:
        backend.conn.call = call  # type: ignore[method-assign]
        await call(fn)
        raise StoreUnavailable("etcd did not answer: deadline exceeded")

    backend.conn.call = answer_lost  # type: ignore[method-assign,assignment]
    moved = placed(task, "w1")
    await backend.commit([Change(task, moved)], [TaskEvent(Task=moved)])
    await backend.commit([Change(moved, placed(moved, "w2"))], [])  # no Conflict
    again = await EtcdBackend.open(etcd.url(backend.prefix.strip("/")))
    assert [t.Node for t in again.load()] == ["w2"]
    assert len(await again.history(task.ID)) == 1
    for opened in (backend, again):
        await opened.aclose()


async def test_etcd_giving_up_on_a_request_is_unavailable_and_a_refusal_is_not() -> None:
    """Without a quorum etcd ends a request at its own deadline and answers Go's
    "context deadline exceeded" as a plain error: that is etcd not answering (503, try
    again), not a fault in Cube (500). A refusal stays what it is."""

    class Client:
        closed = 0

        async def close(self) -> None:
            Client.closed += 1

    conn = _Connection([("127.0.0.1", 1)])

    async def fails_with(exc: Exception) -> None:
        conn._client, conn._loop = Client(), asyncio.get_running_loop()

        async def fn(_: object) -> None:
            raise exc

        await conn.call(fn)

    for gave_up in ("context deadline exceeded", "context canceled"):
        with pytest.raises(StoreUnavailable, match=gave_up):
            await fails_with(aetcd.ClientError(gave_up))
    assert Client.closed == 2  # the next call tries another endpoint
    for refused in (aetcd.InvalidArgumentError("too many operations"), aetcd.ClientError("x")):
        with pytest.raises(type(refused)):
            await fails_with(refused)
    assert Client.closed == 2


async def test_a_tasks_event_is_stored_with_its_payload(reopen: Opener) -> None:
    """A task's event makes its Payload only when first read or written
    (cube.events.Draft.of): every store must write it made, not empty."""
    backend = await reopen()
    task = Task(Image="a")
    event = Event.of(1, datetime(2026, 1, 1, tzinfo=UTC), task_draft(None, task))
    await backend.commit([Change(None, task)], [TaskEvent(State=State.RUNNING, Task=task)], [event])
    again = await reopen()
    (stored,) = again.stream.after(0, 10)
    assert stored.Type == "TaskSubmitted" and stored.Payload == task.to_wire()
