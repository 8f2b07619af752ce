"""Scheduling: feasibility checks, round robin, E-PVM's costs and the Pending reasons."""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from cube.constraints import Constraint
from cube.feasible import (
    _KEPT,
    CONSTRAINTS_CHECK,
    CPU_CHECK,
    DISK_CHECK,
    DISTINCT_HOSTS_CHECK,
    ELIGIBLE_CHECK,
    MEMORY_CHECK,
    PORTS_CHECK,
    READY_CHECK,
    Check,
    Demand,
    format_bytes,
    select_candidates,
    select_some,
)
from cube.node import DOWN, READY, Node
from cube.scheduler import (
    CPU_CAPACITY,
    LIEB,
    MAX_JOBS,
    Epvm,
    RoundRobin,
    make_scheduler,
    release,
    reserve,
)
from cube.task import Task

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class FakeTask:
    Cpu: float = 0.0
    Memory: int = 0
    Disk: int = 0
    PortBindings: dict[str, str] = field(default_factory=dict)
    ID: uuid.UUID = field(default_factory=uuid.uuid4)
    Job: str = ""
    Constraints: list[Constraint] | None = None
    DistinctHosts: bool = False


def rule(attribute: str, operator: str, value: str | list[str] | None = None) -> Constraint:
    return Constraint.model_validate({"Attribute": attribute, "Operator": operator, "Value": value})


ZONE_A = rule("zone", "=", "a")
SSD = rule("disk", "in", ["ssd", "nvme"])


def node(name: str = "w1:5556", **fields: Any) -> Node:
    """A ready node with room for anything, unless told otherwise."""
    values: dict[str, Any] = {
        "Status": READY,
        "Cores": 8,
        "Memory": 16 * 1024 * 1024,  # kB: 16 GiB
        "Disk": 100 * GIB,
    }
    values.update(fields)
    return Node(Name=name, **values)


def nodes(count: int, **fields: Any) -> list[Node]:
    return [node(f"w{i}:5556", **fields) for i in range(count)]


# --- feasibility checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "task", "node_fields", "fits"),
    [
        (READY_CHECK, FakeTask(), {"Status": READY}, True),
        (READY_CHECK, FakeTask(), {"Status": DOWN}, False),
        (READY_CHECK, FakeTask(), {"Status": ""}, False),
        # Node memory is kB, task memory is bytes.
        (MEMORY_CHECK, FakeTask(Memory=512 * MIB), {"Memory": 600_000}, True),
        (MEMORY_CHECK, FakeTask(Memory=512 * MIB), {"Memory": 500_000}, False),
        (MEMORY_CHECK, FakeTask(Memory=1000 * 1024), {"Memory": 1000}, True),
        (MEMORY_CHECK, FakeTask(Memory=1000 * 1024 + 1), {"Memory": 1000}, False),
        (MEMORY_CHECK, FakeTask(Memory=1), {"Memory": 1000, "MemoryAllocated": 1000}, False),
        (MEMORY_CHECK, FakeTask(Memory=1024), {"Memory": 1000, "MemoryAllocated": 999}, True),
        # Disk is bytes on both sides.
        (DISK_CHECK, FakeTask(Disk=GIB), {"Disk": 2 * GIB, "DiskAllocated": GIB}, True),
        (DISK_CHECK, FakeTask(Disk=GIB + 1), {"Disk": 2 * GIB, "DiskAllocated": GIB}, False),
        (DISK_CHECK, FakeTask(Disk=1), {"Disk": 0}, False),
        # Free CPU is Cores - CpuAllocated.
        (CPU_CHECK, FakeTask(Cpu=0.5), {"Cores": 2, "CpuAllocated": 1.5}, True),
        (CPU_CHECK, FakeTask(Cpu=0.6), {"Cores": 2, "CpuAllocated": 1.5}, False),
        (CPU_CHECK, FakeTask(Cpu=1), {"Cores": 0}, False),
        (CPU_CHECK, FakeTask(Cpu=0.7), {"Cores": 1, "CpuAllocated": 0.1 + 0.2}, True),
        # Fixed host ports must not be in use already.
        (PORTS_CHECK, FakeTask(PortBindings={"80/tcp": "8080"}), {"PortsAllocated": {8080}}, False),
        (PORTS_CHECK, FakeTask(PortBindings={"80/tcp": "8081"}), {"PortsAllocated": {8080}}, True),
        (
            PORTS_CHECK,
            FakeTask(PortBindings={"80/tcp": "9000", "443/tcp": "8080"}),
            {"PortsAllocated": {8080, 22}},
            False,
        ),
        # Eligible: drains and `cube node ineligible` clear it.
        (ELIGIBLE_CHECK, FakeTask(), {"Eligible": True}, True),
        (ELIGIBLE_CHECK, FakeTask(), {"Eligible": False}, False),
        # Constraints: every one must hold, on labels or built-in attributes.
        (CONSTRAINTS_CHECK, FakeTask(Constraints=[ZONE_A]), {"Labels": {"zone": "a"}}, True),
        (CONSTRAINTS_CHECK, FakeTask(Constraints=[ZONE_A]), {"Labels": {"zone": "b"}}, False),
        (CONSTRAINTS_CHECK, FakeTask(Constraints=[ZONE_A]), {}, False),
        (
            CONSTRAINTS_CHECK,
            FakeTask(Constraints=[ZONE_A, SSD]),
            {"Labels": {"zone": "a", "disk": "nvme"}},
            True,
        ),
        (
            CONSTRAINTS_CHECK,
            FakeTask(Constraints=[ZONE_A, SSD]),
            {"Labels": {"zone": "a", "disk": "hdd"}},
            False,
        ),
        (
            CONSTRAINTS_CHECK,
            FakeTask(Constraints=[rule("os", "=", "linux"), rule("zone", "!=", "b")]),
            {"Attributes": {"os": "linux"}},
            True,
        ),
        # DistinctHosts: no task of the same job on the node already.
        (DISTINCT_HOSTS_CHECK, FakeTask(Job="web", DistinctHosts=True), {}, True),
        (
            DISTINCT_HOSTS_CHECK,
            FakeTask(Job="web", DistinctHosts=True),
            {"JobTasks": {"web": 1}},
            False,
        ),
        (
            DISTINCT_HOSTS_CHECK,
            FakeTask(Job="web", DistinctHosts=True),
            {"JobTasks": {"db": 2}},
            True,
        ),
    ],
)
def test_check(check: Check, task: FakeTask, node_fields: dict[str, Any], fits: bool) -> None:
    assert check.fits(Demand.of(task), node(**node_fields)) is fits


ALWAYS = ["ready", "eligible", "docker"]


@pytest.mark.parametrize(
    ("task", "applicable"),
    [
        (FakeTask(), ALWAYS),
        (FakeTask(Memory=1), [*ALWAYS, "memory"]),
        (FakeTask(Disk=1), [*ALWAYS, "disk"]),
        (FakeTask(Cpu=0.1), [*ALWAYS, "cpu"]),
        (FakeTask(PortBindings={"80/tcp": "8080"}), [*ALWAYS, "ports"]),
        (FakeTask(PortBindings={"80/tcp": ""}), ALWAYS),
        # One check per constraint (a duplicate is one), so the reason counts each.
        (
            FakeTask(Memory=1, Constraints=[ZONE_A, SSD, ZONE_A]),
            [*ALWAYS, "constraint zone = a", "constraint disk in (nvme, ssd)", "memory"],
        ),
        (FakeTask(Job="web", DistinctHosts=True), [*ALWAYS, "distinct_hosts"]),
        (FakeTask(DistinctHosts=True), ALWAYS),  # a task of no job has no siblings
        (FakeTask(Job="web"), ALWAYS),
    ],
)
def test_checks_apply_only_to_what_the_task_requests(task: FakeTask, applicable: list[str]) -> None:
    assert [check.name for check in Demand.of(task).checks] == applicable


def test_demands_are_shared_only_by_tasks_with_the_same_size_and_rules() -> None:
    """The cache of demands must not hand a constrained task the unconstrained demand
    of the same size, or the other way round."""
    _KEPT.clear()
    plain = Demand.of(FakeTask(Memory=7))
    constrained = Demand.of(FakeTask(Memory=7, Constraints=[ZONE_A]))
    distinct = Demand.of(FakeTask(Memory=7, Job="web", DistinctHosts=True))
    assert constrained.constraints == (ZONE_A,) and distinct.distinct_job == "web"
    assert plain.constraints == () and plain.distinct_job == ""
    assert Demand.of(FakeTask(Memory=7)) is plain
    assert Demand.of(FakeTask(Memory=7, Constraints=[rule("zone", "=", "a")])) is constrained
    assert Demand.of(FakeTask(Memory=7, Constraints=[SSD])).constraints == (SSD,)
    assert Demand.of(FakeTask(Memory=7, Job="db", DistinctHosts=True)).distinct_job == "db"
    assert Demand.of(FakeTask(Memory=7, Job="web")) is plain  # no DistinctHosts: no rule
    assert len(_KEPT) == 5


def test_a_task_requesting_nothing_fits_a_node_that_has_not_reported_capacity() -> None:
    bare = node(Cores=0, Memory=0, Disk=0)
    assert select_candidates(FakeTask(), [bare]).nodes == [bare]


def test_memory_is_rounded_up_to_whole_kb() -> None:
    assert Demand.of(FakeTask(Memory=1)).memory_kb == 1
    assert Demand.of(FakeTask(Memory=1024)).memory_kb == 1
    assert Demand.of(FakeTask(Memory=1025)).memory_kb == 2


def test_select_candidates_keeps_order_and_counts_each_node_once() -> None:
    ok1, ok2 = node("ok1"), node("ok2")
    down = node("down", Status=DOWN, Memory=0)  # fails memory too: counted as not ready
    small = node("small", Memory=1000)
    busy_port = node("busy", PortsAllocated={8080})
    task = FakeTask(Memory=512 * MIB, PortBindings={"80/tcp": "8080"})

    found = select_candidates(task, [small, ok1, down, busy_port, ok2])

    assert [n.Name for n in found.nodes] == ["ok1", "ok2"]
    assert found.rejected == {"ready": 1, "memory": 1, "ports": 1}
    assert found.reason() == ""


def test_a_node_without_docker_gets_nothing_however_idle() -> None:
    busy = node("busy", TaskCount=30, MemoryAllocated=8 * 1024 * 1024)
    idle = node("idle", Docker=False)
    for scheduler in (make_scheduler("roundrobin"), make_scheduler("epvm")):
        for _ in range(3):
            placement = scheduler.place(FakeTask(), [idle, busy])
            assert placement.node is busy
    found = select_candidates(FakeTask(), [idle, busy])
    assert found.rejected == {"docker": 1}


# --- the Pending reason -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "cluster", "reason"),
    [
        (
            FakeTask(Memory=512 * MIB),
            nodes(3, Memory=100_000),
            "no feasible node: 3 nodes lack memory (need 512 MiB)",
        ),
        (
            FakeTask(Memory=512 * MIB),
            [node("a", Status=DOWN), node("b", Memory=1), node("c", Memory=1)],
            "no feasible node: 1 node is not ready, 2 nodes lack memory (need 512 MiB)",
        ),
        (
            FakeTask(Disk=3 * GIB // 2),
            [node(Disk=GIB)],
            "no feasible node: 1 node lacks disk (need 1.5 GiB)",
        ),
        (
            FakeTask(Cpu=2),
            nodes(2, Cores=1),
            "no feasible node: 2 nodes lack CPU (need 2 cores)",
        ),
        (
            FakeTask(PortBindings={"80/tcp": "8080", "81/tcp": "80"}),
            nodes(2, PortsAllocated={80}),
            "no feasible node: 2 nodes have host port 80 or 8080 in use",
        ),
        (FakeTask(), nodes(2, Status=DOWN), "no feasible node: 2 nodes are not ready"),
        (
            FakeTask(),
            [node("a", Status=DOWN), node("b", Docker=False)],
            "no feasible node: 1 node is not ready, 1 node has no Docker engine answering",
        ),
        (FakeTask(), [], "no feasible node: no worker nodes are known"),
        (
            FakeTask(),
            [node("a", Eligible=False), node("b", Eligible=False, Status=DOWN)],
            "no feasible node: 1 node is not ready, "
            "1 node is not eligible (draining or marked ineligible)",
        ),
        (
            FakeTask(Constraints=[ZONE_A]),
            [node("a", Labels={"zone": "b"}), node("b"), node("c", Eligible=False)],
            "no feasible node: 1 node is not eligible (draining or marked ineligible), "
            "2 nodes fail constraint zone = a",
        ),
        (
            FakeTask(Constraints=[ZONE_A, SSD]),
            [
                node("a", Labels={"zone": "b", "disk": "ssd"}),
                node("b", Labels={"zone": "a", "disk": "hdd"}),
                node("c", Labels={"zone": "a"}),
            ],
            "no feasible node: 1 node fails constraint zone = a, "
            "2 nodes fail constraint disk in (nvme, ssd)",
        ),
        (
            FakeTask(Constraints=[rule("gpu", "exists")], Memory=GIB),
            [node("a", Labels={"gpu": "1"}, Memory=1), node("b")],
            "no feasible node: 1 node fails constraint gpu exists, "
            "1 node lacks memory (need 1 GiB)",
        ),
        (
            FakeTask(Job="web", DistinctHosts=True),
            [
                node("a", JobTasks={"web": 1}),
                node("b", JobTasks={"web": 2}),
                node("c", Docker=False),
            ],
            "no feasible node: 1 node has no Docker engine answering, "
            "2 nodes already run a task of job web (DistinctHosts)",
        ),
        (
            FakeTask(Job="web", DistinctHosts=True, Constraints=[rule("zone", "not in", "a")]),
            [node("a", JobTasks={"web": 1}), node("b", Labels={"zone": "a"})],
            "no feasible node: 1 node fails constraint zone not in (a), "
            "1 node already runs a task of job web (DistinctHosts)",
        ),
    ],
)
def test_no_feasible_node_reason(task: FakeTask, cluster: list[Node], reason: str) -> None:
    for scheduler in (make_scheduler("roundrobin"), make_scheduler("epvm")):
        placement = scheduler.place(task, cluster)
        assert placement.node is None
        assert placement.reason == reason


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (512 * MIB, "512 MiB"), (5 * GIB, "5 GiB")],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


# --- picking ------------------------------------------------------------------------------


def test_pick_takes_the_lowest_score_and_the_first_of_equals() -> None:
    a, b, c = node("a"), node("b"), node("c")
    scheduler = Epvm()
    assert scheduler.pick({"a": 2.0, "b": 1.0, "c": 3.0}, [a, b, c]) is b
    assert scheduler.pick({"a": 1.0, "b": 1.0, "c": 1.0}, [a, b, c]) is a
    with pytest.raises(ValueError, match="no candidates"):
        scheduler.pick({}, [])


# --- round robin --------------------------------------------------------------------------


def test_round_robin_cycles_through_the_nodes() -> None:
    cluster = nodes(3)
    scheduler = make_scheduler("roundrobin")
    picks = [scheduler.place(FakeTask(), cluster).node for _ in range(7)]
    assert [n.Name if n else None for n in picks] == [
        "w0:5556",
        "w1:5556",
        "w2:5556",
        "w0:5556",
        "w1:5556",
        "w2:5556",
        "w0:5556",
    ]


def test_round_robin_skips_nodes_that_cannot_take_the_task() -> None:
    cluster = [node("a"), node("b", Status=DOWN), node("c"), node("d", Memory=10)]
    scheduler = make_scheduler("roundrobin")
    picks = [scheduler.place(FakeTask(Memory=MIB), cluster).node for _ in range(4)]
    assert [n.Name if n else None for n in picks] == ["a", "c", "a", "c"]


def test_round_robin_three_phases_mark_the_turn_with_the_lowest_score() -> None:
    cluster = nodes(3)
    scheduler = RoundRobin()
    candidates = scheduler.select_candidates(FakeTask(), cluster).nodes
    assert scheduler.score(FakeTask(), candidates) == {
        "w0:5556": 0.1,
        "w1:5556": 1.0,
        "w2:5556": 1.0,
    }
    scores = scheduler.score(FakeTask(), candidates)
    assert scheduler.pick(scores, candidates).Name == "w1:5556"
    assert scheduler.last_index == 1


# --- E-PVM --------------------------------------------------------------------------------


def rise(now: float, new: float) -> float:
    return math.pow(LIEB, new) - math.pow(LIEB, now)


def epvm_score(task: FakeTask, n: Node) -> float:
    return Epvm(max_candidates=None).score(task, [n])[n.Name]


def test_epvm_constants_are_the_books() -> None:
    assert LIEB == 1.53960071783900203869
    assert MAX_JOBS == 4
    assert CPU_CAPACITY == 2**0.8


def test_epvm_cost_with_memory_and_cpu_requested() -> None:
    n = node(
        Memory=4_000_000,
        MemoryAllocated=1_000_000,
        TaskCount=2,
        Cores=4,
        CpuPercent=50.0,
        CpuAllocated=1.0,
    )
    task = FakeTask(Memory=512 * MIB, Cpu=1.0)  # 524288 kB, a quarter of the cores

    jobs = math.pow(LIEB, 3 / 4) - math.pow(LIEB, 2 / 4)
    mem_cost = (
        math.pow(LIEB, (1_000_000 + 524_288) / 4_000_000)
        - math.pow(LIEB, 1_000_000 / 4_000_000)
        + jobs
    )
    cpu_now = 0.5  # max(50 / 100, 1.0 / 4)
    cpu_cost = (
        math.pow(LIEB, (cpu_now + 1.0 / 4) / 2**0.8) - math.pow(LIEB, cpu_now / 2**0.8) + jobs
    )
    assert epvm_score(task, n) == pytest.approx(mem_cost + cpu_cost, rel=1e-12)


def test_epvm_cost_counts_promised_cores_and_a_default_share_for_no_cpu_request() -> None:
    n = node(Memory=1_000_000, TaskCount=0, Cores=4, CpuPercent=10.0, CpuAllocated=3.0)
    task = FakeTask()  # no memory, no CPU requested

    jobs = math.pow(LIEB, 1 / 4) - math.pow(LIEB, 0)
    cpu_now = 0.75  # max(10 / 100, 3.0 / 4): promised cores not yet busy still count
    cpu_task = 1 / 4  # 1 / MAX_JOBS of the machine
    expected = jobs + (rise(cpu_now / 2**0.8, (cpu_now + cpu_task) / 2**0.8) + jobs)
    assert epvm_score(task, n) == pytest.approx(expected, rel=1e-12)


def test_epvm_cost_on_a_node_without_reported_capacity_is_the_jobs_terms() -> None:
    n = node(Memory=0, Cores=0, TaskCount=5)
    expected = 2 * (math.pow(LIEB, 6 / 4) - math.pow(LIEB, 5 / 4))
    assert epvm_score(FakeTask(), n) == pytest.approx(expected, rel=1e-12)


def test_epvm_cost_of_a_hugely_loaded_node_is_infinite_not_an_error() -> None:
    assert epvm_score(FakeTask(), node(TaskCount=100_000)) == math.inf


def test_epvm_cpu_term_does_not_cancel_out_as_in_the_book() -> None:
    idle, busy = node("idle", CpuPercent=5.0), node("busy", CpuPercent=90.0)
    for task in (FakeTask(), FakeTask(Cpu=1.0)):
        scores = Epvm().score(task, [idle, busy])
        assert scores["idle"] < scores["busy"]


@pytest.mark.parametrize(
    ("field_name", "loads"),
    [
        ("CpuPercent", [80.0, 20.0, 50.0]),
        ("CpuAllocated", [6.0, 1.0, 3.0]),
        ("MemoryAllocated", [12_000_000, 1_000_000, 6_000_000]),
        ("TaskCount", [6, 1, 3]),
    ],
)
def test_epvm_prefers_the_least_loaded_node(field_name: str, loads: list[float]) -> None:
    cluster = [node(f"n{i}", **{field_name: load}) for i, load in enumerate(loads)]
    placement = make_scheduler("epvm").place(FakeTask(Memory=256 * MIB, Cpu=0.5), cluster)
    assert placement.node is cluster[1]


@pytest.mark.parametrize("max_candidates", [None, 4])
def test_epvm_with_reservations_spreads_a_burst_evenly(max_candidates: int | None) -> None:
    cluster = nodes(10)
    scheduler = make_scheduler("epvm", max_candidates)
    for _ in range(40):
        task = FakeTask(Memory=64 * MIB, Cpu=0.1)
        placement = scheduler.place(task, cluster)
        assert placement.node is not None
        reserve(placement.node, task)
    counts = [n.TaskCount for n in cluster]
    assert sum(counts) == 40
    assert max(counts) - min(counts) <= (0 if max_candidates is None else 2)


# --- sampling large clusters --------------------------------------------------------------


def test_select_some_stops_early_and_resumes_where_it_stopped() -> None:
    cluster = nodes(10)
    found, next_start = select_some(FakeTask(), cluster, limit=3, start=8)
    assert [n.Name for n in found.nodes] == ["w8:5556", "w9:5556", "w0:5556"]
    assert next_start == 1


def test_select_some_scans_everything_before_giving_up() -> None:
    cluster = [*nodes(9, Status=DOWN), node("last")]
    found, _ = select_some(FakeTask(), cluster, limit=2)
    assert [n.Name for n in found.nodes] == ["last"]
    found, next_start = select_some(FakeTask(), cluster[:9], limit=2, start=4)
    assert (found.nodes, found.rejected, next_start) == ([], {"ready": 9}, 4)
    assert found.reason() == "no feasible node: 9 nodes are not ready"


def test_epvm_sampling_gives_every_node_a_turn() -> None:
    cluster = nodes(12)
    scheduler = Epvm(max_candidates=3)
    picked: Counter[str] = Counter()
    for _ in range(12):
        placement = scheduler.place(FakeTask(), cluster)
        assert placement.node is not None
        picked[placement.node.Name] += 1  # no reserve: only the window decides
    assert set(picked) == {"w0:5556", "w3:5556", "w6:5556", "w9:5556"}
    assert set(picked.values()) == {3}


def _burst(scheduler: Epvm, cluster: list[Node], tasks: list[FakeTask]) -> list[str]:
    """Place and reserve each task in turn; the nodes, in the order they were picked."""
    picked = []
    for task in tasks:
        placement = scheduler.place(task, cluster)
        assert placement.node is not None
        reserve(placement.node, task)
        picked.append(placement.node.Name)
    return picked


def test_a_pass_gives_each_window_its_share_in_a_row_and_spreads_as_evenly() -> None:
    cluster = nodes(100)
    scheduler = Epvm(max_candidates=10)
    scheduler.begin_pass(1000)
    picked = _burst(scheduler, cluster, [FakeTask() for _ in range(1000)])
    # 10 of 100 nodes: a window takes a tenth of the pass before the next one starts,
    # so each node's 10 tasks are decided within 100 decisions of each other.
    assert set(picked[:100]) == {f"w{i}:5556" for i in range(10)}
    assert set(picked[100:200]) == {f"w{i}:5556" for i in range(10, 20)}
    for name in set(picked):
        where = [i for i, n in enumerate(picked) if n == name]
        assert where[-1] - where[0] < 100
    assert {n.TaskCount for n in cluster} == {10}


def test_without_a_pass_each_decision_moves_the_window_on() -> None:
    cluster = nodes(100)
    scheduler = Epvm(max_candidates=10)
    picked = _burst(scheduler, cluster, [FakeTask() for _ in range(20)])
    assert len(set(picked)) == 20  # a window per decision: twenty windows, twenty nodes
    scheduler.begin_pass(0)
    assert len(set(_burst(scheduler, cluster, [FakeTask() for _ in range(20)]))) == 20


def test_a_jobs_tasks_in_a_pass_spread_over_as_many_nodes_as_before() -> None:
    cluster = nodes(100)
    scheduler = Epvm(max_candidates=10)
    scheduler.begin_pass(1000)
    plain = _burst(scheduler, cluster, [FakeTask() for _ in range(5)])
    job = _burst(scheduler, cluster, [FakeTask(Job="web") for _ in range(30)])
    assert len(set(plain)) == 5  # the first window, staying
    assert len(set(job)) == 30  # a window each: no node holds two of the job's tasks


def test_a_new_pass_does_not_finish_the_last_ones_window() -> None:
    cluster = nodes(100)
    scheduler = Epvm(max_candidates=10)
    scheduler.begin_pass(1000)
    first = _burst(scheduler, cluster, [FakeTask() for _ in range(5)])
    scheduler.begin_pass(1)
    second = _burst(scheduler, cluster, [FakeTask()])
    assert set(first) <= {f"w{i}:5556" for i in range(10)}
    assert second == ["w10:5556"]  # the next window, not the rest of the last one


# --- construction and bookkeeping ---------------------------------------------------------


def test_make_scheduler() -> None:
    assert isinstance(make_scheduler("roundrobin"), RoundRobin)
    assert isinstance(make_scheduler("epvm"), Epvm)
    assert make_scheduler("epvm").name == "epvm"
    with pytest.raises(ValueError, match="unknown scheduler 'fifo': expected 'roundrobin' or"):
        make_scheduler("fifo")
    with pytest.raises(ValueError, match="max_candidates must be at least 1"):
        make_scheduler("epvm", 0)


def test_reserve_and_release_keep_the_units_straight() -> None:
    n = node(Memory=1_000_000, Disk=10 * GIB, Cores=4)
    task = FakeTask(Memory=512 * MIB + 1, Disk=GIB, Cpu=1.5, PortBindings={"80/tcp": "8080"})
    reserve(n, task)
    assert (n.TaskCount, n.MemoryAllocated, n.DiskAllocated, n.CpuAllocated) == (
        1,
        524_289,
        GIB,
        1.5,
    )
    assert n.PortsAllocated == {8080}
    assert n.free_memory_kb == 1_000_000 - 524_289
    release(n, task)
    release(n, task)  # a second release never goes below zero
    assert (n.TaskCount, n.MemoryAllocated, n.DiskAllocated, n.CpuAllocated) == (0, 0, 0, 0.0)
    assert n.PortsAllocated == set()


def test_the_real_task_model_is_a_task_request() -> None:
    task = Task(Image="busybox", Memory="512MiB", Cpu=0.5, PortBindings={"80/tcp": "8080"})
    taken = node("taken", PortsAllocated={8080})
    free = node("free")
    placement = make_scheduler("epvm").place(task, [taken, free])
    assert placement.node is free
    reserve(free, task)
    assert (free.MemoryAllocated, free.PortsAllocated) == (512 * 1024, {8080})


# --- eligibility, constraints, distinct hosts ----------------------------------------------


@pytest.mark.parametrize("name", ["roundrobin", "epvm"])
def test_constrained_tasks_go_only_where_they_may(name: str) -> None:
    cluster = [
        node("a1", Labels={"zone": "a"}),
        node("b1", Labels={"zone": "b"}),
        node("a2", Labels={"zone": "a"}, Eligible=False),
        node("a3", Labels={"zone": "a"}),
        node("none"),
    ]
    scheduler = make_scheduler(name)
    placed: Counter[str] = Counter()
    for _ in range(8):
        task = FakeTask(Memory=MIB, Constraints=[ZONE_A])
        placement = scheduler.place(task, cluster)
        assert placement.node is not None
        reserve(placement.node, task)
        placed[placement.node.Name] += 1
    assert placed == {"a1": 4, "a3": 4}


@pytest.mark.parametrize("max_candidates", [None, 2])
def test_distinct_hosts_never_doubles_up_and_a_release_frees_the_node(
    max_candidates: int | None,
) -> None:
    cluster = nodes(4)
    scheduler = Epvm(max_candidates)
    tasks = [FakeTask(Job="web", DistinctHosts=True) for _ in range(5)]
    where = []
    for task in tasks[:4]:
        placement = scheduler.place(task, cluster)
        assert placement.node is not None
        reserve(placement.node, task)
        where.append(placement.node)
    assert len({n.Name for n in where}) == 4
    fifth = scheduler.place(tasks[4], cluster)
    assert fifth.node is None
    assert fifth.reason == (
        "no feasible node: 4 nodes already run a task of job web (DistinctHosts)"
    )
    other_job = FakeTask(Job="db", DistinctHosts=True)
    assert scheduler.place(other_job, cluster).node is not None
    release(where[2], tasks[2])
    assert scheduler.place(tasks[4], cluster).node is where[2]
