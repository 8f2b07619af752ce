"""The jobs API: ``/jobs`` routes on the manager (see docs/api.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from cube.errors import ApiError
from cube.job import MAX_COUNT, Deployment, Job, JobRecord
from cube.manager.events_api import INDEXED
from cube.manager.jobs import JobError, Jobs, UnknownJob
from cube.openapi import errors


class ScaleRequest(BaseModel):
    """The body of ``POST /jobs/{name}/scale``."""

    model_config = ConfigDict(extra="forbid")
    Count: int = Field(ge=0, le=MAX_COUNT)


class RevertRequest(BaseModel):
    """The body of ``POST /jobs/{name}/revert``."""

    model_config = ConfigDict(extra="forbid")
    Version: int = Field(ge=1)


_Deployment = Deployment  # inside JobAnswer, the name is its field


class JobAnswer(Job):
    """A job as the API answers it: the job, and how its latest deployment goes."""

    Deployment: _Deployment | None = None


_400 = errors(e400="Malformed request; Message says why")
_404 = errors(e404="No such job")


def view(record: JobRecord) -> dict[str, Any]:
    """A job as the API shows it: its fields, and its deployment."""
    deployment = record.Deployment.model_dump() if record.Deployment else None
    return {**record.Job.model_dump(mode="json"), "Deployment": deployment}


def router(jobs: Jobs, stamp: Callable[[Response], Awaitable[int]]) -> APIRouter:
    """``stamp``: the list's X-Cube-Index (cube.manager.events_api.index_stamp)."""
    api = APIRouter()

    def get(name: str) -> JobRecord:
        try:
            return jobs.get(name)
        except UnknownJob:
            raise ApiError(404, f"job {name} not found") from None

    @api.post("/jobs", status_code=201, response_model=JobAnswer, responses=_400)
    async def post_job(job: Job) -> dict[str, Any]:
        """Create a job, or update it: a change of Task or Update is a new version and
        starts a deployment; the same job posted again changes nothing."""
        return view(await jobs.submit(job))

    @api.get(
        "/jobs", response_model=list[JobAnswer], responses=INDEXED, dependencies=[Depends(stamp)]
    )
    async def list_jobs() -> list[dict[str, Any]]:
        return [view(record) for record in jobs.all()]

    @api.get("/jobs/{name}", response_model=JobAnswer, responses=_404)
    async def get_job(name: str) -> dict[str, Any]:
        return view(get(name))

    @api.get("/jobs/{name}/versions", response_model=list[Job], responses=_404)
    async def versions(name: str) -> list[dict[str, Any]]:
        """Every version kept, newest first."""
        return [v.model_dump(mode="json") for v in get(name).Versions]

    @api.post("/jobs/{name}/scale", response_model=JobAnswer, responses={**_400, **_404})
    async def scale(name: str, body: ScaleRequest) -> dict[str, Any]:
        get(name)
        return view(await jobs.scale(name, body.Count))

    @api.post("/jobs/{name}/revert", response_model=JobAnswer, responses={**_400, **_404})
    async def revert(name: str, body: RevertRequest) -> dict[str, Any]:
        """A new version equal to an old one (as Nomad's revert)."""
        get(name)
        try:
            return view(await jobs.revert(name, body.Version))
        except JobError as exc:
            raise ApiError(400, str(exc)) from None

    @api.delete("/jobs/{name}", response_model=JobAnswer, responses=_404)
    async def stop(name: str) -> dict[str, Any]:
        """Stop every task of the job; the job stays, stopped, until posted again."""
        get(name)
        return view(await jobs.stop(name))

    return api
