"""One manager of several on one etcd: it leads, or it forwards to the one that does.

``cube manager --store etcd://…`` serves this ASGI app in front of the manager's own.
It campaigns (:mod:`cube.manager.leader`); while it leads, it builds a
:class:`~cube.manager.manager.Manager` on a fresh load of etcd — so a new leader resumes
everything the last one stored: placements, restarts due, deployments, health checks —
runs it, and hands every request to its API. When its term ends (the lease lost, or a
write refused by the term's fence) it stops that manager and follows again.

A follower accepts every request too and forwards it to the leader as it came (the
token, the body, a stream's chunks as they arrive), marked ``X-Cube-Forwarded-By`` so
that two managers that disagree about who leads never bounce a request between them:
a forwarded request that finds no leader here gets a 503, which clients (and the CLI,
with a list of managers) try again. The reads etcd holds whole (tasks, their histories,
the event log) a follower serves itself, from a view a watch keeps current
(cube.manager.follower).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI

from cube.clock import Clock, SystemClock
from cube.manager.backend import Backend, Fence, StoreUnavailable
from cube.manager.etcd_backend import EtcdBackend, _Connection, parse_url
from cube.manager.follower import BuildView, View, serves
from cube.manager.leader import DEFAULT_TTL, Elector, EtcdLeases, Leadership

log = logging.getLogger(__name__)

# The leader's API, built on its backend for its term; the callable steps it down.
Build = Callable[[Backend, int, Callable[[], None]], FastAPI]
# A leader's backend, loaded anew from the shared store, its writes fenced by its term.
Open = Callable[[Fence], Awaitable[Backend]]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FORWARDED = "x-cube-forwarded-by"
# Not passed on: they describe one hop, not the request (RFC 9110, 7.6.1).
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class Replica:
    """The ASGI app of a manager that shares an etcd with others."""

    def __init__(
        self,
        elector: Elector,
        open_backend: Open,
        build: Build,
        *,
        clock: Clock | None = None,
        tls: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        view: View | None = None,
    ) -> None:
        """``view``: while following, serve the reads etcd holds from it
        (cube.manager.follower); without one, forward everything."""
        self.elector = elector
        self.view = view
        self.me = elector.me
        self.open_backend = open_backend
        self.build = build
        self.clock: Clock = clock or SystemClock()
        self._transport = transport  # to the leader (tests and the simulator: in-process)
        self.leading: FastAPI | None = None
        self.term = 0  # this manager's term while it leads
        # cube.config.serve calls these when a stop is asked for (from a signal handler).
        self.state = SimpleNamespace(on_exit=[self._on_exit])
        self._tls = tls
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._run: asyncio.Task[None] | None = None
        self._deposed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        app = self.leading
        if app is not None:
            await app(scope, receive, send)
        elif scope["type"] == "http":
            local = self.view.app if self.view is not None else None
            if local is not None and serves(scope["method"], scope["path"]):
                await local(scope, receive, send)
            else:
                await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(
            verify=self._tls or True,
            timeout=httpx.Timeout(self._timeout, read=None),
            transport=self._transport,
        )
        self._run = asyncio.ensure_future(self.run())
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self._run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._run
        await self._client.aclose()
        await self.elector.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    def _on_exit(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        for app in (self.leading, self.view.app if self.view is not None else None):
            for callback in getattr(app.state, "on_exit", ()) if app is not None else ():
                callback()

    # --- leading ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign; lead until the term ends; campaign again."""
        while True:
            following = asyncio.ensure_future(self.view.run()) if self.view else None
            try:
                lead = await self.elector.campaign()
            except Exception:  # a defect: said, and not the end of this manager
                log.exception("campaigning failed")
                await self.clock.sleep(1.0)
                continue
            finally:
                if following is not None:  # a leader reads its own state
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await following
            try:
                await self._lead(lead)
            except StoreUnavailable as exc:
                log.warning("term %d ends: %s", lead.term, exc)
            except Exception:
                log.exception("term %d ends: leading failed", lead.term)
                await self.clock.sleep(1.0)  # not at once into the same failure
            finally:
                await self.elector.resign(lead)

    async def _lead(self, lead: Leadership) -> None:
        self._deposed.clear()
        fence = Fence(self.elector.key, lead.term, self._deposed.set)
        backend = await self.open_backend(fence)
        app = self.build(backend, lead.term, self._deposed.set)
        keeper = asyncio.ensure_future(self.elector.keep(lead))
        deposed = asyncio.ensure_future(self._deposed.wait())
        try:
            async with app.router.lifespan_context(app):
                self.leading, self.term = app, lead.term
                await asyncio.wait({keeper, deposed}, return_when=asyncio.FIRST_COMPLETED)
                if deposed.done():
                    log.warning("term %d: another manager leads; stepping down", lead.term)
                self.leading = None
        finally:
            self.leading = None
            keeper.cancel()
            deposed.cancel()

    # --- following -------------------------------------------------------------------------

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.decode("latin-1").lower() not in _HOP
        ]
        leader = self.elector.leader
        if leader is None or leader == self.me or any(k.lower() == FORWARDED for k, _ in headers):
            await _answer(send, 503, {"Message": _NO_LEADER})
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = leader.rstrip("/") + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        assert self._client is not None
        request = self._client.build_request(
            scope["method"], target, headers=[*headers, (FORWARDED, self.me)], content=bytes(body)
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            why = str(exc) or type(exc).__name__
            text = f"the leading manager at {leader} does not answer ({why}): try again shortly"
            await _answer(send, 503, {"Message": text})
            return
        try:
            if scope["path"] == "/health" and response.status_code == 200:
                await self._follower_health(response, send)
            else:
                await self._relay(response, receive, send)
        finally:
            await response.aclose()

    async def _relay(self, response: httpx.Response, receive: Receive, send: Send) -> None:
        """The leader's answer, chunk by chunk as it comes (a stream of events or logs
        too), until it ends, the client goes, or this manager stops."""
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in response.headers.multi_items()
                    if k.lower() not in _HOP
                ],
            }
        )

        async def pump() -> None:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        waits = [asyncio.ensure_future(w) for w in (pump(), gone(), self._stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        with contextlib.suppress(Exception):  # the client may be gone
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follower_health(self, response: httpx.Response, send: Send) -> None:
        """The leader's health, as this follower sees it: the same, but not leading."""
        body = json.loads(await response.aread())
        body["Leading"] = False
        await _answer(send, 200, body)


def on_etcd(
    store: str,
    me: str,
    build: Build,
    *,
    ttl: int = DEFAULT_TTL,
    tls: ssl.SSLContext | None = None,
    view: BuildView | None = None,
) -> Replica:
    """A replica electing and storing on the etcd at ``store`` (etcd://…); ``view``
    builds its follower's view (None: a follower forwards every request)."""
    where = parse_url(store)
    elector = Elector(EtcdLeases(_Connection(where.endpoints)), where.prefix, me, ttl)

    async def open_backend(fence: Fence) -> Backend:
        return await EtcdBackend.open(store, fence)

    follower = View(store, view) if view is not None else None
    return Replica(elector, open_backend, build, tls=tls, view=follower)


_NO_LEADER = (
    "no manager leads right now (an election is under way, or etcd is unreachable): "
    "try again shortly"
)


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
