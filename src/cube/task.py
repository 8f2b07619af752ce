"""The task: Cube's unit of work, its wire format and its state machine.

The JSON is the book's (PascalCase names, UUID strings, RFC 3339 times with Go's zero
time for "unset"), so the book's example bodies and clients work unchanged. Every
state change goes through :func:`transition`, the one place that knows which moves
are legal; everything else asks it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

from cube.constraints import Constraint
from cube.explain import Decision
from cube.fieldsets import construct, shared

ZERO_TIME = "0001-01-01T00:00:00Z"


class State(IntEnum):
    """Task states, numbered as in the book so its JSON stays valid."""

    PENDING = 0
    SCHEDULED = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4

    @property
    def label(self) -> str:
        return self.name.capitalize()


TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.PENDING: frozenset({State.SCHEDULED, State.COMPLETED}),
    State.SCHEDULED: frozenset({State.SCHEDULED, State.RUNNING, State.FAILED, State.COMPLETED}),
    State.RUNNING: frozenset({State.RUNNING, State.COMPLETED, State.FAILED, State.SCHEDULED}),
    State.FAILED: frozenset({State.SCHEDULED}),
    State.COMPLETED: frozenset(),
}


class InvalidTransition(ValueError):
    """A state change the table does not allow (the APIs answer 409)."""

    def __init__(self, src: State, dst: State) -> None:
        super().__init__(f"cannot move a task from {src.label} to {dst.label}")
        self.src = src
        self.dst = dst


def can_transition(src: State, dst: State) -> bool:
    return dst in TRANSITIONS[src]


def is_terminal(state: State) -> bool:
    return not TRANSITIONS[state]


# --- wire helpers -----------------------------------------------------------------


def _parse_state(value: Any) -> Any:
    """Accept the book's numbers and, for people typing JSON by hand, names in any case."""
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        try:
            return State[value.strip().upper()]
        except KeyError:
            names = ", ".join(s.label for s in State)
            raise ValueError(f"unknown state {value!r} (expected one of {names})") from None
    return value


def _parse_time(value: Any) -> Any:
    if value in (None, "", ZERO_TIME) or (
        isinstance(value, str) and value.startswith("0001-01-01")
    ):
        return None
    return value


def _format_time(value: datetime | None) -> str:
    if value is None:
        return ZERO_TIME
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(value: Any) -> Any:
    """Turn "256MiB" or "1GB" into bytes; numbers pass through to normal validation."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"invalid size {value!r} (use bytes or e.g. '256MiB', '1GiB')")
    size = float(match.group(1)) * _UNITS[unit]
    if size > MAX_SIZE:
        raise ValueError(f"size {value!r} is too large")
    return int(size)


def now() -> datetime:
    """Cube's wall clock (the simulator swaps it for its virtual one)."""
    return datetime.now(UTC)


def _stamp() -> datetime:
    return now()  # looked up at each call, so a swapped clock is the one used


# The JSON schemas say what is accepted: a state's number or its name; a size in bytes
# or as a string such as "256MiB" (the bounds apply to what it comes to).
_StateName = Literal["Pending", "Scheduled", "Running", "Completed", "Failed"]
StateField = Annotated[
    State, BeforeValidator(_parse_state, json_schema_input_type=State | _StateName)
]
Time = Annotated[
    datetime | None,
    BeforeValidator(_parse_time),
    PlainSerializer(_format_time, return_type=str),
]
# SQLite and Docker both stop at signed 64 bits; refuse more up front, not deep inside.
MAX_SIZE = 2**63 - 1
_Bytes = Annotated[int, Field(ge=0, le=MAX_SIZE)]
Size = Annotated[
    _Bytes,
    BeforeValidator(
        parse_size,
        json_schema_input_type=_Bytes | Annotated[str, Field(description="e.g. '256MiB'")],
    ),
]
RestartPolicyName = Literal["", "no", "on-failure", "always", "unless-stopped"]
HostPortList = list[dict[str, str]]


_State = State  # inside Task, "State" names the field


class _Wire(BaseModel):
    """Strict about names (unknown fields are a 400, as in the book), lenient about nulls."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=False)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """pydantic's shallow copy in half its time: the same copy of the fields (the
        set of fields given shared: :mod:`cube.fieldsets`), with ``update`` applied
        unvalidated (as pydantic applies it), without the generic ``copy.copy`` steps
        for what these models never have (extra fields, private attributes). The
        manager and the workers copy every task several times on its way to Running."""
        if deep:
            return super().model_copy(update=update, deep=True)
        copied = _new(self.__class__)
        fields = self.__dict__.copy()
        if update:
            fields.update(update)
        _set(copied, "__dict__", fields)
        _set(copied, "__pydantic_fields_set__", shared(self.__pydantic_fields_set__, update or ()))
        _set(copied, "__pydantic_extra__", None)
        _set(copied, "__pydantic_private__", None)
        return copied


_new = object.__new__
_set = object.__setattr__


class Task(_Wire):
    ID: uuid.UUID = Field(default_factory=uuid.uuid4)
    Name: str = ""
    State: StateField = State.PENDING
    Image: str = Field(json_schema_extra={"pattern": r"\S"})  # not blank: see below
    Cmd: list[str] | None = None
    Env: list[str] | None = None
    Cpu: float = Field(default=0.0, ge=0, le=1_000_000, allow_inf_nan=False)
    Memory: Size = 0
    Disk: Size = 0
    ExposedPorts: dict[str, dict[str, Any]] | None = None
    PortBindings: dict[str, str] | None = None
    HostPorts: dict[str, HostPortList] | None = None
    RestartPolicy: RestartPolicyName = ""
    HealthCheck: str = ""
    RestartCount: int = Field(default=0, ge=0, le=MAX_SIZE)
    ContainerID: str = ""
    StartTime: Time = None
    FinishTime: Time = None
    # Added by Cube: why a task is Failed or still Pending, and where it runs.
    Reason: str = ""
    Node: str = ""
    # What the user wants of it (the manager's; Kubernetes' spec beside its status):
    # Running, or Completed once a stop was asked for. Kept on the task so a stop is
    # as durable as the task itself.
    DesiredState: StateField = State.RUNNING
    # Output, for a task made by a job (cube.job): which job, and which of its versions.
    Job: str = ""
    JobVersion: int = Field(default=0, ge=0, le=MAX_SIZE)
    # Input, optional: where the manager may place it (cube.constraints), and whether
    # it must not share a node with another task of its Job. Workers ignore both.
    Constraints: list[Constraint] | None = None
    DistinctHosts: bool = False
    # Output: the scheduler's latest decision about it (cube.explain): why it is on its
    # node, or what turned every node away while it waits.
    Placement: Decision | None = None

    @field_validator("DesiredState")
    @classmethod
    def _desired(cls, value: _State) -> _State:
        if value not in (_State.RUNNING, _State.COMPLETED):
            raise ValueError("DesiredState must be Running or Completed")
        return value

    @field_validator("Image")
    @classmethod
    def _image_required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("Image is required")
        return value.strip()

    @field_validator("Env")
    @classmethod
    def _env_pairs(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            if "=" not in item or item.startswith("="):
                raise ValueError(f"Env entries must be KEY=VALUE, got {item!r}")
        return value

    @field_validator("ExposedPorts", "PortBindings", "HostPorts")
    @classmethod
    def _port_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in value or {}:
            check_port_key(key)
        return value

    @field_validator("PortBindings")
    @classmethod
    def _host_ports(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, port in (value or {}).items():
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"PortBindings[{key!r}] must be a port number, got {port!r}")
        return value

    @field_validator("HealthCheck")
    @classmethod
    def _health_path(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("HealthCheck must be a URL path starting with '/'")
        return value

    def container_ports(self) -> list[str]:
        """Every container port to publish: the exposed ones and the fixed bindings."""
        ports = dict.fromkeys(self.ExposedPorts or {})
        ports.update(dict.fromkeys(self.PortBindings or {}))
        return list(ports)

    def first_host_port(self) -> int | None:
        """The host port health checks call: the first published one."""
        for bindings in (self.HostPorts or {}).values():
            for binding in bindings:
                port = binding.get("HostPort", "")
                if port.isdigit():
                    return int(port)
        return None

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def check_port_key(key: str) -> None:
    port, _, proto = key.partition("/")
    if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("", "tcp", "udp", "sctp"):
        raise ValueError(f"invalid port {key!r} (expected e.g. '80/tcp')")


class TaskEvent(_Wire):
    """A request to move a task to a desired state (Scheduled/Running to run, Completed to stop)."""

    ID: uuid.UUID = Field(default_factory=uuid.uuid4)
    State: StateField = State.SCHEDULED
    Timestamp: Time = Field(default_factory=_stamp)
    Task: Task


def recorded(state: State, tasks: Sequence[Task]) -> list[TaskEvent]:
    """TaskEvents the manager makes itself (a placement's, one per task placed), at one
    time, of values valid already: constructed rather than validated (cube.fieldsets)."""
    at = now()
    return [
        construct(TaskEvent, {"ID": event_id, "State": state, "Timestamp": at, "Task": task})
        for event_id, task in zip(random_ids(len(tasks)), tasks, strict=True)
    ]


def random_ids(count: int) -> list[uuid.UUID]:
    """``count`` random (version 4) UUIDs, as :func:`uuid.uuid4` makes them, from one
    read of the system's randomness: a placement pass makes one per task placed, and
    ``uuid4`` (a read each, and ``UUID.__init__``'s checks) cost 2.7 µs, these 0.6."""
    raw = os.urandom(16 * count)
    ids = []
    for start in range(0, 16 * count, 16):
        made = _new(uuid.UUID)
        _set(made, "int", int.from_bytes(raw[start : start + 16]) & _V4_MASK | _V4_BITS)
        _set(made, "is_safe", uuid.SafeUUID.unknown)
        ids.append(made)
    return ids


# RFC 4122's version 4: the version nibble 4, the variant bits 10 (as UUID(version=4)).
_V4_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_V4_BITS = (4 << 76) | (0x8000 << 48)


# Read once here: an IntEnum member read through its class costs 0.1 µs, and every
# placement and every report the manager takes in goes through transition.
_SCHEDULED, _RUNNING = State.SCHEDULED, State.RUNNING
_FINAL = (State.COMPLETED, State.FAILED)
_RAN = (State.RUNNING, State.FAILED)


def transition(
    task: Task,
    dst: State,
    *,
    reason: str = "",
    at: datetime | None = None,
    also: Mapping[str, Any] | None = None,
) -> Task:
    """Return a copy of ``task`` in state ``dst``, or raise :class:`InvalidTransition`.

    Times follow the state: entering Running stamps StartTime, entering a final state
    stamps FinishTime, and a restart (back to Scheduled) clears the previous run's
    output so nobody reads a stale container ID. ``also``: further fields to change in
    the same copy (a placement's Node, say).
    """
    src = task.State
    if not can_transition(src, dst):
        raise InvalidTransition(src, dst)
    changes: dict[str, Any] = {"State": dst, "Reason": reason}
    if dst is _RUNNING and src is not _RUNNING:
        changes["StartTime"] = task.StartTime or at or now()
        changes["FinishTime"] = None
    elif dst in _FINAL:
        changes["FinishTime"] = task.FinishTime or at or now()
    elif dst is _SCHEDULED and src in _RAN:
        changes.update(ContainerID="", HostPorts=None, StartTime=None, FinishTime=None)
    if also:
        changes.update(also)
    return task.model_copy(update=changes)
