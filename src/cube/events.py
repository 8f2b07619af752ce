"""The cluster's events: everything the manager changes or sees, in one numbered log.

Each event has an ``Index`` that only grows (stored, so it goes on growing across a
manager restart), a ``Topic`` (Task, Job, Node, Deployment), a ``Type`` saying what
happened, the ``Key`` of what it happened to (a task ID, a job or node name) and a
``Payload``: that object as the API shows it just after. A client that remembers the
last Index it saw resumes there with nothing missed twice or skipped (Nomad's event
stream, ``/v1/event/stream``, with indexes that outlive the leader).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Topic = Literal["Task", "Job", "Node", "Deployment"]
TOPICS: tuple[Topic, ...] = ("Task", "Job", "Node", "Deployment")


class Draft(BaseModel):
    """An event before the log numbers it."""

    model_config = ConfigDict(frozen=True)

    Topic: Topic
    Type: str
    Key: str
    Payload: dict[str, Any] = Field(default_factory=dict)


class Event(BaseModel):
    Index: int = Field(ge=1, description="Grows by one per event; resume after it.")
    Time: datetime = Field(description="When the manager recorded it (UTC).")
    Topic: Topic
    Type: str = Field(description="What happened, e.g. TaskPlaced, NodeDown, JobRegistered.")
    Key: str = Field(description="What it happened to: a task ID, a job or node name.")
    Payload: dict[str, Any] = Field(
        default_factory=dict, description="That object as the API shows it just after."
    )

    @classmethod
    def of(cls, index: int, time: datetime, draft: Draft) -> Event:
        # Made by the manager from values it already checked: no validation to pay.
        return cls.model_construct(
            Index=index,
            Time=time,
            Topic=draft.Topic,
            Type=draft.Type,
            Key=draft.Key,
            Payload=draft.Payload,
        )
