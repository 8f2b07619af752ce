"""Progress while `cube run --wait` and `cube job run` wait: live on a terminal, plain
lines otherwise (cube.cli.live), driven by a scripted manager."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from cube.cli import jobs, tasks
from cube.job import Deployment, Job, TaskTemplate
from cube.manager.client import JobView
from cube.task import State, Task


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "POLL_INTERVAL", 0)
    monkeypatch.setattr(jobs, "POLL_INTERVAL", 0)


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


class Scripted:
    """A manager whose answers come from a script, one per poll."""

    def __init__(self, task_states: list[Task], views: list[JobView] | None = None) -> None:
        self._tasks: Iterator[Task] = iter(task_states)
        self._views: Iterator[JobView] = iter(views or [])
        self.view: JobView | None = None
        self.task_lists = 0

    def task(self, _: Any) -> Task:
        return next(self._tasks)

    def job(self, _: str) -> JobView:
        self.view = next(self._views)
        return self.view

    def job_tasks(self, _: str) -> list[Task]:
        self.task_lists += 1
        placed = self.view.deployment.Placed if self.view and self.view.deployment else 0
        return [
            Task(ID=uuid.UUID(int=(i + 1) << 96), Image="busybox", Node="w1", State=State.RUNNING)
            for i in range(placed)
        ]


def states(*pairs: tuple[State, str]) -> list[Task]:
    task_id = uuid.uuid4()
    return [Task(ID=task_id, Image="busybox", State=s, Node=n) for s, n in pairs]


def test_run_wait_is_live_on_a_terminal() -> None:
    term, out = console(terminal=True)
    script = states((State.PENDING, ""), (State.SCHEDULED, "w1"), (State.RUNNING, "w1"))
    client = Scripted(script[1:])
    tasks.watch(client, script[0], timeout=30, console=term)  # type: ignore[arg-type]
    text = out.getvalue()
    assert "waiting, " in text  # the spinner's line, redrawn while it waits
    for line in ("Pending    waiting to be placed", "Scheduled  on w1", "Running    on w1"):
        assert line in text, text


def test_run_wait_prints_plain_lines_when_piped() -> None:
    piped, out = console(terminal=False)
    script = states((State.PENDING, ""), (State.PENDING, ""), (State.RUNNING, "w1"))
    tasks.watch(Scripted(script[1:]), script[0], timeout=30, console=piped)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "  Pending    waiting to be placed",
        f"  Running    on w1, container {tasks.container_name(script[2])}",
    ]


def view(status: str, placed: int, healthy: int) -> JobView:
    job = Job(Name="web", Count=3, Version=1, Task=TaskTemplate(Image="busybox"))
    deployment = Deployment(
        Version=1,
        Status=status,
        Desired=3,
        Placed=placed,
        Healthy=healthy,  # type: ignore[arg-type]
    )
    return JobView(job, deployment, {})


def test_job_run_shows_the_tasks_live_on_a_terminal() -> None:
    term, out = console(terminal=True)
    client = Scripted([], [view("running", 2, 0), view("running", 3, 1), view("successful", 3, 3)])
    jobs._follow(client, "web", 1, timeout=30, console=term)  # type: ignore[arg-type]
    text = out.getvalue()
    assert "v1 successful placed 3/3, healthy 3" in text
    assert "TASK" in text and "Running" in text and "00000001" in text  # the tasks' table
    assert client.task_lists == 3


def test_job_run_prints_plain_lines_when_piped() -> None:
    piped, out = console(terminal=False)
    client = Scripted([], [view("running", 3, 1), view("running", 3, 1), view("successful", 3, 3)])
    jobs._follow(client, "web", 1, timeout=30, console=piped)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == [
        "  v1 running    placed 3/3, healthy 1",
        "  v1 successful placed 3/3, healthy 3",
    ]
    assert client.task_lists == 0  # no table to show: not asked for
