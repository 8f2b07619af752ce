"""Draining a node: which of its tasks move now. A pure function, like the reconciler.

``cube node drain`` empties a machine for maintenance, as Nomad's node drain and
``kubectl drain`` do: the node takes no new work, and its tasks are moved to other
nodes, each as a new incarnation (its container on the drained node is stopped once
the move is stored). A job's tasks move no faster than its ``Update.MaxParallel``
allows: a job may have at most that many tasks not yet healthy (placed, starting, or
running for less than ``MinHealthyTime`` or failing their health check) counting those
moving, so a drain never takes more of a service down at once than a rolling update
would (Nomad's ``migrate`` block, with the update policy's numbers). Tasks of no job
move at once. A task moves only when some other node has room for it: a drain takes
nothing down that it cannot start again elsewhere (the drain waits for room, as a
Kubernetes eviction waits on a disruption budget). At the drain's deadline whatever is
left moves at once, room or not, whatever the job's health. A drain is done when the
node holds no task that is to run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cube.manager.reconciler import Move
from cube.task import Task


@dataclass(frozen=True, slots=True)
class Draining:
    """A node being drained: its tasks to move (Scheduled or Running there), how many
    others still hold room there (Failed, to be restarted: they restart elsewhere by
    themselves), and the deadline (monotonic seconds; None: none)."""

    node: str
    tasks: Sequence[Task]
    deadline: float | None = None
    others: int = 0


@dataclass(frozen=True, slots=True)
class Budget:
    """A job's room for moves: MaxParallel, and how many of its tasks are not yet
    healthy (those already moving included)."""

    max_parallel: int
    unhealthy: int

    @property
    def free(self) -> int:
        return max(self.max_parallel - self.unhealthy, 0)


@dataclass
class DrainPlan:
    moves: list[Move] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # drains with nothing left to move


def plan_drains(
    draining: Sequence[Draining],
    budgets: Mapping[str, Budget],
    now: float,
    fits: Callable[[Task], bool] = lambda task: True,
) -> DrainPlan:
    """``fits(task)``: whether another node has room for the task now."""
    plan = DrainPlan()
    free = {job: budget.free for job, budget in budgets.items()}
    for drain in draining:
        if not drain.tasks:
            if not drain.others:
                plan.done.append(drain.node)
            continue
        forced = drain.deadline is not None and drain.deadline <= now
        reason = f"node {drain.node} is draining"
        for task in drain.tasks:
            if not forced and not fits(task):
                continue
            if task.Job in free and not forced:
                if free[task.Job] <= 0:
                    continue
                free[task.Job] -= 1
            why = f"{reason} (deadline passed)" if forced else reason
            plan.moves.append(Move(task, why, stop_old=True))
    return plan
