"""The dry-run routes: ``POST /plan`` and ``POST /jobs/{name}/plan`` (cube plan).

Each takes the body its submission route takes and answers what that submission would
do now (:mod:`cube.manager.plan`), storing nothing. Like Nomad's ``job plan``, a plan
needs the right to submit: a read token gets 403.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import TypeAdapter, ValidationError

from cube.errors import ApiError, describe, parse_body
from cube.job import Job
from cube.manager.manager import Manager
from cube.manager.plan import Plan, plan_job, plan_tasks
from cube.openapi import body, errors
from cube.task import TaskEvent

_EVENTS = TypeAdapter(list[TaskEvent])


def router(manager: Manager) -> APIRouter:
    api = APIRouter()

    @api.post(
        "/plan",
        response_model=Plan,
        openapi_extra=body(TaskEvent | list[TaskEvent], "What POST /tasks would take"),
        responses=errors(e400="Malformed request; Message says why"),
    )
    async def plan_task(request: Request) -> Plan:
        """Where these tasks would be placed now, and why; nothing is stored."""
        raw = await request.body()
        if raw.lstrip()[:1] == b"[":
            try:
                events = _EVENTS.validate_json(raw)
            except ValidationError as exc:
                raise ApiError(400, describe(exc)) from None
        else:
            events = [parse_body(TaskEvent, raw)]
        tasks = [event.Task for event in events]
        return plan_tasks(tasks, manager.nodes(), manager.scheduler)

    @api.post(
        "/jobs/{name}/plan",
        response_model=Plan,
        responses=errors(e400="Malformed request, or a Name other than the path's"),
    )
    async def plan_a_job(name: str, job: Job) -> Plan:
        """What POST /jobs with this job would do first: the version it would make, the
        tasks it would place (where, and why) and stop; nothing is stored."""
        if job.Name != name:
            raise ApiError(400, f"the job is named {job.Name!r}, not {name!r} as in the path")
        admitted, change, create, stop = manager.jobs.plan(job)
        return plan_job(admitted, change, create, stop, manager.nodes(), manager.scheduler)

    return api
