"""The manager API (book chapter 8): tasks in, tasks and nodes out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from cube.errors import ApiError, error_response, install_error_handlers, parse_body, parse_uuid
from cube.manager.manager import BadRequest, Manager, UnknownTask
from cube.task import TaskEvent


def create_app(manager: Manager) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(title="Cube manager", lifespan=lifespan)
    install_error_handlers(app)

    @app.exception_handler(UnknownTask)
    async def _unknown(_: Request, exc: UnknownTask) -> JSONResponse:
        return error_response(404, f"task {exc.args[0]} not found")

    @app.get("/tasks")
    async def list_tasks() -> list[dict[str, Any]]:
        return [task.to_wire() for task in manager.list_tasks()]

    @app.post("/tasks", status_code=201)
    async def post_task(request: Request) -> dict[str, Any]:
        event = parse_body(TaskEvent, await request.body())
        try:
            return manager.submit(event).to_wire()
        except BadRequest as exc:
            raise ApiError(400, str(exc)) from None

    @app.get("/tasks/{task_id}")
    async def get_task(task_id: str) -> dict[str, Any]:
        return manager.get(parse_uuid(task_id)).to_wire()

    @app.get("/tasks/{task_id}/events")
    async def task_events(task_id: str) -> list[dict[str, Any]]:
        """The task's history: every event users and the manager submitted for it."""
        return [e.model_dump(mode="json") for e in manager.history(parse_uuid(task_id))]

    @app.delete("/tasks/{task_id}", status_code=204)
    async def delete_task(task_id: str) -> Response:
        manager.stop(parse_uuid(task_id))
        return Response(status_code=204)

    @app.get("/nodes")
    async def nodes() -> list[dict[str, Any]]:
        return [node.to_wire() for node in manager.nodes()]

    return app
