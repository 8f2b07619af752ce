"""The jobs API: ``/jobs`` routes on the manager (see docs/api.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from cube.errors import ApiError, parse_body
from cube.job import MAX_COUNT, Job, JobRecord
from cube.manager.jobs import JobError, Jobs, UnknownJob


class _Scale(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Count: int = Field(ge=0, le=MAX_COUNT)


class _Revert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Version: int = Field(ge=1)


def view(record: JobRecord) -> dict[str, Any]:
    """A job as the API shows it: its fields, and its deployment."""
    deployment = record.Deployment.model_dump() if record.Deployment else None
    return {**record.Job.model_dump(mode="json"), "Deployment": deployment}


def router(jobs: Jobs) -> APIRouter:
    api = APIRouter()

    def get(name: str) -> JobRecord:
        try:
            return jobs.get(name)
        except UnknownJob:
            raise ApiError(404, f"job {name} not found") from None

    @api.post("/jobs", status_code=201)
    async def post_job(request: Request) -> dict[str, Any]:
        """Create a job, or update it: a change of Task or Update is a new version and
        starts a deployment; the same job posted again changes nothing."""
        job = parse_body(Job, await request.body())
        return view(await jobs.submit(job))

    @api.get("/jobs")
    async def list_jobs() -> list[dict[str, Any]]:
        return [view(record) for record in jobs.all()]

    @api.get("/jobs/{name}")
    async def get_job(name: str) -> dict[str, Any]:
        return view(get(name))

    @api.get("/jobs/{name}/versions")
    async def versions(name: str) -> list[dict[str, Any]]:
        """Every version kept, newest first."""
        return [v.model_dump(mode="json") for v in get(name).Versions]

    @api.post("/jobs/{name}/scale")
    async def scale(name: str, request: Request) -> dict[str, Any]:
        get(name)
        body = parse_body(_Scale, await request.body())
        return view(await jobs.scale(name, body.Count))

    @api.post("/jobs/{name}/revert")
    async def revert(name: str, request: Request) -> dict[str, Any]:
        """A new version equal to an old one (as Nomad's revert)."""
        get(name)
        body = parse_body(_Revert, await request.body())
        try:
            return view(await jobs.revert(name, body.Version))
        except JobError as exc:
            raise ApiError(400, str(exc)) from None

    @api.delete("/jobs/{name}")
    async def stop(name: str) -> dict[str, Any]:
        """Stop every task of the job; the job stays, stopped, until posted again."""
        get(name)
        return view(await jobs.stop(name))

    return api
