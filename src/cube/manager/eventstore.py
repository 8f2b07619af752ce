"""Where the cluster's events are kept: a table of their own in the manager's SQLite
file (written in the same transaction as the task changes they describe), or a list
in memory (or keys in etcd: cube.manager.etcd_backend). Each keeps what the retention
allows and no more. Writes are asynchronous, so a store across the network can wait for
its answer without stopping the manager's loop; reads are not, as readers are served
from memory or a local file."""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from cube.events import Event, Numbered, ready
from cube.store import Database


class EventStore(Protocol):
    def last_index(self) -> int: ...

    async def append(self, events: Sequence[Event]) -> None: ...

    def after(self, index: int, limit: int, topics: Collection[str] = ()) -> list[Event]:
        """Up to ``limit`` events after ``index`` (of these topics: all when empty)."""
        ...

    def recent(self, count: int) -> list[Event]: ...

    async def trim(self, before: datetime, keep: int) -> int: ...


class Kept:
    """Events kept in memory, oldest first, as the blocks they were numbered in
    (:class:`~cube.events.Numbered`): keeping a write's events costs one entry, and
    only those read are ever made. Letting go is by whole blocks, except that
    ``floor`` hides the oldest block's events at or below it (retention by count)."""

    def __init__(self) -> None:
        self.blocks: list[Numbered] = []
        self.floor = 0  # events at or below this index are let go
        self._total = 0  # events in the blocks, hidden ones included

    def add(self, events: Sequence[Event]) -> None:
        """Keep ``events``: as the block they are, when numbered together (a write's),
        else one block each (read back from a store, or a leader's)."""
        for block in [events] if isinstance(events, Numbered) else map(Numbered.made, events):
            if block:
                self.blocks.append(block)
                self._total += len(block)

    @property
    def last(self) -> int:
        return self.blocks[-1].last if self.blocks else 0

    @property
    def oldest(self) -> int | None:
        """The oldest index kept; None when none is."""
        return max(self.blocks[0].first, self.floor + 1) if self.blocks else None

    def __len__(self) -> int:
        return self._total - self._hidden()

    def _hidden(self) -> int:
        """The oldest block's events at or below the floor (let go, still in it)."""
        return max(self.floor - self.blocks[0].first + 1, 0) if self.blocks else 0

    def after(self, index: int, limit: int, topics: Collection[str] = ()) -> list[Event]:
        start = max(index, self.floor) + 1
        found: list[Event] = []
        first = bisect.bisect_left(self.blocks, start, key=lambda block: block.last)
        for block in self.blocks[first:]:
            for position in range(max(start - block.first, 0), len(block)):
                if not topics or block.topic(position) in topics:
                    found.append(block[position])
                    if len(found) >= limit:
                        return found
        return found

    def recent(self, count: int) -> list[Event]:
        """The newest ``count``, oldest first."""
        found: list[Event] = []
        for block in reversed(self.blocks):
            for position in range(len(block) - 1, max(self.floor - block.first, -1), -1):
                if len(found) >= count:
                    return found[::-1]
                found.append(block[position])
        return found[::-1]

    def drop(self, oldest: int, before: datetime) -> int:
        """Let go of the events at or below index ``oldest``, and of those recorded
        before ``before``; say how many went."""
        had = len(self)
        self.floor = max(self.floor, oldest)
        while self.blocks and (self.blocks[0].last <= self.floor or self.blocks[0].time < before):
            self._total -= len(self.blocks.pop(0))
        return had - len(self)

    def bound(self, keep: int) -> None:
        """Keep the newest ``keep`` at least: whole blocks go, oldest first, while as
        many remain without them."""
        while len(self.blocks) > 1 and len(self) - (len(self.blocks[0]) - self._hidden()) >= keep:
            self._total -= len(self.blocks.pop(0))


class MemoryEvents:
    """``--dbtype memory``: the last ``keep`` events (at least), gone with the process."""

    def __init__(self, keep: int = 50_000) -> None:
        self._kept = Kept()
        self._keep = keep

    def last_index(self) -> int:
        return self._kept.last

    async def append(self, events: Sequence[Event]) -> None:
        self._kept.add(events)
        self._kept.bound(self._keep)

    def after(self, index: int, limit: int, topics: Collection[str] = ()) -> list[Event]:
        return ready(self._kept.after(index, limit, topics))

    def recent(self, count: int) -> list[Event]:
        return ready(self._kept.recent(count)) if count else []

    async def trim(self, before: datetime, keep: int) -> int:
        return self._kept.drop(self._kept.last - keep, before)


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
