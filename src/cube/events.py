"""The cluster's events: everything the manager changes or sees, in one numbered log.

Each event has an ``Index`` that only grows (stored, so it goes on growing across a
manager restart), a ``Topic`` (Task, Job, Node, Deployment), a ``Type`` saying what
happened, the ``Key`` of what it happened to (a task ID, a job or node name) and a
``Payload``: that object as the API shows it just after. A client that remembers the
last Index it saw resumes there with nothing missed twice or skipped (Nomad's event
stream, ``/v1/event/stream``, with indexes that outlive the leader).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol, overload

from pydantic import BaseModel, Field, PrivateAttr

from cube.fieldsets import construct

Topic = Literal["Task", "Job", "Node", "Deployment"]
TOPICS: tuple[Topic, ...] = ("Task", "Job", "Node", "Deployment")
_Topic = Topic  # inside the models, "Topic" names the field


class Wired(Protocol):
    """An immutable object that knows its API form (a task version)."""

    def to_wire(self) -> dict[str, Any]: ...


class Draft(NamedTuple):
    """An event before the log numbers it: a plain tuple, as every change of every task
    makes one (a pydantic model, even constructed without validation, cost ~1 µs more)."""

    Topic: Topic
    Type: str
    Key: str | uuid.UUID  # a task's ID turned into text only when the event is made
    Payload: dict[str, Any] | None = None  # None: made from ``source`` when first read
    source: Wired | None = None

    @classmethod
    def of(cls, topic: _Topic, kind: str, key: str | uuid.UUID, source: Wired) -> Draft:
        """A draft whose Payload is ``source.to_wire()``, made only if someone reads it.

        Every change of a task is an event, and most are never read (no reader is
        following, and the log keeps the last 50,000): dumping each version when it is
        committed cost the scale benchmark's manager 30,000 dumps and kept their dicts
        alive (and walked by every collection). A task version never changes, so its
        Payload is the same whenever it is made.
        """
        return cls(topic, kind, key, None, source)


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
            "Key": str(draft.Key),
            "Payload": {} if draft.Payload is None else draft.Payload,
        }
        return construct(cls, fields, {"_source": draft.source})

    def ready(self) -> Event:
        """With its Payload made (see :meth:`Draft.of`): call before it is read."""
        source = _source(self)
        if source is not None:
            self.Payload = source.to_wire()
            self._source = None
        return self


def _source(model: Event) -> Wired | None:
    """``model._source``, read where pydantic keeps it: the attribute itself goes
    through ``BaseModel.__getattr__`` and an AttributeError raised and caught inside
    it (1.8 µs against 0.06 µs; every change of a task reads it)."""
    private = model.__pydantic_private__
    return None if private is None else private.get("_source")


class Numbered(Sequence[Event]):
    """Events numbered together (one write): ``first`` on, at one ``time``, each made
    from its draft only when read.

    A commit of a scheduling pass describes hundreds of task changes, and most of
    their events are never read; made as they are numbered, they cost the scale
    benchmark's manager a fifth of its time taking tasks in and placing them. Here a
    write costs one object, and an event is made (and kept) the first time anyone
    reads it: a follower of the stream, the UI, a store that writes it out.
    """

    __slots__ = ("_items", "first", "time")

    def __init__(self, first: int, time: datetime, items: Iterable[Draft | Event]) -> None:
        self.first = first
        self.time = time
        self._items: list[Draft | Event] = list(items)

    @classmethod
    def made(cls, event: Event) -> Numbered:
        """One event already made (read back from a store, or from a leader's write)."""
        return cls(event.Index, event.Time, [event])

    @property
    def last(self) -> int:
        """The last index (``first - 1`` when empty)."""
        return self.first + len(self._items) - 1

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, position: int) -> Event: ...

    @overload
    def __getitem__(self, position: slice) -> list[Event]: ...

    def __getitem__(self, position: int | slice) -> Event | list[Event]:
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self._items)))]
        item = self._items[position]
        if isinstance(item, Event):
            return item
        if position < 0:
            position += len(self._items)
        event = self._items[position] = Event.of(self.first + position, self.time, item)
        return event

    def __iter__(self) -> Iterator[Event]:
        return (self[i] for i in range(len(self._items)))

    def kinds(self) -> Iterator[tuple[str, str]]:
        """(Topic, Type) of each, without making any."""
        return ((item.Topic, item.Type) for item in self._items)

    def topic(self, position: int) -> str:
        return self._items[position].Topic


def ready(events: Iterable[Event]) -> list[Event]:
    """The events, each with its Payload made, for a reader or a write."""
    return [event.ready() for event in events]
