"""Turning the reconciler's Place, Move and Restart into placed task versions.

Each decision is the scheduler's (feasibility, score, pick: :mod:`cube.scheduler`); its
resources are held at once (:meth:`State.hold`) so the next decision of the same pass
sees them. Nothing here is stored: the manager commits the whole batch, and undoes the
holds with :func:`undo` if that commit fails, so a failed write leaks no reservation
and loses no task.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from cube.manager.reconciler import Move, Place, Restart
from cube.manager.state import State as ClusterState
from cube.scheduler import Placement as Choice
from cube.scheduler import Scheduler
from cube.task import State, Task, transition

# A Failed task whose restart fits nowhere yet keeps why it failed, and says why it waits.
WAITS = " (restart waits: "


@dataclass
class Placements:
    placed: list[Task] = field(default_factory=list)  # Scheduled on a node: to commit, send
    updated: list[Task] = field(default_factory=list)  # to commit only (a reason changed)
    waiting: list[uuid.UUID] = field(default_factory=list)  # fit nowhere for now


def place(
    actions: Sequence[Place | Move | Restart], state: ClusterState, scheduler: Scheduler
) -> Placements:
    result = Placements()
    if not actions:
        return result
    try:
        _place_all(actions, state, scheduler, result)
    except BaseException:
        undo(result, state)  # a decision that raised must not leave holds behind
        raise
    return result


def _place_all(
    actions: Sequence[Place | Move | Restart],
    state: ClusterState,
    scheduler: Scheduler,
    result: Placements,
) -> None:
    nodes = list(state.nodes.values())
    for action in actions:
        task = action.task
        if isinstance(action, Restart):
            _restart(task, state, scheduler, result)
            continue
        if isinstance(action, Move):
            task = transition(task, State.SCHEDULED, reason=f"restarting after: {action.reason}")
            task = task.model_copy(update={"RestartCount": task.RestartCount + 1, "Node": ""})
        choice = scheduler.place(task, nodes)
        if choice.node is None:
            moved = isinstance(action, Move) or task.State is State.SCHEDULED
            why = f"{task.Reason.split(WAITS)[0]}{WAITS}{choice.reason})" if moved else ""
            _wait(task, action.task, why or choice.reason, choice, result)
            continue
        node = choice.node.Name
        if task.State is State.PENDING:
            also = {"Node": node, "Placement": choice.decision}
            _hold(transition(task, State.SCHEDULED, also=also), state, result)
            continue
        reason = task.Reason.split(WAITS)[0] if task.Reason.startswith("restarting") else ""
        update = {"Node": node, "Reason": reason, "Placement": choice.decision}
        _hold(task.model_copy(update=update), state, result)


def _restart(task: Task, state: ClusterState, scheduler: Scheduler, result: Placements) -> None:
    """Same node when it is ready and has room (its image and data are there), else any."""
    candidate = task.model_copy(update={"Node": ""})
    home = state.nodes.get(task.Node)
    state.release(task)  # its own room counts when it looks for room
    choice = None
    if home is not None and home.is_ready:
        choice = scheduler.place(candidate, [home])
    if choice is None or choice.node is None:
        choice = scheduler.place(candidate, list(state.nodes.values()))
    failure = task.Reason.split(WAITS)[0]  # why it failed, without an earlier wait's note
    if choice.node is None:
        state.hold(task)  # still to be restarted: it keeps its room
        _wait(task, task, f"{failure}{WAITS}{choice.reason})", choice, result)
        return
    why = f"restarting after: {failure}" if failure else "restarting"
    restarted = transition(task, State.SCHEDULED, reason=why).model_copy(
        update={
            "RestartCount": task.RestartCount + 1,
            "Node": choice.node.Name,
            "Placement": choice.decision,
        }
    )
    _hold(restarted, state, result)
    if restarted.Node != task.Node:
        state.room()  # it left room behind where it was


def _hold(task: Task, state: ClusterState, result: Placements) -> None:
    state.hold(task)
    result.placed.append(task)


def _wait(task: Task, before: Task, reason: str, choice: Choice, result: Placements) -> None:
    """Fits nowhere for now: stored only when why changed (the reason's counts say it),
    so a task that waits costs no write per pass."""
    result.waiting.append(task.ID)
    if task is not before or task.Reason != reason:
        update = {"Reason": reason, "Placement": choice.decision}
        result.updated.append(task.model_copy(update=update))


def undo(result: Placements, state: ClusterState) -> None:
    """The commit failed: give back every reservation this pass made."""
    for task in result.placed:
        state.unhold(task)
