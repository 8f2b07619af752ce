"""Folding what a worker reports into the manager's view: pure, like the reconciler.

The worker is the source of truth about its containers, so its state, container and
ports are copied here, but only for the incarnation the manager wants there: a report
of an older incarnation, or of a task that moved away, is a copy that should not run
(:class:`~cube.manager.reconciler.StopCopy`). Tasks the manager never heard of are left
alone: a second manager, or one restarted without its store, must not take a working
cluster down.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cube.manager.reconciler import Action, Send, Stop, StopCopy
from cube.task import State, Task, can_transition, transition

# What the manager copies from a worker's view of a task.
OBSERVED = ("State", "ContainerID", "HostPorts", "StartTime", "FinishTime", "Reason")
_ACTIVE = (State.SCHEDULED, State.RUNNING)
STOPPED = "stopped on request"


@dataclass
class Observation:
    changes: list[Task] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


def observe(
    ours: Mapping[uuid.UUID, Task],
    node: str,
    reported: Iterable[Task],
    *,
    complete: bool,
    held: Iterable[uuid.UUID] = (),
) -> Observation:
    """What changes, and what must be done, given a worker's tasks.

    ``complete`` says ``reported`` is every task the worker has; then a task ``held``
    on that node but missing from the report is not there: a Scheduled one is sent
    again (our send never arrived, or the worker lost its store), a Running one is lost.
    """
    result = Observation()
    seen: set[uuid.UUID] = set()
    for theirs in reported:
        seen.add(theirs.ID)
        current = ours.get(theirs.ID)
        if current is None:
            continue
        if _stray(current, theirs, node):
            if theirs.State in _ACTIVE:
                result.actions.append(StopCopy(node, theirs))
            continue
        if theirs.RestartCount != current.RestartCount:
            continue  # the worker has not seen the latest incarnation yet
        changed = _fold(current, theirs, node)
        if current.DesiredState is State.COMPLETED and theirs.State in _ACTIVE:
            result.actions.append(Stop(changed or current))  # it lost our stop: again
        if changed is not None:
            result.changes.append(changed)
    if complete:
        for task_id in held:
            current = ours.get(task_id)
            if task_id in seen or current is None or current.Node != node:
                continue
            if current.State is State.SCHEDULED:
                result.actions.append(Send(current, again=True))
            elif current.State is State.RUNNING:
                result.changes.append(
                    transition(current, State.FAILED, reason=f"lost by worker {node}")
                )
    return result


def _fold(ours: Task, theirs: Task, node: str) -> Task | None:
    update = {f: getattr(theirs, f) for f in OBSERVED if getattr(theirs, f) != getattr(ours, f)}
    if not theirs.Reason and ours.Reason.startswith("restarting"):
        update.pop("Reason", None)  # keep why it restarted visible while it runs
    if not update:
        return None
    if theirs.State is not ours.State and not can_transition(ours.State, theirs.State):
        return None
    wants_stop = ours.DesiredState is State.COMPLETED
    if wants_stop and theirs.State is State.FAILED:
        # However it ended (killed at the end of a stop's grace period, or found dead by
        # a worker that restarted mid-stop), the user asked for a stop.
        update.update(State=State.COMPLETED, Reason=STOPPED)
    elif not wants_stop and theirs.State is State.COMPLETED and theirs.Reason == STOPPED:
        # Stopped by the worker although nobody asked here (it took the copy for a
        # stray): a failure the restart policy handles, never a quiet "Completed".
        update.update(State=State.FAILED, Reason=f"stopped by worker {node} unasked")
    return ours.model_copy(update=update)


def _stray(ours: Task, theirs: Task, node: str) -> bool:
    """Is the worker's copy one that should not run: moved away, or already over?"""
    if ours.Node != node:
        return True
    over = ours.State is State.COMPLETED or (
        ours.State is State.FAILED and theirs.RestartCount == ours.RestartCount
    )
    return over and theirs.State in _ACTIVE
