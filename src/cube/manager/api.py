"""The manager API (book chapter 8): tasks in, tasks and nodes out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from cube import ui
from cube.errors import (
    ApiError,
    TaskId,
    describe,
    error_response,
    install_error_handlers,
    parse_body,
    parse_uuid,
)
from cube.logs import MANAGER_OPENAPI, LogResponse, log_options, log_query
from cube.manager.backend import StoreUnavailable
from cube.manager.events_api import INDEX_HEADER, INDEXED, index_stamp
from cube.manager.events_api import router as events_router
from cube.manager.jobs_api import router as jobs_router
from cube.manager.logs import open_logs
from cube.manager.manager import BadRequest, Manager, UnknownTask
from cube.manager.nodes_api import router as nodes_router
from cube.manager.plan_api import router as plan_router
from cube.manager.tokens_api import answers as token_answers
from cube.manager.tokens_api import router as tokens_router
from cube.manager.tokens_api import token_guard
from cube.metrics import metrics_router
from cube.node import Node
from cube.openapi import body, errors, install, merged, ok
from cube.runtime.base import LogOptions
from cube.task import Task, TaskEvent
from cube.worker.api import tasks_json

_EVENTS = TypeAdapter(list[TaskEvent])
UNAVAILABLE = (
    "The store did not answer (etcd without quorum, or unreachable), or no manager "
    "leads: nothing was acknowledged; try again (resubmitting a task is safe)"
)
_404 = errors(e404="No such task")


class ManagerHealth(BaseModel):
    """``GET /health``: the manager answers, and what it holds."""

    Role: Literal["manager"] = "manager"
    Workers: int
    WorkersReady: int
    Tasks: int
    Tokens: bool = Field(
        description="Whether the API wants a token (the web UI asks for one at once)."
    )
    Leading: bool = Field(
        True,
        description="Whether this manager leads (several on one etcd: only the leader "
        "acts on workers; the others forward every request to it).",
    )
    Leader: str | None = Field(
        None, description="The leading manager's address (managers on etcd only)."
    )
    Term: int | None = Field(
        None,
        description="The leadership's term: it grows with every new leader, and workers "
        "refuse commands of an older one (managers on etcd only).",
    )


@dataclass(frozen=True)
class Leadership:
    """What the API says about leading, for a manager elected on etcd."""

    address: str
    term: int


def create_app(
    manager: Manager, leadership: Leadership | None = None, *, passive: bool = False
) -> FastAPI:
    """The manager's API. ``passive``: a follower's view of the state (cube.manager.
    follower), which serves reads and starts none of the manager's loops."""
    stopping = asyncio.Event()  # the server is stopping: event streams end

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def end_streams() -> None:
            stopping.set()
            manager.events.wake()

        # Called from the signal handler (cube.config.serve) when a stop is asked for.
        app.state.on_exit = [lambda: loop.call_soon_threadsafe(end_streams)]
        if not passive:
            await manager.start()
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(title="Cube manager", lifespan=lifespan)
    install_error_handlers(app)
    install(app, guards={"Token": token_answers}, unavailable=UNAVAILABLE)
    manager.metrics.http.install(app)

    @app.exception_handler(UnknownTask)
    async def _unknown(_: Request, exc: UnknownTask) -> JSONResponse:
        return error_response(404, f"task {exc.args[0]} not found")

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return error_response(503, f"{exc}: nothing is acknowledged; try again shortly")

    api = APIRouter()  # the task routes, below

    @api.get("/tasks", response_model=list[Task], responses=INDEXED)
    async def list_tasks(job: str | None = None) -> Response:
        """Every task; ``?job=NAME``: the tasks of that job."""
        index = manager.events.last  # before the list: see index_stamp
        tasks = manager.list_tasks() if job is None else manager.jobs.tasks_of(job)
        headers = {INDEX_HEADER: str(index)}
        return Response(tasks_json(tasks), media_type="application/json", headers=headers)

    @api.post(
        "/tasks",
        status_code=201,
        response_model=None,
        openapi_extra=body(TaskEvent | list[TaskEvent], "One TaskEvent, or an array of them"),
        responses={
            **ok(Task | list[Task], 201, "The task, or the tasks in the order given"),
            **errors(e404="A TaskEvent with State 3 (stop) names no known task"),
        },
    )
    async def post_task(request: Request) -> dict[str, Any] | Response:
        """One TaskEvent (the book's body), or a JSON array of them, accepted together.

        An array is all or nothing: every event is checked before any is stored, so a
        400 means none was taken. Nomad's job ``count`` and Kubernetes' replicas play
        the same part: a thousand tasks need not cost a thousand requests.
        """
        body = await request.body()
        if body.lstrip()[:1] != b"[":
            return (await _submit(parse_body(TaskEvent, body))).to_wire()
        try:
            events = _EVENTS.validate_json(body)
        except ValidationError as exc:
            raise ApiError(400, describe(exc)) from None
        try:
            tasks = await manager.submit_many(events)
        except BadRequest as exc:
            raise ApiError(400, str(exc)) from None
        return Response(tasks_json(tasks), status_code=201, media_type="application/json")

    async def _submit(event: TaskEvent) -> Task:
        try:
            return await manager.submit(event)
        except BadRequest as exc:
            raise ApiError(400, str(exc)) from None

    @api.get("/tasks/{task_id}", response_model=None, responses={**ok(Task), **_404})
    async def get_task(task_id: TaskId) -> dict[str, Any]:
        return manager.get(parse_uuid(task_id)).to_wire()

    @api.get(
        "/tasks/{task_id}/events", response_model=None, responses={**ok(list[TaskEvent]), **_404}
    )
    async def task_events(task_id: TaskId) -> list[dict[str, Any]]:
        """The task's history: every event users and the manager submitted for it."""
        return [e.model_dump(mode="json") for e in await manager.history(parse_uuid(task_id))]

    @api.get(
        "/tasks/{task_id}/logs",
        response_class=LogResponse,
        status_code=200,
        responses=MANAGER_OPENAPI,
    )
    async def task_logs(
        task_id: TaskId, options: Annotated[LogOptions, Depends(log_options)]
    ) -> LogResponse:
        """The task's output, streamed from its worker as it answers it (NDJSON, see
        cube.logs); the same query as the worker's ``GET /tasks/{id}/logs``, checked
        here first so a 400 comes from the manager, not from a worker."""
        task = manager.get(parse_uuid(task_id))
        body, close = await open_logs(manager, task, log_query(options), stopping)
        return LogResponse(body, close)

    @api.delete("/tasks/{task_id}", status_code=204, responses=_404)
    async def delete_task(task_id: TaskId) -> Response:
        await manager.stop(parse_uuid(task_id))
        return Response(status_code=204)

    @app.get("/health", response_model_exclude_none=True)
    async def health() -> ManagerHealth:
        """Liveness, for a supervisor or load balancer: the manager answers, and what it
        holds. A 200 needs no ready worker: a cluster whose workers are all down still
        takes and keeps submissions, which wait Pending."""
        nodes = manager.nodes()
        return ManagerHealth(
            Workers=len(nodes),
            WorkersReady=sum(node.is_ready for node in nodes),
            Tasks=len(manager.state.tasks),
            Tokens=manager.tokens.enabled,
            Leader=leadership.address if leadership else None,
            Term=leadership.term if leadership else None,
        )

    @api.get(
        "/nodes",
        response_model=None,
        responses=merged(ok(list[Node]), INDEXED),
        dependencies=[Depends(index_stamp(manager.events))],
    )
    async def nodes() -> list[dict[str, Any]]:
        return [node.to_wire() for node in manager.nodes()]

    # Every route but /health needs a token once the manager has one; joining workers
    # present the join token instead.
    guard = [Depends(token_guard(manager.tokens))]
    joining, nodes_api = nodes_router(manager.members)
    app.include_router(api, dependencies=guard)
    app.include_router(jobs_router(manager.jobs, index_stamp(manager.events)), dependencies=guard)
    app.include_router(plan_router(manager), dependencies=guard)
    app.include_router(events_router(manager.events, stopping), dependencies=guard)
    app.include_router(nodes_api, dependencies=guard)
    # Guarded like the rest: Prometheus presents a token (a read token will do).
    app.include_router(metrics_router(manager.metrics.registry), dependencies=guard)
    app.include_router(joining)  # workers: the join token instead
    app.include_router(tokens_router(manager.tokens))  # guarded each its own way
    ui.install(app)  # static pages, open: they hold no secret (cube.ui)

    return app
