"""A manager stops even when a worker's watch turns its cancellation into a failure.

Found by the simulator (seed 613): cancelling the task that follows a worker hands the
cancel to the watch it awaits; when that watch's stream then fails to close and the
failure surfaces as WorkerUnreachable, the watch ends normally, the cancel is lost, and
the follower starts a new watch, for ever: the manager never finished stopping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from cube.manager.backend import MemoryBackend
from cube.worker.client import TaskChanges, WorkerUnreachable
from tests.inprocess import cluster

pytestmark = pytest.mark.anyio


class CloseFailsUnderCancel:
    """A worker client whose watch waits, and fails (not cancelled) when cancelled."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.watches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def watch(self, *args: Any, **kwargs: Any) -> AsyncGenerator[TaskChanges, None]:
        self.watches += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise WorkerUnreachable("the stream broke as it was closed") from None
        yield TaskChanges([], True, None, None)  # never reached


async def test_a_manager_stops_though_a_watch_swallows_its_cancel() -> None:
    async with cluster(1) as c:
        m = await c.start_manager(MemoryBackend())
        tracked = m.tracker.workers["w1:5556"]
        faulty = CloseFailsUnderCancel(tracked.client)
        tracked.client = faulty  # type: ignore[assignment]
        tracked.epoch = None
        m.tracker.lost("w1:5556")  # its current watch ends; the next is the faulty one
        await c.until(lambda: faulty.watches >= 1, what="a faulty watch running")
        stopping = asyncio.ensure_future(c.crash_manager())
        done, _ = await asyncio.wait({stopping}, timeout=10)  # real seconds: a hang
        if not done:
            stopping.cancel()
        assert done, "the manager never finished stopping"
        assert faulty.watches == 1  # the cancelled follower started no other
