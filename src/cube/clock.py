"""Time, injectable: every timer of the control plane goes through a :class:`Clock`.

The manager never calls ``time`` or ``asyncio.sleep`` itself. In production it gets a
:class:`SystemClock`; a test (and later the deterministic simulator) gives it a
:class:`ManualClock` and moves time on by hand, so that a restart backoff of 30 s or a
worker timeout takes no real time to test and happens exactly when it should.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and deadlines)."""
        ...

    def now(self) -> datetime:
        """Wall-clock time, aware, UTC (for what is stored and shown)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set or ``timeout`` seconds pass; say whether it was set."""
        ...


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Until ``event`` is set or ``timeout`` seconds pass on the loop's clock; say which.

    ``asyncio.wait``, not ``wait_for``: cancelled (its loop stopped), this returns at
    once and leaves the inner wait cancelled behind it, where ``wait_for`` on Python
    3.11 waits for the inner wait to finish, which in the simulator once never came
    (a crashed manager's loop hung in it, seeds 138 and 332)."""
    if event.is_set():
        return True  # no timer and no task for what is already there
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=max(timeout, 0.0))
    finally:
        waiter.cancel()
    return event.is_set()


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        return await wait_event(event, timeout)


class ManualClock:
    """Time that moves only when :meth:`advance` says so; sleepers wake in order."""

    def __init__(self, start: datetime | None = None) -> None:
        self._mono = 1000.0
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._wall

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._mono + max(seconds, 0.0), next(self._seq), future))
        await future

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        sleeper = asyncio.ensure_future(self.sleep(timeout))
        setter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, setter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            setter.cancel()
        return event.is_set()

    async def advance(self, seconds: float) -> None:
        """Move time on, waking every sleeper due on the way, each at its own time."""
        end = self._mono + seconds
        while self._timers and self._timers[0][0] <= end:
            at, _, future = heapq.heappop(self._timers)
            if future.done():
                continue  # a cancelled sleeper (an event came first): nothing to wake
            self._step_to(at)
            future.set_result(None)
            for _ in range(20):  # let the woken coroutines run to their next wait
                await asyncio.sleep(0)
        self._step_to(end)
        for _ in range(20):
            await asyncio.sleep(0)

    def _step_to(self, at: float) -> None:
        self._wall += timedelta(seconds=at - self._mono)
        self._mono = at
