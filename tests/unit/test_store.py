"""Stores: the same behaviour from memory and SQLite, durability, migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cube.store import MIGRATIONS, Database, MemoryStore, Store
from cube.task import State, Task, TaskEvent


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store[Task]]:
    s: Store[Task]
    if request.param == "memory":
        s = MemoryStore()
    else:
        s = Database(tmp_path / "cube.db").store("tasks", Task)
    yield s
    s.close()


def test_put_get_list_count(store: Store[Task]) -> None:
    a, b = Task(Image="a"), Task(Image="b")
    assert store.get(str(a.ID)) is None
    store.put(str(a.ID), a)
    store.put(str(b.ID), b)
    assert store.count() == 2
    assert store.get(str(a.ID)) == a
    assert [t.Image for t in store.list()] == ["a", "b"]


def test_put_replaces_and_keeps_order(store: Store[Task]) -> None:
    a, b = Task(Image="a"), Task(Image="b")
    store.put_many([(str(a.ID), a), (str(b.ID), b)])
    store.put(str(a.ID), a.model_copy(update={"State": State.RUNNING}))
    assert store.count() == 2
    assert [(t.Image, t.State) for t in store.list()] == [
        ("a", State.RUNNING),
        ("b", State.PENDING),
    ]


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cube.db"
    db = Database(path)
    task = Task(Image="a", Memory=1024)
    db.store("tasks", Task).put(str(task.ID), task)
    db.close()  # nothing flushed by hand: put itself commits
    again = Database(path).store("tasks", Task)
    assert again.get(str(task.ID)) == task


def test_events_grouped_by_task_in_order(tmp_path: Path) -> None:
    db = Database(tmp_path / "cube.db")
    events = db.store("events", TaskEvent, group_of=lambda e: str(e.Task.ID))
    t1, t2 = Task(Image="a"), Task(Image="b")
    for state in (State.SCHEDULED, State.COMPLETED):
        for task in (t1, t2):
            ev = TaskEvent(State=state, Task=task)
            events.put(str(ev.ID), ev)
    history = events.list(group=str(t1.ID))
    assert [e.State for e in history] == [State.SCHEDULED, State.COMPLETED]
    assert all(e.Task.ID == t1.ID for e in history)
    assert events.count() == 4


def test_migrations_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "cube.db"
    Database(path).close()
    conn = sqlite3.connect(path)
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    assert version == len(MIGRATIONS)
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"
    conn.close()
    Database(path).close()  # reopening an up-to-date file runs nothing again


def test_unknown_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        Database(tmp_path / "x.db").store("nope", Task)
