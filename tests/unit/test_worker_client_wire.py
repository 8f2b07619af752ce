"""The worker client's own path to workers (aiohttp, no httpx): a real worker app over
loopback sockets, served by uvicorn as `cube worker` serves it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn

from cube.runtime.simulated import SimulatedRuntime
from cube.stats import StatsSampler
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.worker.api import create_app
from cube.worker.client import TaskChanges, WorkerClient, WorkerRejected, WorkerUnreachable
from cube.worker.credentials import Credentials
from cube.worker.worker import Worker
from tests.support import eventually

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def served(worker: Worker, credentials: Credentials | None = None) -> AsyncIterator[str]:
    """The worker's app on a loopback port of its own; yields its address."""
    sampler = StatsSampler(interval=3600, task_count=worker.running_count)
    app = create_app(worker, sampler, credentials=credentials)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started or serving.done(), what="the worker serving")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        sock.close()


@pytest.fixture
async def worker() -> AsyncIterator[tuple[Worker, WorkerClient]]:
    node = Worker("w1", MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)
    async with served(node) as url:
        client = WorkerClient.connect(url, timeout=5.0)
        try:
            yield node, client
        finally:
            await client.aclose()
    assert client.is_closed


async def test_sends_a_batch_follows_the_stream_and_stops(
    worker: tuple[Worker, WorkerClient],
) -> None:
    node, client = worker
    tasks = [Task(Image="cube/busybox", State=State.SCHEDULED) for _ in range(3)]
    changes = client.watch(heartbeat=1.0, stats=1.0)
    async with contextlib.aclosing(changes):
        first: TaskChanges = await anext(changes)
        assert first.complete and first.tasks == [] and first.stats is not None
        await client.submit_many([TaskEvent(Task=task) for task in tasks])
        running: set[str] = set()
        while len(running) < len(tasks):
            change = await anext(changes)
            running |= {str(t.ID) for t in change.tasks if t.State is State.RUNNING}
    assert running == {str(task.ID) for task in tasks}
    one = Task(Image="cube/busybox")
    assert (await client.submit(TaskEvent(Task=one))).ID == one.ID
    assert len(await client.tasks()) == 4
    assert (await client.health())["Name"] == "w1"
    assert "Cores" in await client.stats()
    since = await client.changes()
    assert since.epoch is not None and since.version is not None and len(since.tasks) == 4
    await client.stop(one.ID)
    await eventually(lambda: node.get(one.ID).State is State.COMPLETED, what="Completed")
    later = await client.changes(since.version, since.epoch, wait=1.0)
    assert [t.ID for t in later.tasks] == [one.ID] and not later.complete


async def test_a_line_longer_than_a_read_comes_whole(
    worker: tuple[Worker, WorkerClient],
) -> None:
    _, client = worker
    tasks = [Task(Image="cube/busybox", Name="x" * 200) for _ in range(400)]  # ~250 kB
    await client.submit_many([TaskEvent(Task=task) for task in tasks])
    changes = client.watch(heartbeat=1.0)
    async with contextlib.aclosing(changes):
        first = await anext(changes)
    assert first.complete and {t.ID for t in first.tasks} == {t.ID for t in tasks}


async def test_a_refusal_is_rejected_with_its_status_and_message(
    worker: tuple[Worker, WorkerClient],
) -> None:
    _, client = worker
    with pytest.raises(WorkerRejected, match="not found") as refused:
        await client.stop(Task(Image="unknown").ID)
    assert refused.value.status == 404
    with pytest.raises(WorkerRejected) as bad:
        await client.submit(TaskEvent(State=State.FAILED, Task=Task(Image="i")))
    assert bad.value.status == 400


async def test_no_worker_there_is_unreachable_for_every_call() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    for url in (f"http://127.0.0.1:{port}", "http://host:abc"):
        client = WorkerClient.connect(url, timeout=2.0)
        try:
            for call in (client.stats, client.health, client.tasks, client.changes):
                with pytest.raises(WorkerUnreachable, match=url.removeprefix("http://")):
                    await call()
            with pytest.raises(WorkerUnreachable):
                await client.submit_many([TaskEvent(Task=Task(Image="i"))])
            with pytest.raises(WorkerUnreachable):
                async for _ in client.watch():
                    pass
        finally:
            await client.aclose()
