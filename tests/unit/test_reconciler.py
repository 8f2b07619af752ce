"""The reconciler's rules, one row each: a task and its node's status in, an action out.

Pure and table-driven, as Nomad tests its ``scheduler/reconcile``: no I/O, no clock.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from cube.manager.reconciler import (
    Finish,
    Move,
    Place,
    Policy,
    Restart,
    Send,
    Stop,
    Wake,
    reconcile,
    reconcile_task,
    restart_delay,
    silent_nodes,
)
from cube.task import State, Task

NOW = 5000.0  # monotonic seconds
POLICY = Policy(max_restarts=3, restart_backoff=1.0, restart_backoff_max=30.0)
READY = frozenset({"a"})
LOST = frozenset({"gone"})
RUN, STOP = State.RUNNING, State.COMPLETED


def task(state: State, node: str = "", desired: State = RUN, **extra: Any) -> Task:
    extra.setdefault("DesiredState", desired)
    return Task(Image="img", State=state, Node=node, **extra)


SINCE: dict[uuid.UUID, float] = {}  # when the manager learned of each failure


def failed(restarts: int, ended_ago: float, **extra: Any) -> Task:
    """A Failed task on node "a" that has been restarted ``restarts`` times, which the
    manager learned of ``ended_ago`` seconds ago."""
    made = task(State.FAILED, "a", RestartCount=restarts, **extra)
    SINCE[made.ID] = NOW - ended_ago
    return made


# (id, task, expected action type or None, expected detail)
CASES: list[tuple[str, Task, type | None, str]] = [
    # wanted running
    ("pending is placed", task(State.PENDING), Place, ""),
    ("moved and unplaced is placed", task(State.SCHEDULED), Place, ""),
    ("scheduled on a ready node is sent", task(State.SCHEDULED, "a"), Send, ""),
    ("running on a ready node: nothing", task(State.RUNNING, "a"), None, ""),
    ("scheduled on an unheard node waits", task(State.SCHEDULED, "new"), None, ""),
    ("running on an unheard node waits", task(State.RUNNING, "new"), None, ""),
    ("scheduled on a lost node moves", task(State.SCHEDULED, "gone"), Move, "worker gone is down"),
    ("running on a lost node moves", task(State.RUNNING, "gone"), Move, "worker gone is down"),
    (
        "running on a lost node, policy no, fails",
        task(State.RUNNING, "gone", RestartPolicy="no"),
        Finish,
        "worker gone is down",
    ),
    ("completed: nothing", task(State.COMPLETED, "a"), None, ""),
    # restarts: first at once, then 1 s, 2 s, ... from when the run ended
    ("failed, first restart at once", failed(0, 0), Restart, ""),
    ("failed once, restart after 1 s", failed(1, 0.5), Wake, "1.0"),
    ("failed once, 1 s later: restart", failed(1, 1), Restart, ""),
    ("failed twice, restart after 2 s", failed(2, 1), Wake, "2.0"),
    ("max restarts reached: stays failed", failed(3, 99), None, ""),
    ("always is not capped", failed(9, 99, RestartPolicy="always"), Restart, ""),
    ("policy no: stays failed", failed(0, 99, RestartPolicy="no"), None, ""),
    # wanted stopped
    ("stop a pending one: cancelled", task(State.PENDING, desired=STOP), Finish,
     "cancelled before placement"),
    ("stop on a ready node", task(State.RUNNING, "a", desired=STOP), Stop, ""),
    ("stop a scheduled one on a ready node", task(State.SCHEDULED, "a", desired=STOP), Stop, ""),
    ("stop on a lost node: done here", task(State.RUNNING, "gone", desired=STOP), Finish,
     "stopped (worker gone is down)"),
    ("stop an unplaced one: done", task(State.SCHEDULED, desired=STOP), Finish, "stopped"),
    ("stop on an unheard node waits", task(State.RUNNING, "new", desired=STOP), None, ""),
    ("a stopped failed task is never restarted", failed(0, 99, DesiredState=STOP), None, ""),
]  # fmt: skip


@pytest.mark.parametrize(("name", "given", "kind", "detail"), CASES, ids=[c[0] for c in CASES])
def test_rule(name: str, given: Task, kind: type | None, detail: str) -> None:
    action = reconcile_task(given, READY, LOST, NOW, POLICY, SINCE.get(given.ID))
    if kind is None:
        assert action is None
        return
    assert isinstance(action, kind)
    assert action.task is given
    if isinstance(action, Move | Finish):
        assert action.reason == detail
    if isinstance(action, Finish):
        assert action.state is (State.FAILED if "policy no" in name else State.COMPLETED)
    if isinstance(action, Wake):
        assert action.at - SINCE[given.ID] == float(detail)


def test_backoff_counts_from_when_the_manager_learned_of_the_failure() -> None:
    """Not from the worker's FinishTime: the worker's clock may be hours off."""
    future = datetime(2099, 1, 1, tzinfo=UTC)  # the worker's clock, far ahead
    skewed = task(State.FAILED, "a", RestartCount=1, FinishTime=future)
    assert isinstance(reconcile_task(skewed, READY, LOST, NOW, POLICY, NOW - 1), Restart)
    waiting = reconcile_task(skewed, READY, LOST, NOW, POLICY, NOW - 0.25)
    assert isinstance(waiting, Wake) and waiting.at == NOW + 0.75
    unknown = reconcile_task(skewed, READY, LOST, NOW, POLICY)  # after a manager restart
    assert isinstance(unknown, Wake) and unknown.at == NOW + 1


def test_a_node_the_manager_does_not_know_is_gone() -> None:
    """A worker dropped from -w: its tasks move, a stop there is done here."""
    known = {"a", "gone"}
    running = task(State.RUNNING, "dropped")
    assert isinstance(reconcile_task(running, READY, LOST, NOW, POLICY, None, known), Move)
    stopping = task(State.RUNNING, "dropped", desired=STOP)
    assert isinstance(reconcile_task(stopping, READY, LOST, NOW, POLICY, None, known), Finish)
    assert reconcile_task(task(State.RUNNING, "new"), READY, LOST, NOW, POLICY) is None


def test_backoff_doubles_to_its_cap() -> None:
    delays = [restart_delay(n, POLICY) for n in range(8)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert restart_delay(10_000, POLICY) == 30.0  # "always" restarts forever, no overflow


def test_reconcile_keeps_order_and_drops_nothing_to_do() -> None:
    tasks = [task(State.PENDING), task(State.RUNNING, "a"), task(State.SCHEDULED, "a")]
    actions = reconcile(tasks, READY, LOST, NOW, POLICY)
    assert [type(a) for a in actions] == [Place, Send]
    assert [a.task for a in actions] == [tasks[0], tasks[2]]


def test_silent_nodes() -> None:
    # Deadlines: last heard + each node's own timeout ("c" heartbeats: a shorter one).
    deadlines = {"a": 110.0, "b": 105.0, "c": 103.0, "gone": 10.0}
    assert silent_nodes(deadlines, LOST, now=106.0) == (["b", "c"], 110.0)
    assert silent_nodes(deadlines, LOST, now=104.0) == (["c"], 105.0)
    assert silent_nodes(deadlines, LOST, now=102.0) == ([], 103.0)
