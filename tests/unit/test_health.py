"""Health checks: bounded, timed on the endpoint, and a failure threshold.

The endpoint is a real HTTP server on loopback (an asyncio one written here), so the
checker's real connection pool is in play: defect 2 was a pool wait counted in the
probe's timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from cube.clock import ManualClock
from cube.manager.backend import MemoryBackend
from cube.manager.health import HealthChecker, HealthSettings
from cube.manager.state import State as ClusterState
from cube.node import READY, Node
from cube.task import State, Task

Reports = list[tuple[Task, State, str]]
pytestmark = pytest.mark.anyio


@asynccontextmanager
async def endpoint(answer: Callable[[], tuple[float, int]]) -> AsyncIterator[int]:
    """An HTTP server whose every answer waits and answers as ``answer()`` says.

    It runs on an event loop of its own, in a thread, as an endpoint on another
    machine would: its work does not slow the checker's loop down.
    """

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                delay, status = answer()
                await asyncio.sleep(delay)
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    start = asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    server = asyncio.run_coroutine_threadsafe(start, loop).result(10)

    async def shutdown() -> None:
        server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def cluster(count: int, port: int, clock: ManualClock) -> ClusterState:
    node = Node(Name="w", Ip="127.0.0.1", Status=READY, Cores=64, Memory=2**30)
    state = ClusterState(MemoryBackend(), [node])
    started = clock.monotonic() - 60
    for _ in range(count):
        task = Task(
            Image="img",
            State=State.RUNNING,
            Node="w",
            HealthCheck="/health",
            StartTime=clock.now(),
            HostPorts={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]},
        )
        state.tasks[task.ID] = task
        state.since[task.ID] = started  # when the manager learned it runs
    return state


def checker(
    state: ClusterState, clock: ManualClock, reports: Reports, **kw: float
) -> HealthChecker:
    async def report(task: Task, to: State, reason: str) -> None:
        reports.append((task, to, reason))

    return HealthChecker(state, clock, HealthSettings(**kw), report)  # type: ignore[arg-type]


async def test_500_slow_but_healthy_endpoints_restart_nothing() -> None:
    """Each answers in 1 s, within the 2 s timeout: none may count as failed, though
    500 probes cannot all be in flight at once (defaults: 100 at a time). With the
    slot wait counted in the timeout (defect 2) the last rounds fail; with httpcore's
    pool (a scan of every connection per request) a loaded machine failed some too."""
    clock, reports = ManualClock(), Reports()
    async with endpoint(lambda: (1.0, 200)) as port:
        state = cluster(500, port, clock)
        health = checker(state, clock, reports, failures=1)
        try:
            await health.check_all()
        finally:
            await health.close()
    assert reports == []


async def test_three_failures_in_a_row_make_one_restart() -> None:
    clock, reports = ManualClock(), Reports()
    statuses = itertools.chain([500, 500, 200, 500, 500], itertools.repeat(500))
    async with endpoint(lambda: (0.0, next(statuses))) as port:
        state = cluster(1, port, clock)
        health = checker(state, clock, reports)
        try:
            for _ in range(4):  # fail, fail, success (resets), fail
                await health.check_all()
            assert reports == []
            await health.check_all()  # fail: 2 in a row
            assert reports == []
            await health.check_all()  # fail: 3 in a row
            await health.check_all()  # reported already: counts from zero again
        finally:
            await health.close()
    (task,) = state.tasks.values()
    assert reports == [(task, State.FAILED, "health check failed: HTTP 500")]


async def test_a_slow_endpoint_fails_on_its_own_timeout() -> None:
    clock, reports = ManualClock(), Reports()
    async with endpoint(lambda: (1.0, 200)) as port:
        state = cluster(1, port, clock)
        health = checker(state, clock, reports, failures=1, timeout=0.2)
        try:
            await health.check_all()
        finally:
            await health.close()
    assert [r[2] for r in reports] == ["health check failed: ReadTimeout"]


async def test_grace_period_and_stopped_tasks_are_not_checked() -> None:
    clock = ManualClock()
    state = cluster(3, 1, clock)
    young, stopping, checked = state.tasks.values()
    state.since[young.ID] = clock.monotonic()
    state.tasks[stopping.ID] = stopping.model_copy(update={"DesiredState": State.COMPLETED})
    health = checker(state, clock, [])
    assert health.due() == [checked]
    await clock.advance(5)
    assert {t.ID for t in health.due()} == {young.ID, checked.ID}
    await health.close()
