"""Placement explained and dry runs (issue 15): every decision is kept on its task, a
waiting task says what turned every node away, and a plan changes nothing.

The manager and workers are the real apps in one process (tests/inprocess.py); the plan
routes are called through their own router over the in-process transport.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from cube.errors import install_error_handlers
from cube.explain import Decision, decide, summary
from cube.job import Job, TaskTemplate
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.manager.plan_api import router as plan_router
from cube.node import READY, Node
from cube.scheduler import Epvm, RoundRobin
from cube.task import State, Task
from cube.transport import InProcessTransport
from tests.inprocess import Cluster, cluster, sleeper

pytestmark = pytest.mark.anyio

GIB = 2**30
TOO_BIG = 64 * GIB  # the in-process workers have 8 GiB each


def node(name: str, memory_gib: int = 8, **fields: object) -> Node:
    given: dict[str, object] = {"Status": READY, "Cores": 4, "Memory": memory_gib * 2**20}
    return Node(name, **{**given, **fields})  # type: ignore[arg-type]


# --- the scheduler's record, pure ---------------------------------------------------------


def test_a_decision_counts_what_each_check_turned_away_and_keeps_the_best_scores() -> None:
    nodes = [
        node("small", memory_gib=1),
        node("down", Status="down"),
        node("busy", PortsAllocated={8080}),
        node("a"),
        node("b", MemoryAllocated=6 * 2**20),
        node("c", MemoryAllocated=2 * 2**20),
        node("d", MemoryAllocated=4 * 2**20),
    ]
    task = Task(Image="x", Memory=2 * GIB, PortBindings={"80/tcp": "8080"})
    choice = Epvm().place(task, nodes)
    assert choice.node is not None and choice.node.Name == "a"  # the emptiest
    record = choice.decision
    assert record is not None
    assert record.Scheduler == "epvm" and record.Node == "a"
    assert record.NodesEvaluated == 7 and record.NodesFeasible == 4
    assert record.NodesFiltered == {"ready": 1, "memory": 1, "ports": 1}
    assert [s.Node for s in record.TopScores] == ["a", "c", "d"]  # best first, 3 of 4
    scores = [s.Score for s in record.TopScores]
    assert scores == sorted(scores)


def test_a_task_that_fits_nowhere_gets_a_record_with_no_node() -> None:
    choice = RoundRobin().place(Task(Image="x", Memory=TOO_BIG), [node("a"), node("b")])
    assert choice.node is None
    assert choice.reason == "no feasible node: 2 nodes lack memory (need 64 GiB)"
    assert choice.decision == Decision(
        Scheduler="roundrobin", NodesEvaluated=2, NodesFiltered={"memory": 2}
    )


def test_the_chosen_node_is_always_among_the_scores_shown() -> None:
    record = decide("x", 5, {}, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}, "e")
    assert [s.Node for s in record.TopScores] == ["e", "a", "b"]
    assert summary(record) == "5 evaluated; x: e 5, a 1, b 2"


def test_an_infinite_score_stays_json() -> None:
    record = decide("epvm", 1, {}, {"a": float("inf")}, "a")
    assert Decision.model_validate_json(record.model_dump_json()).TopScores[0].Score > 1e300


# --- on the task, through the manager ------------------------------------------------------


async def test_every_placed_task_keeps_its_decision() -> None:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        (task,) = await m.submit_many([sleeper()])
        running = await c.until(lambda: _running(c, task.ID), what="running")
        record = running.Placement
        assert record is not None and record.Node == running.Node
        assert (record.Scheduler, record.NodesEvaluated, record.NodesFeasible) == ("epvm", 3, 3)
        assert record.TopScores[0].Node == running.Node
        # The API shows it as a plain field of the task.
        wire = m.get(task.ID).to_wire()["Placement"]
        assert wire["Node"] == running.Node and wire["NodesEvaluated"] == 3


async def test_a_waiting_task_says_which_resource_ran_out_where() -> None:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        (task,) = await m.submit_many([sleeper(Memory=TOO_BIG)])
        want = "no feasible node: 3 nodes lack memory (need 64 GiB)"
        await c.until(lambda: c.task(task.ID).Reason == want, what="the reason")
        waiting = c.task(task.ID)
        assert waiting.State is State.PENDING
        assert waiting.Placement is not None
        assert waiting.Placement.NodesFiltered == {"memory": 3}
        assert waiting.Placement.Node == ""


# --- dry runs ----------------------------------------------------------------------------


async def _plan_client(m: Manager) -> httpx.AsyncClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(plan_router(m))
    return httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://m")


@pytest.fixture
async def planned() -> AsyncIterator[tuple[Cluster, httpx.AsyncClient]]:
    async with cluster(3) as c:
        m = await c.start_manager(MemoryBackend())
        async with await _plan_client(m) as http:
            yield c, http


def _job(count: int = 3, **task: object) -> dict[str, object]:
    template = TaskTemplate(Image="cube/busybox", Cmd=["sleep", "600"], **task)  # type: ignore[arg-type]
    return Job(Name="web", Count=count, Task=template).model_dump(mode="json", exclude={"Version"})


async def test_a_task_plan_places_in_turn_and_stores_nothing(
    planned: tuple[Cluster, httpx.AsyncClient],
) -> None:
    c, http = planned
    events = [sleeper(Name=f"t{i}", Memory=5 * GIB).model_dump(mode="json") for i in range(4)]
    answer = await http.post("/plan", json=events)
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    # 8 GiB nodes: one 5 GiB task each, then nothing fits (each decision held its room).
    nodes = [p["Node"] for p in plan["Place"]]
    assert sorted(nodes[:3]) == ["w1:5556", "w2:5556", "w3:5556"] and nodes[3] == ""
    assert plan["Place"][3]["Reason"] == "no feasible node: 3 nodes lack memory (need 5 GiB)"
    assert plan["Waiting"] == 1 and plan["Job"] == ""
    assert not c.m.state.tasks and not c.copies()
    assert all(n.MemoryAllocated == 0 for n in c.m.state.nodes.values())
    one = await http.post("/plan", json=events[0])
    assert [p["Name"] for p in one.json()["Place"]] == ["t0"]


async def test_a_job_plan_says_create_update_scale_or_none(
    planned: tuple[Cluster, httpx.AsyncClient],
) -> None:
    c, http = planned
    fresh = (await http.post("/jobs/web/plan", json=_job())).json()
    assert (fresh["Job"], fresh["Version"], fresh["Change"]) == ("web", 1, "create")
    assert sorted(p["Node"] for p in fresh["Place"]) == ["w1:5556", "w2:5556", "w3:5556"]
    assert {p["Name"] for p in fresh["Place"]} == {"web-v1"}
    assert not c.m.jobs.records and not c.m.state.tasks  # a plan stores nothing

    await c.m.jobs.submit(Job.model_validate(_job()))
    await c.until(lambda: len(c.copies()) == 3, what="the job running")
    same = (await http.post("/jobs/web/plan", json=_job())).json()
    assert (same["Version"], same["Change"], same["Place"], same["Stop"]) == (1, "none", [], 0)
    more = (await http.post("/jobs/web/plan", json=_job(count=5))).json()
    assert (more["Version"], more["Change"], len(more["Place"])) == (1, "scale", 2)
    fewer = (await http.post("/jobs/web/plan", json=_job(count=1))).json()
    assert (fewer["Change"], fewer["Place"], fewer["Stop"]) == ("scale", [], 2)
    # A new version, start-first with MaxParallel 1: one new task first, none stopped yet.
    update = (await http.post("/jobs/web/plan", json=_job(Env=["V=2"]))).json()
    assert (update["Version"], update["Change"], update["Stop"]) == (2, "update", 0)
    assert [p["Name"] for p in update["Place"]] == ["web-v2"]
    assert c.m.jobs.get("web").Job.Version == 1 and len(c.m.state.tasks) == 3


async def test_the_manager_then_places_as_its_plan_said(
    planned: tuple[Cluster, httpx.AsyncClient],
) -> None:
    """The plan decides with a copy of the manager's scheduler, its state included: with
    round robin part-way through its turn, a fresh one would answer otherwise."""
    c, http = planned
    c.m.scheduler = RoundRobin()
    (first,) = await c.m.submit_many([sleeper()])
    await c.until(lambda: _running(c, first.ID), what="the first task running")
    plan = (await http.post("/jobs/web/plan", json=_job(count=5))).json()
    said = Counter(p["Node"] for p in plan["Place"])
    await c.m.jobs.submit(Job.model_validate(_job(count=5)))

    def placed() -> Counter[str] | None:
        tasks = c.m.jobs.tasks_of("web")
        done = len(tasks) == 5 and all(t.State is State.RUNNING for t in tasks)
        return Counter(t.Node for t in tasks) if done else None

    assert await c.until(placed, what="the job running") == said
    assert len(said) == 3 and said[c.task(first.ID).Node] == 1  # the turn went on


async def test_a_plan_refuses_what_its_submission_would(
    planned: tuple[Cluster, httpx.AsyncClient],
) -> None:
    _, http = planned
    other = await http.post("/jobs/api/plan", json=_job())
    assert other.status_code == 400
    assert other.json()["Message"] == "the job is named 'web', not 'api' as in the path"
    bad = await http.post("/plan", json={"Task": {"Image": ""}})
    assert bad.status_code == 400 and "Image" in bad.json()["Message"]
    empty = await http.post("/plan", content=b"")
    assert empty.status_code == 400


def _running(c: Cluster, task_id: uuid.UUID) -> Task | None:
    task = c.task(task_id)
    return task if task.State is State.RUNNING else None
