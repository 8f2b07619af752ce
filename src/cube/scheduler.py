"""Where a task runs, decided in the book's three phases: candidates, score, pick.

The shape follows Nomad's feasibility checkers and rankers and the Kubernetes
scheduler framework's Filter and Score plugins: a node first has to pass every
feasibility check (ready; eligible; its Docker engine answers; the task's placement
constraints hold; no task of the same job there if it asks for distinct hosts; free
memory, disk and CPU cover the request; fixed host ports unused: :mod:`cube.feasible`),
then the scheduler scores the survivors and
picks the lowest score.
Everything here is pure arithmetic on :class:`~cube.node.Node` values the manager
already holds, so a decision costs O(nodes) and no I/O; the manager keeps those
values current and calls :func:`reserve` / :func:`release` as it places and removes
tasks, so back-to-back decisions see each other before any worker reports.

``roundrobin`` is the book's: it keeps the index it picked last and takes the next
one, but in the list of feasible nodes rather than of all nodes. (It starts at the
first node; the book's starts at the second.)

``epvm`` is the book's E-PVM (after Amir et al., "An Opportunity Cost Approach for
Job Assignment in a Scalable Computing Cluster"): each resource's load is priced as
``LIEB ** load``, so a node's cost rises steeply as it fills up, and the task goes
where adding it raises the cost least. For a task and a node, with
``L = LIEB = 1.53960071783900203869``, ``MAX_JOBS = 4``, ``CPU_CAPACITY = 2 ** 0.8``
(the book's guess at the largest CPU load seen) and ``rise(a, b) = L**b - L**a``::

    jobs     = rise(TaskCount / MAX_JOBS, (TaskCount + 1) / MAX_JOBS)

    mem_now  = MemoryAllocated / Memory                          (kB / kB)
    mem_new  = (MemoryAllocated + ceil(task.Memory / 1024)) / Memory
    mem_cost = rise(mem_now, mem_new) + jobs

    cpu_now  = max(CpuPercent / 100, CpuAllocated / Cores)
    cpu_task = task.Cpu / Cores          if task.Cpu > 0
               1 / MAX_JOBS              otherwise
    cpu_cost = rise(cpu_now / CPU_CAPACITY, (cpu_now + cpu_task) / CPU_CAPACITY) + jobs

    score    = mem_cost + cpu_cost       (lowest wins; ties go to the earlier node)

Where this departs from the book, and why:

- The book's CPU term is ``L**load - L**load``, always zero. Here the new load adds
  the task's share of the node's cores. A task that requests no CPU is assumed to take
  ``1 / MAX_JOBS`` of the machine, the paper's own model of a job, so that measured
  CPU usage still steers placement for the book's many tasks with ``Cpu: 0``.
- The book measures CPU by fetching /stats twice, 3 s apart, per node per decision.
  Here ``CpuPercent`` is the worker's own figure from its latest stats, and the cores
  already promised (``CpuAllocated``) count too when higher, because measured usage
  lags a burst of placements.
- The book's current memory adds the worker's measured use to ``MemoryAllocated``;
  here memory is what Cube has promised, the same figure the memory check uses. The
  task's bytes become kB with 1024, not the book's 1000.
- A capacity of 0 (a node that has not reported it) prices that resource at zero
  instead of dividing by zero; the feasibility checks already keep such nodes away
  from tasks that request the resource.
- On a cluster larger than ``max_candidates`` (default 16) nodes, a decision scores
  the first 16 or so feasible nodes from a point that moves round the cluster, as
  Kubernetes' percentageOfNodesToScore does: E-PVM over every node costs about a
  millisecond per thousand nodes in Python, too slow for thousands of placements a
  second. Nomad scores ``max(2, ceil(log2 n))`` nodes for a service (10 of 1,000, 16
  of 65,536), on the same ground that a few good choices spread load almost as well
  as all of them; 16 is that or more on any cluster Cube will see. At 100 the scoring
  was a tenth of the manager's CPU in the scale benchmark, for no better spread (the
  window moves on by what it scanned, so every node keeps its turn).
  ``Epvm(max_candidates=None)`` scores every node.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cube.constraints import Constraint
from cube.explain import Decision, decide
from cube.feasible import CONSTRAINTS_CHECK, DISTINCT_HOSTS_CHECK, ELIGIBLE_CHECK, Check
from cube.feasible import nodes_phrase as _nodes
from cube.node import READY, Node

LIEB = 1.53960071783900203869
MAX_JOBS = 4
CPU_CAPACITY = 2**0.8
KIB = 1024
# Added to a node's E-PVM cost per task of the same job already there: more than the
# cost of any one more task on an emptier node, so a job's tasks spread over the nodes
# that can take them (Nomad's job anti-affinity) and one lost node takes few replicas.
JOB_SPREAD = 1.0
DEFAULT_MAX_CANDIDATES = 16  # see the module docstring: Nomad's log2 rule, rounded up

# Allocations are sums of floats such as 0.1 + 0.2; don't refuse a fit over rounding.
_CPU_SLACK = 1e-9


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
    explain=lambda d, c: _nodes(c, "is not ready", "are not ready"),
)
DOCKER_CHECK = Check(
    name="docker",
    applies=lambda d: True,
    keep=_keep_docker,
    explain=lambda d, c: _nodes(c, "has", "have") + " no Docker engine answering",
)
MEMORY_CHECK = Check(
    name="memory",
    applies=lambda d: d.memory_kb > 0,
    keep=_keep_memory,
    explain=lambda d, c: _nodes(c, "lacks", "lack") + f" memory (need {format_bytes(d.memory)})",
)
DISK_CHECK = Check(
    name="disk",
    applies=lambda d: d.disk > 0,
    keep=_keep_disk,
    explain=lambda d, c: _nodes(c, "lacks", "lack") + f" disk (need {format_bytes(d.disk)})",
)
CPU_CHECK = Check(
    name="cpu",
    applies=lambda d: d.cpu > 0,
    keep=_keep_cpu,
    explain=lambda d, c: _nodes(c, "lacks", "lack") + f" CPU (need {d.cpu:g} cores)",
)
PORTS_CHECK = Check(
    name="ports",
    applies=lambda d: bool(d.ports),
    keep=_keep_ports,
    explain=lambda d, c: _nodes(c, "has", "have") + f" host port {_ports(d.ports)} in use",
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


# --- schedulers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """The outcome of one decision: a node, or none and the reason the task stays Pending;
    ``decision`` is its record for the task (:mod:`cube.explain`)."""

    node: Node | None
    reason: str = ""
    decision: Decision | None = None


class Scheduler(Protocol):
    @property
    def name(self) -> str: ...

    def select_candidates(self, task: TaskRequest, nodes: Sequence[Node]) -> Candidates: ...

    def score(self, task: TaskRequest, candidates: Sequence[Node]) -> dict[str, float]: ...

    def pick(self, scores: Mapping[str, float], candidates: Sequence[Node]) -> Node: ...

    def place(self, task: TaskRequest, nodes: Sequence[Node]) -> Placement: ...


class _Pipeline:
    """Filter, score, pick: the part both schedulers share. Lower scores are better."""

    name = ""

    def select_candidates(self, task: TaskRequest, nodes: Sequence[Node]) -> Candidates:
        return select_candidates(task, nodes)

    def score(self, task: TaskRequest, candidates: Sequence[Node]) -> dict[str, float]:
        raise NotImplementedError

    def pick(self, scores: Mapping[str, float], candidates: Sequence[Node]) -> Node:
        if not candidates:
            raise ValueError("cannot pick from no candidates")
        best = candidates[0]
        lowest = scores[best.Name]
        for node in candidates:
            score = scores[node.Name]
            if score < lowest:
                best, lowest = node, score
        return best

    def place(self, task: TaskRequest, nodes: Sequence[Node]) -> Placement:
        found = self.select_candidates(task, nodes)
        if not found.nodes:
            record = decide(self.name, found.evaluated, found.rejected, {}, "")
            return Placement(None, found.reason(), record)
        scores = self._score(task, found)
        node = self.pick(scores, found.nodes)
        record = decide(self.name, found.evaluated, found.rejected, scores, node.Name)
        return Placement(node, "", record)

    def _score(self, task: TaskRequest, found: Candidates) -> dict[str, float]:
        """:meth:`score` within a decision, whose request is already worked out."""
        return self.score(task, found.nodes)


class RoundRobin(_Pipeline):
    """The book's round robin over the feasible nodes; it looks at every node, as it is cheap."""

    name = "roundrobin"

    def __init__(self) -> None:
        self.last_index = -1

    def score(self, task: TaskRequest, candidates: Sequence[Node]) -> dict[str, float]:
        # As in the book, scoring is what advances the turn.
        turn = self.last_index + 1 if self.last_index + 1 < len(candidates) else 0
        self.last_index = turn
        scores = dict.fromkeys((node.Name for node in candidates), 1.0)
        if candidates:
            scores[candidates[turn].Name] = 0.1
        return scores


class Epvm(_Pipeline):
    """The book's E-PVM with its CPU term repaired; the formula is in the module docstring.

    ``max_candidates`` bounds how many feasible nodes a decision scores (see
    :func:`select_some`); None scores them all, as the book does.
    """

    name = "epvm"

    def __init__(self, max_candidates: int | None = DEFAULT_MAX_CANDIDATES) -> None:
        if max_candidates is not None and max_candidates < 1:
            raise ValueError(f"max_candidates must be at least 1, got {max_candidates}")
        self.max_candidates = max_candidates
        self._next_start = 0

    def select_candidates(self, task: TaskRequest, nodes: Sequence[Node]) -> Candidates:
        limit = self.max_candidates
        if limit is None or len(nodes) <= limit:
            return select_candidates(task, nodes)
        found, self._next_start = select_some(task, nodes, limit, self._next_start)
        return found

    def score(self, task: TaskRequest, candidates: Sequence[Node]) -> dict[str, float]:
        return self._costs(Demand.of(task), candidates, getattr(task, "Job", ""))

    def _score(self, task: TaskRequest, found: Candidates) -> dict[str, float]:
        return self._costs(found.demand, found.nodes, getattr(task, "Job", ""))

    @staticmethod
    def _costs(demand: Demand, candidates: Sequence[Node], job: str = "") -> dict[str, float]:
        # The docstring's formula, rearranged for speed: rise(a, a + d) is
        # L**a * (L**d - 1) = exp(a ln L) * expm1(d ln L), and the jobs term depends on
        # TaskCount alone, so it comes from a table.
        need_kb = demand.memory_kb
        need_cpu = demand.cpu
        exp, expm1 = math.exp, math.expm1
        jobs_table = _JOBS_COST
        cpu_scale = _LN_LIEB / CPU_CAPACITY
        scores: dict[str, float] = {}
        for node in candidates:
            try:
                count = node.TaskCount
                cost = jobs_table[count] if count < len(jobs_table) else _jobs_cost(count)
                memory = node.Memory
                if need_kb and memory > 0:
                    mem_now = node.MemoryAllocated / memory
                    cost += exp(mem_now * _LN_LIEB) * expm1(need_kb / memory * _LN_LIEB)
                cores = node.Cores
                if cores > 0:
                    used = node.CpuPercent / 100.0
                    promised = node.CpuAllocated / cores
                    cpu_now = used if used > promised else promised
                    cpu_task = need_cpu / cores if need_cpu > 0 else 1.0 / MAX_JOBS
                    cost += exp(cpu_now * cpu_scale) * expm1(cpu_task * cpu_scale)
            except OverflowError:  # thousands of tasks on one node: simply too expensive
                cost = math.inf
            if job:
                cost += JOB_SPREAD * node.JobTasks.get(job, 0)
            scores[node.Name] = cost
        return scores


_LN_LIEB = math.log(LIEB)


def _jobs_cost(count: int) -> float:
    """Both jobs terms of the formula (memory's and CPU's) for a node running ``count`` tasks."""
    return 2 * (math.pow(LIEB, (count + 1) / MAX_JOBS) - math.pow(LIEB, count / MAX_JOBS))


_JOBS_COST = [_jobs_cost(count) for count in range(1024)]


def make_scheduler(name: str, max_candidates: int | None = DEFAULT_MAX_CANDIDATES) -> Scheduler:
    """Build a scheduler by its ``--scheduler`` name; round robin ignores ``max_candidates``."""
    if name == RoundRobin.name:
        return RoundRobin()
    if name == Epvm.name:
        return Epvm(max_candidates)
    raise ValueError(f"unknown scheduler {name!r}: expected 'roundrobin' or 'epvm'")


# --- bookkeeping ------------------------------------------------------------------------


def reserve(node: Node, task: TaskRequest) -> None:
    """Count a task placed on the node, so the next decision sees it at once."""
    demand = Demand.of(task)
    node.TaskCount += 1
    node.MemoryAllocated += demand.memory_kb
    node.DiskAllocated += demand.disk
    node.CpuAllocated += demand.cpu
    node.PortsAllocated |= demand.ports
    job = getattr(task, "Job", "")
    if job:
        node.JobTasks[job] = node.JobTasks.get(job, 0) + 1


def release(node: Node, task: TaskRequest) -> None:
    """Undo :func:`reserve` when the task stops or moves; never below zero.

    Call it once per reserve: a restart on the same node keeps its reservation.
    """
    demand = Demand.of(task)
    node.TaskCount = max(node.TaskCount - 1, 0)
    node.MemoryAllocated = max(node.MemoryAllocated - demand.memory_kb, 0)
    node.DiskAllocated = max(node.DiskAllocated - demand.disk, 0)
    node.CpuAllocated = max(node.CpuAllocated - demand.cpu, 0.0)
    node.PortsAllocated -= demand.ports
    job = getattr(task, "Job", "")
    if job and job in node.JobTasks:
        left = node.JobTasks[job] - 1
        if left > 0:
            node.JobTasks[job] = left
        else:
            del node.JobTasks[job]
