"""The manager against real worker apps in-process, on virtual time (tests/inprocess.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from cube.manager.backend import MemoryBackend, SqliteBackend
from cube.task import State
from tests.inprocess import SETTINGS, FaultyBackend, cluster, kill, sleeper

pytestmark = pytest.mark.anyio


async def test_tasks_run_and_stop(tmp_path: Path) -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        tasks = await m.submit_many([sleeper(Name=f"t{i}") for i in range(6)])
        ids = [t.ID for t in tasks]
        await c.until(lambda: all(c.task(i).State is State.RUNNING for i in ids), what="running")
        assert c.copies() == {str(i): 1 for i in ids}
        assert {c.task(i).Node for i in ids} == {"w1:5556", "w2:5556"}
        await m.stop(ids[0])
        await c.until(lambda: c.task(ids[0]).State is State.COMPLETED, what="stopped")
        assert c.task(ids[0]).Reason == "stopped on request"
        assert str(ids[0]) not in c.copies()


async def test_first_restart_at_once_then_backoff() -> None:
    async with cluster(1) as c:
        m = await c.start_manager(MemoryBackend())
        (task,) = await m.submit_many([sleeper()])
        await c.until(lambda: c.task(task.ID).State is State.RUNNING, what="running")
        runtime = c.nodes[0].runtime
        runtime.exit(c.task(task.ID).ContainerID, 1)
        # The first restart needs no time to pass: only the loop to run.
        await c.until(
            lambda: c.task(task.ID).RestartCount == 1 and c.task(task.ID).State is State.RUNNING,
            virtual=0.0,
            what="restarted at once",
        )
        assert c.task(task.ID).Reason == "restarting after: exited with code 1"
        runtime.exit(c.task(task.ID).ContainerID, 1)
        await c.until(lambda: c.task(task.ID).State is State.FAILED, virtual=0.0, what="failed")
        await c.settle(0.5)
        assert c.task(task.ID).RestartCount == 1  # the second waits its 1 s
        await c.until(lambda: c.task(task.ID).RestartCount == 2, virtual=1.0, what="2nd restart")


async def test_a_cut_off_worker_loses_its_tasks_and_runs_none_when_back() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        ids = [t.ID for t in await m.submit_many([sleeper() for _ in range(6)])]
        await c.until(lambda: all(c.task(i).State is State.RUNNING for i in ids), what="running")
        cut = c.nodes[0]
        on_cut = [i for i in ids if c.task(i).Node == cut.name]
        assert on_cut, "epvm spreads six tasks over both workers"
        cut.link.cut()
        # Lost after the worker timeout (10 s), then moved at once.
        await c.settle(9.0)
        assert all(c.task(i).Node == cut.name for i in on_cut)
        await c.until(
            lambda: (
                all(c.task(i).Node != cut.name for i in on_cut)
                and all(c.task(i).State is State.RUNNING for i in ids)
            ),
            virtual=3.0,
            what="moved",
        )
        assert all(c.task(i).RestartCount == 1 for i in on_cut)
        cut.link.heal()
        await c.until(lambda: not cut.running(), what="strays stopped on the returned worker")
        await c.settle(5.0)
        assert c.copies() == {str(i): 1 for i in ids}
        assert all(c.task(i).State is State.RUNNING for i in ids)


async def test_a_scheduled_task_moved_away_and_back_runs_again() -> None:
    """Defect 1: a Scheduled task moved off a lost worker kept its RestartCount; placed
    back on that worker (which had stopped the old copy as a stray), the worker refused
    the finished incarnation and the task ended Completed, "stopped on request"."""
    async with cluster(2) as c:
        for node in c.nodes:
            node.runtime.start_latency = 0.3
        m = await c.start_manager(MemoryBackend())
        (task,) = await m.submit_many([sleeper(RestartPolicy="always")])
        await c.until(lambda: c.task(task.ID).Node, virtual=0.0, what="placed")
        first = next(n for n in c.nodes if n.name == c.task(task.ID).Node)
        other = next(n for n in c.nodes if n is not first)
        await c.until(
            lambda: str(task.ID) in {str(t.ID) for t in first.worker.tasks()}, virtual=0.0
        )
        first.link.cut()  # it got the task, but the manager never hears it runs
        assert c.task(task.ID).State is State.SCHEDULED
        await c.until(lambda: c.task(task.ID).Node == other.name, what="moved")
        await c.until(lambda: first.running(), virtual=0.0, what="old copy starts anyway")
        first.link.heal()
        await c.until(lambda: not first.running(), what="old copy stopped as a stray")
        await c.until(lambda: c.task(task.ID).State is State.RUNNING, what="running elsewhere")
        other.link.cut()
        await c.until(
            lambda: c.task(task.ID).Node == first.name and c.task(task.ID).State is State.RUNNING,
            what="moved back and running",
        )
        assert c.task(task.ID).RestartCount == 2
        assert first.running() == {str(task.ID): 1}
        await c.settle(3.0)
        assert c.task(task.ID).State is State.RUNNING


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("crash_at", [1, 2, 3])
async def test_a_stop_survives_a_manager_killed_at_any_write(
    tmp_path: Path, crash_at: int, after: bool
) -> None:
    """Defect 3: the manager is killed before or after the n-th write from the stop on
    (1: the stop itself; 2: the worker's Completed; 3: none comes, it ran to the end);
    a new manager on the same database stops the task, and it never runs again."""
    async with cluster(1) as c:
        db = tmp_path / "manager.db"
        backend = FaultyBackend(db)
        m = await c.start_manager(backend)
        backend.kill = lambda: kill(m)
        (task,) = await m.submit_many([sleeper(RestartPolicy="always")])
        await c.until(lambda: c.task(task.ID).State is State.RUNNING, what="running")
        runtime = c.nodes[0].runtime
        starts = runtime.starts
        backend.crash_at, backend.after = backend.commits + crash_at, after
        acknowledged = True
        try:
            await m.stop(task.ID)
        except asyncio.CancelledError:
            acknowledged = False  # killed before the 204: the client will ask again
        await c.settle(2.0)
        await c.crash_manager()
        m2 = await c.start_manager(SqliteBackend(db))
        if not acknowledged:
            await m2.stop(task.ID)
        await c.until(lambda: c.task(task.ID).State is State.COMPLETED, what="stopped")
        await c.settle(60.0)
        assert c.task(task.ID).State is State.COMPLETED
        assert c.copies() == {}
        assert runtime.starts == starts  # never ran again


def unhealthy(request: httpx.Request) -> httpx.Response:
    return httpx.Response(500)


@pytest.mark.parametrize("policy", ["", "no"])
async def test_an_unhealthy_task_restarts_once_or_its_container_stops(policy: str) -> None:
    settings = replace(SETTINGS, health_interval=1.0, health_grace=0.0, health_failures=3)
    async with cluster(1) as c:
        m = await c.start_manager(
            MemoryBackend(), settings, health_transport=httpx.MockTransport(unhealthy)
        )
        (task,) = await m.submit_many(
            [sleeper(HealthCheck="/health", ExposedPorts={"80/tcp": {}}, RestartPolicy=policy)]
        )
        await c.until(lambda: c.task(task.ID).State is State.RUNNING, what="running")
        await c.settle(1.5)  # checks every second: two failures at most, not yet unhealthy
        assert (c.task(task.ID).State, c.task(task.ID).RestartCount) == (State.RUNNING, 0)
        if policy == "no":
            await c.until(lambda: c.task(task.ID).State is State.FAILED, virtual=2.0)
            assert c.task(task.ID).Reason == "health check failed: HTTP 500"
            await c.until(lambda: not c.copies(), virtual=0.5, what="its container stopped")
        else:
            await c.until(lambda: c.task(task.ID).RestartCount == 1, virtual=2.0)
            await c.until(lambda: c.task(task.ID).State is State.RUNNING, virtual=0.5)
            assert c.copies() == {str(task.ID): 1}


async def test_a_frozen_link_heals_at_once_not_at_the_next_resync() -> None:
    """A stream that hung through the fault must not go on where it left off: the
    copies moved away meanwhile are only seen (and stopped) in the whole list."""
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        ids = [t.ID for t in await m.submit_many([sleeper() for _ in range(4)])]
        await c.until(lambda: all(c.task(i).State is State.RUNNING for i in ids), what="running")
        frozen = c.nodes[0]
        assert frozen.running()
        frozen.link.freeze()
        await c.until(
            lambda: all(c.task(i).Node != frozen.name for i in ids), virtual=15.0, what="moved"
        )
        frozen.link.heal()
        await c.until(lambda: not frozen.running(), virtual=3.0, what="strays stopped")
        assert c.copies() == {str(i): 1 for i in ids}


async def test_health_checks_carry_no_token() -> None:
    """A task's endpoint is the user's program: it never sees the cluster's secrets."""
    seen: list[httpx.Headers] = []

    def healthy(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200)

    settings = replace(
        SETTINGS, health_interval=1.0, health_grace=0.0, token="mgmt", worker_token="w-token"
    )
    async with cluster(1) as c:
        m = await c.start_manager(
            MemoryBackend(), settings, health_transport=httpx.MockTransport(healthy)
        )
        assert m.state.nodes[c.nodes[0].name].Secret == "w-token"  # what the worker gets
        await m.submit_many([sleeper(HealthCheck="/health", ExposedPorts={"80/tcp": {}})])
        await c.until(lambda: seen, virtual=5.0, what="a health check")
        assert all("authorization" not in headers for headers in seen)
        assert all("w-token" not in str(headers) for headers in seen)
