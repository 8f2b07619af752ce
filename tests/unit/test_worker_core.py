"""The worker's core against the simulated runtime: no Docker, no HTTP, milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from cube.runtime.simulated import SimulatedRuntime
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.worker.worker import Worker
from tests.inprocess import GatedRuntime

pytestmark = pytest.mark.anyio


async def until(check: Callable[[], bool], steps: int = 10_000) -> None:
    """Let the event loop run until ``check`` holds (bounded, no wall-clock sleeps)."""
    for _ in range(steps):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    node = Worker("core", MemoryStore(), GatedRuntime(), reconcile_interval=3600)
    await node.start()
    yield node
    await node.close()


def state(worker: Worker, task: Task) -> Task:
    return worker.get(task.ID)


async def test_submit_runs_and_repeat_is_ignored(worker: Worker) -> None:
    task = Task(Image="cube/busybox")
    worker.submit(TaskEvent(Task=task))
    await until(lambda: state(worker, task).State is State.RUNNING)
    worker.submit(TaskEvent(Task=task))
    runtime = worker.runtime
    assert isinstance(runtime, SimulatedRuntime)
    assert runtime.starts == 1


async def test_a_stale_check_cannot_undo_a_newer_incarnation(worker: Worker) -> None:
    runtime = worker.runtime
    assert isinstance(runtime, GatedRuntime)
    task = Task(Image="cube/busybox")
    worker.submit(TaskEvent(Task=task))
    await until(lambda: state(worker, task).State is State.RUNNING)
    first = state(worker, task)

    runtime.gate.clear()
    runtime.exit(first.ContainerID, 1)  # dies; the worker's check now waits in inspect
    await until(lambda: runtime.waiting > 0)
    worker.submit(TaskEvent(Task=task.model_copy(update={"RestartCount": 1})))
    runtime.gate.set()  # the check resumes with its copy of incarnation 0

    await until(
        lambda: state(worker, task).State is State.RUNNING and state(worker, task).RestartCount == 1
    )
    assert state(worker, task).ContainerID != first.ContainerID
    assert len([c for c in runtime.containers if c.running]) == 1
