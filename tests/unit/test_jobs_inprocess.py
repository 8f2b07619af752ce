"""Jobs end to end in one process: the real manager and real worker apps on the
simulated runtime (tests/inprocess.py), the manager on virtual time."""

from __future__ import annotations

import uuid

import pytest

from cube.job import Job, TaskTemplate, UpdatePolicy
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.task import State
from tests.inprocess import Cluster, cluster

pytestmark = pytest.mark.anyio

UPDATE = UpdatePolicy(MaxParallel=2, MinHealthyTime=1, HealthyDeadline=60)


def web(count: int = 6, env: list[str] | None = None, **update: object) -> Job:
    policy = UPDATE.model_copy(update=update)
    return Job(
        Name="web", Count=count, Task=TaskTemplate(Image="cube/busybox", Env=env), Update=policy
    )


def serving(m: Manager, name: str = "web") -> dict[int, int]:
    """Running tasks of the job that are to keep running, per version."""
    counts: dict[int, int] = {}
    for t in m.jobs.tasks_of(name):
        if t.State is State.RUNNING and t.DesiredState is State.RUNNING:
            counts[t.JobVersion] = counts.get(t.JobVersion, 0) + 1
    return counts


def healthy(m: Manager, name: str = "web") -> int:
    """Tasks of the job Running for MinHealthyTime and to keep running."""
    now = m.clock.monotonic()
    return sum(
        1
        for t in m.jobs.tasks_of(name)
        if t.State is State.RUNNING
        and t.DesiredState is State.RUNNING
        and now - m.state.since[t.ID] >= UPDATE.MinHealthyTime
    )


def versions_running(c: Cluster, m: Manager) -> dict[int, int]:
    """Containers running on the workers, per job version (what `docker ps` would say)."""
    counts: dict[int, int] = {}
    for task_id, n in c.copies().items():
        version = m.get(uuid.UUID(task_id)).JobVersion
        counts[version] = counts.get(version, 0) + n
    return counts


async def test_a_rolling_update_never_drops_below_count() -> None:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        await m.jobs.submit(web())
        await c.until(lambda: healthy(m) == 6, what="6 of version 1, healthy")
        await c.until(lambda: m.jobs.get("web").Deployment.Status == "successful", what="v1 done")  # type: ignore[union-attr]
        record = await m.jobs.submit(web(env=["V=2"]))
        assert record.Job.Version == 2
        lowest = 6

        def rolled() -> bool:
            nonlocal lowest
            lowest = min(lowest, healthy(m))
            return serving(m) == {2: 6} and versions_running(c, m) == {2: 6}

        await c.until(rolled, what="6 of version 2, none of version 1")
        assert lowest >= 6  # start-first: a new one is healthy before an old one stops
        deployment = m.jobs.get("web").Deployment
        assert deployment is not None
        await c.until(lambda: m.jobs.get("web").Deployment.Status == "successful", what="v2 done")  # type: ignore[union-attr]


async def test_stop_first_drops_at_most_max_parallel() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        await m.jobs.submit(web(Order="stop-first"))
        await c.until(lambda: healthy(m) == 6, what="6 of version 1, healthy")
        await m.jobs.submit(web(env=["V=2"], Order="stop-first"))
        lowest = 6

        def rolled() -> bool:
            nonlocal lowest
            lowest = min(lowest, healthy(m))
            return serving(m) == {2: 6}

        await c.until(rolled, what="6 of version 2")
        assert 4 <= lowest < 6


async def test_scale_up_and_down_and_stop() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        await m.jobs.submit(web(count=2))
        await c.until(lambda: serving(m) == {1: 2}, what="2")
        await m.jobs.scale("web", 5)
        await c.until(lambda: serving(m) == {1: 5}, what="5")
        await m.jobs.scale("web", 1)
        await c.until(lambda: serving(m) == {1: 1} and sum(c.copies().values()) == 1, what="1")
        await m.jobs.stop("web")
        await c.until(lambda: serving(m) == {} and not c.copies(), what="none")


async def test_a_failing_version_reverts_to_the_last_good_one() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        await m.jobs.submit(web(count=2, AutoRevert=True, HealthyDeadline=5))
        await c.until(lambda: m.jobs.get("web").Deployment.Status == "successful", what="v1")  # type: ignore[union-attr]
        bad = web(count=2, AutoRevert=True, HealthyDeadline=5)
        bad = bad.model_copy(
            update={
                "Task": TaskTemplate(
                    Image="cube/busybox", HealthCheck="/health", ExposedPorts={"80/tcp": {}}
                )
            }
        )
        await m.jobs.submit(bad)  # its checks never pass: no endpoint answers in here
        await c.until(lambda: m.jobs.get("web").Job.Version == 3, what="reverted")
        record = m.jobs.get("web")
        assert record.Versions[1].Version == 2
        assert record.Job.spec() == record.Versions[2].spec()  # version 3 is version 1 again
        await c.until(lambda: serving(m) == {3: 2}, what="2 of version 3")


async def test_a_jobs_replicas_spread_over_the_nodes() -> None:
    """6 replicas on 3 workers land 2/2/2 (job anti-affinity), whatever else runs."""
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        m.state.nodes["w1:5556"].TaskCount += 4  # busier with other work: E-PVM avoids it
        await m.jobs.submit(web())
        await c.until(lambda: serving(m) == {1: 6}, what="6 running")
        per_node: dict[str, int] = {}
        for t in m.jobs.tasks_of("web"):
            per_node[t.Node] = per_node.get(t.Node, 0) + 1
        assert sorted(per_node.values()) == [2, 2, 2]
