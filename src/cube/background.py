"""Background jobs that cannot die silently and are all cancelled on shutdown.

Both the manager and the worker fire off work they do not await (a send to a worker,
a check of a container). A bare ``asyncio.create_task`` can be garbage collected
mid-flight and swallows its exception until exit; this keeps a reference, logs a
failure when it happens, and lets ``close`` cancel whatever is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Background:
    def __init__(self, name: str) -> None:
        self.name = name
        # A dict, not a set: cancelled in the order they started, not in memory order,
        # so a simulated run with a crash in it replays exactly.
        self._jobs: dict[asyncio.Task[None], None] = {}

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        handle = asyncio.create_task(self._logged(job))
        self._jobs[handle] = None
        handle.add_done_callback(lambda done: self._forget(done, job))

    def _forget(self, handle: asyncio.Task[None], job: Coroutine[Any, Any, None]) -> None:
        self._jobs.pop(handle, None)
        # Cancelled before it started, the job was never awaited: close it, or Python
        # warns "coroutine ... was never awaited" (a no-op for one that ran).
        job.close()

    async def _logged(self, job: Coroutine[Any, Any, None]) -> None:
        try:
            await job
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: background job failed", self.name)

    def __len__(self) -> int:
        return len(self._jobs)

    async def close(self) -> None:
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job
