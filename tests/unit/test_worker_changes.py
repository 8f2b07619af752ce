"""A worker numbers its changes, so a manager can follow them instead of polling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cube.runtime.simulated import SimulatedRuntime
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.worker.worker import Worker

pytestmark = pytest.mark.anyio


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    node = Worker("changes", MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)
    await node.start()
    yield node
    await node.close()


async def running(worker: Worker, task: Task) -> None:
    for _ in range(10_000):
        if worker.get(task.ID).State is State.RUNNING:
            return
        await asyncio.sleep(0)
    raise AssertionError("never Running")


async def test_changes_since_a_version(worker: Worker) -> None:
    complete, tasks = worker.changes(None, None)
    assert complete and tasks == []
    start = worker.version
    first, second = Task(Image="a"), Task(Image="b")
    worker.submit(TaskEvent(Task=first))
    worker.submit(TaskEvent(Task=second))
    await running(worker, first)
    await running(worker, second)
    complete, tasks = worker.changes(start, worker.epoch)
    assert not complete
    assert {t.ID for t in tasks} == {first.ID, second.ID}
    assert all(t.State is State.RUNNING for t in tasks)  # the latest of each, once
    assert worker.changes(worker.version, worker.epoch) == (False, [])


async def test_another_epoch_or_a_future_version_gets_everything(worker: Worker) -> None:
    task = Task(Image="a")
    worker.submit(TaskEvent(Task=task))
    for since, epoch in ((0, "another"), (worker.version + 5, worker.epoch)):
        complete, tasks = worker.changes(since, epoch)
        assert complete and [t.ID for t in tasks] == [task.ID]


async def test_waiting_returns_on_a_change_but_not_on_a_submission(worker: Worker) -> None:
    since = worker.version
    waiting = asyncio.create_task(worker.wait_for_change(since, worker.epoch, 30))
    task = Task(Image="a")
    worker.submit(TaskEvent(Task=task))  # the sender knows: no wake-up for that alone
    await asyncio.sleep(0)
    await running(worker, task)  # ... but the start is news
    await asyncio.wait_for(waiting, 5)
    _, tasks = worker.changes(since, worker.epoch)
    assert [t.State for t in tasks] == [State.RUNNING]


async def test_waiting_returns_at_once_when_behind(worker: Worker) -> None:
    worker.submit(TaskEvent(Task=Task(Image="a")))
    await asyncio.wait_for(worker.wait_for_change(0, worker.epoch, 30), 1)
    await asyncio.wait_for(worker.wait_for_change(0, "old epoch", 30), 1)
