"""A worker that stops leaves nothing running and closes what it holds."""

from __future__ import annotations

import asyncio

import pytest

from cube.stats import StatsSampler
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.worker.api import create_app
from cube.worker.worker import Worker
from tests.inprocess import GatedRuntime
from tests.support import eventually

pytestmark = pytest.mark.anyio


class ClosingStore(MemoryStore[Task]):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def running(worker: Worker, task: Task) -> Task:
    worker.submit(TaskEvent(Task=task))
    return await eventually(
        lambda: (t := worker.get(task.ID)).State is State.RUNNING and t, what="Running"
    )


async def test_close_stops_the_loops_before_the_checks_they_start() -> None:
    """A Docker event arriving while the worker closes must not start a check that
    outlives it: the loop that reads events ends before the checks are cancelled."""
    runtime = GatedRuntime()
    worker = Worker("closing", MemoryStore(), runtime, reconcile_interval=3600)
    await worker.start()
    await eventually(lambda: worker.docker_ok, what="docker seen")
    first = await running(worker, Task(Image="cube/busybox"))
    second = await running(worker, Task(Image="cube/busybox"))

    runtime.gate.clear()
    runtime.exit(first.ContainerID, 1)  # its check now waits in inspect
    await eventually(lambda: runtime.waiting == 1, what="a check under way")
    runtime.exit(second.ContainerID, 1)  # an event the loop has not read yet
    await worker.close()

    assert len(worker._checks) == 0, "a check started after close"
    assert runtime.waiting == 1


async def test_close_closes_the_store_and_the_runtime() -> None:
    store, runtime = ClosingStore(), GatedRuntime()
    worker = Worker("closing", store, runtime, reconcile_interval=3600)
    await worker.start()
    await running(worker, Task(Image="cube/busybox"))
    await worker.close()
    assert store.closed and runtime.closed


async def test_the_apps_lifespan_ends_the_sampler_and_closes_the_worker() -> None:
    store, runtime = ClosingStore(), GatedRuntime()
    worker = Worker("closing", store, runtime, reconcile_interval=3600)
    sampler = StatsSampler(interval=3600)
    app = create_app(worker, sampler)
    before = asyncio.all_tasks()
    async with app.router.lifespan_context(app):
        await running(worker, Task(Image="cube/busybox"))
    assert store.closed and runtime.closed
    assert asyncio.all_tasks() - before == set(), "tasks left running after shutdown"
