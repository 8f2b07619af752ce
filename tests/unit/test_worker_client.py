"""The worker client turns every failure of httpx into WorkerUnreachable or WorkerRejected."""

from __future__ import annotations

import json

import httpx
import pytest

from cube.explain import decide
from cube.task import State, Task, TaskEvent
from cube.worker.client import WorkerClient, WorkerUnreachable

pytestmark = pytest.mark.anyio


async def test_an_address_httpx_cannot_parse_is_unreachable_not_a_crash() -> None:
    client = WorkerClient("http://host:abc", httpx.AsyncClient())
    try:
        for call in (client.stats, client.health, client.tasks, client.changes):
            with pytest.raises(WorkerUnreachable, match=r"host:abc.*InvalidURL"):
                await call()
        with pytest.raises(WorkerUnreachable, match="InvalidURL"):
            await client.submit_many([TaskEvent(Task=Task(Image="i"))])
        with pytest.raises(WorkerUnreachable, match="InvalidURL"):
            async for _ in client.watch():
                pass
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "error",
    [httpx.StreamClosed(), httpx.CookieConflict("two"), httpx.RemoteProtocolError("cut")],
)
async def test_any_httpx_error_is_unreachable(error: Exception) -> None:
    def fail(_: httpx.Request) -> httpx.Response:
        raise error

    client = WorkerClient("http://w:1", httpx.AsyncClient(transport=httpx.MockTransport(fail)))
    try:
        with pytest.raises(WorkerUnreachable, match=type(error).__name__):
            await client.stats()
        with pytest.raises(WorkerUnreachable, match=type(error).__name__):
            async for _ in client.watch():
                pass
    finally:
        await client.aclose()


async def test_a_task_goes_to_its_worker_without_the_managers_placement_record() -> None:
    """The worker needs the task, not why the manager chose it (Task.Placement)."""
    bodies: list[bytes] = []

    def worker(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        sent = json.loads(request.content)
        return httpx.Response(201, json=[] if isinstance(sent, list) else sent["Task"])

    placed = Task(Image="i", Node="w:1", Cmd=["sleep", "1"])
    placed = placed.model_copy(update={"Placement": decide("epvm", 2, {}, {"w:1": 0.5}, "w:1")})
    event = TaskEvent(State=State.SCHEDULED, Task=placed)
    client = WorkerClient("http://w:1", httpx.AsyncClient(transport=httpx.MockTransport(worker)))
    try:
        await client.submit_many([event, event])
        await client.submit(event)
    finally:
        await client.aclose()
    many, one = json.loads(bodies[0]), json.loads(bodies[1])
    for sent in (*many, one):
        assert "Placement" not in sent["Task"]
        assert sent["Task"]["Cmd"] == ["sleep", "1"] and sent["Task"]["Node"] == "w:1"
        assert TaskEvent.model_validate(sent).Task == placed.model_copy(update={"Placement": None})
