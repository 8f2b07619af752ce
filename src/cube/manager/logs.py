"""A task's logs through the manager: found on the task's worker, passed on as they come.

The manager keeps no logs: it asks the worker that runs (or ran) the task, over the
client it already holds for that worker (with its credential and TLS), and relays the
worker's NDJSON (cube.logs) chunk by chunk. Back-pressure carries through: a reader
that does not read stops the relay, which stops reading from the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

from cube.errors import ApiError
from cube.logs import error_line, paced
from cube.manager.manager import Manager
from cube.task import State, Task
from cube.worker.client import Deposed, WorkerRejected, WorkerUnreachable


async def open_logs(
    manager: Manager, task: Task, query: Mapping[str, Any], stop: asyncio.Event | None = None
) -> tuple[AsyncGenerator[bytes, None], Callable[[], Awaitable[None]]]:
    """The body to send and what closes the worker's stream; an ApiError when there is
    nothing to relay: not placed yet (409), worker down or this manager deposed (503),
    refused by the worker (its 4xx).
    The body ends when ``stop`` is set (the manager is stopping)."""
    if not task.Node:
        why = task.Reason or "waiting to be placed"
        raise ApiError(409, f"task {task.ID} has no logs yet: it is {task.State.label} ({why})")
    client = manager.clients.get(task.Node)
    if client is None:
        raise ApiError(503, f"task {task.ID} ran on worker {task.Node}, which has left the cluster")
    if task.Node in manager.state.lost:
        raise ApiError(
            503,
            f"task {task.ID} is on worker {task.Node}, which is down: ask again once it is back",
        )
    stack = contextlib.AsyncExitStack()
    try:
        chunks = await stack.enter_async_context(client.logs(task.ID, query))
    except Deposed as exc:
        await stack.aclose()
        manager.on_deposed(task.Node, exc)
        raise ApiError(
            503, f"this manager no longer leads (worker {task.Node}: {exc}): ask again"
        ) from None
    except WorkerRejected as exc:
        await stack.aclose()
        status = exc.status if exc.status in (404, 409, 410) else 502
        if exc.status == 404 and task.State is State.SCHEDULED:
            status = 409  # sent, not taken yet: ask again in a moment
        raise ApiError(status, f"worker {task.Node}: {exc}") from None
    except WorkerUnreachable as exc:
        await stack.aclose()
        raise ApiError(503, f"cannot read the logs from worker {task.Node}: {exc}") from None

    async def relay() -> AsyncGenerator[bytes, None]:
        whole = True  # the last chunk ended a line
        try:
            async for chunk in paced(chunks, stop=stop):
                if chunk:
                    whole = chunk.endswith(b"\n")
                    yield chunk
        except WorkerUnreachable as exc:
            message = f"the log stream from worker {task.Node} broke: {exc}"
            yield (b"" if whole else b"\n") + error_line(message)
        finally:
            await stack.aclose()

    return relay(), stack.aclose
