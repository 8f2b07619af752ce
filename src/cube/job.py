"""Jobs: what users deploy — a task template, how many copies, how to roll out changes.

A job is PascalCase JSON (or YAML) like the book's task. ``Type`` is ``service`` (keep
``Count`` tasks running) or ``batch`` (run until ``Count`` tasks have Completed).
``Version`` is output: 1 for the first submission, one more for each submission that
changes ``Task``, ``Update``, ``Constraints`` or ``DistinctHosts`` (a new ``Count`` alone
is no new version, as in Nomad, where scaling does not start a deployment).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cube.constraints import Constraint
from cube.task import MAX_SIZE, RestartPolicyName, Size, Task

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_COUNT = 10_000


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TaskTemplate(_Wire):
    """Every task field a user may set; each task of the job is made from it."""

    Image: str = Field(json_schema_extra={"pattern": r"\S"})  # not blank (Task checks)
    Cmd: list[str] | None = None
    Env: list[str] | None = None
    Cpu: float = Field(default=0.0, ge=0, le=1_000_000, allow_inf_nan=False)
    Memory: Size = 0
    Disk: Size = 0
    ExposedPorts: dict[str, dict[str, Any]] | None = None
    PortBindings: dict[str, str] | None = None
    HealthCheck: str = ""
    RestartPolicy: RestartPolicyName = ""
    Constraints: list[Constraint] | None = None
    DistinctHosts: bool = False

    @model_validator(mode="after")
    def _as_a_task(self) -> TaskTemplate:
        # The task's own rules (Env pairs, port keys, health path...), in one place.
        Task(**self.model_dump())
        return self

    def task(self, **fields: Any) -> Task:
        return Task(**{**self.model_dump(), **fields})


class UpdatePolicy(_Wire):
    """How a new version replaces the old one (Nomad's ``update`` block)."""

    MaxParallel: int = Field(default=1, ge=1, le=MAX_COUNT)
    MinHealthyTime: float = Field(default=10.0, ge=0, le=86_400, allow_inf_nan=False)
    HealthyDeadline: float = Field(default=300.0, gt=0, le=86_400, allow_inf_nan=False)
    AutoRevert: bool = False
    Order: Literal["start-first", "stop-first"] = "start-first"

    @model_validator(mode="after")
    def _deadline_after_min(self) -> UpdatePolicy:
        if self.HealthyDeadline <= self.MinHealthyTime:
            raise ValueError("Update.HealthyDeadline must be longer than Update.MinHealthyTime")
        return self


_Task = Task  # inside Job, "Task" names the template field


class Job(_Wire):
    # The pattern documents the validator below (which words the refusal better).
    Name: str = Field(json_schema_extra={"pattern": NAME.pattern})
    Type: Literal["service", "batch"] = "service"
    Count: int = Field(default=1, ge=0, le=MAX_COUNT)
    Task: TaskTemplate
    Update: UpdatePolicy = Field(default_factory=UpdatePolicy)
    Version: int = Field(default=0, ge=0, le=MAX_SIZE)  # output: set by the manager
    Stopped: bool = False  # output: DELETE /jobs/{name} stops every task
    # Where every task of the job may run, as Nomad's job-level constraint block: added
    # to the template's own, and DistinctHosts (one task of the job per node) if either
    # asks for it.
    Constraints: list[Constraint] | None = None
    DistinctHosts: bool = False

    @field_validator("Name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                "Name must be 1 to 63 of a-z, 0-9 and '-', starting and ending with a "
                f"letter or digit, got {value!r}"
            )
        return value

    def spec(self) -> dict[str, Any]:
        """What makes a version: the task template, the update policy, the placement."""
        return {
            "Task": self.Task.model_dump(),
            "Update": self.Update.model_dump(),
            "Constraints": [c.model_dump() for c in self.Constraints or ()],
            "DistinctHosts": self.DistinctHosts,
        }

    def make_task(self, **fields: Any) -> _Task:
        """A task of this job: the template's fields, the job's constraints added."""
        constraints = [*(self.Constraints or ()), *(self.Task.Constraints or ())]
        return self.Task.task(
            Constraints=constraints or None,
            DistinctHosts=self.DistinctHosts or self.Task.DistinctHosts,
            **fields,
        )


def admit(submitted: Job, current: Job | None) -> Job:
    """The job as stored after a submission: versioned against what is there.

    Re-posting the current job changes nothing; a new Count alone keeps the version;
    any change to Task or Update is the next version (a stopped job submitted again
    runs again).
    """
    if current is None:
        return submitted.model_copy(update={"Version": 1, "Stopped": False})
    same = submitted.spec() == current.spec()
    version = current.Version if same else current.Version + 1
    return submitted.model_copy(update={"Version": version, "Stopped": False})


DeploymentStatus = Literal["running", "successful", "failed"]


class Deployment(_Wire):
    """How the rollout of a job's version goes (``GET /jobs/{name}``)."""

    Version: int
    Status: DeploymentStatus = "running"
    Desired: int = 0
    Placed: int = 0
    Healthy: int = 0
    Unhealthy: int = 0
    Reason: str = ""


# Inside JobRecord, these names are its fields.
_Job = Job
_Deployment = Deployment


class JobRecord(_Wire):
    """What the manager stores per job: the job, every version, its deployment."""

    Job: _Job
    Versions: list[_Job] = Field(default_factory=list)  # newest first
    Deployment: _Deployment | None = None
    LastGood: int | None = None  # the last version whose deployment succeeded
