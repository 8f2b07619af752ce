"""The manager against real worker apps in-process, on virtual time (tests/inprocess.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cube.manager.backend import MemoryBackend
from cube.task import State
from tests.inprocess import cluster, sleeper

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
