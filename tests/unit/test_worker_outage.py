"""Work Docker could not take while it was away is done as soon as it answers again.

No manager here: the worker alone must retry, not wait for a manager's next resync.
The periodic reconcile is pushed out of reach (an hour), so only the reconnection can
do it.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import pytest

from cube.runtime.base import ContainerInfo, ContainerSpec
from cube.runtime.simulated import SimulatedRuntime
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.worker.worker import Worker
from tests.support import eventually

pytestmark = pytest.mark.anyio


class CountingRuntime(SimulatedRuntime):
    """Counts every call to start and stop, the ones Docker refused included."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    async def start(self, spec: ContainerSpec) -> ContainerInfo:
        self.calls["start"] += 1
        return await super().start(spec)

    async def stop(self, container_id: str, timeout: float = 10.0) -> None:
        self.calls["stop"] += 1
        await super().stop(container_id, timeout)


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    node = Worker("outage", MemoryStore(), CountingRuntime(), reconcile_interval=3600)
    await node.start()
    await eventually(lambda: node.docker_ok, what="docker seen")
    yield node
    await node.close()


def engine(worker: Worker) -> CountingRuntime:
    assert isinstance(worker.runtime, CountingRuntime)
    return worker.runtime


async def docker_goes_away(worker: Worker) -> None:
    engine(worker).set_available(False)
    await eventually(lambda: not worker.docker_ok, what="the worker to see docker gone")


async def running(worker: Worker, task: Task) -> Task:
    worker.submit(TaskEvent(Task=task))
    return await eventually(
        lambda: (t := worker.get(task.ID)).State is State.RUNNING and t, what="Running"
    )


async def test_a_stop_docker_refused_is_done_when_it_is_back(worker: Worker) -> None:
    task = await running(worker, Task(Image="cube/busybox"))
    await docker_goes_away(worker)

    worker.stop(task.ID)
    await eventually(lambda: engine(worker).calls["stop"] == 1, what="the stop to be refused")
    assert worker.get(task.ID).State is State.RUNNING  # nothing stopped yet

    engine(worker).set_available(True)
    stopped = await eventually(
        lambda: (t := worker.get(task.ID)).State is State.COMPLETED and t, what="Completed"
    )
    assert stopped.Reason == "stopped on request"
    assert engine(worker).containers == []


async def test_a_restart_stopped_while_docker_is_away_never_runs(worker: Worker) -> None:
    """A restart is Scheduled with no container yet, so its stop needs no Docker; the
    old incarnation's container, which Docker kept, goes once Docker is back."""
    first = await running(worker, Task(Image="cube/busybox"))
    await docker_goes_away(worker)

    worker.submit(TaskEvent(Task=first.model_copy(update={"RestartCount": 1})))
    worker.stop(first.ID)
    stopped = await eventually(
        lambda: (t := worker.get(first.ID)).State is State.COMPLETED and t, what="Completed"
    )
    assert stopped.RestartCount == 1

    engine(worker).set_available(True)
    await eventually(lambda: engine(worker).containers == [], what="the old container removed")
    assert engine(worker).calls["start"] == 1  # the stopped restart never ran
    assert worker.get(first.ID).State is State.COMPLETED


async def test_a_start_docker_refused_runs_when_it_is_back(worker: Worker) -> None:
    await docker_goes_away(worker)
    task = Task(Image="cube/busybox")
    worker.submit(TaskEvent(Task=task))
    await eventually(lambda: engine(worker).calls["start"] == 1, what="the start to be refused")
    assert worker.get(task.ID).State is State.SCHEDULED

    engine(worker).set_available(True)
    ran = await eventually(
        lambda: (t := worker.get(task.ID)).State is State.RUNNING and t, what="Running"
    )
    assert [c.id for c in engine(worker).containers] == [ran.ContainerID]
