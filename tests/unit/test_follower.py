"""A follower's view (cube.manager.follower): what each change etcd reports does to it,
and which reads it serves. No etcd here: the changes are given as the watch gives them;
tests/integration/test_ha.py has followers serving reads with the leader gone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cube.clock import ManualClock
from cube.events import Event
from cube.manager.auth import TokenRecord
from cube.manager.etcd_backend import EtcdBackend, _Connection
from cube.manager.events import task_draft
from cube.manager.follower import View, serves
from cube.manager.manager import Manager
from cube.scheduler import Epvm
from cube.task import State, Task

PREFIX = "/cube/"


def view() -> tuple[View, EtcdBackend, Manager]:
    backend = EtcdBackend(_Connection([("127.0.0.1", 1)]), PREFIX)  # never called
    manager = Manager([], Epvm(), backend, clock=ManualClock())
    return View("etcd://127.0.0.1:1", lambda b: (manager, None)), backend, manager  # type: ignore[arg-type,return-value]


def put(kind: str, name: str, value: bytes) -> tuple[str, bytes, bytes]:
    return "PUT", f"{PREFIX}{kind}/{name}".encode(), value


def an_event(index: int, task: Task) -> Event:
    return Event.of(index, datetime(2026, 1, 1, tzinfo=UTC), task_draft(None, task)).ready()


def test_changes_etcd_reports_move_the_view_on() -> None:
    follower, backend, manager = view()
    task = Task(Image="a", Job="web")
    running = task.model_copy(update={"State": State.RUNNING, "Node": "w1"})
    token = TokenRecord(ID="t1", Name="ci", Role="read", Hash="0" * 64, CreateTime=task.StartTime)
    table = [
        (
            put("tasks", str(task.ID), task.model_dump_json().encode()),
            lambda: manager.state.tasks[task.ID] == task,
        ),
        (
            put("tasks", str(task.ID), running.model_dump_json().encode()),
            lambda: manager.state.tasks[task.ID].State is State.RUNNING,
        ),
        (
            put("events", f"{1:020d}", an_event(1, task).model_dump_json().encode()),
            lambda: manager.events.last == 1,
        ),
        # Read by the load already (a watch starts at the load's first revision): skipped.
        (
            put("events", f"{1:020d}", an_event(1, task).model_dump_json().encode()),
            lambda: len(backend.stream.after(0, 10)) == 1,
        ),
        (
            put("events", f"{2:020d}", an_event(2, task).model_dump_json().encode()),
            lambda: [e.Index for e in backend.stream.after(0, 10)] == [1, 2],
        ),
        # Retention trims the oldest: cut when the next event comes.
        (("DELETE", f"{PREFIX}events/{1:020d}".encode(), b""), lambda: manager.events.last == 2),
        (
            put("events", f"{3:020d}", an_event(3, task).model_dump_json().encode()),
            lambda: [e.Index for e in backend.stream.after(0, 10)] == [2, 3],
        ),
        (
            put("tokens", "t1", token.model_dump_json().encode()),
            lambda: "t1" in manager.tokens.records,
        ),
        (
            ("DELETE", f"{PREFIX}tokens/t1".encode(), b""),
            lambda: "t1" not in manager.tokens.records,
        ),
        # What a view does not serve (jobs, nodes, the leader key) leaves it as it was.
        (put("jobs", "web", b"{not even json"), lambda: True),
        (put("leader", "", b"http://m1:5555"), lambda: True),
    ]
    for (kind, key, value), holds in table:
        follower.apply(backend, manager, kind, key, value)
        assert holds(), key
    assert manager.jobs.tasks_of("web") == [running]  # indexed by job, as a commit would
    assert manager.state.take_dirty() == []  # nothing for a view to reconcile


@pytest.mark.parametrize(
    ("method", "path", "local"),
    [
        ("GET", "/tasks", True),
        ("GET", "/tasks/5b1e0000-0000-4000-8000-000000000000", True),
        ("GET", "/tasks/5b1e0000-0000-4000-8000-000000000000/events", True),
        ("GET", "/events", True),
        ("GET", "/tokens/self", True),
        ("GET", "/tasks/5b1e0000-0000-4000-8000-000000000000/logs", False),  # the worker's
        ("GET", "/nodes", False),  # liveness: the leader's
        ("GET", "/jobs/web", False),  # deployment health: the leader's
        ("GET", "/health", False),
        ("POST", "/tasks", False),
        ("DELETE", "/tasks/5b1e0000-0000-4000-8000-000000000000", False),
    ],
)
def test_a_view_serves_the_reads_etcd_holds_whole(method: str, path: str, local: bool) -> None:
    assert serves(method, path) is local
