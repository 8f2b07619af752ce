"""``GET /events``: the cluster's event stream, as newline-delimited JSON.

One event per line (cube.events.Event), oldest first, from just after ``index``;
with ``follow`` (the default) the answer stays open and new events arrive as they
are stored, with an empty ``{}`` line every ``heartbeat`` seconds when there are none,
so a client (or a proxy) can tell a quiet cluster from a dead connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from cube.errors import ApiError
from cube.events import TOPICS, Event
from cube.manager.events import EventLog
from cube.openapi import ErrorBody, Responses, content

NDJSON = "application/x-ndjson"
BATCH = 500  # events per read of the log

_RESPONSES: Responses = {
    200: {
        "description": "One Event per line (and `{}` heartbeats while following)",
        "content": content(NDJSON, Event),
    },
    400: {"model": ErrorBody, "description": "Malformed query; Message says why"},
}


INDEX_HEADER = "X-Cube-Index"
# On the list routes' 200 (Nomad's X-Nomad-Index): follow GET /events from it and miss
# nothing that the list does not already show.
INDEXED: Responses = {
    200: {
        "headers": {
            INDEX_HEADER: {
                "description": "The event log's last Index when this list was read: "
                "GET /events?index= it sends every change since",
                "schema": {"type": "integer"},
            }
        }
    }
}


def index_stamp(events: EventLog) -> Callable[[Response], Awaitable[int]]:
    """A dependency for a list route: reads the event log's last index before the route
    reads its list (so no later change can hide between the two), puts it in the
    ``X-Cube-Index`` header, and returns it for a route that answers by hand."""

    async def stamp(response: Response) -> int:
        index = events.last
        response.headers[INDEX_HEADER] = str(index)
        return index

    return stamp


def router(events: EventLog, stopping: asyncio.Event) -> APIRouter:
    """``stopping``: set when the server is asked to stop, so open streams end."""
    api = APIRouter()

    @api.get("/events", response_class=StreamingResponse, responses=_RESPONSES)
    async def stream(
        index: Annotated[int, Query(ge=0, description="Send the events after this one.")] = 0,
        topic: Annotated[
            list[str] | None,
            Query(description="Task, Job, Node or Deployment (repeat for several; default all)."),
        ] = None,
        follow: Annotated[
            bool, Query(description="Stay open for new events (false: what is there, then end).")
        ] = True,
        heartbeat: Annotated[
            float, Query(ge=0.1, le=300, description="Seconds between `{}` lines when idle.")
        ] = 10.0,
    ) -> StreamingResponse:
        topics = set(topic or ())
        unknown = sorted(topics - set(TOPICS))
        if unknown:
            raise ApiError(400, f"unknown topic {unknown[0]!r}: use {', '.join(TOPICS)}")
        return StreamingResponse(
            _lines(events, index, topics, follow, heartbeat, stopping), media_type=NDJSON
        )

    return api


async def _lines(
    events: EventLog,
    index: int,
    topics: set[str],
    follow: bool,
    heartbeat: float,
    stopping: asyncio.Event,
) -> AsyncIterator[bytes]:
    at = index
    while not stopping.is_set():
        last = events.last  # read before: what follows was stored after
        batch = events.after(at, topics, BATCH)
        if batch:
            yield b"".join(e.model_dump_json().encode() + b"\n" for e in batch)
            at = batch[-1].Index
            continue
        # Nothing of these topics up to the log's end: wait past it, not before it.
        at = max(at, last)
        if not follow:
            return
        if not await events.wait(at, heartbeat) and not stopping.is_set():
            yield b"{}\n"
