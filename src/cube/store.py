"""Stores: the book's put/get/list/count interface, in memory or in SQLite.

Both the manager and the worker keep their tasks (and the manager its events) in a
:class:`Store`. The SQLite flavour commits before ``put`` returns, so an API that
answers success after a ``put`` has made the write durable: with WAL and
``synchronous=NORMAL`` a committed transaction survives the process being killed the
next instant (only a power cut can take the last few).

Values are pydantic models stored as their JSON wire form, so a database is readable
with the ``sqlite3`` shell and older rows load with newer code as long as fields are
only added. Schema changes are numbered migrations keyed on ``PRAGMA user_version``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

GroupOf = Callable[[M], str]


class Store(Protocol[M]):
    """What the manager and worker need from persistence, and nothing more."""

    def put(self, key: str, value: M) -> None: ...

    def put_many(self, items: Iterable[tuple[str, M]]) -> None: ...

    def get(self, key: str) -> M | None: ...

    def list(self, group: str | None = None) -> list[M]: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class MemoryStore(Generic[M]):
    """A dict, for ``--dbtype memory`` and for tests of the pure core."""

    def __init__(self, group_of: GroupOf[M] | None = None) -> None:
        self._items: dict[str, M] = {}
        self._group_of = group_of

    def put(self, key: str, value: M) -> None:
        self._items[key] = value

    def put_many(self, items: Iterable[tuple[str, M]]) -> None:
        self._items.update(items)

    def get(self, key: str) -> M | None:
        return self._items.get(key)

    def delete(self, key: str) -> None:
        self._items.pop(key, None)

    def list(self, group: str | None = None) -> list[M]:
        values = list(self._items.values())
        if group is None or self._group_of is None:
            return values
        return [v for v in values if self._group_of(v) == group]

    def count(self) -> int:
        return len(self._items)

    def close(self) -> None:
        pass


# Each entry moves a database one version forward; never edit a released one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS tasks (
        key TEXT PRIMARY KEY, grp TEXT NOT NULL DEFAULT '', value TEXT NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS events (
        key TEXT PRIMARY KEY, grp TEXT NOT NULL DEFAULT '', value TEXT NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS events_grp ON events (grp, seq);
    """,
    """
    CREATE TABLE IF NOT EXISTS jobs (
        key TEXT PRIMARY KEY, grp TEXT NOT NULL DEFAULT '', value TEXT NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0
    );
    """,
    """
    CREATE TABLE IF NOT EXISTS nodes (
        key TEXT PRIMARY KEY, grp TEXT NOT NULL DEFAULT '', value TEXT NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0
    );
    """,
    """
    CREATE TABLE IF NOT EXISTS tokens (
        key TEXT PRIMARY KEY, grp TEXT NOT NULL DEFAULT '', value TEXT NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0
    );
    """,
    # The cluster's event stream (cube.manager.eventstore): its Index is the key.
    """
    CREATE TABLE IF NOT EXISTS stream (
        idx INTEGER PRIMARY KEY, time REAL NOT NULL, topic TEXT NOT NULL, value TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS stream_time ON stream (time);
    """,
]
TABLES = ("tasks", "events", "jobs", "nodes", "tokens")


class Writes(Protocol):
    """A table :meth:`Database.write` can put rows into, in its transaction."""

    def _upsert(self, conn: sqlite3.Connection, items: Iterable[tuple[str, Any]]) -> None: ...


class Database:
    """One SQLite file, migrated on open, shared by the stores that live in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.lock = threading.Lock()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        (version,) = self.conn.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.conn.executescript(f"BEGIN;{script};PRAGMA user_version={number};COMMIT;")

    def store(
        self, table: str, model: type[M], group_of: GroupOf[M] | None = None
    ) -> SqliteStore[M]:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        return SqliteStore(self, table, model, group_of)

    def write(self, batches: Iterable[tuple[Writes, Iterable[tuple[str, Any]]]]) -> None:
        """Puts into several of this database's stores as one transaction: all or none.

        The manager stores a task and the event that changed it together, so a crash
        can never keep one without the other.
        """
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                for store, items in batches:
                    store._upsert(self.conn, items)
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class SqliteStore(Generic[M]):
    """A table of ``key -> JSON`` rows; ``grp`` lets events be listed per task in order."""

    def __init__(
        self, db: Database, table: str, model: type[M], group_of: GroupOf[M] | None = None
    ) -> None:
        self._db = db
        self._table = table
        self._model = model
        self._group_of = group_of
        (self._seq,) = db.conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {table}").fetchone()

    def _row(self, key: str, value: M) -> tuple[str, str, str, int]:
        self._seq += 1
        group = self._group_of(value) if self._group_of else ""
        return key, group, value.model_dump_json(), self._seq

    def put(self, key: str, value: M) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: Iterable[tuple[str, M]]) -> None:
        self._db.write([(self, items)])

    def _upsert(self, conn: sqlite3.Connection, items: Iterable[tuple[str, M]]) -> None:
        conn.executemany(
            f"INSERT INTO {self._table} (key, grp, value, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET grp=excluded.grp, value=excluded.value",
            [self._row(key, value) for key, value in items],
        )

    def delete(self, key: str) -> None:
        with self._db.lock:
            self._db.conn.execute(f"DELETE FROM {self._table} WHERE key = ?", (key,))

    def get(self, key: str) -> M | None:
        with self._db.lock:
            row = self._db.conn.execute(
                f"SELECT value FROM {self._table} WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else self._model.model_validate_json(row[0])

    def list(self, group: str | None = None) -> list[M]:
        with self._db.lock:
            if group is None:
                rows = self._db.conn.execute(f"SELECT value FROM {self._table} ORDER BY seq")
            else:
                rows = self._db.conn.execute(
                    f"SELECT value FROM {self._table} WHERE grp = ? ORDER BY seq", (group,)
                )
            values = [row[0] for row in rows]
        return [self._model.model_validate_json(v) for v in values]

    def count(self) -> int:
        with self._db.lock:
            (n,) = self._db.conn.execute(f"SELECT COUNT(*) FROM {self._table}").fetchone()
        return int(n)

    def close(self) -> None:
        self._db.close()
