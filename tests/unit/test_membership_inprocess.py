"""Membership end to end in one process: workers join and heartbeat, nodes are stored,
drained, made eligible and removed (the real manager and worker apps, virtual time)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cube.job import Job, TaskTemplate, UpdatePolicy
from cube.manager.backend import MemoryBackend, SqliteBackend, StoreUnavailable
from cube.manager.manager import Manager
from cube.manager.membership import JoinRefused, NodeBusy, Registration, UnknownNode
from cube.node import NodeRecord
from cube.task import State
from tests.inprocess import SETTINGS, cluster, sleeper

pytestmark = pytest.mark.anyio

JOINING = dataclasses.replace(SETTINGS, join_token="s3cret", heartbeat_interval=1.0)


def joins(name: str) -> Registration:
    return Registration(Name=name, Api=f"http://{name}", Labels={"zone": "a"})


def on(m: Manager, node: str) -> int:
    """Tasks to keep running that are placed on ``node``."""
    return sum(
        1
        for t in m.list_tasks()
        if t.Node == node and t.DesiredState is State.RUNNING and t.State is State.RUNNING
    )


async def test_a_worker_joins_with_the_token_and_runs_tasks() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend(), JOINING, static=1)
        assert [n.Name for n in m.nodes()] == ["w1:5556"]
        m.members.check_token("s3cret")
        await m.members.join(joins("w2:5556"))
        node = m.members.get("w2:5556")
        assert node.Joined and node.Labels == {"zone": "a"}
        await c.until(lambda: "w2:5556" in m.state.ready, what="the joined worker ready")
        assert node.Cores == 4  # its capacity, asked for at once
        await m.submit_many([sleeper() for _ in range(4)])
        await c.until(lambda: on(m, "w2:5556") >= 1, what="a task on the joined worker")


async def test_a_wrong_or_missing_token_is_refused() -> None:
    async with cluster(1) as c:
        m = await c.start_manager(MemoryBackend(), JOINING)
        for bad in ("wrong", "", None, "s3cret "):
            with pytest.raises(JoinRefused) as refused:
                m.members.check_token(bad)
            assert not refused.value.off
        off = await c.start_manager(MemoryBackend())  # no join token: joining is off
        with pytest.raises(JoinRefused) as refused:
            off.members.check_token("s3cret")
        assert refused.value.off and "--join-token" in str(refused.value)


async def test_heartbeats_keep_a_joined_worker_up_and_their_absence_takes_it_down() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend(), JOINING, static=1)
        await m.members.join(joins("w2:5556"))
        await c.until(lambda: "w2:5556" in m.state.ready, what="joined worker ready")
        await m.submit_many([sleeper() for _ in range(4)])
        await c.until(lambda: on(m, "w2:5556") >= 1, what="tasks on w2")
        c.nodes[1].link.freeze()  # its stream and stats stall; heartbeats still come
        for _ in range(60):  # 6 s, twice the heartbeat timeout
            m.members.beat("w2:5556")
            await c.settle(0.1)
        assert "w2:5556" in m.state.ready
        # Heartbeats stop: down after interval + grace (3 s), its tasks moved.
        await c.until(lambda: "w2:5556" in m.state.lost, virtual=3.5, what="w2 lost")
        await c.until(lambda: on(m, "w1:5556") == 4, what="all 4 on w1")


async def test_a_worker_lost_soon_after_the_manager_started_is_noticed_in_time() -> None:
    # The manager starts with no worker: its first look for silent workers finds none,
    # and a worker joining later must not wait for the -w timeout to be looked at.
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend(), JOINING, static=0)
        started = c.clock.monotonic()
        await c.settle(0.5)  # its first look: nobody to look at
        for name in ("w1:5556", "w2:5556"):
            await m.members.join(joins(name))
        await c.until(lambda: len(m.state.ready) == 2, what="both ready")
        c.nodes[1].link.cut()  # its heartbeats stop with it (nobody calls beat here)
        await c.until(lambda: "w2:5556" in m.state.lost, virtual=3.5, what="w2 lost")
        assert c.clock.monotonic() - started < SETTINGS.worker_timeout


async def test_the_same_name_from_a_new_address_is_the_same_node() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend(), JOINING, static=1)
        await m.members.join(joins("w2:5556"))
        await m.members.set_eligible("w2:5556", False)
        # Rejoins from elsewhere (the test's connect maps both addresses to w2).
        await m.members.join(Registration(Name="w2:5556", Api="http://10.0.0.2:7000/w2:5556"))
        assert [n.Name for n in m.nodes()].count("w2:5556") == 1
        node = m.members.get("w2:5556")
        assert node.Api == "http://10.0.0.2:7000/w2:5556" and node.Ip == "10.0.0.2"
        assert not node.Eligible  # what was decided about it stays
        assert node.Labels == {}  # what it says about itself is what it says now


async def test_a_restarted_manager_remembers_a_vanished_worker_and_declares_it_lost(
    tmp_path: Path,
) -> None:
    async with cluster(2) as c:
        m = await c.start_manager(SqliteBackend(tmp_path / "m.db"), JOINING, static=1)
        await m.members.join(joins("w2:5556"))
        await c.until(lambda: "w2:5556" in m.state.ready, what="joined worker ready")
        await m.submit_many([sleeper() for _ in range(4)])
        await c.until(lambda: on(m, "w2:5556") >= 1, what="tasks on w2")
        await c.crash_manager()
        c.nodes[1].link.cut()  # the worker is gone while no manager runs
        m = await c.start_manager(SqliteBackend(tmp_path / "m.db"), JOINING, static=1)
        assert "w2:5556" in m.state.nodes and m.state.nodes["w2:5556"].Joined
        await c.until(lambda: "w2:5556" in m.state.lost, virtual=3.5, what="w2 declared lost")
        await c.until(lambda: on(m, "w1:5556") == 4, what="all 4 on w1")


def web(count: int, parallel: int) -> Job:
    return Job(
        Name="web",
        Count=count,
        Task=TaskTemplate(Image="cube/busybox"),
        Update=UpdatePolicy(MaxParallel=parallel, MinHealthyTime=1, HealthyDeadline=60),
    )


async def test_a_drain_moves_every_task_a_job_no_faster_than_max_parallel() -> None:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        await m.members.set_eligible("w2:5556", False)
        await m.members.set_eligible("w3:5556", False)
        await m.jobs.submit(web(4, parallel=2))
        lone = await m.submit_many([sleeper(), sleeper()])
        await c.until(lambda: on(m, "w1:5556") == 6, what="6 tasks on w1")
        await c.settle(1.5)  # the job's tasks turn healthy
        for name in ("w2:5556", "w3:5556"):
            await m.members.set_eligible(name, True)
        worst = 0
        commit = m.state.commit

        async def watched(*args: Any, **kw: Any) -> None:
            # After every write: how many of the job's tasks are not Running.
            nonlocal worst
            await commit(*args, **kw)
            moving = [t for t in m.jobs.tasks_of("web") if t.State is not State.RUNNING]
            worst = max(worst, len(moving))

        m.state.commit = watched  # type: ignore[method-assign]
        await m.members.drain("w1:5556")

        def drained() -> bool:
            return on(m, "w1:5556") == 0 and not m.state.nodes["w1:5556"].Draining

        await c.until(drained, what="w1 drained")
        assert 1 <= worst <= 2  # MaxParallel
        await c.until(lambda: on(m, "w2:5556") + on(m, "w3:5556") == 6, what="6 elsewhere")
        assert all(c.nodes[0].running().get(str(t.ID), 0) == 0 for t in lone)
        assert not c.nodes[0].running()  # its containers were stopped
        # Done, still ineligible: new work goes elsewhere; eligible again, it gets some.
        await m.submit_many([sleeper() for _ in range(6)])
        await c.until(lambda: on(m, "w2:5556") + on(m, "w3:5556") == 12, what="12 elsewhere")
        assert on(m, "w1:5556") == 0
        await m.members.set_eligible("w1:5556", True)
        await m.submit_many([sleeper() for _ in range(6)])
        await c.until(lambda: on(m, "w1:5556") >= 1, what="new work on w1")


async def test_a_drain_deadline_moves_what_is_left_at_once() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        await m.members.set_eligible("w2:5556", False)
        await m.jobs.submit(web(4, parallel=1))
        await c.until(lambda: on(m, "w1:5556") == 4, what="4 tasks on w1")
        await m.members.set_eligible("w2:5556", True)
        # MinHealthyTime 1 s would take ~4 s one by one; the deadline cuts it short.
        await m.members.drain("w1:5556", deadline=0.5)
        await c.until(lambda: on(m, "w2:5556") == 4, virtual=2.0, what="all moved by deadline")


async def test_remove_refuses_a_ready_node_and_forgets_a_down_one() -> None:
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        await m.submit_many([sleeper() for _ in range(4)])
        await c.until(lambda: on(m, "w2:5556") >= 1, what="tasks on w2")
        with pytest.raises(NodeBusy):
            await m.members.remove("w2:5556")
        with pytest.raises(UnknownNode):
            await m.members.remove("nope")
        c.nodes[1].link.cut()
        await c.until(lambda: "w2:5556" in m.state.lost, what="w2 lost")
        await m.members.remove("w2:5556")
        assert [n.Name for n in m.nodes()] == ["w1:5556"]
        await c.until(lambda: on(m, "w1:5556") == 4, what="all 4 on w1")


class Unwritable(MemoryBackend):
    """A store that stops answering node writes when told to (etcd without quorum)."""

    down = False

    async def save_nodes(self, records: Sequence[NodeRecord]) -> None:
        if self.down:
            raise StoreUnavailable("etcd did not answer")
        await super().save_nodes(records)


async def test_a_drain_the_store_did_not_keep_changes_nothing() -> None:
    """The API answers 503 for it, so nothing may act on it: no task moves, the node
    stays eligible, and a later drain, once the store answers, works as usual."""
    async with cluster(2) as c:
        store = Unwritable()
        m = await c.start_manager(store)
        await m.submit_many([sleeper() for _ in range(4)])
        await c.until(lambda: on(m, "w1:5556") + on(m, "w2:5556") == 4, what="4 running")
        placed = {t.ID: t.Node for t in m.list_tasks()}
        store.down = True
        for ask in (
            m.members.drain("w1:5556", deadline=0.5),
            m.members.set_eligible("w2:5556", False),
        ):
            with pytest.raises(StoreUnavailable):
                await ask
        await c.settle(2.0)  # past the deadline it did not get
        node = m.members.get("w1:5556")
        assert (node.Eligible, node.Draining, node.DrainDeadline) == (True, False, "")
        assert m.members.get("w2:5556").Eligible
        assert {t.ID: t.Node for t in m.list_tasks()} == placed
        assert all(r.Eligible and not r.Draining for r in store.load_nodes())
        store.down = False
        await m.members.drain("w1:5556")
        await c.until(lambda: on(m, "w2:5556") == 4, what="all 4 moved by the drain kept")
