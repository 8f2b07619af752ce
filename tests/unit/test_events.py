"""The event log: numbered with no gap or repeat across restarts, task events stored
with their changes, readers served from memory or the store, retention, and
GET /events over HTTP (in-process)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from cube.clock import ManualClock
from cube.events import Draft, Event, Numbered
from cube.manager.api import create_app
from cube.manager.backend import MemoryBackend, SqliteBackend
from cube.manager.events import EventLog, Retention, job_drafts
from cube.manager.eventstore import Kept
from cube.manager.manager import Manager
from cube.manager.state import State as ClusterState
from cube.node import Node
from cube.scheduler import Epvm
from cube.task import State, Task, TaskEvent
from cube.transport import InProcessTransport, lifespan

pytestmark = pytest.mark.anyio


def node(name: str) -> Draft:
    return Draft(Topic="Node", Type="NodeReady", Key=name)


async def test_task_changes_and_emitted_events_are_numbered_in_one_sequence(
    tmp_path: Path,
) -> None:
    backend = SqliteBackend(tmp_path / "m.db")
    clock = ManualClock()
    log = EventLog(backend.stream, clock)
    state = ClusterState(backend, [Node(Name="w1")], events=log)
    task = Task(Image="x")
    await state.commit([task], [TaskEvent(State=State.RUNNING, Task=task)])
    placed = task.model_copy(update={"State": State.SCHEDULED, "Node": "w1"})
    await state.commit([placed])
    log.emit(node("w1"), node("w2"))
    log.emit()  # nothing: no write, and nothing left to wake the writer for
    await log.flush()
    seen = log.after(0)
    assert [(e.Index, e.Topic, e.Type) for e in seen] == [
        (1, "Task", "TaskSubmitted"),
        (2, "Task", "TaskPlaced"),
        (3, "Node", "NodeReady"),
        (4, "Node", "NodeReady"),
    ]
    assert seen[1].Payload["Node"] == "w1" and seen[1].Key == str(task.ID)
    assert [e.Index for e in log.after(2, topics={"Node"})] == [3, 4]
    assert log.after(4) == []
    backend.close()

    # A restarted manager numbers on from the store, and serves the old ones from it.
    again = SqliteBackend(tmp_path / "m.db")
    log = EventLog(again.stream, clock, Retention(memory=2))
    assert log.last == 4
    log.emit(node("w3"))
    await log.flush()
    assert [e.Index for e in log.after(0)] == [1, 2, 3, 4, 5]  # from the store
    assert [e.Index for e in log.after(3)] == [4, 5]  # from memory
    assert [e.Key for e in log.after(1, topics={"Node"}, limit=2)] == ["w1", "w2"]
    again.close()


async def test_a_failed_commit_gives_its_indexes_back() -> None:
    class Failing(MemoryBackend):
        fail = True

        async def commit(self, *args: object, **kw: object) -> None:
            if self.fail:
                raise OSError("disk full")
            await super().commit(*args, **kw)  # type: ignore[arg-type]

    backend = Failing()
    log = EventLog(backend.stream, ManualClock())
    state = ClusterState(backend, [], events=log)
    with pytest.raises(OSError):
        await state.commit([Task(Image="x")])
    backend.fail = False
    await state.commit([Task(Image="y")])
    assert [(e.Index, e.Payload["Image"]) for e in log.after(0)] == [(1, "y")]


def test_numbered_events_are_made_when_first_read_and_then_kept() -> None:
    clock = ManualClock()
    task = Task(Image="x")
    drafts = [Draft.of("Task", "TaskSubmitted", str(task.ID), task), node("w1")]
    block = Numbered(7, clock.now(), drafts)
    assert (len(block), block.first, block.last) == (2, 7, 8)
    assert list(block.kinds()) == [("Task", "TaskSubmitted"), ("Node", "NodeReady")]
    assert not any(isinstance(item, Event) for item in block._items)  # nothing made yet
    made = block[-1]
    assert made == Event.of(8, clock.now(), drafts[1])
    assert block[1] is made  # made once
    assert isinstance(block._items[1], Event) and not isinstance(block._items[0], Event)
    first = block[0].ready()
    assert (first.Index, first.Key, first.Payload["Image"]) == (7, str(task.ID), "x")
    assert [e.Index for e in block] == [7, 8] and block[0:1] == [first]


def test_kept_blocks_serve_readers_and_let_go_by_count_time_and_bound() -> None:
    clock = ManualClock()
    kept = Kept()
    assert (kept.oldest, kept.last, len(kept)) == (None, 0, 0)
    first = clock.now()
    kept.add(Numbered(1, first, [node(f"a{i}") for i in range(4)]))  # 1-4
    kept.add(Numbered(5, first, []))  # an empty write keeps nothing
    clock._wall += timedelta(seconds=10)
    job = Draft(Topic="Job", Type="JobRegistered", Key="web")
    kept.add(Numbered(5, clock.now(), [job, node("b1"), job]))  # 5-7
    kept.add(Numbered.made(Event.of(8, clock.now(), node("c1"))))  # 8
    assert (kept.oldest, kept.last, len(kept), len(kept.blocks)) == (1, 8, 8, 3)
    assert [e.Index for e in kept.after(0, 100)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.Index for e in kept.after(3, 3)] == [4, 5, 6]
    assert [e.Index for e in kept.after(2, 100, {"Job"})] == [5, 7]
    assert [e.Index for e in kept.after(8, 100)] == []
    assert [e.Index for e in kept.recent(3)] == [6, 7, 8]
    assert [e.Index for e in kept.recent(100)] == [1, 2, 3, 4, 5, 6, 7, 8]

    # By count: a floor inside the oldest block hides what is at or below it.
    assert kept.drop(2, first) == 2
    assert (kept.oldest, len(kept)) == (3, 6)
    assert [e.Index for e in kept.after(0, 100)] == [3, 4, 5, 6, 7, 8]
    assert [e.Index for e in kept.recent(100)] == [3, 4, 5, 6, 7, 8]
    # The bound lets whole blocks go while as many as it keeps remain without them.
    kept.bound(5)
    assert (kept.oldest, len(kept)) == (3, 6)  # without 3-4, only 4 would remain
    kept.bound(4)
    assert (kept.oldest, len(kept), len(kept.blocks)) == (5, 4, 2)
    # By time: whole blocks recorded before the cut.
    assert kept.drop(0, clock.now() + timedelta(seconds=1)) == 4
    assert (kept.oldest, kept.last, len(kept)) == (None, 0, 0)


async def test_retention_keeps_the_newest_and_the_young(tmp_path: Path) -> None:
    for backend in (MemoryBackend(), SqliteBackend(tmp_path / "r.db")):
        clock = ManualClock()
        log = EventLog(backend.stream, clock, Retention(count=5, age=60.0, memory=2))
        for i in range(8):
            log.emit(node(f"old-{i}"))
        await log.flush()
        await log._trim()
        assert [e.Index for e in backend.stream.after(0, 100)] == [4, 5, 6, 7, 8]
        clock._wall += timedelta(seconds=61)
        log.emit(node("young"))
        await log.flush()
        await log._trim()
        assert [e.Key for e in backend.stream.after(0, 100)] == ["young"]
        assert [e.Index for e in log.after(0)] == [9]  # an old index starts at the oldest
        backend.close()


async def test_job_and_deployment_events_say_what_changed() -> None:
    from cube.job import Deployment, Job, JobRecord, TaskTemplate

    job = Job(Name="web", Count=2, Task=TaskTemplate(Image="x"), Version=1)
    first = JobRecord(Job=job, Deployment=Deployment(Version=1, Desired=2))
    assert [d.Type for d in job_drafts(None, first)] == ["JobRegistered", "DeploymentStarted"]
    scaled = first.model_copy(update={"Job": job.model_copy(update={"Count": 3})})
    assert [d.Type for d in job_drafts(first, scaled)] == ["JobScaled"]
    done = scaled.model_copy(
        update={"Deployment": Deployment(Version=1, Desired=2, Status="successful")}
    )
    (draft,) = job_drafts(scaled, done)
    assert (draft.Type, draft.Payload["Job"]) == ("DeploymentSuccessful", "web")
    assert job_drafts(done, done) == []


@pytest.fixture
async def manager() -> AsyncIterator[tuple[Manager, httpx.AsyncClient]]:
    m = Manager([], Epvm(), MemoryBackend(), clock=ManualClock())
    app = create_app(m)
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            yield m, client


def lines(answer: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in answer.text.splitlines()]


async def test_get_events_resumes_filters_and_follows(
    manager: tuple[Manager, httpx.AsyncClient],
) -> None:
    m, api = manager
    await m.submit_many([TaskEvent(State=State.RUNNING, Task=Task(Image="x")) for _ in range(3)])
    m.events.emit(node("w1"))
    await m.events.flush()
    everything = lines(await api.get("/events", params={"follow": "false"}))
    indexes = [e["Index"] for e in everything]
    assert indexes == list(range(1, len(indexes) + 1))  # no gap (the manager acts too)
    assert {e["Type"] for e in everything[:3]} == {"TaskSubmitted"}
    after = lines(await api.get("/events", params={"follow": "false", "index": 2}))
    assert after[: len(everything) - 2] == everything[2:]
    nodes = lines(await api.get("/events", params={"follow": "false", "topic": "Node"}))
    assert [e["Key"] for e in nodes] == ["w1"]
    last = m.events.last
    for bad in ({"topic": "Tasks"}, {"index": "-1"}, {"index": "x"}, {"heartbeat": "0"}):
        answer = await api.get("/events", params={"follow": "false", **bad})
        assert answer.status_code == 400, bad
        assert answer.json()["Message"]

    # Following: what comes next arrives on the open answer.
    async with api.stream("GET", "/events", params={"index": last, "topic": "Task"}) as stream:
        reader = stream.aiter_lines()
        (task,) = await m.submit_many([TaskEvent(State=State.RUNNING, Task=Task(Image="y"))])
        event = json.loads(await reader.__anext__())
        assert (event["Key"], event["Type"]) == (str(task.ID), "TaskSubmitted")
        assert event["Index"] > last
