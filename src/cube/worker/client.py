"""The worker API as the manager calls it: typed, with timeouts, errors made plain.

Every call has a timeout, and every failure surfaces as :class:`WorkerUnreachable`
(the worker did not answer: try again later, maybe mark it down) or
:class:`WorkerRejected` (it answered no: retrying the same request will not help);
:class:`Deposed`, a WorkerRejected of its own, when the worker takes commands from a
newer leadership than the one this client speaks for (cube.worker.fencing).

Two ways to the wire, one API (:mod:`cube.worker.wire`): :meth:`WorkerClient.connect`
talks to a worker over aiohttp directly (the manager's path); a client built with an
``httpx.AsyncClient`` goes through it, so tests inject httpx transports.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from cube.logs import HEARTBEAT as LOG_HEARTBEAT
from cube.task import Task, TaskEvent
from cube.worker.fencing import HEADER as TERM_HEADER
from cube.worker.fencing import BadTerm, parse_term
from cube.worker.wire import AiohttpWire, Answer, HttpxWire, Wire

_TASKS = TypeAdapter(list[Task])
_NDJSON = "application/x-ndjson"


class WorkerUnreachable(Exception):
    """No answer: connection refused, timeout, or a 5xx."""


class WorkerRejected(Exception):
    """The worker answered with a 4xx; ``status`` says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Deposed(WorkerRejected):
    """The worker refused a request of ``term``: ``newest``, a newer term, now leads.

    A 409 of its own kind (the worker's answer carries ``X-Cube-Term``), not one about
    the task: the manager that gets it no longer leads, and should act on nothing.
    A WorkerRejected all the same, so that a caller that does not look for it drops
    the request rather than retries it.
    """

    def __init__(self, term: int | None, newest: int, message: str) -> None:
        super().__init__(409, message)
        self.term = term
        self.newest = newest


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


# The manager's record of why it chose the node (Task.Placement) stays with the manager:
# a worker has no use for it, yet it was a quarter of each task's bytes, which the
# worker parsed, stored and sent back in every report of the task.
_NOT_FOR_WORKERS = {"Task": {"Placement"}}


def _body(event: TaskEvent) -> bytes:
    return event.model_dump_json(exclude=_NOT_FOR_WORKERS).encode()


_EVENTS = TypeAdapter(list[TaskEvent])  # an array in one pass: a sixth faster than joined


# --- the client -------------------------------------------------------------------------


class WorkerClient:
    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient | Wire,
        token: str = "",
        term: int | None = None,
    ) -> None:
        """``client``: an ``httpx.AsyncClient`` (tests give one with their transport);
        ``token``: the worker's credential, ``term``: the leadership this client speaks
        for (None: a single manager), both sent on every call (a Wire given as it is
        sends what it was made with)."""
        self.base_url = base_url.rstrip("/")
        self.term = term
        if isinstance(client, httpx.AsyncClient):
            client = HttpxWire(client, token, term)
        self._wire: Wire = client

    @classmethod
    def connect(
        cls,
        base_url: str,
        timeout: float,
        max_connections: int = 16,
        token: str = "",
        tls: ssl.SSLContext | None = None,
        term: int | None = None,
    ) -> WorkerClient:
        """A client with connection pools of its own, closed by :meth:`aclose`; ``tls``
        for https:// (default: the system's CAs, no client certificate).

        One pool per worker, not one for the whole cluster: a pool shared by a thousand
        workers made every request scan a thousand connections (httpcore's did).
        aiohttp parses HTTP in C and needs no anyio cancel scope per read: a request
        cost the manager about half the CPU of httpx's own transport (530 us against
        1,020 us), and less again without httpx's layers over it.
        """
        return cls(base_url, AiohttpWire(timeout, max_connections, token, tls, term), term=term)

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
    ) -> Answer:
        try:
            answer = await self._wire.request(
                method, f"{self.base_url}{path}", body, params, read_timeout
            )
        except self._wire.errors as exc:
            raise WorkerUnreachable(f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        self._check(answer.status, answer.body, answer.headers)
        return answer

    def _check(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        if status >= 500:
            text = body.decode(errors="replace")
            raise WorkerUnreachable(f"{self.base_url}: HTTP {status}: {text}")
        if status >= 400:
            text = body.decode(errors="replace")
            try:
                message = json.loads(body).get("Message", text)
            except (ValueError, AttributeError):
                message = text
            newest = headers.get(TERM_HEADER) if status == 409 else None
            if newest is not None:
                with contextlib.suppress(BadTerm):
                    raise Deposed(self.term, parse_term(newest), f"{self.base_url}: {message}")
            raise WorkerRejected(status, message)

    def _tasks(self, body: bytes) -> list[Task]:
        try:
            return _TASKS.validate_json(body)
        except ValidationError:
            raise WorkerUnreachable(f"{self.base_url}: answer is not a list of tasks") from None

    async def submit(self, event: TaskEvent) -> Task:
        answer = await self._request("POST", "/tasks", _body(event))
        try:
            return Task.model_validate_json(answer.body)
        except ValidationError:
            raise WorkerUnreachable(f"{self.base_url}: answer is not a task") from None

    async def submit_many(self, events: Sequence[TaskEvent]) -> None:
        """Several TaskEvents in one request (a JSON array).

        A 4xx names the first event refused; the ones before it were taken (sending
        them again is harmless: a worker ignores a repeated event).
        """
        body = _EVENTS.dump_json(list(events), exclude={"__all__": _NOT_FOR_WORKERS})
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
                    self._check(response.status, await response.read(), response.headers)
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
                    self._check(response.status, await response.read(), response.headers)
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
