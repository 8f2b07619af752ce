"""The runtime contract: what the worker needs from a container engine, and nothing more.

The worker turns a task into a :class:`ContainerSpec`; the runtime turns the spec into a
running container and reports on it. Keeping the contract this small is what lets a
simulated runtime stand in for Docker in scale tests.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol, runtime_checkable

__all__ = [
    "ContainerError",
    "ContainerEvent",
    "ContainerInfo",
    "ContainerSpec",
    "LogLine",
    "LogOptions",
    "LogStream",
    "NoSuchContainer",
    "Runtime",
    "RuntimeUnavailable",
    "parse_docker_time",
]


class RuntimeUnavailable(Exception):
    """The engine cannot be reached: nothing is wrong with the request, retry later."""


class ContainerError(Exception):
    """This container could not be created or started; the message is meant for the user."""


class NoSuchContainer(LookupError):
    """The container is not there (any more): whatever it held, its logs too, is gone."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one container, independent of any engine's API."""

    name: str
    image: str
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    cpu: float = 0.0
    memory: int = 0
    exposed_ports: list[str] = field(default_factory=list)
    port_bindings: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerInfo:
    """A snapshot of a container, as much as the worker needs to derive a task's state."""

    id: str
    name: str
    image: str
    labels: dict[str, str]
    status: str
    running: bool
    exit_code: int | None
    oom_killed: bool
    error: str
    host_ports: dict[str, list[dict[str, str]]]
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class ContainerEvent:
    """A container's state change, so that the worker notices it at once instead of polling."""

    container_id: str
    action: str
    labels: dict[str, str]
    exit_code: int | None


@dataclass(frozen=True)
class LogOptions:
    """Which of a container's output to read, as ``docker logs`` takes it.

    ``tail``: only the last that many lines (None: all); ``since``: only lines written
    at or after that time; ``follow``: keep reading until the container stops.
    """

    follow: bool = False
    tail: int | None = None
    since: datetime | None = None
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class LogLine:
    """One line a container wrote, without its newline, and when and where it wrote it."""

    stream: str  # "stdout" or "stderr"
    time: datetime | None
    text: str


@runtime_checkable
class LogStream(Protocol):
    """A container's lines, in order; ``aclose`` ends the read (and its thread, if any).

    A stream that follows ends by itself when the container stops; a reader that goes
    away must close it. It holds a bounded number of lines: when nobody reads, the
    engine is made to wait, not memory to grow.
    """

    def __aiter__(self) -> AsyncIterator[LogLine]: ...

    async def __anext__(self) -> LogLine: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class EventStream(Protocol):
    """Container events as they happen; ``aclose`` ends the subscription.

    Closing matters: a stream may hold a thread and a connection to the engine, which
    merely abandoning (or cancelling the reader of) the iterator would leak.
    """

    def __aiter__(self) -> AsyncIterator[ContainerEvent]: ...

    async def __anext__(self) -> ContainerEvent: ...

    async def aclose(self) -> None: ...


class Runtime(Protocol):
    """A container engine as seen by a worker."""

    async def start(self, spec: ContainerSpec) -> ContainerInfo: ...

    async def stop(self, container_id: str, timeout: float = 10.0) -> None: ...

    async def remove(self, container_id: str) -> None: ...

    async def inspect(self, container_id: str) -> ContainerInfo | None: ...

    async def list(self, labels: dict[str, str]) -> list[ContainerInfo]: ...

    def events(self, labels: dict[str, str]) -> EventStream: ...

    async def logs(self, container_id: str, options: LogOptions) -> LogStream:
        """Open the container's log; NoSuchContainer when it does not exist."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


_TIME = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$",
    re.IGNORECASE,
)


def parse_docker_time(value: str | None) -> datetime | None:
    """Parse an engine timestamp into an aware UTC datetime.

    Docker reports nanoseconds (more digits than ``datetime.fromisoformat`` reliably
    takes) and uses Go's zero time ``0001-01-01T00:00:00Z`` for "never", which must not
    become a real date in a task's StartTime/FinishTime. Anything unparsable is treated
    as unknown rather than failing a whole inspect.
    """
    if not value:
        return None
    match = _TIME.match(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if year <= 1:
        return None
    fraction = (match.group(7) or "")[:6].ljust(6, "0")
    zone = match.group(8)
    tz: timezone = UTC
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    try:
        parsed = datetime(year, month, day, hour, minute, second, int(fraction), tzinfo=tz)
    except ValueError:
        return None
    return parsed.astimezone(UTC)
