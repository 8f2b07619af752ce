"""The reconciler: what must happen to a task, from what is wanted and what is seen.

A pure function, after Nomad's ``scheduler/reconcile``: tasks (each with its desired
and its observed state), the nodes' status and the time go in; a plain list of
actions comes out. No I/O and no clock of its own, so every rule is a row of a
table-driven test that runs in microseconds. The manager carries the actions out
(:mod:`cube.manager.manager` places and commits, :mod:`cube.manager.dispatch` talks to
workers).

The rules, for a task the user wants running:

==========================  ===========================  ==========================
observed                    node                         action
==========================  ===========================  ==========================
Pending, or Scheduled with  —                            Place
no node (moved)
Scheduled                   ready                        Send (hand it to the worker)
Scheduled or Running        lost (silent past timeout)   Move (new incarnation
                                                         elsewhere); a Running task
                                                         with RestartPolicy "no" Fails
Failed                      —                            Restart when its backoff is
                                                         over (else Wake then), if the
                                                         policy and MaxRestarts allow
==========================  ===========================  ==========================

and for a task the user asked to stop (``DesiredState`` Completed): Pending → Finish
(cancelled); Scheduled/Running on a ready node → Stop; on a lost node, or none →
Finish (the worker, if it returns, is told to stop its copy). Tasks on a node that is
neither ready nor lost (not heard from yet) wait for it.

Restarts follow the kubelet: the first at once, then 1 s, 2 s, 4 s… (``restart_backoff``
doubling, capped at ``restart_backoff_max``), counted on the manager's monotonic clock
from when it learned of the failure (a worker's clock may differ from the manager's,
and a wall clock may step).
"""

from __future__ import annotations

import uuid
from collections.abc import Container, Iterable, Mapping, Set
from dataclasses import dataclass

from cube.task import State, Task

RESTART_ALWAYS = ("always", "unless-stopped")


@dataclass(frozen=True, slots=True)
class Policy:
    max_restarts: int = 3
    restart_backoff: float = 1.0
    restart_backoff_max: float = 30.0


@dataclass(frozen=True, slots=True)
class Place:
    """Find the task a node (it is Pending, or was moved off a lost one)."""

    task: Task


@dataclass(frozen=True, slots=True)
class Restart:
    """Start a new incarnation of a Failed task, on its node if it is ready."""

    task: Task


@dataclass(frozen=True, slots=True)
class Move:
    """Its node is lost (or drained): a new incarnation, to be placed elsewhere.

    ``stop_old``: the old node still answers, so its copy is stopped once the move is
    stored (a lost node's copies are stopped when it is back)."""

    task: Task
    reason: str
    stop_old: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    """Hand a Scheduled task to its worker (``again``: the worker may have lost it)."""

    task: Task
    again: bool = False


@dataclass(frozen=True, slots=True)
class Stop:
    """Tell the task's worker to stop it."""

    task: Task


@dataclass(frozen=True, slots=True)
class StopCopy:
    """A worker runs a copy that should not run (moved away, or already over)."""

    node: str
    task: Task


@dataclass(frozen=True, slots=True)
class Finish:
    """End the task here without a worker: cancelled, or its node is gone."""

    task: Task
    state: State
    reason: str


@dataclass(frozen=True, slots=True)
class Wake:
    """Nothing to do yet; reconcile the task again at ``at`` (monotonic seconds)."""

    task: Task
    at: float


Action = Place | Restart | Move | Send | Stop | StopCopy | Finish | Wake


def reconcile(
    tasks: Iterable[Task],
    ready: Set[str],
    lost: Set[str],
    now: float,
    policy: Policy,
    since: Mapping[uuid.UUID, float] | None = None,
    known: Container[str] | None = None,
) -> list[Action]:
    """``now`` and ``since`` (when the manager learned each task entered its state;
    default: now) are monotonic seconds: a step of the wall clock moves no deadline."""
    actions: list[Action] = []
    since = since or {}
    for task in tasks:
        action = reconcile_task(task, ready, lost, now, policy, since.get(task.ID), known)
        if action is not None:
            actions.append(action)
    return actions


def reconcile_task(
    task: Task,
    ready: Set[str],
    lost: Set[str],
    now: float,
    policy: Policy,
    since: float | None = None,
    known: Container[str] | None = None,
) -> Action | None:
    """``known``: the nodes the manager has (default: all); a task on another one (a
    worker dropped from ``-w``) is treated as on a lost node."""
    state, node = task.State, task.Node
    gone = not node or node in lost or (known is not None and node not in known)
    if task.DesiredState is State.COMPLETED:
        if state is State.PENDING:
            return Finish(task, State.COMPLETED, "cancelled before placement")
        if state in (State.SCHEDULED, State.RUNNING):
            if node in ready:
                return Stop(task)
            if gone:
                where = f" (worker {node} is down)" if node else ""
                return Finish(task, State.COMPLETED, f"stopped{where}")
        return None
    if state is State.PENDING or (state is State.SCHEDULED and not node):
        return Place(task)
    if state in (State.SCHEDULED, State.RUNNING):
        if gone:
            reason = f"worker {node} is down"
            if state is State.RUNNING and task.RestartPolicy == "no":
                return Finish(task, State.FAILED, reason)
            return Move(task, reason)
        if state is State.SCHEDULED and node in ready:
            return Send(task)
        return None
    if state is State.FAILED and restartable(task, policy):
        due = (now if since is None else since) + restart_delay(task.RestartCount, policy)
        return Restart(task) if due <= now else Wake(task, due)
    return None


def restartable(task: Task, policy: Policy) -> bool:
    if task.RestartPolicy == "no":
        return False
    return task.RestartPolicy in RESTART_ALWAYS or task.RestartCount < policy.max_restarts


def restart_delay(restart_count: int, policy: Policy) -> float:
    """The first restart at once, then the backoff doubling from ``restart_backoff``."""
    if restart_count <= 0:
        return 0.0
    doublings = min(restart_count - 1, 32)  # "always" may restart forever: no overflow
    return float(min(policy.restart_backoff * 2**doublings, policy.restart_backoff_max))


def silent_nodes(
    deadlines: Mapping[str, float], lost: Set[str], now: float
) -> tuple[list[str], float | None]:
    """Nodes past their deadline (to mark lost), and when the next deadline is.

    A node's deadline is when it was last heard from plus its timeout (a joined
    worker's heartbeat interval and grace, a ``-w`` worker's worker timeout). A node
    never heard from counts from when the manager started or it joined, so tasks on a
    machine that never comes back are moved too.
    """
    silent: list[str] = []
    next_at: float | None = None
    for name, deadline in deadlines.items():
        if name in lost:
            continue
        if deadline <= now:
            silent.append(name)
        elif next_at is None or deadline < next_at:
            next_at = deadline
    return silent, next_at
