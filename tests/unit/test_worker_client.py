"""The worker client turns every failure of httpx into WorkerUnreachable or WorkerRejected."""

from __future__ import annotations

import httpx
import pytest

from cube.task import Task, TaskEvent
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
