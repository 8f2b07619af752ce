"""Folding a worker's report into the manager's view: changes and actions, no I/O."""

from __future__ import annotations

import uuid
from typing import Any

from cube.manager.observe import observe
from cube.manager.reconciler import Send, Stop, StopCopy
from cube.task import State, Task


def ours(state: State, node: str = "a", **extra: Any) -> Task:
    return Task(Image="img", State=state, Node=node, **extra)


def theirs(task: Task, state: State, **extra: Any) -> Task:
    return task.model_copy(update={"State": state, **extra})


def view(*tasks: Task) -> dict[uuid.UUID, Task]:
    return {t.ID: t for t in tasks}


def test_copies_what_the_worker_says() -> None:
    mine = ours(State.SCHEDULED)
    report = theirs(mine, State.RUNNING, ContainerID="c1")
    found = observe(view(mine), "a", [report], complete=False)
    assert [(t.State, t.ContainerID) for t in found.changes] == [(State.RUNNING, "c1")]
    assert found.actions == []


def test_unknown_tasks_are_left_alone() -> None:
    stranger = ours(State.RUNNING)
    found = observe({}, "a", [stranger], complete=True)
    assert found.changes == [] and found.actions == []


def test_a_copy_on_another_node_is_stopped() -> None:
    mine = ours(State.RUNNING, node="b")
    found = observe(view(mine), "a", [theirs(mine, State.RUNNING)], complete=False)
    assert found.changes == []
    assert found.actions == [StopCopy("a", theirs(mine, State.RUNNING))]


def test_an_older_incarnation_on_the_same_node_is_left_to_the_worker() -> None:
    """The worker replaces it when the new incarnation arrives; a stop by task ID now
    could land after that and stop the new one."""
    mine = ours(State.SCHEDULED, RestartCount=2)
    found = observe(view(mine), "a", [theirs(mine, State.RUNNING, RestartCount=1)], complete=True)
    assert found.changes == [] and found.actions == []


def test_an_unasked_stop_is_a_failure_not_a_completion() -> None:
    """Defect 1: a worker that stopped a copy it took for a stray reports Completed,
    "stopped on request"; nobody asked, so the task must not quietly end."""
    mine = ours(State.SCHEDULED, RestartPolicy="always")
    report = theirs(mine, State.COMPLETED, Reason="stopped on request")
    (changed,) = observe(view(mine), "a", [report], complete=False).changes
    assert changed.State is State.FAILED
    assert changed.Reason == "stopped by worker a unasked"


def test_an_asked_stop_completes_however_the_container_ended() -> None:
    mine = ours(State.RUNNING, DesiredState=State.COMPLETED)
    report = theirs(mine, State.FAILED, Reason="exited with code 137")
    (changed,) = observe(view(mine), "a", [report], complete=False).changes
    assert (changed.State, changed.Reason) == (State.COMPLETED, "stopped on request")


def test_a_stop_the_worker_lost_is_sent_again() -> None:
    mine = ours(State.RUNNING, DesiredState=State.COMPLETED)
    found = observe(view(mine), "a", [theirs(mine, State.RUNNING)], complete=False)
    assert found.actions == [Stop(mine)]


def test_a_complete_list_without_our_task() -> None:
    scheduled, running = ours(State.SCHEDULED), ours(State.RUNNING)
    found = observe(
        view(scheduled, running), "a", [], complete=True, held=[scheduled.ID, running.ID]
    )
    assert found.actions == [Send(scheduled, again=True)]
    (lost,) = found.changes
    assert (lost.ID, lost.State, lost.Reason) == (running.ID, State.FAILED, "lost by worker a")
    partial = observe(view(scheduled, running), "a", [], complete=False, held=[running.ID])
    assert partial.changes == [] and partial.actions == []


def test_a_finished_task_still_running_there_is_stopped() -> None:
    mine = ours(State.FAILED, Reason="health check failed: HTTP 404")
    found = observe(view(mine), "a", [theirs(mine, State.RUNNING)], complete=False)
    assert [type(a) for a in found.actions] == [StopCopy]
