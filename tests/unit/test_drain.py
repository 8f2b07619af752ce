"""The drain planner, table-driven: which tasks of a draining node move now."""

from __future__ import annotations

import uuid

import pytest

from cube.manager.drain import Budget, Draining, plan_drains
from cube.task import State, Task


def task(job: str = "", n: int = 0) -> Task:
    return Task(
        ID=uuid.UUID(int=n + 1), Image="i", State=State.RUNNING, Node="w1", Job=job, JobVersion=1
    )


LONE = [task(n=0), task(n=1)]
WEB = [task("web", n) for n in range(10, 14)]


@pytest.mark.parametrize(
    ("name", "tasks", "budgets", "deadline", "others", "moved", "done"),
    [
        ("nothing left: done", [], {}, None, 0, [], ["w1"]),
        ("failed ones restart elsewhere first", [], {}, None, 1, [], []),
        ("tasks of no job move at once", LONE, {}, None, 0, LONE, []),
        ("a job's: MaxParallel at once", WEB, {"web": Budget(2, 0)}, None, 0, WEB[:2], []),
        ("less what is already unhealthy", WEB, {"web": Budget(2, 1)}, None, 0, WEB[:1], []),
        ("none while MaxParallel are unhealthy", WEB, {"web": Budget(2, 3)}, None, 0, [], []),
        ("a job unknown here moves", WEB, {}, None, 0, WEB, []),
        ("past the deadline: everything", WEB, {"web": Budget(1, 1)}, 5.0, 0, WEB, []),
        ("before the deadline: the budget", WEB, {"web": Budget(1, 0)}, 50.0, 0, WEB[:1], []),
        ("mixed", LONE + WEB, {"web": Budget(1, 0)}, None, 0, LONE + WEB[:1], []),
    ],
)
def test_plan_drains(
    name: str,
    tasks: list[Task],
    budgets: dict[str, Budget],
    deadline: float | None,
    others: int,
    moved: list[Task],
    done: list[str],
) -> None:
    plan = plan_drains([Draining("w1", tasks, deadline, others)], budgets, now=10.0)
    assert [m.task for m in plan.moves] == moved, name
    assert all(m.stop_old for m in plan.moves)
    assert plan.done == done


def test_two_drained_nodes_share_one_job_budget() -> None:
    other = [t.model_copy(update={"Node": "w2", "ID": uuid.uuid4()}) for t in WEB[:2]]
    plan = plan_drains(
        [Draining("w1", WEB[:2]), Draining("w2", other)], {"web": Budget(3, 0)}, now=0.0
    )
    assert len(plan.moves) == 3
    assert "deadline" not in plan.moves[0].reason and "draining" in plan.moves[0].reason


def test_a_task_with_no_room_elsewhere_stays_until_the_deadline() -> None:
    def nowhere(task: Task) -> bool:
        return task.ID != LONE[0].ID  # the first fits on no other node

    waiting = plan_drains([Draining("w1", LONE)], {}, now=10.0, fits=nowhere)
    assert [m.task for m in waiting.moves] == LONE[1:] and not waiting.done
    forced = plan_drains([Draining("w1", LONE, deadline=5.0)], {}, now=10.0, fits=nowhere)
    assert [m.task for m in forced.moves] == LONE
