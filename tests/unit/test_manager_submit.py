"""Accepting tasks: what the manager stores for a submission, and how often it writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import TypeVar

import pytest

from cube.manager.manager import BadRequest, Manager
from cube.scheduler import Epvm
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent

M = TypeVar("M", Task, TaskEvent)


class CountingStore(MemoryStore[M]):
    """A memory store that counts its writes (each would be a commit in SQLite)."""

    writes = 0

    def put(self, key: str, value: M) -> None:
        self.writes += 1
        super().put(key, value)

    def put_many(self, items: Iterable[tuple[str, M]]) -> None:
        self.writes += 1
        super().put_many(items)


@pytest.fixture
def manager() -> Iterator[Manager]:
    events = CountingStore[TaskEvent](group_of=lambda e: str(e.Task.ID))
    node = Manager([], Epvm(), CountingStore[Task](), events)
    yield node
    asyncio.run(node.close())


def event(state: State = State.RUNNING, **task: object) -> TaskEvent:
    return TaskEvent(State=state, Task=Task(Image="cube/busybox:latest", **task))


def test_a_batch_is_stored_pending_with_one_write_per_store(manager: Manager) -> None:
    events = [event(Name=f"t{i}", ContainerID="old", RestartCount=2) for i in range(100)]
    tasks = manager.submit_many(events)
    assert [t.ID for t in tasks] == [e.Task.ID for e in events]
    assert all(t.State is State.PENDING for t in tasks)
    assert all(not t.ContainerID and t.RestartCount == 0 for t in tasks)
    assert isinstance(manager.tasks, CountingStore) and isinstance(manager.events, CountingStore)
    assert manager.tasks.writes == 1 and manager.events.writes == 1
    assert manager.tasks.count() == 100
    assert [e.Task.State for e in manager.history(tasks[0].ID)] == [State.PENDING]


def test_a_repeated_task_is_acknowledged_not_stored_again(manager: Manager) -> None:
    first = event(Name="once")
    (accepted,) = manager.submit_many([first])
    retry = first.model_copy(update={"Task": first.Task.model_copy(update={"Name": "changed"})})
    twice = manager.submit_many([retry, retry])
    assert twice == [accepted, accepted]
    assert manager.tasks.count() == 1
    assert len(manager.history(accepted.ID)) == 1
    same_batch = event(Name="dup")
    answers = manager.submit_many([same_batch, same_batch])
    assert answers[0] == answers[1] and manager.tasks.count() == 2


def test_a_batch_is_all_or_nothing(manager: Manager) -> None:
    with pytest.raises(BadRequest, match="each State must be Scheduled or Running"):
        manager.submit_many([event(), event(State.COMPLETED)])
    with pytest.raises(BadRequest, match="must be Scheduled, Running or Completed, not Failed"):
        manager.submit(event(State.FAILED))
    assert manager.tasks.count() == 0 and manager.events.count() == 0


def test_a_single_completed_event_stops_the_task(manager: Manager) -> None:
    task = manager.submit(event())
    stopped = manager.submit(TaskEvent(State=State.COMPLETED, Task=task))
    assert stopped.State is State.COMPLETED
    assert stopped.Reason == "cancelled before placement"
