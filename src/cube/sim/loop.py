"""Virtual time and a process made deterministic, for the simulator.

:class:`VirtualLoop` is asyncio's own selector loop whose clock is a number: when
nothing is ready to run, instead of blocking in ``select`` until the next timer, it
moves its clock to that timer. Every ``asyncio.sleep``, ``wait_for`` and ``call_later``
in Cube, in FastAPI and in httpx then happens on virtual time, at the instant it is due,
without anyone waiting; a simulated hour passes as fast as the code runs.

:func:`deterministic` removes the other sources of chance a run could depend on, so a
seed always gives the same run: entropy (``os.urandom``, behind ``uuid.uuid4``) comes
from the seed, the wall clock (``cube.task.now``) from the loop's clock, and string
hashing must be fixed (``PYTHONHASHSEED``), which only a new process can do: the
simulator's entry point re-executes itself when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import selectors
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import cube.task

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set: every coroutine waits for the others."""


class _VirtualSelector(selectors.DefaultSelector):
    """The real selector, asked without waiting; a wait moves the loop's clock instead.

    Real file descriptors still work (the loop's own self-pipe): what is readable now is
    returned at once, and time only moves when there is nothing else to do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Stalled("the simulation stalled: nothing to run and no timer set")
        assert self.loop is not None
        self.loop.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


class LoopClock:
    """A :class:`~cube.clock.Clock` on the running loop's time (virtual in the simulator)."""

    def __init__(self, epoch: datetime = EPOCH) -> None:
        self.epoch = epoch

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def now(self) -> datetime:
        return self.epoch + timedelta(seconds=self.monotonic())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(timeout, 0.0))
        return event.is_set()


@contextlib.contextmanager
def deterministic(seed: int, clock: LoopClock) -> Iterator[None]:
    """Entropy from ``seed`` and the wall clock from ``clock``, for the block's duration."""
    entropy = random.Random(seed)

    def urandom(size: int) -> bytes:
        return entropy.randbytes(size)

    saved: list[tuple[Any, str, Any]] = [(os, "urandom", os.urandom), (cube.task, "now", cube.task.now)]
    os.urandom = urandom
    cube.task.now = clock.now
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def run(main: Callable[[], Any], seed: int) -> Any:
    """Run the coroutine function ``main`` on a fresh :class:`VirtualLoop`, deterministically."""
    loop = VirtualLoop()
    try:
        with deterministic(seed, LoopClock()):
            return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def hash_seed_fixed() -> bool:
    return os.environ.get("PYTHONHASHSEED") == "0"
