"""Where the cluster's events are kept: a table of their own in the manager's SQLite
file (written in the same transaction as the task changes they describe), or a list
in memory (or keys in etcd: cube.manager.etcd_backend). Each keeps what the retention
allows and no more. Writes are asynchronous, so a store across the network can wait for
its answer without stopping the manager's loop; reads are not, as readers are served
from memory or a local file."""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from cube.events import Event, ready
from cube.store import Database


class EventStore(Protocol):
    def last_index(self) -> int: ...

    async def append(self, events: Sequence[Event]) -> None: ...

    def after(self, index: int, limit: int, topics: Collection[str] = ()) -> list[Event]:
        """Up to ``limit`` events after ``index`` (of these topics: all when empty)."""
        ...

    def recent(self, count: int) -> list[Event]: ...

    async def trim(self, before: datetime, keep: int) -> int: ...


def _wanted(event: Event, topics: Collection[str]) -> bool:
    return not topics or event.Topic in topics


class MemoryEvents:
    """``--dbtype memory``: the last ``keep`` events, gone with the process."""

    def __init__(self, keep: int = 50_000) -> None:
        self._events: deque[Event] = deque(maxlen=keep)

    def last_index(self) -> int:
        return self._events[-1].Index if self._events else 0

    async def append(self, events: Sequence[Event]) -> None:
        self._events.extend(events)

    def after(self, index: int, limit: int, topics: Collection[str] = ()) -> list[Event]:
        found: list[Event] = []
        for event in self._events:
            if event.Index > index and _wanted(event, topics):
                found.append(event)
                if len(found) >= limit:
                    break
        return ready(found)

    def recent(self, count: int) -> list[Event]:
        return ready(list(self._events)[-count:]) if count else []

    async def trim(self, before: datetime, keep: int) -> int:
        dropped = 0
        while self._events and (len(self._events) > keep or self._events[0].Time < before):
            self._events.popleft()
            dropped += 1
        return dropped


class SqliteEvents:
    """The ``stream`` table: one row per event, its Index the primary key."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def last_index(self) -> int:
        with self._db.lock:
            (last,) = self._db.conn.execute("SELECT COALESCE(MAX(idx), 0) FROM stream").fetchone()
        return int(last)

    def _upsert(self, conn: sqlite3.Connection, items: Iterable[tuple[str, Event]]) -> None:
        """For :meth:`Database.write`: in the caller's transaction."""
        conn.executemany(
            "INSERT INTO stream (idx, time, topic, value) VALUES (?, ?, ?, ?)",
            [(e.Index, e.Time.timestamp(), e.Topic, e.ready().model_dump_json()) for _, e in items],
        )

    async def append(self, events: Sequence[Event]) -> None:
        self._db.write([(self, [("", e) for e in events])])

    def after(self, index: int, limit: int, topics: Collection[str] = ()) -> list[Event]:
        query = "SELECT value FROM stream WHERE idx > ?"
        args: list[object] = [index]
        if topics:
            query += f" AND topic IN ({','.join('?' * len(topics))})"
            args += list(topics)
        query += " ORDER BY idx LIMIT ?"
        with self._db.lock:
            rows = [row[0] for row in self._db.conn.execute(query, (*args, limit))]
        return [Event.model_validate_json(row) for row in rows]

    def recent(self, count: int) -> list[Event]:
        with self._db.lock:
            rows = [
                row[0]
                for row in self._db.conn.execute(
                    "SELECT value FROM stream ORDER BY idx DESC LIMIT ?", (count,)
                )
            ]
        return [Event.model_validate_json(row) for row in reversed(rows)]

    async def trim(self, before: datetime, keep: int) -> int:
        """Drop events older than ``before`` and all but the newest ``keep``."""
        with self._db.lock:
            self._db.conn.execute("BEGIN")
            try:
                cursor = self._db.conn.execute(
                    "DELETE FROM stream WHERE time < ? OR idx <= "
                    "(SELECT COALESCE(MAX(idx), 0) FROM stream) - ?",
                    (before.timestamp(), keep),
                )
            except BaseException:
                self._db.conn.execute("ROLLBACK")
                raise
            self._db.conn.execute("COMMIT")
        return cursor.rowcount
