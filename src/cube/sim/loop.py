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
import contextvars
import os
import random
import selectors
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import cube.task
from cube.clock import wait_event

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


# Loop iterations in a row without a timer coming due: beyond this, something spins.
SPIN_LIMIT = 200_000
TICK = 1e-9  # what one turn of the loop costs on the virtual clock


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set: every coroutine waits for the others."""


class Spinning(RuntimeError):
    """Time stands still while the loop keeps running: a livelock, which on a real
    clock would be a process at full CPU doing nothing useful."""


class _VirtualSelector(selectors.DefaultSelector):
    """The real selector, asked without waiting; a wait moves the loop's clock instead.

    Real file descriptors still work (the loop's own self-pipe): what is readable now is
    returned at once, and time only moves when there is nothing else to do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualLoop | None = None
        self.spins = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        # Each turn of the loop takes a nanosecond, as on a real clock: asyncio runs a
        # timer up to its clock resolution early, and code that then finds its deadline
        # a hair away would otherwise wait for it forever at one instant.
        self.loop.now += TICK
        ready = super().select(0)
        if ready or timeout == 0:
            self.spins += 1
            if self.spins > SPIN_LIMIT:
                raise Spinning(
                    f"the loop ran {SPIN_LIMIT:,} times at t={self.loop.now:.3f}: "
                    + ", ".join(_describe(self.loop))
                )
            return ready
        self.spins = 0
        if timeout is None:
            raise Stalled("the simulation stalled: nothing to run and no timer set")
        self.loop.now += timeout
        return []


def _describe(loop: VirtualLoop) -> list[str]:
    """What the spinning loop is running: the coroutines behind the ready callbacks."""
    seen: dict[str, None] = {}
    for handle in list(loop._ready)[:50]:  # type: ignore[attr-defined]
        owner = getattr(getattr(handle, "_callback", None), "__self__", None)
        if isinstance(owner, asyncio.Task):
            coro = owner.get_coro()
            frame = getattr(coro, "cr_frame", None)
            where = f"{frame.f_code.co_filename.split('/')[-1]}:{frame.f_lineno}" if frame else ""
            seen[f"{getattr(coro, '__qualname__', coro)} {where}"] = None
        else:
            seen[repr(handle)[:80]] = None
    return list(seen)[:5]


# Which simulated process (a manager) a coroutine belongs to: set where its process
# starts, inherited by every task it makes (a task copies its maker's context).
OWNER: contextvars.ContextVar[str | None] = contextvars.ContextVar("sim_owner", default=None)


class VirtualLoop(asyncio.SelectorEventLoop):
    """Also: each process's tasks, so that it can be killed (all of them cancelled)
    or frozen (none of them runs, as under SIGSTOP or a long pause, until thawed)."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0
        self.owned: dict[str, weakref.WeakSet[asyncio.Task[Any]]] = {}
        self.frozen: dict[str, list[asyncio.Handle]] = {}

    def track_owners(self) -> None:
        """Note each new task's owner from now on (only runs with several managers pay
        for it)."""
        if self.get_task_factory() is None:
            self.set_task_factory(self._owned_task)
            self.call_soon = self._held_call_soon  # type: ignore[method-assign,assignment]

    def time(self) -> float:
        return self.now

    def _owned_task(self, loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        owner = kwargs["context"].get(OWNER) if kwargs.get("context") else OWNER.get()
        if owner is not None:
            self.owned.setdefault(owner, weakref.WeakSet()).add(task)
        return task

    def tasks_of(self, owner: str) -> list[asyncio.Task[Any]]:
        return [t for t in self.owned.get(owner, ()) if not t.done()]

    def _held_call_soon(
        self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        """``call_soon``, once owners are tracked: a frozen process's callbacks (its
        tasks' steps, the wake-ups of what they await) are held, not run, until it is
        thawed."""
        if not self.frozen:
            return super().call_soon(callback, *args, context=context)
        owner = (context or contextvars.copy_context()).get(OWNER)
        if owner is not None and owner in self.frozen:
            handle = asyncio.Handle(callback, args, self, context)
            self.frozen[owner].append(handle)
            return handle
        return super().call_soon(callback, *args, context=context)

    def freeze(self, owner: str) -> None:
        self.frozen.setdefault(owner, [])

    def thaw(self, owner: str) -> None:
        for handle in self.frozen.pop(owner, []):
            if not handle.cancelled():
                self._ready.append(handle)  # type: ignore[attr-defined]


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
        return await wait_event(event, timeout)


@contextlib.contextmanager
def deterministic(seed: int, clock: LoopClock) -> Iterator[None]:
    """Entropy from ``seed`` and the wall clock from ``clock``, for the block's duration."""
    entropy = random.Random(seed)

    def urandom(size: int) -> bytes:
        return entropy.randbytes(size)

    saved: list[tuple[Any, str, Any]] = [
        (os, "urandom", os.urandom),
        (cube.task, "now", cube.task.now),
    ]
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
            result = loop.run_until_complete(main())
            loop.run_until_complete(loop.shutdown_asyncgens())
            return result
    finally:
        loop.close()
