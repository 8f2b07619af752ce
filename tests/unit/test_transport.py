"""The in-process transport: a real worker app, its watch stream included, without sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import httpx
import pytest

from cube.runtime.simulated import SimulatedRuntime
from cube.stats import StatsSampler
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.transport import InProcessTransport, lifespan
from cube.worker.api import create_app
from cube.worker.client import TaskChanges, WorkerClient, WorkerRejected
from cube.worker.worker import Worker
from tests.support import eventually

pytestmark = pytest.mark.anyio

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@pytest.fixture
async def worker() -> AsyncIterator[tuple[Worker, WorkerClient]]:
    node = Worker("w1", MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)
    app = create_app(node, StatsSampler(interval=3600, task_count=node.running_count))
    http = httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://w1")
    async with lifespan(app):
        yield node, WorkerClient("http://w1", http)
        await http.aclose()


async def test_a_worker_client_submits_lists_and_stops(
    worker: tuple[Worker, WorkerClient],
) -> None:
    node, client = worker
    task = Task(Image="cube/busybox")
    assert (await client.submit(TaskEvent(Task=task))).ID == task.ID
    await eventually(lambda: node.get(task.ID).State is State.RUNNING, what="Running")
    assert [t.State for t in await client.tasks()] == [State.RUNNING]
    assert (await client.health())["Name"] == "w1"
    await client.stop(task.ID)
    await eventually(lambda: node.get(task.ID).State is State.COMPLETED, what="Completed")
    with pytest.raises(WorkerRejected) as refused:
        await client.stop(Task(Image="unknown").ID)
    assert refused.value.status == 404


async def test_the_watch_stream_brings_changes_as_they_happen(
    worker: tuple[Worker, WorkerClient],
) -> None:
    node, client = worker
    first = Task(Image="cube/busybox")
    await client.submit(TaskEvent(Task=first))
    before = asyncio.all_tasks()
    seen: list[TaskChanges] = []
    second = Task(Image="cube/busybox")
    with anyio.fail_after(10):
        async with contextlib.aclosing(client.watch(heartbeat=30)) as changes:
            async for change in changes:
                seen.append(change)
                if len(seen) == 1:
                    assert change.complete and [t.ID for t in change.tasks] == [first.ID]
                    await client.submit(TaskEvent(Task=second))  # while the stream is open
                if any(t.ID == second.ID and t.State is State.RUNNING for t in change.tasks):
                    break
    assert not seen[-1].complete and seen[-1].epoch == node.epoch
    # Leaving the stream ended the app's side of it.
    await eventually(lambda: asyncio.all_tasks() <= before, what="the stream's task to end")


# --- the ASGI contract, against apps small enough to see every message ------------------


def client_for(app: Callable[[Message, Receive, Send], Awaitable[None]]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://app")


async def start(send: Send, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"x-a", b"1")]})


async def test_the_response_arrives_before_its_body_is_done() -> None:
    more = asyncio.Event()

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await start(send)
        await send({"type": "http.response.body", "body": b"one,", "more_body": True})
        await more.wait()
        await send({"type": "http.response.body", "body": b"two"})

    async with client_for(app) as client, client.stream("GET", "/") as response:
        assert response.status_code == 200 and response.headers["x-a"] == "1"
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"one,"
        more.set()
        assert [chunk async for chunk in chunks] == [b"two"]


async def test_the_request_body_and_scope_reach_the_app() -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        message = await receive()
        answer = b"|".join(
            [
                scope["method"].encode(),
                scope["path"].encode(),
                scope["query_string"],
                message["body"],
            ]
        )
        await start(send, 201)
        await send({"type": "http.response.body", "body": answer})

    async def body() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async with client_for(app) as client:
        response = await client.post("/x%20y", params={"q": "1"}, content=body())
    assert response.status_code == 201 and response.content == b"POST|/x y|q=1|ab"


async def test_an_app_error_before_the_response_is_raised() -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        raise ValueError("broken handler")

    async with client_for(app) as client:
        with pytest.raises(ValueError, match="broken handler"):
            await client.get("/")


async def test_an_app_error_mid_body_is_a_read_error() -> None:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await start(send)
        await send({"type": "http.response.body", "body": b"half", "more_body": True})
        raise ValueError("died")

    async with client_for(app) as client:
        with pytest.raises(httpx.ReadError, match="died"):
            await client.get("/")


async def test_closing_the_response_disconnects_the_app() -> None:
    heard: list[str] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await receive()  # the (empty) request
        await start(send)
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        heard.append((await receive())["type"])

    async with client_for(app) as client:
        async with client.stream("GET", "/") as response:
            assert await anext(response.aiter_raw()) == b"x"
        assert heard == ["http.disconnect"]


async def test_closing_the_response_ends_an_app_that_does_not_listen() -> None:
    ended = asyncio.Event()

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await start(send)
        try:
            await asyncio.Event().wait()  # never sends its body, never reads
        finally:
            ended.set()

    async with client_for(app) as client:
        async with client.stream("GET", "/") as response:
            assert response.status_code == 200
        assert ended.is_set()


async def test_a_stop_for_an_older_incarnation_leaves_a_newer_one_running(
    worker: tuple[Worker, WorkerClient],
) -> None:
    """A manager stopping a stray copy names the incarnation it saw; a newer one sent
    here since must survive that stop, however late it arrives."""
    node, client = worker
    task = Task(Image="cube/busybox")
    await client.submit(TaskEvent(Task=task))
    newer = task.model_copy(update={"RestartCount": 2})
    await client.submit(TaskEvent(Task=newer))
    await eventually(lambda: node.get(task.ID).State is State.RUNNING, what="Running")
    await client.stop(task.ID, up_to=1)
    assert node.get(task.ID).RestartCount == 2
    assert node._desired[task.ID].run  # still wanted running
    await client.stop(task.ID, up_to=2)
    await eventually(lambda: node.get(task.ID).State is State.COMPLETED, what="stopped")
    with pytest.raises(WorkerRejected) as refused:
        await client._call("DELETE", f"/tasks/{task.ID}?restartCount=two")
    assert refused.value.status == 400
