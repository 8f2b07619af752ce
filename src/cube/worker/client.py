"""The worker API as the manager calls it: typed, with timeouts, errors made plain.

Every call has a timeout, and every failure surfaces as :class:`WorkerUnreachable`
(the worker did not answer: try again later, maybe mark it down) or
:class:`WorkerRejected` (it answered no: retrying the same request will not help).

Two ways to the wire, one API: :meth:`WorkerClient.connect` talks to a worker over
aiohttp's connections directly (the manager's path: it sends thousands of requests a
second in a burst, and httpx's layers on top — request and response models, cookies,
auth and redirect handling — cost as much CPU as aiohttp itself); a client built with
an ``httpx.AsyncClient`` goes through it, so tests inject httpx transports (an ASGI app
in-process, a mock) as before.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import aiohttp
import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from cube.logs import HEARTBEAT as LOG_HEARTBEAT
from cube.task import Task, TaskEvent

_TASKS = TypeAdapter(list[Task])
_NDJSON = "application/x-ndjson"
# Idle connections are kept this long (workers keep theirs longer: cube.config.serve).
KEEPALIVE = 60.0
_JSON = {"Content-Type": "application/json"}


def _auth(token: str) -> dict[str, str]:
    """The worker's credential (given at its join, or the shared ``--token``) as a
    header; none when the worker takes commands without one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


# Whatever httpx raises. HTTPError covers transport failures, but not a URL it cannot
# parse (InvalidURL: a worker given as ``host:abc``), a cookie clash or a stream error,
# which would otherwise escape every caller's ``except WorkerUnreachable``.
_HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.CookieConflict, httpx.StreamError)
# And whatever aiohttp raises: its ClientError (a URL it cannot parse included),
# timeouts, and a socket's OSError.
_AIOHTTP_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class WorkerUnreachable(Exception):
    """No answer: connection refused, timeout, or a 5xx."""


class WorkerRejected(Exception):
    """The worker answered with a 4xx; ``status`` says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TaskChanges:
    """A worker's answer to "what changed": the tasks, and where to ask from next time.

    ``complete`` says the list holds every task of the worker (not just changes), so a
    task missing from it is not there. ``epoch`` and ``version`` are None when the
    worker does not track changes (then every answer is complete).
    """

    tasks: list[Task]
    complete: bool
    epoch: str | None
    version: int | None
    stats: dict[str, Any] | None = None
    docker: bool | None = None  # whether the worker's engine answers (None: not said)


class _Change(BaseModel):
    """One line of a worker's watch stream."""

    Epoch: str
    Version: int
    Complete: bool
    Tasks: list[Task]
    Stats: dict[str, Any] | None = None
    Docker: bool | None = None


@cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client: building one loads the CA bundle (milliseconds)."""
    return httpx.create_ssl_context()


# --- the wire -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive, as both libraries' are
    body: bytes


class _Stream(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


class _Wire(Protocol):
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
    ) -> _Answer: ...

    def stream(
        self, url: str, params: Mapping[str, Any], read_timeout: float, pool: str = "streams"
    ) -> contextlib.AbstractAsyncContextManager[_Stream]: ...

    @property
    def is_closed(self) -> bool: ...

    async def aclose(self) -> None: ...


class _HttpxStream:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self._response.aread()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.aiter_raw()


class _HttpxWire:
    """Through an httpx client (and whatever transport a test gave it)."""

    errors: tuple[type[BaseException], ...] = _HTTPX_ERRORS

    def __init__(self, client: httpx.AsyncClient, token: str = "") -> None:
        self.client = client
        self.timeout = client.timeout.read or 5.0
        self._auth = _auth(token)
        self._post = {**_JSON, **self._auth}

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> _Answer:
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if read_timeout is not None:
            timeout = httpx.Timeout(read_timeout, connect=self.client.timeout.connect)
        headers = self._post if body is not None else self._auth
        response = await self.client.request(
            method, url, content=body, params=params, headers=headers, timeout=timeout
        )
        return _Answer(response.status_code, response.headers, response.content)

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, params: Mapping[str, Any], read_timeout: float, pool: str = "streams"
    ) -> AsyncIterator[_Stream]:
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        async with self.client.stream(
            "GET", url, params=params, timeout=timeout, headers=self._auth
        ) as response:
            yield _HttpxStream(response)

    @property
    def is_closed(self) -> bool:
        return self.client.is_closed

    async def aclose(self) -> None:
        await self.client.aclose()


class _AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self._response.read()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()


class _AiohttpWire:
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
    ) -> None:
        self.timeout = timeout
        self._auth = _auth(token)
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
    ) -> _Answer:
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
            return _Answer(response.status, response.headers, content)

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, params: Mapping[str, Any], read_timeout: float, pool: str = "streams"
    ) -> AsyncIterator[_Stream]:
        """``pool``: "logs" streams, one per reader for as long as it reads, get a pool
        of their own, not limited to ``max_connections``: they must not starve the
        watch, nor wait for one another."""
        async with self._session(pool).get(
            url,
            params=_query(params),
            timeout=self._timeout(read_timeout),
            allow_redirects=False,
        ) as response:
            yield _AiohttpStream(response)

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


# --- the client -------------------------------------------------------------------------


class WorkerClient:
    def __init__(self, base_url: str, client: httpx.AsyncClient | _Wire, token: str = "") -> None:
        """``client``: an ``httpx.AsyncClient`` (tests give one with their transport);
        ``token``: the worker's credential, sent on every call."""
        self.base_url = base_url.rstrip("/")
        if isinstance(client, httpx.AsyncClient):
            client = _HttpxWire(client, token)
        self._wire: _Wire = client

    @classmethod
    def connect(
        cls,
        base_url: str,
        timeout: float,
        max_connections: int = 16,
        token: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> WorkerClient:
        """A client with connection pools of its own, closed by :meth:`aclose`; ``tls``
        for https:// (default: the system's CAs, no client certificate).

        One pool per worker, not one for the whole cluster: a pool shared by a thousand
        workers made every request scan a thousand connections (httpcore's did).
        aiohttp parses HTTP in C and needs no anyio cancel scope per read: a request
        cost the manager about half the CPU of httpx's own transport (530 us against
        1,020 us), and less again without httpx's layers over it.
        """
        return cls(base_url, _AiohttpWire(timeout, max_connections, token, tls))

    @property
    def is_closed(self) -> bool:
        return self._wire.is_closed

    async def aclose(self) -> None:
        await self._wire.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        content = None if body is None else json.dumps(body).encode()
        answer = await self._request(method, path, content)
        if answer.status == 204 or not answer.body:
            return None
        try:
            return json.loads(answer.body)
        except ValueError:
            raise WorkerUnreachable(f"{self.base_url}: answer is not JSON") from None

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> _Answer:
        try:
            answer = await self._wire.request(
                method, f"{self.base_url}{path}", body, params, read_timeout
            )
        except self._wire.errors as exc:
            raise WorkerUnreachable(f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        self._check(answer.status, answer.body)
        return answer

    def _check(self, status: int, body: bytes) -> None:
        if status >= 500:
            text = body.decode(errors="replace")
            raise WorkerUnreachable(f"{self.base_url}: HTTP {status}: {text}")
        if status >= 400:
            text = body.decode(errors="replace")
            try:
                message = json.loads(body).get("Message", text)
            except (ValueError, AttributeError):
                message = text
            raise WorkerRejected(status, message)

    def _tasks(self, body: bytes) -> list[Task]:
        try:
            return _TASKS.validate_json(body)
        except ValidationError:
            raise WorkerUnreachable(f"{self.base_url}: answer is not a list of tasks") from None

    async def submit(self, event: TaskEvent) -> Task:
        answer = await self._request("POST", "/tasks", event.model_dump_json().encode())
        try:
            return Task.model_validate_json(answer.body)
        except ValidationError:
            raise WorkerUnreachable(f"{self.base_url}: answer is not a task") from None

    async def submit_many(self, events: Sequence[TaskEvent]) -> None:
        """Several TaskEvents in one request (a JSON array).

        A 4xx names the first event refused; the ones before it were taken (sending
        them again is harmless: a worker ignores a repeated event).
        """
        body = b"[" + b",".join(e.model_dump_json().encode() for e in events) + b"]"
        # The answer (the tasks as stored) is not read: the watch stream reports them.
        await self._request("POST", "/tasks", body)

    async def watch(
        self,
        since: int | None = None,
        epoch: str | None = None,
        heartbeat: float = 10.0,
        stats: float = 0.0,
    ) -> AsyncGenerator[TaskChanges, None]:
        """Follow a worker's changes as they happen (``GET /tasks?watch=true``).

        Yields the changes since ``since`` of ``epoch`` (every task without them), then
        each change as the worker reports it, and an empty change at least every
        ``heartbeat`` seconds; with ``stats`` (seconds), the worker's stats come along
        that often. Raises :class:`WorkerUnreachable` when the stream breaks or stays
        silent past the heartbeat. A worker that cannot stream answers with its whole
        list once (``epoch`` None) and the iteration ends.
        """
        params: dict[str, Any] = {"watch": "true", "wait": heartbeat, "stats": stats}
        if since is not None and epoch is not None:
            params |= {"since": since, "epoch": epoch}
        read = min(heartbeat, stats or heartbeat) + self._wire.timeout
        try:
            async with self._wire.stream(f"{self.base_url}/tasks", params, read) as response:
                if response.status >= 400:
                    self._check(response.status, await response.read())
                if not response.headers.get("content-type", "").startswith(_NDJSON):
                    yield TaskChanges(self._tasks(await response.read()), True, None, None)
                    return
                pending = b""
                async for chunk in response.chunks():
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if line.strip():
                            yield self._change(line)
        except self._wire.errors as exc:
            raise WorkerUnreachable(f"{self.base_url}: {type(exc).__name__}: {exc}") from None

    def _change(self, line: bytes) -> TaskChanges:
        try:
            change = _Change.model_validate_json(line)
        except ValidationError:
            text = line[:200].decode(errors="replace")
            raise WorkerUnreachable(f"{self.base_url}: malformed change: {text}") from None
        return TaskChanges(
            change.Tasks, change.Complete, change.Epoch, change.Version, change.Stats, change.Docker
        )

    @contextlib.asynccontextmanager
    async def logs(
        self, task_id: uuid.UUID, params: Mapping[str, Any]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The task's log as the worker streams it (NDJSON, cube.logs), chunk by chunk.

        Entering raises :class:`WorkerRejected` (404, 409, 410: no such task, not
        started, logs gone) or :class:`WorkerUnreachable`; a stream that breaks or
        stays silent past the heartbeat raises WorkerUnreachable while iterating.
        """
        read = LOG_HEARTBEAT + self._wire.timeout
        url = f"{self.base_url}/tasks/{task_id}/logs"
        try:
            async with self._wire.stream(url, params, read, pool="logs") as response:
                if response.status >= 400:
                    self._check(response.status, await response.read())
                yield self._unbroken(response.chunks())
        except self._wire.errors as exc:
            raise WorkerUnreachable(f"{self.base_url}: {type(exc).__name__}: {exc}") from None

    async def _unbroken(self, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """The chunks, with the wire's failures while reading them as WorkerUnreachable."""
        try:
            async for chunk in chunks:
                yield chunk
        except self._wire.errors as exc:
            raise WorkerUnreachable(f"{self.base_url}: {type(exc).__name__}: {exc}") from None

    async def stop(self, task_id: uuid.UUID, up_to: int | None = None) -> None:
        """Stop a task; with ``up_to``, only an incarnation no newer than that."""
        query = "" if up_to is None else f"?restartCount={up_to}"
        await self._call("DELETE", f"/tasks/{task_id}{query}")

    async def tasks(self) -> list[Task]:
        return self._tasks((await self._request("GET", "/tasks")).body)

    async def changes(
        self, since: int | None = None, epoch: str | None = None, wait: float = 0.0
    ) -> TaskChanges:
        """The tasks changed since an earlier answer, waiting up to ``wait`` s for one.

        Without ``since``/``epoch`` (or when the worker restarted since) every task.
        """
        params: dict[str, Any] | None = None
        read: float | None = None
        if since is not None and epoch is not None:
            params = {"since": since, "epoch": epoch, "wait": wait}
            read = self._wire.timeout + wait
        answer = await self._request("GET", "/tasks", params=params, read_timeout=read)
        tasks = self._tasks(answer.body)
        epoch_seen = answer.headers.get("X-Cube-Epoch")
        version = answer.headers.get("X-Cube-Version", "")
        if epoch_seen is None or not version.isdigit():
            return TaskChanges(tasks, True, None, None)
        complete = answer.headers.get("X-Cube-Complete", "1") != "0"
        return TaskChanges(tasks, complete, epoch_seen, int(version))

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", "/stats")
        return data

    async def health(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", "/health")
        return data
