"""The worker API (book chapter 5): tasks in, tasks and machine stats out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, WithJsonSchema

from cube.errors import (
    ApiError,
    TaskId,
    describe,
    error_response,
    install_error_handlers,
    parse_body,
    parse_uuid,
)
from cube.logs import WORKER_OPENAPI, LogResponse, log_options, ndjson
from cube.metrics import metrics_router
from cube.openapi import body, content, errors, install, ok
from cube.runtime.base import LogOptions, RuntimeUnavailable
from cube.stats import Stats, StatsSampler
from cube.task import InvalidTransition, Task, TaskEvent
from cube.worker.credentials import Credentials, Unauthorized
from cube.worker.fencing import HEADER, MAX_TERM, BadTerm, Fence, StaleTerm, parse_term
from cube.worker.join import Joiner, wait_and_run
from cube.worker.worker import BadEvent, Capacity, LogsGone, NotStarted, UnknownTask, Worker

log = logging.getLogger(__name__)

# The longest a GET /tasks?since=... may wait for a change.
MAX_WAIT = 60.0
_EVENTS = TypeAdapter(list[TaskEvent])
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="WorkerToken",
    description="The worker's credential: the secret it gave its manager at join, "
    "or the --token it shares with it",
)


_404 = errors(e404="No such task on this worker")
# Read by hand (parse_term: a clear Message for a bad one), described as what it is.
_TERM_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_TERM}
Term = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="The calling manager's leadership term (cube.worker.fencing); "
        "an older term than the newest seen is refused with 409. A single manager "
        "sends none.",
    ),
    WithJsonSchema(_TERM_SCHEMA),
]
_DEPOSED = "sent by a deposed manager: an older X-Cube-Term than the newest this worker has seen"


def _stale(also: str = "") -> dict[int | str, dict[str, Any]]:
    """The 409 every fenced route may answer; ``also``: what else a 409 means there."""
    answer = errors(e409=f"{also}; or {_DEPOSED}" if also else _DEPOSED.capitalize())
    answer[409]["headers"] = {
        HEADER: {
            "description": "The term that now leads (on a deposed manager's 409)",
            "schema": _TERM_SCHEMA,
        },
    }
    return answer


class WorkerHealth(BaseModel):
    """``GET /health``: the worker answers, what it offers, and whether Docker does."""

    Name: str
    Docker: bool
    Cores: float = Field(description="Cores offered (--cores, or the machine's)")
    Memory: int = Field(description="Memory offered, in kB")
    Disk: int = Field(description="Disk offered, in bytes")


_Stats = Stats  # inside WatchLine, the name is its field


class WatchLine(BaseModel):
    """One line of ``GET /tasks?watch=true`` (application/x-ndjson)."""

    Epoch: str
    Version: int
    Complete: bool = Field(description="The line lists every task, not only changes")
    Tasks: list[Task]
    Docker: bool
    Stats: _Stats | None = Field(default=None, description="With ?stats=SECONDS, that often")


# Not on a watch: a stream says where it is on each line.
_CURSOR = {
    "X-Cube-Epoch": ("This worker's run: ?epoch= next time", {"type": "string"}),
    "X-Cube-Version": ("Where this answer leaves off: ?since= next time", {"type": "integer"}),
    "X-Cube-Complete": ("1: every task is listed, not only changes", {"enum": ["0", "1"]}),
}
_LIST: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The tasks (JSON); with watch=true, one WatchLine per line (NDJSON)",
        "headers": {
            name: {"description": description, "schema": schema}
            for name, (description, schema) in _CURSOR.items()
        },
        "content": content("application/x-ndjson", WatchLine),
    }
}


def _seconds(value: float, default: float) -> float:
    return min(value, MAX_WAIT) if math.isfinite(value) and value > 0 else default


def tasks_json(tasks: Iterable[Task]) -> bytes:
    """A JSON array of tasks, serialised by pydantic's core in one pass (a third
    faster than one pass per task, joined)."""
    return _TASKS.dump_json(list(tasks))


_TASKS = TypeAdapter(list[Task])


def create_app(
    worker: Worker,
    sampler: StatsSampler,
    capacity: Capacity | None = None,
    joiner: Joiner | None = None,
    credentials: Credentials | None = None,
    fence: Fence | None = None,
) -> FastAPI:
    """``joiner``: the worker joined a manager (``--join``) and heartbeats to it;
    ``credentials``: who may call every route but ``/health`` (none: anyone);
    ``fence``: the newest leadership term seen (kept on disk or not: cube.worker.fencing)."""
    capacity = capacity or Capacity()
    credentials = credentials or Credentials()
    fence = fence or Fence()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        # Called from the signal handler when a stop is asked for: end the watches.
        app.state.on_exit = [lambda: loop.call_soon_threadsafe(end_watches)]
        await worker.start()
        loops = [asyncio.create_task(sampler.run())]
        if joiner is not None:
            loops.append(asyncio.create_task(wait_and_run(joiner)))
        try:
            yield
        finally:
            for running in loops:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            await worker.close()

    app = FastAPI(title=f"Cube worker {worker.name}", lifespan=lifespan)
    stopping = asyncio.Event()

    def end_watches() -> None:
        stopping.set()
        worker.notify()

    install_error_handlers(app)
    install(app, guards={"WorkerToken": lambda _: {401: "No credential, or the wrong one"}})
    worker.metrics.http.install(app)

    async def guard(
        presented: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    ) -> None:
        try:
            credentials.check(presented.credentials if presented is not None else None)
        except Unauthorized as exc:
            raise ApiError(401, str(exc)) from None

    async def fenced(request: Request, term: Term = None) -> None:
        """Refuse a deposed manager's request; record a newer term. After the guard, so
        only a caller with the credential can raise the term (and so fence out the
        real leader). Not on /health nor /metrics: they are open to anyone for that
        reason, and command nothing."""
        if term is None:
            return
        try:
            value = parse_term(term)
        except BadTerm as exc:
            raise ApiError(400, str(exc)) from None
        request.state.term = value
        if request.method == "POST":
            # Read before the check, so the route acts on the body with no wait in
            # between: a newer term that arrives meanwhile cannot let this one through.
            await request.body()
        if fence.admit(value):
            worker.notify()  # older terms' watches see they are deposed, and end

    @app.exception_handler(StaleTerm)
    async def _deposed(request: Request, exc: StaleTerm) -> JSONResponse:
        worker.metrics.stale_commands.inc()
        log.warning(
            "refused %s %s: stale term %d, older than term %d, which now leads "
            "(a deposed manager's command)",
            request.method,
            request.url.path,
            exc.term,
            exc.newest,
        )
        answer = error_response(409, str(exc))
        answer.headers[HEADER] = str(exc.newest)
        return answer

    # Every route but /health: the manager's commands and what it reads to place work.
    # Guarded even when open, so the served document is the same for every worker.
    # Reads are fenced as well as commands: a new leader's first watch tells every
    # worker its term at once, and a deposed manager learns so from its next read.
    api = APIRouter(dependencies=[Depends(guard), Depends(fenced)], responses=_stale())

    @app.exception_handler(UnknownTask)
    async def _unknown(_: Request, exc: UnknownTask) -> JSONResponse:
        return error_response(404, f"task {exc.args[0]} not found on worker {worker.name}")

    @app.exception_handler(RuntimeUnavailable)
    async def _docker_down(_: Request, exc: RuntimeUnavailable) -> JSONResponse:
        return error_response(503, f"docker engine unavailable: {exc}")

    @api.get("/tasks", response_model=list[Task], responses=_LIST)
    async def list_tasks(
        request: Request,
        since: int | None = None,
        epoch: str | None = None,
        wait: float = 0.0,
        watch: bool = False,
        stats: float = 0.0,
    ) -> Response:
        """Every task; or, with ``since`` and ``epoch`` from a previous answer, the changes.

        Each answer's ``X-Cube-Epoch`` and ``X-Cube-Version`` headers say where it left
        off; asking again with them as ``epoch`` and ``since`` returns only the tasks
        changed since, and ``wait`` (seconds) holds the request until there is one (a
        long poll), so a manager learns of a change at once without polling.
        ``X-Cube-Complete: 1`` marks an answer listing every task (always the case
        without ``since``, or when the worker restarted since ``epoch``).

        ``watch=true`` streams instead (as Kubernetes' watch does): one JSON line per
        change, ``{"Epoch", "Version", "Complete", "Tasks", "Docker"}``, starting with
        the tasks changed since ``since`` (all of them without it) and with an empty
        line of news at least every ``wait`` seconds (default 10) to show the worker is
        alive. ``Docker`` says whether this worker's engine answers, and a line goes
        out as soon as that changes. With ``stats`` (seconds), a line carries this
        worker's ``Stats`` (as GET /stats) that often. A manager tracking a thousand
        workers then pays for no request per change, nor for polling their stats.
        """
        if watch:
            beat = _seconds(wait, 10.0)
            term = getattr(request.state, "term", None)
            stream = _watch(since, epoch, beat, _seconds(stats, 0.0), term)
            return StreamingResponse(stream, media_type="application/x-ndjson")
        if since is not None:
            limit = min(wait, MAX_WAIT) if math.isfinite(wait) else 0.0
            await worker.wait_for_change(since, epoch, limit)
        complete, tasks = worker.changes(since, epoch)
        headers = {
            "X-Cube-Epoch": worker.epoch,
            "X-Cube-Version": str(worker.version),
            "X-Cube-Complete": "1" if complete else "0",
        }
        return Response(tasks_json(tasks), media_type="application/json", headers=headers)

    async def _watch(
        since: int | None, epoch: str | None, beat: float, every: float, term: int | None
    ) -> AsyncIterator[bytes]:
        """The stream ends when the worker stops, or when a newer term than the
        watcher's leads (the watcher asks again, and learns it is deposed)."""
        stats_due = 0.0
        while not stopping.is_set() and fence.leads(term):
            complete, tasks = worker.changes(since, epoch)
            since, epoch = worker.version, worker.epoch
            extra = b""
            now = asyncio.get_running_loop().time()  # the loop's clock: virtual when simulated
            if every and now >= stats_due:
                stats_due = now + every
                extra = b',"Stats":' + sampler.current().model_dump_json(by_alias=True).encode()
            yield b"".join(
                (
                    b'{"Epoch":"',
                    epoch.encode(),
                    b'","Version":',
                    str(since).encode(),
                    b',"Complete":',
                    b"true" if complete else b"false",
                    b',"Tasks":',
                    tasks_json(tasks),
                    b',"Docker":',
                    b"true" if worker.docker_ok else b"false",
                    extra,
                    b"}\n",
                )
            )
            left = stats_due - asyncio.get_running_loop().time()
            wait_for = min(beat, left) if every else beat
            await worker.wait_for_change(since, epoch, max(wait_for, 0.0))

    @api.post(
        "/tasks",
        status_code=201,
        response_model=None,
        openapi_extra=body(TaskEvent | list[TaskEvent], "One TaskEvent, or an array of them"),
        responses={
            **ok(Task | list[Task], 201, "The task, or the tasks in the order given"),
            **errors(e404="A TaskEvent with State 3 (stop) names no task here"),
            **_stale("A finished run asked to run again (a new incarnation may)"),
        },
    )
    async def post_task(request: Request) -> dict[str, Any] | Response:
        """One TaskEvent (the book's body), or a JSON array of them (a manager's batch)."""
        body = await request.body()
        if body.lstrip()[:1] == b"[":
            try:
                events = _EVENTS.validate_json(body)
            except ValidationError as exc:
                raise ApiError(400, describe(exc)) from None
            tasks = [_submit(event) for event in events]
            return Response(tasks_json(tasks), status_code=201, media_type="application/json")
        return _submit(parse_body(TaskEvent, body)).to_wire()

    def _submit(event: TaskEvent) -> Task:
        try:
            return worker.submit(event)
        except InvalidTransition as exc:
            raise ApiError(409, str(exc)) from None
        except BadEvent as exc:
            raise ApiError(400, str(exc)) from None

    @api.get("/tasks/{task_id}", response_model=None, responses={**ok(Task), **_404})
    async def get_task(task_id: TaskId) -> dict[str, Any]:
        return worker.get(parse_uuid(task_id)).to_wire()

    @api.get(
        "/tasks/{task_id}/logs",
        response_class=LogResponse,
        status_code=200,
        responses={**WORKER_OPENAPI, **_stale(WORKER_OPENAPI[409]["description"])},
    )
    async def task_logs(
        task_id: TaskId, options: Annotated[LogOptions, Depends(log_options)]
    ) -> LogResponse:
        """What the task's container wrote, as NDJSON (see cube.logs): ``follow`` until
        it stops, the last ``tail`` lines, lines ``since`` a time (RFC 3339, Unix
        seconds, or a duration ago such as 10m), ``stdout``/``stderr`` only."""
        try:
            stream = await worker.logs(parse_uuid(task_id), options)
        except NotStarted as exc:
            raise ApiError(409, str(exc)) from None
        except LogsGone as exc:
            raise ApiError(410, str(exc)) from None
        return LogResponse(ndjson(stream, options.follow, stopping), stream.aclose)

    @api.delete("/tasks/{task_id}", status_code=204, responses=_404)
    async def delete_task(
        task_id: TaskId,
        up_to: Annotated[
            int | None,
            Query(
                alias="restartCount",
                ge=0,
                description="Stop only if the task's incarnation is this one or older.",
            ),
        ] = None,
    ) -> Response:
        """Stop a task. ``?restartCount=N``: only if its incarnation is N or older."""
        worker.stop(parse_uuid(task_id), up_to)
        return Response(status_code=204)

    @api.get("/stats", response_model=None, responses=ok(Stats))
    async def stats() -> dict[str, Any]:
        return sampler.current().model_dump(mode="json", by_alias=True)

    @app.get("/health")
    async def health() -> WorkerHealth:
        """Liveness and capacity: what the manager may place here, and can we reach Docker."""
        stats = sampler.current()
        return WorkerHealth(
            Name=worker.name,
            Docker=worker.docker_ok,
            Cores=capacity.cores or stats.cores,
            Memory=capacity.memory // 1024 if capacity.memory else stats.mem_total_kb,
            Disk=capacity.disk or stats.disk_total,
        )

    app.include_router(api)
    # Not behind the manager's credential, as /health is not: a scraper cannot hold the
    # secret a worker shares with its manager alone. Who reaches it is the listener's
    # business: loopback only by default, or mutual TLS (a certificate from the
    # cluster's CA). It serves counts only (docs/api.md).
    app.include_router(metrics_router(worker.metrics.registry))
    return app
