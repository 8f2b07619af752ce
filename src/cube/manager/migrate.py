"""``cube migrate``: a single manager's state, from its SQLite file into etcd.

A manager that kept its state in ``manager.db`` (``-d persistent``) moves to ``--store
etcd://`` by being stopped, copied, and started again on etcd: this is the copy. It
reads the SQLite file through :class:`~cube.manager.backend.SqliteBackend` (any
:class:`~cube.manager.backend.Backend` will do) and writes exactly the layout
:mod:`cube.manager.etcd_backend` reads, through its connection and its key helpers, so
the manager started on the copy finds every task, every history in order, the
retained event log (and numbers on from its last index), every job with its versions
and deployment, every node and every token's hash.

etcd's defaults bound one transaction to 128 operations and 1.5 MiB, and the etcd at
hand may have them: the copy is written in batches under both, each key put only if
it is absent. A prefix that already holds any key is refused before anything is written
(two clusters' state mixed would be worse than none), unless ``force`` empties it first.
The copy is not one transaction: one that fails halfway leaves part of a copy, which a
run with ``force`` replaces.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aetcd
from pydantic import BaseModel

from cube.manager.backend import Backend, SqliteBackend
from cube.manager.etcd_backend import (
    EtcdEvents,
    EtcdUrl,
    StoreUnavailable,
    _Connection,
    history_name,
    parse_url,
    store_key,
)
from cube.store import MIGRATIONS

DB_NAME = "manager.db"  # in a manager's --data-dir (cube.cli.manager)
PAGE = 1000  # events read from the source at a time


class MigrateError(Exception):
    """Something the user can fix; the message says what, on one line."""


@dataclass(frozen=True)
class Limits:
    """etcd's defaults (--max-txn-ops, --max-request-bytes), which a copy must fit
    in: an etcd run as docs/operations.md asks allows more, but one may not."""

    ops: int = 128
    # 1.5 MiB, less room for what a request adds around its keys and values.
    bytes: int = 1024 * 1024


def _cost(key: bytes, value: bytes) -> int:
    """A put's share of a request: its key twice (the compare, the put), its value, and
    a little for the framing of each."""
    return 2 * len(key) + len(value) + 32


@dataclass
class Copied:
    """What a copy wrote, for its one-line summary."""

    tasks: int = 0
    history: int = 0
    events: int = 0
    jobs: int = 0
    nodes: int = 0
    tokens: int = 0
    indexes: tuple[int, int] = (0, 0)  # the first and last event's Index
    transactions: int = 0
    replaced: int = 0  # keys that were under the prefix (with force)

    def summary(self, target: str) -> str:
        log = f"{self.events} events" + (
            f" (indexes {self.indexes[0]}-{self.indexes[1]})" if self.events else ""
        )
        replaced = f", replacing {self.replaced} keys" if self.replaced else ""
        return (
            f"copied {self.tasks} tasks, {self.history} task events, {log}, {self.jobs} jobs, "
            f"{self.nodes} nodes, {self.tokens} tokens to {target} "
            f"in {self.transactions} transactions{replaced}"
        )


@dataclass
class Writer:
    """Puts, gathered into transactions that fit ``limits``; each key only if absent."""

    conn: _Connection
    limits: Limits = field(default_factory=Limits)
    transactions: int = 0
    _items: list[tuple[bytes, bytes]] = field(default_factory=list)
    _size: int = 0

    async def put(self, key: bytes, value: bytes) -> None:
        cost = _cost(key, value)
        full = len(self._items) >= self.limits.ops or self._size + cost > self.limits.bytes
        if self._items and full:
            await self.flush()
        self._items.append((key, value))  # one larger than a request goes alone
        self._size += cost

    async def flush(self) -> None:
        items, self._items, self._size = self._items, [], 0
        if not items:
            return
        tx = aetcd.Transactions()
        compares = [tx.version(key) == 0 for key, _ in items]
        puts = [tx.put(key, value) for key, value in items]
        try:
            ok, _ = await self.conn.call(lambda c: c.transaction(compares, puts, []))
        except StoreUnavailable:  # etcd did not answer (the connection says so): not a refusal
            raise
        except aetcd.ClientError as exc:
            first = items[0][0].decode()
            raise MigrateError(
                f"etcd refused a write of {len(items)} keys from {first} ({exc}): the "
                "copy so far is partial; an etcd that allows larger requests "
                "(--max-request-bytes) may take it (then run again with --force)"
            ) from None
        if not ok:
            raise MigrateError(
                f"{items[0][0].decode()} (or a key written with it) appeared in etcd while "
                "copying: is someone else writing there? the copy so far is partial; "
                "run again with --force to replace it"
            )
        self.transactions += 1


def _value(model: BaseModel) -> bytes:
    """JSON as the API shows it: what EtcdBackend stores and reads."""
    return model.model_dump_json().encode()


async def copy(
    source: Backend,
    conn: _Connection,
    prefix: str,
    *,
    force: bool = False,
    limits: Limits | None = None,
    target: str = "",
) -> Copied:
    """Copy everything ``source`` holds under ``prefix`` in etcd: tokens, nodes, jobs,
    the event log, the tasks' histories, then the tasks (last, so that a copy cut
    short holds no task without its history)."""
    copied = Copied()
    where = target or prefix
    held = await conn.call(lambda c: c.get_prefix(prefix.encode(), keys_only=True))
    if len(held):
        if not force:
            raise MigrateError(
                f"{where} already holds {len(held)} keys under {prefix} (another cluster's "
                "state?): refusing to mix them; --force replaces them"
            )
        await conn.call(lambda c: c.delete_prefix(prefix.encode()))
        copied.replaced = len(held)
    writer = Writer(conn, limits or Limits())

    for token in source.load_tokens():
        await writer.put(store_key(prefix, "tokens", token.ID), _value(token))
        copied.tokens += 1
    for node in source.load_nodes():
        await writer.put(store_key(prefix, "nodes", node.Name), _value(node))
        copied.nodes += 1
    for job in source.load_jobs():
        await writer.put(store_key(prefix, "jobs", job.Job.Name), _value(job))
        copied.jobs += 1

    log, index = EtcdEvents(conn, prefix), 0
    while page := source.stream.after(index, PAGE):
        for event in page:
            await writer.put(log.key(event.Index), _value(event.ready()))
        index = page[-1].Index
        copied.indexes = (copied.indexes[0] or page[0].Index, index)
        copied.events += len(page)

    tasks = source.load()
    for task in tasks:
        # Keys sort by position within one transaction, and later transactions have
        # later revisions: etcd gives the history back in this order either way.
        for position, change in enumerate(await source.history(task.ID)):
            await writer.put(
                store_key(prefix, "history", history_name(change, position)), _value(change)
            )
            copied.history += 1
    for task in tasks:
        await writer.put(store_key(prefix, "tasks", str(task.ID)), _value(task))
        copied.tasks += 1
    await writer.flush()
    copied.transactions = writer.transactions
    return copied


# --- the command's two ends ---------------------------------------------------------


def target_url(target: str) -> EtcdUrl:
    try:
        return parse_url(target)
    except ValueError as exc:
        raise MigrateError(f"--to: {exc}") from None


def sqlite_path(source: str) -> Path:
    """``sqlite:PATH``: a manager's ``manager.db``, or its data directory."""
    if not source.startswith("sqlite:") or not source.removeprefix("sqlite:"):
        raise MigrateError(
            f"--from {source!r}: give sqlite:PATH (a manager's {DB_NAME}, or its --data-dir)"
        )
    path = Path(source.removeprefix("sqlite:")).expanduser()
    if path.is_dir():
        if not (path / DB_NAME).is_file():
            raise MigrateError(f"{path} has no {DB_NAME}: is it a manager's --data-dir?")
        return path / DB_NAME
    if not path.exists():
        raise MigrateError(f"{path}: no such file or directory")
    return path


def check_database(path: Path) -> None:
    """Refuse what is not a Cube manager's database before SqliteBackend opens it (it
    would create its tables in any SQLite file)."""
    try:
        path.open("rb").close()
    except OSError as exc:
        raise MigrateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        conn = sqlite3.connect(path)  # reading changes nothing
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {name for (name,) in rows}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise MigrateError(f"{path} is not a Cube database ({exc})") from None
    if not version or "tasks" not in tables:
        raise MigrateError(f"{path} is not a Cube database (it has no Cube tables)")
    if version > len(MIGRATIONS):
        raise MigrateError(
            f"{path} was written by a newer Cube (schema {version}; this one reads up to "
            f"{len(MIGRATIONS)}): migrate with that Cube"
        )


@contextmanager
def open_sqlite(source: str) -> Iterator[SqliteBackend]:
    """The SQLite file, read in one transaction: a consistent copy even if something
    still wrote to it (a manager should not: its later writes would not be copied)."""
    path = sqlite_path(source)
    check_database(path)
    backend = SqliteBackend(path)
    conn = backend.db.conn
    try:
        conn.execute("BEGIN")
        yield backend
    finally:
        conn.execute("ROLLBACK")
        backend.close()


def migrate(
    source: str, target: str, *, force: bool = False, limits: Limits | None = None
) -> Copied:
    """``cube migrate --from sqlite:PATH --to etcd://…``, from outside an event loop."""
    where = target_url(target)
    with open_sqlite(source) as backend:

        async def run() -> Copied:
            conn = _Connection(where.endpoints)
            try:
                return await copy(
                    backend, conn, where.prefix, force=force, limits=limits, target=target
                )
            except (StoreUnavailable, aetcd.ClientError) as exc:  # unreachable, or refusing
                raise MigrateError(f"{target}: {exc or type(exc).__name__}") from None
            finally:
                await conn.aclose()

        return asyncio.run(run())
