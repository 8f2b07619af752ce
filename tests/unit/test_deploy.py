"""The job reconciler, rule by rule: a table of (job, deployment, tasks) -> actions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cube.job import Deployment, Job, TaskTemplate, UpdatePolicy, admit
from cube.manager.deploy import Create, Member, Progress, Revert, Stop, reconcile_job

MIN = 10.0  # MinHealthyTime in these tables


def job(version: int = 2, count: int = 6, **update: Any) -> Job:
    policy = UpdatePolicy(MaxParallel=2, MinHealthyTime=MIN, HealthyDeadline=60, **update)
    return Job(
        Name="web", Count=count, Task=TaskTemplate(Image="img"), Update=policy, Version=version
    )


def ids(n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=i + 1) for i in range(n)]


def tasks(
    version: int, n: int, *, healthy: bool = True, start: int = 0, age: float = 100
) -> list[Member]:
    """n live tasks of a version, healthy (Running long enough) or just started."""
    return [
        Member(
            uuid.UUID(int=start + i + 1),
            version,
            live=True,
            age=age,
            running_for=MIN + 1 if healthy else 1.0,
        )
        for i in range(n)
    ]


def running(version: int) -> Deployment:
    return Deployment(Version=version, Status="running")


def kinds(actions: list[Any]) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, Create):
            out.append(f"create v{a.version} x{a.count}")
        elif isinstance(a, Stop):
            out.append(f"stop x{len(a.ids)}")
        elif isinstance(a, Progress):
            out.append(f"deployment {a.deployment.Status} healthy={a.deployment.Healthy}")
        elif isinstance(a, Revert):
            out.append(f"revert to v{a.version}")
    return out


CASES = [
    # name, job, deployment, members, expected
    (
        "first version: all to create",
        job(1),
        running(1),
        [],
        ["create v1 x6", "deployment running healthy=0"],
    ),
    ("steady and healthy: nothing", job(1), None, tasks(1, 6), []),
    ("scale up", job(1, count=10), None, tasks(1, 6), ["create v1 x4"]),
    ("scale down", job(1, count=3), None, tasks(1, 6), ["stop x3"]),
    ("an ended task is replaced", job(1), None, tasks(1, 5), ["create v1 x1"]),
    (
        "start-first: MaxParallel new ones first, no old one stops yet",
        job(2),
        running(2),
        tasks(1, 6),
        ["create v2 x2", "deployment running healthy=0"],
    ),
    (
        "start-first: new ones not healthy yet: wait",
        job(2),
        running(2),
        tasks(1, 6) + tasks(2, 2, healthy=False, start=10, age=5),
        ["deployment running healthy=0"],
    ),
    (
        "start-first: two healthy new ones let two old go, two more start",
        job(2),
        running(2),
        tasks(1, 6) + tasks(2, 2, start=10),
        ["stop x2", "create v2 x2", "deployment running healthy=2"],
    ),
    (
        "start-first: the last old ones go",
        job(2),
        running(2),
        tasks(1, 2) + tasks(2, 6, start=10),
        ["stop x2", "deployment running healthy=6"],
    ),
    (
        "all new and healthy: successful",
        job(2),
        running(2),
        tasks(2, 6, start=10),
        ["deployment successful healthy=6"],
    ),
    (
        "stop-first: two old stop, two new take their places",
        job(2, Order="stop-first"),
        running(2),
        tasks(1, 6),
        ["stop x2", "create v2 x2", "deployment running healthy=0"],
    ),
    (
        "stop-first: nothing more while two are unavailable",
        job(2, Order="stop-first"),
        running(2),
        tasks(1, 4) + tasks(2, 2, healthy=False, start=10, age=5),
        ["deployment running healthy=0"],
    ),
    (
        "a new task late past HealthyDeadline fails the deployment",
        job(2),
        running(2),
        tasks(1, 6) + tasks(2, 2, healthy=False, start=10, age=61),
        ["deployment failed healthy=0"],
    ),
    (
        "failed with AutoRevert: back to the last good version",
        job(2, AutoRevert=True),
        running(2),
        tasks(1, 6) + tasks(2, 2, healthy=False, start=10, age=61),
        ["deployment failed healthy=0", "revert to v1"],
    ),
    (
        "after a failed deployment the rollout stops where it is",
        job(2),
        Deployment(Version=2, Status="failed"),
        tasks(1, 6) + tasks(2, 2, healthy=False, start=10, age=5),
        [],
    ),
    (
        "a failed rollout still keeps Count: an ended task is replaced",
        job(2),
        Deployment(Version=2, Status="failed"),
        tasks(1, 3) + tasks(2, 2, healthy=False, start=10, age=5),
        ["create v2 x1"],
    ),
    (
        "scale down mid-rollout: old versions go first",
        job(2, count=3),
        running(2),
        tasks(1, 6) + tasks(2, 2, start=10),
        ["stop x5", "create v2 x1", "deployment running healthy=2"],
    ),
]


@pytest.mark.parametrize(
    ("name", "the_job", "deployment", "members", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_service_rules(
    name: str,
    the_job: Job,
    deployment: Deployment | None,
    members: list[Member],
    expected: list[str],
) -> None:
    assert kinds(reconcile_job(the_job, deployment, members, last_good=1)) == expected


def test_old_tasks_not_serving_stop_before_healthy_ones() -> None:
    old = [*tasks(1, 5), Member(uuid.UUID(int=99), 1, live=True, age=5, running_for=None)]
    actions = reconcile_job(job(2, Order="stop-first"), running(2), old)
    stop = next(a for a in actions if isinstance(a, Stop))
    assert uuid.UUID(int=99) in stop.ids


def test_a_stopped_job_stops_every_live_task() -> None:
    stopped = job(1).model_copy(update={"Stopped": True})
    actions = reconcile_job(stopped, None, tasks(1, 3))
    assert actions == [Stop(tuple(ids(3)), "job stopped")]


def batch(count: int = 5) -> Job:
    return Job(Name="b", Type="batch", Count=count, Task=TaskTemplate(Image="img"), Version=1)


def test_batch_runs_count_tasks_to_completion() -> None:
    done = [Member(i, 1, live=False, age=50, completed=True) for i in ids(3)]
    assert kinds(reconcile_job(batch(), running(1), done)) == [
        "create v1 x2",
        "deployment running healthy=3",
    ]
    five = [Member(i, 1, live=False, age=50, completed=True) for i in ids(5)]
    assert kinds(reconcile_job(batch(), running(1), five)) == ["deployment successful healthy=5"]


def test_batch_with_a_task_failed_for_good_fails() -> None:
    members = [Member(uuid.UUID(int=1), 1, live=False, age=50, failed=True)]
    assert kinds(reconcile_job(batch(), running(1), members)) == ["deployment failed healthy=0"]


def test_versions_count_changes_of_task_or_update_only() -> None:
    first = admit(job(0), None)
    assert first.Version == 1
    assert admit(job(0, count=9), first).Version == 1  # Count alone: same version
    env = job(0).model_copy(update={"Task": TaskTemplate(Image="img", Env=["A=1"])})
    assert admit(env, first).Version == 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("Name", "Web_1", "Name must be"),
        ("Count", -1, "greater than or equal to 0"),
        ("Task", {"Image": "img", "Env": ["NOEQUALS"]}, "KEY=VALUE"),
        ("Update", {"MaxParallel": 0}, "greater than or equal to 1"),
        ("Update", {"MinHealthyTime": 400}, "HealthyDeadline must be longer"),
        ("Type", "cron", "service"),
    ],
)
def test_a_bad_job_says_what_is_wrong(field: str, value: Any, message: str) -> None:
    data: dict[str, Any] = {"Name": "web", "Task": {"Image": "img"}, field: value}
    with pytest.raises(ValueError, match=message):
        Job.model_validate(data)
