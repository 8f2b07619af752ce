"""The manager's state in etcd: ``cube manager --store etcd://HOST:PORT[,HOST:PORT…][/prefix]``.

SQLite keeps a manager's state on its own disk; etcd keeps it on a replicated cluster,
so that a manager that dies (or whose disk dies) loses nothing, and so that several
managers can later share it (issue 17). Every key lives under a prefix (``/cube/`` by
default), and every value is JSON as the API shows it:

- ``tasks/<task id>``: a task, its desired and observed state;
- ``history/<task id>/<position>-<event id>``: its TaskEvents, ordered by the revision
  that created them, then by their position in that write;
- ``events/<index, 20 digits>``: the event log (GET /events), trimmed by its retention;
- ``jobs/<name>`` (a job, its versions and its deployment), ``nodes/<name>``,
  ``tokens/<id>`` (hashes, never secrets).

A commit is one etcd transaction: the tasks, their TaskEvents and the log's events are
stored together or not at all, and each task's put is guarded by the mod revision it
had when this manager last read or wrote it (absent, for a new task), so a write over
someone else's raises :class:`~cube.manager.backend.Conflict`. Each event's key must be
absent too, so two writers never give out the same index.

The Backend seam loads synchronously, at start: :meth:`EtcdBackend.open` reads every
task, job, node, token and retained event at once, and loads are answered from that.
Readers of the event log are served from memory as with ``--store memory``; a task's
history is read from etcd when asked.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aetcd

from cube.events import Event
from cube.job import JobRecord
from cube.manager.auth import TokenRecord
from cube.manager.backend import Change, Conflict, Deposed, Fence, StoreUnavailable, _Checked
from cube.manager.eventstore import EventStore
from cube.node import NodeRecord
from cube.task import Task, TaskEvent

T = TypeVar("T")


class _Watch(Protocol):
    async def cancel(self) -> None: ...


W = TypeVar("W", bound=_Watch)

DEFAULT_PREFIX = "/cube/"
# Seconds one etcd call may take: a gRPC deadline that etcd's answer ends, not a timer.
TIMEOUT = 5
# gRPC's 4 MiB default would cut a large load (every task in one range) short; etcd's
# own --max-request-bytes bounds what a write may carry.
_CHANNEL = {"grpc.max_receive_message_length": -1, "grpc.max_send_message_length": -1}
_UNREACHABLE = (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError)
# What etcd says when its own deadline for a request ended first (no quorum to commit
# it, say): Go's context error, which gRPC carries as UNKNOWN or CANCELLED, so aetcd
# raises it as a plain ClientError. The request may or may not have been applied.
_SERVER_GAVE_UP = ("context deadline exceeded", "context canceled")


__all__ = ["EtcdBackend", "Fence", "StoreUnavailable", "parse_url"]


@dataclass(frozen=True)
class EtcdUrl:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX


def parse_url(url: str) -> EtcdUrl:
    """``etcd://HOST:PORT[,HOST:PORT…][/prefix]`` (the port defaults to etcd's 2379)."""
    if not url.startswith("etcd://"):
        raise ValueError(f"{url!r} is not etcd://HOST:PORT[,HOST:PORT...][/prefix]")
    hosts, _, path = url.removeprefix("etcd://").partition("/")
    endpoints = []
    for part in filter(None, hosts.split(",")):
        parsed = urlsplit(f"//{part}")
        try:
            port = parsed.port or 2379
        except ValueError:
            raise ValueError(f"{part!r}: the port must be a number") from None
        if not parsed.hostname:
            raise ValueError(f"{part!r}: no host")
        endpoints.append((parsed.hostname, port))
    if not endpoints:
        raise ValueError(f"{url!r} names no etcd endpoint")
    prefix = f"/{path.strip('/')}/" if path.strip("/") else DEFAULT_PREFIX
    return EtcdUrl(tuple(endpoints), prefix)


class _Connection:
    """One client at a time, to the first endpoint that answers; when one stops
    answering, the next call tries the others. A client belongs to the event loop that
    made it (gRPC's channels do), so a new loop (the server's, after a load at start)
    gets a new one."""

    def __init__(self, endpoints: Sequence[tuple[str, int]]) -> None:
        self.endpoints = list(endpoints)
        self._at = 0
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        failures = []
        for _ in self.endpoints:
            host, port = self.endpoints[self._at]
            client = aetcd.Client(host, port, timeout=TIMEOUT, options=_CHANNEL)
            try:
                await client.connect()
                await client.status()  # connect() alone sends nothing
            except aetcd.ClientError as exc:
                failures.append(f"{host}:{port}: {exc or type(exc).__name__}")
                await client.close()
                self._at = (self._at + 1) % len(self.endpoints)
                continue
            self._client, self._loop = client, loop
            return client
        raise StoreUnavailable("no etcd endpoint answers (" + "; ".join(failures) + ")")

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(client)``. A failed endpoint is left for the next call, which tries
        the others; the call itself is not repeated, as a write whose answer was lost
        may have been applied (a revision compare then tells)."""
        client = await self.client()
        try:
            return await fn(client)
        except aetcd.ClientError as exc:
            if not unanswered(exc):
                raise
            self._at = (self._at + 1) % len(self.endpoints)
            await self.aclose()
            raise StoreUnavailable(f"etcd did not answer: {exc or type(exc).__name__}") from exc

    async def watch(self, fn: Callable[[Any], Awaitable[W]]) -> W:
        """``fn(client)`` that makes a watch, honouring a cancellation that came while
        it was made. aetcd awaits a watch's creation with ``asyncio.wait_for``, which on
        Python 3.11 swallows a cancellation that arrives as the awaited answer does
        (CPython gh-86296, fixed in 3.12): the caller would then follow the watch for
        ever. A manager elected while its follower view was starting up waited on that
        view, served 503 and ignored SIGTERM (1 start in ~20)."""
        watch = await self.call(fn)
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            return watch
        with contextlib.suppress(Exception):  # a stop was asked for: it goes on
            await watch.cancel()
        raise asyncio.CancelledError

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.close()


def unanswered(exc: aetcd.ClientError) -> bool:
    """Whether ``exc`` says etcd did not answer the request (unreachable, or gave up on
    it), rather than refusing it; only then is it worth another endpoint, or later."""
    return isinstance(exc, _UNREACHABLE) or (
        type(exc) is aetcd.ClientError and str(exc) in _SERVER_GAVE_UP
    )


def _json(value: Any) -> bytes:
    return str(value.model_dump_json()).encode()


async def transact(
    conn: _Connection, fence: Fence | None, compares: list[Any], ops: list[Any]
) -> tuple[bool, list[Any]]:
    """One etcd transaction of ``ops`` if ``compares`` hold, fenced by ``fence`` when
    given: a fence that fails raises :class:`Deposed` (and tells ``on_deposed``); other
    failed compares return ``False``, as etcd answered."""
    tx = aetcd.Transactions()
    otherwise: list[Any] = []
    if fence is not None:
        compares = [*compares, tx.create(fence.key) == fence.term]
        otherwise = [tx.get(fence.key)]
    ok, answers = await conn.call(lambda c: c.transaction(compares, ops, otherwise))
    if not ok and fence is not None:
        held = answers[0]  # a range's answer: (value, key-value) pairs
        if not held or int(held[0][1].create_revision) != fence.term:
            fence.on_deposed()
            raise Deposed(f"this manager no longer leads (its term {fence.term} is over)")
    return bool(ok), list(answers)


def store_key(prefix: str, kind: str, name: str) -> bytes:
    """A key of the layout above (public: ``cube migrate`` writes it too)."""
    return f"{prefix}{kind}/{name}".encode()


def history_name(event: TaskEvent, position: int) -> str:
    """A TaskEvent's name under ``history/``: its task, then its position in the write
    that stored it (the same create revision), so that sorting keys keeps the order."""
    return f"{event.Task.ID}/{position:06d}-{event.ID}"


@dataclass
class EtcdEvents:
    """The event log's keys, with every retained event also in memory (oldest first):
    reads are served from there, and only writes reach etcd."""

    conn: _Connection
    prefix: str
    events: list[Event] = field(default_factory=list)
    fence: Fence | None = None

    def key(self, index: int) -> bytes:
        return f"{self.prefix}events/{index:020d}".encode()

    def last_index(self) -> int:
        return self.events[-1].Index if self.events else 0

    def writes(self, events: Sequence[Event]) -> tuple[list[Any], list[Any]]:
        """The compares (each index still free) and puts that store ``events``."""
        tx = aetcd.Transactions()
        compares = [tx.version(self.key(e.Index)) == 0 for e in events]
        # A task's event makes its Payload when first read or written (cube.events.ready).
        return compares, [tx.put(self.key(e.Index), _json(e.ready())) for e in events]

    def stored(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    async def append(self, events: Sequence[Event]) -> None:
        if not events:
            return
        compares, puts = self.writes(events)
        ok, _ = await transact(self.conn, self.fence, compares, puts)
        if not ok:
            raise Conflict(f"event indexes {events[0].Index}.. were given out by another writer")
        self.stored(events)

    def after(self, index: int, limit: int, topics: Collection[str] = ()) -> list[Event]:
        start = bisect.bisect_right(self.events, index, key=lambda e: e.Index)
        found: list[Event] = []
        for event in self.events[start:]:
            if not topics or event.Topic in topics:
                found.append(event)
                if len(found) >= limit:
                    break
        return found

    def recent(self, count: int) -> list[Event]:
        return self.events[-count:] if count else []

    async def trim(self, before: datetime, keep: int) -> int:
        """Drop the oldest events past ``keep`` and those older than ``before``: one
        range of keys, deleted in one request."""
        last, cut = self.last_index(), 0
        while cut < len(self.events) and (
            self.events[cut].Index <= last - keep or self.events[cut].Time < before
        ):
            cut += 1
        if not cut:
            return 0
        start, end = self.key(self.events[0].Index), self.key(self.events[cut - 1].Index + 1)
        await transact(self.conn, self.fence, [], [aetcd.Transactions().delete(start, end)])
        del self.events[:cut]
        return cut


class EtcdBackend(_Checked):
    """Tasks, history, events, jobs, nodes and tokens in etcd (see the module's doc)."""

    def __init__(self, conn: _Connection, prefix: str, fence: Fence | None = None) -> None:
        super().__init__()
        self.conn = conn
        self.prefix = prefix
        self.fence = fence
        self._events = EtcdEvents(conn, prefix, fence=fence)
        self.stream: EventStore = self._events
        self._revisions: dict[uuid.UUID, int] = {}  # each task's mod revision, as last seen
        # The revision the load began at: a watch from the next one misses nothing.
        self.loaded_at = 0
        self._jobs: list[JobRecord] = []
        self._nodes: list[NodeRecord] = []
        self._tokens: list[TokenRecord] = []
        self._closing: asyncio.Task[None] | None = None  # held, so it is not collected

    # --- opening ----------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, fence: Fence | None = None) -> EtcdBackend:
        """Connect and read everything a manager loads at start (a leader: with its
        term's fence, so that nothing it writes outlives its term)."""
        where = parse_url(url)
        backend = cls(_Connection(where.endpoints), where.prefix, fence)
        await backend._load()
        return backend

    @staticmethod
    def check(url: str) -> None:
        """That ``url`` is well formed and an endpoint answers, from outside an event
        loop (the CLI, so that a wrong address fails at once, in one line)."""
        where = parse_url(url)

        async def answered() -> None:
            conn = _Connection(where.endpoints)
            await conn.client()
            await conn.aclose()

        asyncio.run(answered())

    @classmethod
    def connect(cls, url: str) -> EtcdBackend:
        """:meth:`open`, from outside an event loop (the CLI, before it serves): the
        loop that loads ends here, and the server's loop connects anew."""

        async def opened() -> EtcdBackend:
            backend = await cls.open(url)
            await backend.conn.aclose()
            return backend

        return asyncio.run(opened())

    async def _range(self, kind: str) -> list[Any]:
        prefix = f"{self.prefix}{kind}/".encode()
        found = await self.conn.call(lambda c: c.get_prefix(prefix, sort_order="ascend"))
        revision = int(found.header.revision)
        self.loaded_at = min(self.loaded_at, revision) if self.loaded_at else revision
        return list(found)

    async def _load(self) -> None:
        for kv in await self._range("tasks"):
            task = Task.model_validate_json(kv.value)
            self._current[task.ID] = task
            self._revisions[task.ID] = int(kv.mod_revision)
        self._jobs = [JobRecord.model_validate_json(kv.value) for kv in await self._range("jobs")]
        self._nodes = [
            NodeRecord.model_validate_json(kv.value) for kv in await self._range("nodes")
        ]
        self._tokens = [
            TokenRecord.model_validate_json(kv.value) for kv in await self._range("tokens")
        ]
        self._events.events = [
            Event.model_validate_json(kv.value) for kv in await self._range("events")
        ]

    def _key(self, kind: str, name: str) -> bytes:
        return store_key(self.prefix, kind, name)

    # --- tasks ------------------------------------------------------------------------

    def load(self) -> list[Task]:
        return list(self._current.values())

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        self._check(changes)
        tx = aetcd.Transactions()
        compares, puts = self._events.writes(stream)
        for change in changes:
            key = self._key("tasks", str(change.after.ID))
            # Mod revision 0 is etcd's for an absent key: a new task must be new there too.
            compares.append(tx.mod(key) == self._revisions.get(change.after.ID, 0))
            puts.append(tx.put(key, _json(change.after)))
        for position, event in enumerate(events):
            puts.append(tx.put(self._key("history", history_name(event, position)), _json(event)))
        if not puts:
            return
        try:
            ok, answers = await transact(self.conn, self.fence, compares, puts)
        except aetcd.InvalidArgumentError as exc:
            raise aetcd.InvalidArgumentError(
                f"etcd refused a write of {len(puts)} keys ({exc}): its --max-txn-ops and "
                "--max-request-bytes must allow Cube's largest commit (docs/operations.md)"
            ) from exc
        except StoreUnavailable as exc:
            if isinstance(exc, Deposed):
                raise
            applied = await self._applied(changes)
            if applied is None:
                raise
            ok, revision = True, applied
        else:
            revision = int(answers[0].response_put.header.revision) if ok else 0
        if not ok:
            applied = await self._applied(changes)
            if applied is None:
                raise Conflict("a task changed in etcd meanwhile: another writer got there first")
            revision = applied
        for change in changes:
            self._revisions[change.after.ID] = revision
        self._keep(changes)
        self._events.stored(stream)

    async def _applied(self, changes: Sequence[Change]) -> int | None:
        """After a write whose answer was lost (or that a retry of it found done): the
        revision it was stored at, if etcd holds every task as the write left it; then
        all of it was stored (one transaction), and the next write's compares must know.
        None otherwise, or if etcd cannot say."""
        revision = None
        for change in changes:
            key = self._key("tasks", str(change.after.ID))

            async def get(client: Any, key: bytes = key) -> Any:
                return await client.get(key)

            try:
                held = await self.conn.call(get)
            except StoreUnavailable:
                return None
            if held is None or Task.model_validate_json(held.value) != change.after:
                return None
            revision = int(held.mod_revision)
        return revision

    async def history(self, task_id: uuid.UUID) -> list[TaskEvent]:
        found = await self._range(f"history/{task_id}")
        found.sort(key=lambda kv: (int(kv.create_revision), bytes(kv.key)))
        return [TaskEvent.model_validate_json(kv.value) for kv in found]

    # --- jobs, nodes, tokens ------------------------------------------------------------

    async def _put(self, kind: str, items: Sequence[tuple[str, Any]]) -> None:
        """Plain puts, in one transaction: only the leader writes these, so the fence
        is their only compare."""
        tx = aetcd.Transactions()
        puts = [tx.put(self._key(kind, name), _json(value)) for name, value in items]
        if puts:
            await transact(self.conn, self.fence, [], puts)

    async def _delete(self, kind: str, name: str) -> None:
        await transact(
            self.conn, self.fence, [], [aetcd.Transactions().delete(self._key(kind, name))]
        )

    def load_jobs(self) -> list[JobRecord]:
        return list(self._jobs)

    async def save_job(self, record: JobRecord) -> None:
        await self._put("jobs", [(record.Job.Name, record)])

    def load_nodes(self) -> list[NodeRecord]:
        return list(self._nodes)

    async def save_nodes(self, records: Sequence[NodeRecord]) -> None:
        await self._put("nodes", [(r.Name, r) for r in records])

    async def delete_node(self, name: str) -> None:
        await self._delete("nodes", name)

    def load_tokens(self) -> list[TokenRecord]:
        return list(self._tokens)

    async def save_token(self, record: TokenRecord) -> None:
        await self._put("tokens", [(record.ID, record)])

    async def delete_token(self, token_id: str) -> None:
        await self._delete("tokens", token_id)

    # --- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """The seam closes synchronously; the channel closes on its own loop, in the
        background (the manager is stopping: nothing waits for it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._closing = loop.create_task(self.conn.aclose())

    async def aclose(self) -> None:
        await self.conn.aclose()
