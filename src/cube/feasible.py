"""Feasibility: which nodes could take a task at all (the scheduler's first phase).

A task's request is worked out once per decision (:class:`Demand`), then each
:class:`Check` narrows the nodes, in :data:`CHECKS` order: whether the node is ready,
takes new work at all (``Eligible``: drains and ``cube node ineligible`` clear it),
has a Docker engine answering, satisfies the task's placement constraints
(:mod:`cube.constraints`), runs no task of the same job when the task asks for
distinct hosts, and has the memory, disk, CPU and host ports it asks for. They are
Nomad's feasibility checkers (``scheduler/feasible``) and Kubernetes' Filter plugins
(NodeUnschedulable, NodeAffinity, pod anti-affinity, NodeResourcesFit, NodePorts).
How many nodes each turned away is kept (:class:`Candidates`), for the task's
Pending reason and its placement record (:mod:`cube.explain`).

A check that cannot fail for a task (``applies`` is False) is skipped for the whole
decision, so unconstrained tasks pay nothing for constraints or distinct hosts.
:mod:`cube.scheduler` scores and picks among the nodes that pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cube.constraints import Constraint
from cube.node import READY, Node

KIB = 1024
# Allocations are sums of floats such as 0.1 + 0.2; don't refuse a fit over rounding.
_CPU_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class Check:
    """One feasibility check, in the Kubernetes Filter-plugin sense.

    ``keep`` filters a whole list in one comprehension rather than being called once
    per node: at thousands of nodes per decision, a Python call per node per check
    costs more than the checks themselves. ``applies`` lets a decision skip checks
    the task cannot fail (it requests no memory, no ports...). ``explain`` words the
    rejection of ``count`` nodes for the task's Pending reason. ``expand``, when set,
    splits the check into one per item for a decision (a check per constraint), so the
    reason counts the nodes each item turned away.
    """

    name: str
    applies: Callable[[Demand], bool]
    keep: Callable[[Demand, list[Node]], list[Node]]
    explain: Callable[[Demand, int], str]
    expand: Callable[[Demand], tuple[Check, ...]] | None = None

    def fits(self, demand: Demand, node: Node) -> bool:
        return bool(self.keep(demand, [node]))


def nodes_phrase(count: int, singular: str, plural: str) -> str:
    """``1 node is`` / ``3 nodes are``: the start of each part of a Pending reason."""
    return f"1 node {singular}" if count == 1 else f"{count} nodes {plural}"


def _keep_eligible(d: Demand, nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.Eligible]


def _keep_distinct(d: Demand, nodes: list[Node]) -> list[Node]:
    job = d.distinct_job
    return [n for n in nodes if job not in n.JobTasks]


def _keep_matching(d: Demand, nodes: list[Node]) -> list[Node]:
    for constraint in d.constraints:
        nodes = constraint.keep(nodes)
    return nodes


def constraint_check(constraint: Constraint) -> Check:
    """The check for one constraint, named after it so its rejections count apart."""
    text = str(constraint)
    keep = constraint.keep
    return Check(
        name=f"constraint {text}",
        applies=lambda d: True,
        keep=lambda d, nodes: keep(nodes),
        explain=lambda d, c: nodes_phrase(c, "fails", "fail") + f" constraint {text}",
    )


def _each_constraint(d: Demand) -> tuple[Check, ...]:
    # The same constraint twice is one check: its second copy could turn no node away.
    return tuple({str(c): constraint_check(c) for c in d.constraints}.values())


ELIGIBLE_CHECK = Check(
    name="eligible",
    applies=lambda d: True,
    keep=_keep_eligible,
    explain=lambda d, c: (
        nodes_phrase(c, "is", "are") + " not eligible (draining or marked ineligible)"
    ),
)
CONSTRAINTS_CHECK = Check(
    name="constraints",
    applies=lambda d: bool(d.constraints),
    keep=_keep_matching,
    explain=lambda d, c: (
        nodes_phrase(c, "fails", "fail")
        + " constraints "
        + "; ".join(str(x) for x in d.constraints)
    ),
    expand=_each_constraint,
)
DISTINCT_HOSTS_CHECK = Check(
    name="distinct_hosts",
    applies=lambda d: bool(d.distinct_job),
    keep=_keep_distinct,
    explain=lambda d, c: (
        nodes_phrase(c, "already runs", "already run")
        + f" a task of job {d.distinct_job} (DistinctHosts)"
    ),
)


# --- a task's request ---------------------------------------------------------------


class TaskRequest(Protocol):
    """What the scheduler reads from a task; :class:`cube.task.Task` satisfies it.

    It also reads ``Job``, ``Constraints`` and ``DistinctHosts`` when a request has
    them (with getattr: a request without them belongs to no job and may go anywhere).
    """

    @property
    def ID(self) -> uuid.UUID: ...

    @property
    def Cpu(self) -> float: ...

    @property
    def Memory(self) -> int: ...

    @property
    def Disk(self) -> int: ...

    @property
    def PortBindings(self) -> Mapping[str, str] | None: ...


@dataclass(frozen=True, slots=True)
class Demand:
    """A task's request in the node's units, worked out once per decision, not per node."""

    memory: int  # bytes, as the user asked (for messages)
    memory_kb: int  # rounded up: a task never gets less than it asked for
    disk: int
    cpu: float
    ports: frozenset[int]
    constraints: tuple[Constraint, ...] = ()
    distinct_job: str = ""  # the job none of whose tasks may be on the node, if any
    # The checks this demand can fail, in CHECKS order (constraints one by one): a
    # decision runs these and nothing else. Set by _make.
    checks: tuple[Check, ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, task: TaskRequest) -> Demand:
        if task.PortBindings:
            return cls._make(task)
        # Most tasks ask for one of a few sizes and no fixed port: a decision works a
        # request out three times (filter, reservation, and its release later), so
        # those are kept rather than built each time. Demands are immutable. Tasks
        # with placement rules are keyed on them too (a job's tasks share its rules).
        rules = getattr(task, "Constraints", None)
        key: Hashable = (task.Memory, task.Disk, task.Cpu)
        if rules or getattr(task, "DistinctHosts", False):
            key = (key, tuple(rules or ()), _distinct_job(task))
        demand = _KEPT.get(key)
        if demand is None:
            if len(_KEPT) >= _KEPT_MAX:
                _KEPT.clear()
            demand = _KEPT[key] = cls._make(task)
        return demand

    @classmethod
    def _make(cls, task: TaskRequest) -> Demand:
        memory = max(task.Memory, 0)
        demand = cls(
            memory=memory,
            memory_kb=-(-memory // KIB),
            disk=max(task.Disk, 0),
            cpu=max(task.Cpu, 0.0),
            ports=fixed_host_ports(task),
            constraints=tuple(getattr(task, "Constraints", None) or ()),
            distinct_job=_distinct_job(task),
        )
        plan: list[Check] = []
        for check in CHECKS:
            if check.applies(demand):
                plan.extend(check.expand(demand) if check.expand else (check,))
        object.__setattr__(demand, "checks", tuple(plan))  # frozen: set once, as it is made
        return demand


def _distinct_job(task: TaskRequest) -> str:
    return getattr(task, "Job", "") if getattr(task, "DistinctHosts", False) else ""


# Demands of tasks without fixed host ports, by (Memory, Disk, Cpu) and any placement
# rules; see Demand.of.
_KEPT: dict[Hashable, Demand] = {}
_KEPT_MAX = 1024


def fixed_host_ports(task: TaskRequest) -> frozenset[int]:
    """The host ports a task insists on; published ports without one conflict with nothing."""
    return frozenset(int(port) for port in (task.PortBindings or {}).values() if port.isdigit())


# --- feasibility ----------------------------------------------------------------------


def _keep_ready(d: Demand, nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.Status == READY]


def _keep_docker(d: Demand, nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.Docker]


def _keep_memory(d: Demand, nodes: list[Node]) -> list[Node]:
    need = d.memory_kb  # node memory is kB, the task's bytes were rounded up to kB
    return [n for n in nodes if need <= n.Memory - n.MemoryAllocated]


def _keep_disk(d: Demand, nodes: list[Node]) -> list[Node]:
    need = d.disk
    return [n for n in nodes if need <= n.Disk - n.DiskAllocated]


def _keep_cpu(d: Demand, nodes: list[Node]) -> list[Node]:
    need = d.cpu - _CPU_SLACK
    return [n for n in nodes if need <= n.Cores - n.CpuAllocated]


def _keep_ports(d: Demand, nodes: list[Node]) -> list[Node]:
    ports = d.ports
    return [n for n in nodes if ports.isdisjoint(n.PortsAllocated)]


def _ports(ports: frozenset[int]) -> str:
    return " or ".join(str(p) for p in sorted(ports))


def format_bytes(size: int) -> str:
    for unit, scale in (("TiB", KIB**4), ("GiB", KIB**3), ("MiB", KIB**2), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} B"


READY_CHECK = Check(
    name="ready",
    applies=lambda d: True,
    keep=_keep_ready,
    explain=lambda d, c: nodes_phrase(c, "is not ready", "are not ready"),
)
DOCKER_CHECK = Check(
    name="docker",
    applies=lambda d: True,
    keep=_keep_docker,
    explain=lambda d, c: nodes_phrase(c, "has", "have") + " no Docker engine answering",
)
MEMORY_CHECK = Check(
    name="memory",
    applies=lambda d: d.memory_kb > 0,
    keep=_keep_memory,
    explain=lambda d, c: (
        nodes_phrase(c, "lacks", "lack") + f" memory (need {format_bytes(d.memory)})"
    ),
)
DISK_CHECK = Check(
    name="disk",
    applies=lambda d: d.disk > 0,
    keep=_keep_disk,
    explain=lambda d, c: nodes_phrase(c, "lacks", "lack") + f" disk (need {format_bytes(d.disk)})",
)
CPU_CHECK = Check(
    name="cpu",
    applies=lambda d: d.cpu > 0,
    keep=_keep_cpu,
    explain=lambda d, c: nodes_phrase(c, "lacks", "lack") + f" CPU (need {d.cpu:g} cores)",
)
PORTS_CHECK = Check(
    name="ports",
    applies=lambda d: bool(d.ports),
    keep=_keep_ports,
    explain=lambda d, c: nodes_phrase(c, "has", "have") + f" host port {_ports(d.ports)} in use",
)
# Cheapest and most common rejections first; a node is counted against the first it fails.
# What a node is (eligible, its labels) comes before what room it has left.
CHECKS: tuple[Check, ...] = (
    READY_CHECK,
    ELIGIBLE_CHECK,
    DOCKER_CHECK,
    CONSTRAINTS_CHECK,
    DISTINCT_HOSTS_CHECK,
    MEMORY_CHECK,
    DISK_CHECK,
    CPU_CHECK,
    PORTS_CHECK,
)


@dataclass(slots=True)
class Candidates:
    """The feasible nodes, plus how many nodes each check turned away (first failure only)."""

    nodes: list[Node]
    rejected: dict[str, int]
    demand: Demand
    evaluated: int = 0  # nodes looked at (fewer than all on a large cluster: select_some)

    def reason(self) -> str:
        """Why nothing fits, worded for a user reading a Pending task."""
        if self.nodes:
            return ""
        if not self.rejected:
            return "no feasible node: no worker nodes are known"
        parts = [
            check.explain(self.demand, self.rejected[check.name])
            for check in self.demand.checks
            if check.name in self.rejected
        ]
        return "no feasible node: " + ", ".join(parts)


def select_candidates(task: TaskRequest, nodes: Iterable[Node]) -> Candidates:
    """Narrow the nodes check by check, keeping their order (round robin relies on it)."""
    demand = Demand.of(task)
    rejected: dict[str, int] = {}
    every = list(nodes)
    return Candidates(_filter(demand, every, rejected), rejected, demand, len(every))


def select_some(
    task: TaskRequest, nodes: Sequence[Node], limit: int, start: int = 0
) -> tuple[Candidates, int]:
    """Like :func:`select_candidates`, but stop once about ``limit`` nodes fit.

    This is Kubernetes' percentageOfNodesToScore: on a large cluster, scoring a few
    dozen feasible nodes places as well as scoring thousands, at a fraction of the
    cost. The scan goes round the list from ``start``; the second value returned is
    where the next scan should begin, so every node keeps its turn. When nothing fits,
    every node has been looked at and the rejection counts are complete.
    """
    demand = Demand.of(task)
    total = len(nodes)
    found: list[Node] = []
    rejected: dict[str, int] = {}
    scanned = 0
    while scanned < total and len(found) < limit:
        begin = (start + scanned) % total
        size = min(limit, total - scanned)
        chunk = list(nodes[begin : begin + size])
        if len(chunk) < size:  # wrapped past the end of the list
            chunk += nodes[: size - len(chunk)]
        found += _filter(demand, chunk, rejected)
        scanned += size
    found_all = Candidates(found, rejected, demand, scanned)
    return found_all, (start + scanned) % max(total, 1)


def _filter(demand: Demand, nodes: list[Node], rejected: dict[str, int]) -> list[Node]:
    for check in demand.checks:
        if not nodes:
            break
        kept = check.keep(demand, nodes)
        if len(kept) < len(nodes):
            rejected[check.name] = rejected.get(check.name, 0) + len(nodes) - len(kept)
        nodes = kept
    return nodes
