"""The worker API (book chapter 5): tasks in, tasks and machine stats out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from cube.errors import (
    ApiError,
    error_response,
    install_error_handlers,
    parse_body,
    parse_uuid,
)
from cube.runtime.base import RuntimeUnavailable
from cube.stats import StatsSampler
from cube.task import InvalidTransition, TaskEvent
from cube.worker.worker import BadEvent, Capacity, UnknownTask, Worker


def create_app(worker: Worker, sampler: StatsSampler, capacity: Capacity | None = None) -> FastAPI:
    capacity = capacity or Capacity()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        sampling = asyncio.create_task(sampler.run())
        try:
            yield
        finally:
            sampling.cancel()
            await worker.close()

    app = FastAPI(title=f"Cube worker {worker.name}", lifespan=lifespan)
    install_error_handlers(app)

    @app.exception_handler(UnknownTask)
    async def _unknown(_: Request, exc: UnknownTask) -> JSONResponse:
        return error_response(404, f"task {exc.args[0]} not found on worker {worker.name}")

    @app.exception_handler(RuntimeUnavailable)
    async def _docker_down(_: Request, exc: RuntimeUnavailable) -> JSONResponse:
        return error_response(503, f"docker engine unavailable: {exc}")

    @app.get("/tasks")
    async def list_tasks() -> list[dict[str, Any]]:
        return [task.to_wire() for task in worker.tasks()]

    @app.post("/tasks", status_code=201)
    async def post_task(request: Request) -> dict[str, Any]:
        event = parse_body(TaskEvent, await request.body())
        try:
            return worker.submit(event).to_wire()
        except InvalidTransition as exc:
            raise ApiError(409, str(exc)) from None
        except BadEvent as exc:
            raise ApiError(400, str(exc)) from None

    @app.get("/tasks/{task_id}")
    async def get_task(task_id: str) -> dict[str, Any]:
        return worker.get(parse_uuid(task_id)).to_wire()

    @app.delete("/tasks/{task_id}", status_code=204)
    async def delete_task(task_id: str) -> Response:
        worker.stop(parse_uuid(task_id))
        return Response(status_code=204)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return sampler.current().model_dump(mode="json", by_alias=True)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and capacity: what the manager may place here, and can we reach Docker."""
        stats = sampler.current()
        return {
            "Name": worker.name,
            "Docker": worker.docker_ok,
            "Cores": capacity.cores or stats.cores,
            "Memory": capacity.memory // 1024 if capacity.memory else stats.mem_total_kb,
            "Disk": capacity.disk or stats.disk_total,
        }

    return app
