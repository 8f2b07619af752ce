"""Two ways to a worker's HTTP API behind one interface (:class:`Wire`), for
:class:`~cube.worker.client.WorkerClient`.

:class:`AiohttpWire` talks to a worker over aiohttp's connections directly: the
manager's path, as it sends thousands of requests a second in a burst and httpx's
layers on top (request and response models, cookies, auth and redirect handling) cost
as much CPU as aiohttp itself. :class:`HttpxWire` goes through an ``httpx.AsyncClient``,
so tests inject httpx transports (an ASGI app in-process, a mock).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import aiohttp
import httpx

from cube.worker.fencing import HEADER as TERM_HEADER

# Idle connections are kept this long (workers keep theirs longer: cube.config.serve).
KEEPALIVE = 60.0
_JSON = {"Content-Type": "application/json"}


def _auth(token: str, term: int | None = None) -> dict[str, str]:
    """What every request carries: the worker's credential (given at its join, or the
    shared ``--token``; none when the worker takes commands without one), and the
    leadership term of the manager that sends it (none from a single manager:
    cube.worker.fencing)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if term is not None:
        headers[TERM_HEADER] = str(term)
    return headers


# Whatever httpx raises. HTTPError covers transport failures, but not a URL it cannot
# parse (InvalidURL: a worker given as ``host:abc``), a cookie clash or a stream error,
# which would otherwise escape every caller's ``except WorkerUnreachable``.
_HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.CookieConflict, httpx.StreamError)
# And whatever aiohttp raises: its ClientError (a URL it cannot parse included),
# timeouts, and a socket's OSError.
_AIOHTTP_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


@cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client: building one loads the CA bundle (milliseconds)."""
    return httpx.create_ssl_context()


# --- the wire -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive, as both libraries' are
    body: bytes


class Stream(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


class Wire(Protocol):
    """What WorkerClient needs of an HTTP client: a request, a streamed GET, close."""

    errors: tuple[type[BaseException], ...]
    timeout: float  # seconds to wait for an answer (a long poll or a stream waits more)

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> Answer: ...

    def stream(
        self, url: str, params: Mapping[str, Any], read_timeout: float, pool: str = "streams"
    ) -> contextlib.AbstractAsyncContextManager[Stream]: ...

    @property
    def is_closed(self) -> bool: ...

    async def aclose(self) -> None: ...


class HttpxStream:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self._response.aread()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.aiter_raw()


class HttpxWire:
    """Through an httpx client (and whatever transport a test gave it)."""

    errors: tuple[type[BaseException], ...] = _HTTPX_ERRORS

    def __init__(self, client: httpx.AsyncClient, token: str = "", term: int | None = None) -> None:
        self.client = client
        self.timeout = client.timeout.read or 5.0
        self._auth = _auth(token, term)
        self._post = {**_JSON, **self._auth}

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> Answer:
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if read_timeout is not None:
            timeout = httpx.Timeout(read_timeout, connect=self.client.timeout.connect)
        headers = self._post if body is not None else self._auth
        response = await self.client.request(
            method, url, content=body, params=params, headers=headers, timeout=timeout
        )
        return Answer(response.status_code, response.headers, response.content)

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, params: Mapping[str, Any], read_timeout: float, pool: str = "streams"
    ) -> AsyncIterator[Stream]:
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        async with self.client.stream(
            "GET", url, params=params, timeout=timeout, headers=self._auth
        ) as response:
            yield HttpxStream(response)

    @property
    def is_closed(self) -> bool:
        return self.client.is_closed

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self._response.read()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()


class AiohttpWire:
    """Straight over aiohttp: one session per worker, made on first use (it needs the
    running loop). Streams (the watch) get a connection pool of their own, so that
    the connections left by earlier requests stay free for sends: a burst of sends
    then reuses warm connections instead of opening one per worker."""

    errors: tuple[type[BaseException], ...] = _AIOHTTP_ERRORS

    def __init__(
        self,
        timeout: float,
        max_connections: int,
        token: str = "",
        tls: ssl.SSLContext | None = None,
        term: int | None = None,
    ) -> None:
        self.timeout = timeout
        self._auth = _auth(token, term)  # the session's default headers: on every request
        self.max_connections = max_connections
        self.tls = tls
        self._default = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._closed = False

    def _session(self, kind: str) -> aiohttp.ClientSession:
        session = self._sessions.get(kind)
        if session is None:
            if self._closed:
                raise aiohttp.ClientConnectionError("the client is closed")
            connector = aiohttp.TCPConnector(
                limit=0 if kind == "logs" else self.max_connections,
                keepalive_timeout=KEEPALIVE,
                ssl=self.tls or _tls(),
            )
            session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=self._default,
                headers=self._auth,
            )
            self._sessions[kind] = session
        return session

    def _timeout(self, read: float | None) -> aiohttp.ClientTimeout:
        if read is None:
            return self._default
        t = self.timeout
        return aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=read)

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> Answer:
        async with self._session("requests").request(
            method,
            url,
            data=body,
            params=_query(params),
            headers=_JSON if body is not None else None,
            timeout=self._timeout(read_timeout),
            allow_redirects=False,
        ) as response:
            content = await response.read()
            return Answer(response.status, response.headers, content)

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, params: Mapping[str, Any], read_timeout: float, pool: str = "streams"
    ) -> AsyncIterator[Stream]:
        """``pool``: "logs" streams, one per reader for as long as it reads, get a pool
        of their own, not limited to ``max_connections``: they must not starve the
        watch, nor wait for one another."""
        async with self._session(pool).get(
            url,
            params=_query(params),
            timeout=self._timeout(read_timeout),
            allow_redirects=False,
        ) as response:
            yield AiohttpStream(response)

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def _query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    """aiohttp takes strings only (httpx spells booleans and numbers itself)."""
    if not params:
        return None
    return {key: _text(value) for key, value in params.items()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
