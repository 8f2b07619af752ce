"""Dry runs: where tasks would go, and why, changing nothing (``cube plan``).

A plan runs the manager's own code on copies: the job reconciler on the job as it would
be admitted, and a copy of the manager's scheduler (its turn and its window included)
over copies of its nodes, each decision holding its room on the copy so the next one
sees it, as a real pass does: the plan shows the placements the manager would make
next.
Nothing is stored and no reservation is made, so a plan is only as good as the moment
it was made: by the time the job is submitted, workers may have filled or emptied, as
with Nomad's ``job plan``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from cube.explain import Decision
from cube.job import Job as JobSpec
from cube.node import Node
from cube.scheduler import Scheduler, reserve
from cube.task import Task

ChangeKind = Literal["", "create", "update", "scale", "none"]


class PlannedTask(BaseModel):
    Name: str = ""
    Node: str = Field(default="", description="Where it would run; empty if it would wait.")
    Reason: str = Field(default="", description="Why it would wait, when it would.")
    Placement: Decision


class Plan(BaseModel):
    """What a submission would do now (the answer of the plan routes)."""

    Job: str = Field(default="", description="The job planned; empty for tasks.")
    Version: int = Field(default=0, ge=0, description="The version the job would have.")
    Change: ChangeKind = Field(
        default="",
        description="For a job: create (new job), update (a new version), scale (Count "
        "only) or none (the same job again).",
    )
    Place: list[PlannedTask] = Field(
        default_factory=list, description="The tasks it would place now, in order."
    )
    Stop: int = Field(default=0, ge=0, description="How many tasks it would stop now.")
    Waiting: int = Field(default=0, ge=0, description="How many of Place fit nowhere now.")


def place_all(
    tasks: Iterable[Task], nodes: Iterable[Node], scheduler: Scheduler
) -> list[PlannedTask]:
    """Decide each task in turn on copies of the nodes, with a copy of the scheduler
    (the manager's keeps its own turn and window untouched)."""
    copies = [_copy(node) for node in nodes]
    chooser = copy.deepcopy(scheduler)
    planned = []
    for task in tasks:
        choice = chooser.place(task, copies)
        if choice.node is not None:
            reserve(choice.node, task)
        planned.append(
            PlannedTask(
                Name=task.Name,
                Node=choice.node.Name if choice.node is not None else "",
                Reason=choice.reason,
                Placement=choice.decision or Decision(),
            )
        )
    return planned


def plan_tasks(tasks: Sequence[Task], nodes: Iterable[Node], scheduler: Scheduler) -> Plan:
    planned = place_all(tasks, nodes, scheduler)
    return Plan(Place=planned, Waiting=sum(not p.Node for p in planned))


def plan_job(
    job: JobSpec,
    change: ChangeKind,
    to_create: int,
    to_stop: int,
    nodes: Iterable[Node],
    scheduler: Scheduler,
) -> Plan:
    """``job`` as it would be admitted; the counts are the job reconciler's first step."""
    name = f"{job.Name}-v{job.Version}"
    tasks = [job.make_task(Job=job.Name, JobVersion=job.Version, Name=name)] * to_create
    planned = place_all(tasks, nodes, scheduler)
    return Plan(
        Job=job.Name,
        Version=job.Version,
        Change=change,
        Place=planned,
        Stop=to_stop,
        Waiting=sum(not p.Node for p in planned),
    )


def _copy(node: Node) -> Node:
    """A node to hold room on: its mutable bookkeeping is its own."""
    twin = copy.copy(node)
    twin.PortsAllocated = set(node.PortsAllocated)
    twin.JobTasks = dict(node.JobTasks)
    return twin
