"""Accepting tasks: what the manager stores for a submission, and how often it writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest

from cube.events import Event
from cube.manager.backend import Change, MemoryBackend
from cube.manager.manager import BadRequest, Manager
from cube.scheduler import Epvm
from cube.task import State, Task, TaskEvent


class CountingBackend(MemoryBackend):
    """A memory backend that counts its commits (each would be a transaction in SQLite)."""

    commits = 0

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        self.commits += 1
        await super().commit(changes, events, stream)


@pytest.fixture
def manager() -> Iterator[Manager]:
    node = Manager([], Epvm(), CountingBackend())
    yield node
    asyncio.run(node.close())


def event(state: State = State.RUNNING, **task: object) -> TaskEvent:
    return TaskEvent(State=state, Task=Task(Image="cube/busybox:latest", **task))


def test_a_batch_is_stored_pending_in_one_commit(manager: Manager) -> None:
    events = [event(Name=f"t{i}", ContainerID="old", RestartCount=2) for i in range(100)]
    tasks = asyncio.run(manager.submit_many(events))
    assert [t.ID for t in tasks] == [e.Task.ID for e in events]
    assert all(t.State is State.PENDING for t in tasks)
    assert all(not t.ContainerID and t.RestartCount == 0 for t in tasks)
    assert isinstance(manager.backend, CountingBackend)
    assert manager.backend.commits == 1
    assert len(manager.list_tasks()) == 100
    assert [e.Task.State for e in asyncio.run(manager.history(tasks[0].ID))] == [State.PENDING]


def test_a_repeated_task_is_acknowledged_not_stored_again(manager: Manager) -> None:
    first = event(Name="once")
    (accepted,) = asyncio.run(manager.submit_many([first]))
    retry = first.model_copy(update={"Task": first.Task.model_copy(update={"Name": "changed"})})
    twice = asyncio.run(manager.submit_many([retry, retry]))
    assert twice == [accepted, accepted]
    assert len(manager.list_tasks()) == 1
    assert len(asyncio.run(manager.history(accepted.ID))) == 1
    same_batch = event(Name="dup")
    answers = asyncio.run(manager.submit_many([same_batch, same_batch]))
    assert answers[0] == answers[1] and len(manager.list_tasks()) == 2


def test_a_batch_is_all_or_nothing(manager: Manager) -> None:
    with pytest.raises(BadRequest, match="each State must be Scheduled or Running"):
        asyncio.run(manager.submit_many([event(), event(State.COMPLETED)]))
    with pytest.raises(BadRequest, match="must be Scheduled, Running or Completed, not Failed"):
        asyncio.run(manager.submit(event(State.FAILED)))
    assert manager.list_tasks() == []
    assert isinstance(manager.backend, CountingBackend) and manager.backend.commits == 0


def test_a_single_completed_event_stops_the_task(manager: Manager) -> None:
    task = asyncio.run(manager.submit(event()))
    stopped = asyncio.run(manager.submit(TaskEvent(State=State.COMPLETED, Task=task)))
    assert stopped.State is State.COMPLETED
    assert stopped.DesiredState is State.COMPLETED
    assert stopped.Reason == "cancelled before placement"
    assert [e.State for e in asyncio.run(manager.history(task.ID))] == [
        State.RUNNING,
        State.COMPLETED,
    ]
