"""A follower's reads: the manager's state as etcd holds it, kept current by a watch.

A follower forwards writes to the leader (cube.manager.replica), but the reads that
etcd holds whole it serves itself, as Kubernetes' API servers serve reads from their
watch cache: tasks (``GET /tasks``, ``/tasks/{id}``, ``/tasks/{id}/events``) and the
event log (``GET /events``, following it too), with tokens checked against the tokens
etcd holds. So reads scale with managers, and a stream of events outlives a failover.

The view is the manager's own API on a *passive* manager: loaded from etcd like a new
leader, its loops never started, its state moved on by every change etcd reports
(``State.adopt``), never by itself; it writes nothing. What only the leader knows — a
node's liveness, a deployment's health — is not in etcd, so those routes (``/nodes``,
``/jobs``, and every write) still go to the leader. A view lags the leader by a watch's
delay: a client that just wrote reads its write back from the manager it wrote through
(a follower's forwarded write, then its own read, may not see it for a few ms).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from cube.clock import Clock, SystemClock
from cube.events import Event, Numbered
from cube.manager.auth import TokenRecord
from cube.manager.backend import StoreUnavailable
from cube.manager.etcd_backend import EtcdBackend
from cube.manager.manager import Manager
from cube.task import Task

log = logging.getLogger(__name__)

# The reads a view serves: their data is all in etcd (the rest go to the leader).
LOCAL = re.compile(r"^/(tasks(/[^/]+(/events)?)?|events|tokens/self)/?$")
RETRY_AFTER = 1.0

# A passive manager on this backend, and its API (cube.manager.api.create_app).
BuildView = Callable[[EtcdBackend], tuple[Manager, FastAPI]]


def serves(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and bool(LOCAL.match(path))


class View:
    """Loads, then follows etcd; ``app`` is its API once loaded (None before)."""

    def __init__(self, store: str, build: BuildView, clock: Clock | None = None) -> None:
        self.store = store
        self.build = build
        self.clock: Clock = clock or SystemClock()
        self.app: FastAPI | None = None
        self._trim_to = 0  # the newest event index etcd deleted (retention)

    async def run(self) -> None:
        """Until cancelled: load, serve, follow; after a broken watch, again."""
        while True:
            try:
                await self._once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away, the watch broken: load anew
                log.warning("follower view: %s; loading again", exc or type(exc).__name__)
            self.app = None
            await self.clock.sleep(RETRY_AFTER)

    async def _once(self) -> None:
        backend = await EtcdBackend.open(self.store)
        manager, app = self.build(backend)
        async with app.router.lifespan_context(app):
            self.app = app
            try:
                await self._follow(backend, manager)
            finally:
                self.app = None

    async def _follow(self, backend: EtcdBackend, manager: Manager) -> None:
        prefix = backend.prefix.encode()
        start = backend.loaded_at + 1
        watch = await backend.conn.watch(lambda c: c.watch_prefix(prefix, start_revision=start))
        try:
            async for event in watch:
                self.apply(backend, manager, event.kind, bytes(event.kv.key), event.kv.value)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()
        raise StoreUnavailable("the watch ended")

    def apply(
        self, backend: EtcdBackend, manager: Manager, kind: str, key: bytes, value: Any
    ) -> None:
        """One change etcd reported, into the view (what a view does not serve, it
        skips)."""
        what, _, name = key.decode()[len(backend.prefix) :].partition("/")
        if what == "tasks" and kind == "PUT":
            manager.state.adopt(Task.model_validate_json(value))
        elif what == "events":
            self._event(backend, manager, kind, name, value)
        elif what == "tokens":
            if kind == "PUT":
                record = TokenRecord.model_validate_json(value)
                manager.tokens.records[record.ID] = record
            else:
                manager.tokens.records.pop(name, None)

    def _event(
        self, backend: EtcdBackend, manager: Manager, kind: str, name: str, value: Any
    ) -> None:
        held = backend._events.events
        if kind != "PUT":  # retention: trimmed at the next event, in one cut
            self._trim_to = max(self._trim_to, int(name))
            return
        if self._trim_to and held and held[0].Index <= self._trim_to:
            del held[: bisect.bisect_right(held, self._trim_to, key=lambda e: e.Index)]
        event = Event.model_validate_json(value)
        if event.Index <= manager.events.last:
            return  # read by the load already
        held.append(event)
        manager.events.stored(Numbered.made(event))
