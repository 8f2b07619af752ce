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
- A pass that places many tasks at once (the manager says how many: ``begin_pass``)
  takes its windows in turn, each for its share of the pass in a row (10,000 tasks
  over 1,000 nodes: 160 decisions for a window of 16), where a window per decision
  would give every node one task at a time. The same windows get the same number of
  tasks, so the spread is the same; but a node's tasks are decided together, and go
  out in one request while the manager still places the rest, so the workers start
  early. A job's task still moves the window on, so that a job spreads over as many
  nodes as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cube.explain import Decision, decide
from cube.feasible import Candidates, Demand, TaskRequest, select_candidates, select_some
from cube.node import Node

LIEB = 1.53960071783900203869
MAX_JOBS = 4
CPU_CAPACITY = 2**0.8
# Added to a node's E-PVM cost per task of the same job already there: more than the
# cost of any one more task on an emptier node, so a job's tasks spread over the nodes
# that can take them (Nomad's job anti-affinity) and one lost node takes few replicas.
JOB_SPREAD = 1.0
DEFAULT_MAX_CANDIDATES = 16  # see the module docstring: Nomad's log2 rule, rounded up


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

    def begin_pass(self, count: int) -> None: ...


class _Pipeline:
    """Filter, score, pick: the part both schedulers share. Lower scores are better."""

    name = ""

    def begin_pass(self, count: int) -> None:
        """About ``count`` decisions follow, one pass of the manager's (a hint)."""

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
        self._start = 0  # where the current window's scan begins
        self._after = 0  # where the next window's begins
        self._stay = 0  # decisions the current window still takes after the last one
        self._pass = 0  # decisions the pass was expected to make (begin_pass)
        self._left = 0  # of which still to come

    def begin_pass(self, count: int) -> None:
        """A pass of about ``count`` decisions: its windows take their shares in turn."""
        if self._stay:  # what was left of the last pass's window is not this pass's
            self._start, self._stay = self._after, 0
        self._pass = self._left = max(count, 0)

    def select_candidates(self, task: TaskRequest, nodes: Sequence[Node]) -> Candidates:
        limit = self.max_candidates
        if limit is None or len(nodes) <= limit:
            return select_candidates(task, nodes)
        found, self._after = select_some(task, nodes, limit, self._start)
        left, self._left = self._left, max(self._left - 1, 0)
        if getattr(task, "Job", ""):
            self._stay = 0  # a job spreads a task per window (see the module docstring)
        elif not self._stay:  # a new window: its share of the pass, by the nodes it holds
            self._stay = min(self._pass * len(found.nodes) // len(nodes), left)
        if self._stay > 1:
            self._stay -= 1
        else:
            self._start, self._stay = self._after, 0
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
