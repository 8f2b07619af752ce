"""Task logs on the wire: one format for the worker's API and the manager's.

``GET /tasks/{id}/logs`` answers newline-delimited JSON (``application/x-ndjson``), a
line per line the container wrote::

    {"Stream":"stdout","Time":"2025-01-02T03:04:05.123456Z","Line":"hello"}

JSON rather than bare text, so that a client can tell stdout from stderr, merge the
lines of several tasks in time order and prefix them, and so that a line holding any
bytes at all stays one line. A follow sends an empty line every :data:`HEARTBEAT`
seconds while the container is quiet, so every reader along the way (the manager, the
CLI) can tell a quiet task from a dead connection and a server notices a reader that
went away. A line ``{"Error": "..."}`` ends a stream that broke half way (the manager
lost the worker): the status code was sent long before.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from cube.errors import ApiError
from cube.openapi import ErrorBody, content
from cube.runtime.base import LogLine, LogOptions, LogStream, parse_docker_time

__all__ = [
    "HEARTBEAT",
    "MANAGER_OPENAPI",
    "NDJSON",
    "WORKER_OPENAPI",
    "LogResponse",
    "error_line",
    "log_options",
    "ndjson",
    "paced",
    "parse_since",
]

T = TypeVar("T")
NDJSON = "application/x-ndjson"
# Seconds a quiet follow waits before it sends an empty line.
HEARTBEAT = 5.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class LogLineBody(BaseModel):
    """One line of a log stream, as the served OpenAPI document shows it (a stream that
    breaks half way ends with a line holding only ``Error``)."""

    Stream: Literal["stdout", "stderr"] | None = None
    Time: datetime | None = None
    Line: str | None = None
    Error: str | None = None


def _openapi(errors: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    answers: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "One JSON object per line the task wrote (newline-delimited "
            "JSON); empty lines are heartbeats of a follow",
            "content": content(NDJSON, LogLineBody),
        }
    }
    answers.update({code: {"model": ErrorBody, "description": why} for code, why in errors.items()})
    return answers


# What the served OpenAPI documents say each route answers.
WORKER_OPENAPI = _openapi(
    {
        404: "No such task on this worker",
        409: "The task has not started a container yet",
        410: "The task's container, and its logs, are gone (or it never started one)",
        503: "Docker does not answer",
    }
)
MANAGER_OPENAPI = _openapi(
    {
        404: "No such task (or its worker does not know it)",
        409: "The task is not placed, or not started, yet",
        410: "The task's container, and its logs, are gone (or it never started one)",
        502: "The worker refused the request",
        503: "The task's worker is down or does not answer",
    }
)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A time as people and scripts give it: RFC 3339, Unix seconds, or a duration ago
    (``10m``, ``1h30m``, ``45s``, ``2d``); ValueError says what was expected."""
    value = text.strip()
    when = parse_docker_time(value)
    if when is not None:
        return when
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds >= 0:
            return datetime.fromtimestamp(seconds, UTC)
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        ago = sum(float(n) * _UNITS[u] for n, u in parts)
        return (now or datetime.now(UTC)) - timedelta(seconds=ago)
    raise ValueError(
        f"since: expected a time (RFC 3339), Unix seconds or a duration such as 10m, got {text!r}"
    )


def log_options(
    follow: bool = False,
    tail: str | None = None,
    since: str | None = None,
    stdout: bool = True,
    stderr: bool = True,
) -> LogOptions:
    """The query of ``GET /tasks/{id}/logs`` checked; a 400 says what is wrong.

    Both servers' log routes take it as a FastAPI dependency, so the query is spelt
    once: ``options: Annotated[LogOptions, Depends(log_options)]``."""
    lines: int | None = None
    if tail is not None and tail.strip().lower() != "all":
        if not tail.strip().isdigit():
            raise ApiError(400, f"tail: expected a number of lines or 'all', got {tail!r}")
        lines = int(tail)
    if not stdout and not stderr:
        raise ApiError(400, "stdout and stderr are both false: there would be nothing to show")
    try:
        start = None if since is None else parse_since(since)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return LogOptions(follow=follow, tail=lines, since=start, stdout=stdout, stderr=stderr)


def log_query(options: LogOptions) -> dict[str, Any]:
    """The query to ask a worker for the same lines (``since`` as the absolute time it
    was resolved to, so a duration means the same on both machines)."""
    query: dict[str, Any] = {
        "follow": options.follow,
        "stdout": options.stdout,
        "stderr": options.stderr,
    }
    if options.tail is not None:
        query["tail"] = options.tail
    if options.since is not None:
        query["since"] = options.since.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return query


def encode(line: LogLine) -> bytes:
    body: dict[str, Any] = {"Stream": line.stream}
    if line.time is not None:
        body["Time"] = line.time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    body["Line"] = line.text
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_line(message: str) -> bytes:
    return json.dumps({"Error": message}, separators=(",", ":")).encode() + b"\n"


async def paced(
    items: AsyncIterator[T], beat: float | None = None, stop: asyncio.Event | None = None
) -> AsyncGenerator[T | None, None]:
    """``items`` as they come, None after each ``beat`` seconds without one (a heartbeat
    is due), and the end as soon as ``stop`` is set (the server is stopping: a follow
    must not hold its graceful shutdown)."""
    pending: asyncio.Future[T] | None = None
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            waiting: set[asyncio.Future[Any]] = {pending}
            if stopped is not None:
                waiting.add(stopped)
            done, _ = await asyncio.wait(waiting, timeout=beat, return_when=asyncio.FIRST_COMPLETED)
            if pending in done:
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield item
            elif stopped is not None and stopped in done:
                return
            else:
                yield None
    finally:
        for waiter in (pending, stopped):
            if waiter is not None and not waiter.done():
                waiter.cancel()
                await asyncio.wait({waiter})


async def ndjson(
    stream: LogStream, follow: bool, stop: asyncio.Event | None = None
) -> AsyncGenerator[bytes, None]:
    """The stream's lines as NDJSON, with heartbeats while a follow is quiet; closes it."""
    try:
        if not follow:
            async for line in stream:
                yield encode(line)
            return
        async for item in paced(stream, HEARTBEAT, stop):
            yield b"\n" if item is None else encode(item)
    finally:
        await stream.aclose()


class LogResponse(StreamingResponse):
    """A streamed answer that closes what feeds it however it ends: all sent, the
    reader gone (Starlette cancels the sending task, which may then never have begun
    to iterate the body), or the server stopping. Whatever ``close`` holds (a log
    stream's thread, a connection to a worker) is released at once."""

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(body, media_type=NDJSON)
        self._body = body
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()
            if self._close is not None:
                await self._close()
