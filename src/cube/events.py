"""The cluster's events: everything the manager changes or sees, in one numbered log.

Each event has an ``Index`` that only grows (stored, so it goes on growing across a
manager restart), a ``Topic`` (Task, Job, Node, Deployment), a ``Type`` saying what
happened, the ``Key`` of what it happened to (a task ID, a job or node name) and a
``Payload``: that object as the API shows it just after. A client that remembers the
last Index it saw resumes there with nothing missed twice or skipped (Nomad's event
stream, ``/v1/event/stream``, with indexes that outlive the leader).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from cube.fieldsets import construct

Topic = Literal["Task", "Job", "Node", "Deployment"]
TOPICS: tuple[Topic, ...] = ("Task", "Job", "Node", "Deployment")
_Topic = Topic  # inside the models, "Topic" names the field
_M = TypeVar("_M", bound=BaseModel)


class Wired(Protocol):
    """An immutable object that knows its API form (a task version)."""

    def to_wire(self) -> dict[str, Any]: ...


class Draft(BaseModel):
    """An event before the log numbers it."""

    model_config = ConfigDict(frozen=True)

    Topic: Topic
    Type: str
    Key: str
    Payload: dict[str, Any] = Field(default_factory=dict)
    # Or, for an immutable object, that object: its Payload is made when first read.
    _source: Wired | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, topic: _Topic, kind: str, key: str, source: Wired) -> Draft:
        """A draft whose Payload is ``source.to_wire()``, made only if someone reads it.

        Every change of a task is an event, and most are never read (no reader is
        following, and the log keeps the last 50,000): dumping each version when it is
        committed cost the scale benchmark's manager 30,000 dumps and kept their dicts
        alive (and walked by every collection). A task version never changes, so its
        Payload is the same whenever it is made.
        """
        return _made(cls, {"Topic": topic, "Type": kind, "Key": key, "Payload": {}}, source)


class Event(BaseModel):
    Index: int = Field(ge=1, description="Grows by one per event; resume after it.")
    Time: datetime = Field(description="When the manager recorded it (UTC).")
    Topic: Topic
    Type: str = Field(description="What happened, e.g. TaskPlaced, NodeDown, JobRegistered.")
    Key: str = Field(description="What it happened to: a task ID, a job or node name.")
    Payload: dict[str, Any] = Field(
        default_factory=dict, description="That object as the API shows it just after."
    )

    _source: Wired | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, index: int, time: datetime, draft: Draft) -> Event:
        # Made by the manager from values it already checked: no validation to pay.
        fields = {
            "Index": index,
            "Time": time,
            "Topic": draft.Topic,
            "Type": draft.Type,
            "Key": draft.Key,
            "Payload": draft.Payload,
        }
        return _made(cls, fields, _source(draft))

    def ready(self) -> Event:
        """With its Payload made (see :meth:`Draft.of`): call before it is read."""
        source = _source(self)
        if source is not None:
            self.Payload = source.to_wire()
            self._source = None
        return self


def _source(model: Draft | Event) -> Wired | None:
    """``model._source``, read where pydantic keeps it: the attribute itself goes
    through ``BaseModel.__getattr__`` and an AttributeError raised and caught inside
    it (1.8 µs against 0.06 µs; every change of a task reads it)."""
    private = model.__pydantic_private__
    return None if private is None else private.get("_source")


def _made(cls: type[_M], fields: dict[str, Any], source: Wired | None) -> _M:
    """Made for every change of every task: see :func:`cube.fieldsets.construct`."""
    return construct(cls, fields, {"_source": source})


def ready(events: Iterable[Event]) -> list[Event]:
    """The events, each with its Payload made, for a reader or a write."""
    return [event.ready() for event in events]
