"""Placement constraints, eligibility and DistinctHosts through the real manager and real
worker apps in one process (tests/inprocess.py), on virtual time.

Labels and eligibility are set on the manager's nodes directly: how workers report
them (``cube worker --label``) and how drains clear ``Eligible`` is tested with them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence

import pytest

from cube.constraints import Constraint
from cube.feasible import TaskRequest
from cube.job import Job, TaskTemplate
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.node import Node
from cube.scheduler import Epvm, Placement
from cube.task import State
from tests.inprocess import Cluster, cluster, sleeper

pytestmark = pytest.mark.anyio

ZONE_A = Constraint(Attribute="zone", Operator="=", Value="a")


def label(m: Manager, zones: dict[str, str]) -> None:
    for name, zone in zones.items():
        m.state.nodes[name].Labels = {"zone": zone}


def running_on(c: Cluster, ids: list[uuid.UUID]) -> Counter[str] | None:
    """Where the tasks run, once all of them are Running (None until then)."""
    tasks = [c.task(i) for i in ids]
    if any(t.State is not State.RUNNING for t in tasks):
        return None
    return Counter(t.Node for t in tasks)


async def test_constrained_tasks_land_only_on_matching_eligible_nodes() -> None:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        label(m, {"w1:5556": "a", "w2:5556": "b", "w3:5556": "a"})
        tasks = await m.submit_many([sleeper(Constraints=[ZONE_A]) for _ in range(6)])
        where = await c.until(lambda: running_on(c, [t.ID for t in tasks]), what="running")
        assert where == {"w1:5556": 3, "w3:5556": 3}  # spread over both, none on w2
        assert c.nodes[1].running() == {}

        m.state.nodes["w3:5556"].Eligible = False  # what a drain does first
        more = await m.submit_many([sleeper(Constraints=[ZONE_A]) for _ in range(2)])
        where = await c.until(lambda: running_on(c, [t.ID for t in more]), what="running")
        assert where == {"w1:5556": 2}

        # Unconstrained tasks may go anywhere eligible.
        free = await m.submit_many([sleeper() for _ in range(4)])
        where = await c.until(lambda: running_on(c, [t.ID for t in free]), what="running")
        assert set(where) <= {"w1:5556", "w2:5556"}


async def test_an_unsatisfiable_constraint_leaves_the_task_pending_and_says_why() -> None:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        label(m, {"w1:5556": "a", "w2:5556": "b"})
        m.state.nodes["w3:5556"].Eligible = False
        zone_c = Constraint(Attribute="zone", Operator="in", Value=["c", "d"])
        (task,) = await m.submit_many([sleeper(Constraints=[zone_c])])
        want = (
            "no feasible node: 1 node is not eligible (draining or marked ineligible), "
            "2 nodes fail constraint zone in (c, d)"
        )
        await c.until(lambda: c.task(task.ID).Reason == want, what="the reason")
        await c.settle(5.0)
        assert (c.task(task.ID).State, c.task(task.ID).Node) == (State.PENDING, "")
        assert not c.copies()

        m.state.nodes["w2:5556"].Labels = {"zone": "d"}  # a worker that now has the label
        m.state.room()  # what a change of labels or capacity does: placement looks again
        where = await c.until(lambda: running_on(c, [task.ID]), what="placed once it fits")
        assert where == {"w2:5556": 1}
        assert c.task(task.ID).Reason == ""


async def test_a_distinct_hosts_job_never_puts_two_tasks_on_one_node() -> None:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        m.state.nodes["w1:5556"].TaskCount += 40  # E-PVM alone would shun it and double up
        job = Job(Name="web", Count=3, Task=TaskTemplate(Image="cube/busybox"), DistinctHosts=True)
        await m.jobs.submit(job)

        def placed() -> Counter[str] | None:
            return running_on(c, [t.ID for t in m.jobs.tasks_of("web")])

        assert await c.until(placed, what="3 running") == {
            "w1:5556": 1,
            "w2:5556": 1,
            "w3:5556": 1,
        }
        await m.jobs.scale("web", 4)
        want = "no feasible node: 3 nodes already run a task of job web (DistinctHosts)"

        def fourth_waits() -> bool:
            return any(t.Reason == want for t in m.jobs.tasks_of("web"))

        await c.until(fourth_waits, what="the 4th pending with its reason")
        await c.settle(5.0)
        states = Counter(t.State for t in m.jobs.tasks_of("web"))
        assert states == {State.RUNNING: 3, State.PENDING: 1}
        assert all(max(n.running().values(), default=0) == 1 for n in c.nodes)
        assert all(n.JobTasks == {"web": 1} for n in m.state.nodes.values())


async def test_a_jobs_constraints_apply_to_every_task_it_makes() -> None:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        label(m, {"w1:5556": "b", "w2:5556": "a", "w3:5556": "b"})
        job = Job(
            Name="api", Count=4, Task=TaskTemplate(Image="cube/busybox"), Constraints=[ZONE_A]
        )
        await m.jobs.submit(job)
        where = await c.until(
            lambda: running_on(c, [t.ID for t in m.jobs.tasks_of("api")]), what="4 running"
        )
        assert where == {"w2:5556": 4}
        assert all(t.Constraints == [ZONE_A] for t in m.jobs.tasks_of("api"))


class Recording(Epvm):
    """E-PVM, noting the passes it is told of and the nodes it picks, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[int] = []
        self.picked: list[str] = []

    def begin_pass(self, count: int) -> None:
        self.passes.append(count)
        super().begin_pass(count)

    def place(self, task: TaskRequest, nodes: Sequence[Node]) -> Placement:
        choice = super().place(task, nodes)
        self.picked.append(choice.node.Name if choice.node is not None else "")
        return choice


async def test_a_burst_is_placed_a_window_of_nodes_at_a_time_and_as_evenly() -> None:
    async with cluster(20) as c:
        m = await c.start_manager(MemoryBackend())
        m.scheduler = recording = Recording()
        tasks = await m.submit_many([sleeper() for _ in range(200)])
        where = await c.until(lambda: running_on(c, [t.ID for t in tasks]), what="running")
        assert recording.passes[0] == 200  # the manager said how many wait to be placed
        # A window of 16 of the 20 nodes takes its share (160) before the next window
        # starts: each node's tasks are decided together, and go out together.
        assert len(set(recording.picked[:160])) == 16
        assert set(where.values()) == {10}
