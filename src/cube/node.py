"""A worker machine as the manager sees it: capacity, what is already promised, health.

The wire names are the book's (PascalCase), so ``GET /nodes`` answers what the book's
``cube node`` expects. Capacity (``Cores``, ``Memory``, ``Disk``) comes from the worker's
latest stats; the ``*Allocated`` fields and ``PortsAllocated`` are the manager's own
bookkeeping of what it has placed there, because measured usage lags a burst of
placements and the scheduler must not promise the same room twice.

Units are the book's and easy to mix up: ``Memory`` and ``MemoryAllocated`` are kB
(as /proc/meminfo reports them), ``Disk`` and ``DiskAllocated`` are bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass

READY = "ready"
DOWN = "down"
WORKER = "worker"


# A pydantic dataclass rather than a BaseModel: the scheduler reads a dozen fields of
# every node for every decision, and BaseModel's __getattr__ hook makes each read about
# four times slower in CPython. Validation and JSON work the same, through
# to_wire/from_wire. Unknown fields are ignored so a CLI can read a newer manager.
@dataclass(slots=True, config=ConfigDict(extra="ignore"))
class Node:
    Name: str
    Ip: str = ""
    Api: str = ""
    Cores: int = Field(default=0, ge=0)
    Memory: int = Field(default=0, ge=0)
    MemoryAllocated: int = Field(default=0, ge=0)
    Disk: int = Field(default=0, ge=0)
    DiskAllocated: int = Field(default=0, ge=0)
    Role: str = WORKER
    TaskCount: int = Field(default=0, ge=0)
    Stats: dict[str, Any] | None = None
    # A node is down until it has answered once: never place work on an unknown machine.
    Status: str = DOWN
    # Whether the worker's Docker engine answers (what its /health and watch stream
    # say). A worker without one holds the tasks sent to it until the engine is back,
    # so the scheduler sends it none, as Kubernetes takes a node whose container
    # runtime is down out of scheduling. True until the worker says otherwise.
    Docker: bool = True
    CpuAllocated: float = Field(default=0.0, ge=0)
    CpuPercent: float = Field(default=0.0, ge=0)
    PortsAllocated: set[int] = Field(default_factory=set)
    # Set by the worker (``cube worker --label zone=a``), for placement constraints.
    Labels: dict[str, str] = Field(default_factory=dict)
    # Built in, reported by the worker: hostname, os, arch, cores, memory. A constraint's
    # Attribute names a label or one of these (labels may not reuse their names).
    Attributes: dict[str, str] = Field(default_factory=dict)
    # Whether the scheduler may place new work here (``cube node drain`` and
    # ``cube node ineligible`` clear it; ``cube node eligible`` sets it), as Nomad's
    # scheduling eligibility and Kubernetes' cordon.
    Eligible: bool = True
    # A drain in progress: the node's tasks are being moved elsewhere (it is ineligible
    # meanwhile, and stays so when the drain is done). DrainDeadline (RFC 3339, or "")
    # is when whatever is left is moved at once.
    Draining: bool = False
    DrainDeadline: str = ""
    # The worker registered itself (``cube worker --join``) and sends heartbeats; a
    # node from ``-w`` is known by its address and heard from through its task stream.
    Joined: bool = False
    # What the manager presents to the worker on every call: the secret the worker gave
    # when it joined, or the token a -w worker shares with its manager. Never on the wire.
    Secret: str = Field(default="", exclude=True, repr=False)
    # Tasks placed here per job (the manager's bookkeeping, not on the wire): the
    # scheduler spreads a job's tasks over nodes, as Nomad's job anti-affinity does.
    JobTasks: dict[str, int] = Field(default_factory=dict, exclude=True)

    @classmethod
    def for_worker(cls, address: str) -> Node:
        """Build the node for a ``-w host:port`` entry (or a full ``http://`` URL)."""
        api = address if "://" in address else f"http://{address}"
        parts = urlsplit(api)
        return cls(Name=parts.netloc or address, Ip=parts.hostname or "", Api=api.rstrip("/"))

    def record(self) -> NodeRecord:
        """What is stored of a node: who it is and what was decided about it, not what
        it reports (capacity and status come afresh when it is heard from again)."""
        return NodeRecord.model_validate({**self.to_wire(), "Secret": self.Secret})

    @classmethod
    def from_record(cls, record: NodeRecord) -> Node:
        return cls(**record.model_dump())

    @classmethod
    def from_wire(cls, data: Mapping[str, Any] | str | bytes) -> Node:
        if isinstance(data, str | bytes):
            return _ADAPTER.validate_json(data)
        return _ADAPTER.validate_python(data)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = _ADAPTER.dump_python(self, mode="json")
        wire["PortsAllocated"].sort()
        return wire

    @property
    def is_ready(self) -> bool:
        return self.Status == READY

    @property
    def free_memory_kb(self) -> int:
        return self.Memory - self.MemoryAllocated

    @property
    def free_disk(self) -> int:
        return self.Disk - self.DiskAllocated

    @property
    def free_cores(self) -> float:
        return self.Cores - self.CpuAllocated

    def apply_stats(self, stats: Mapping[str, Any]) -> None:
        """Take capacity and CPU usage from a worker's /stats body (its JSON, as a dict).

        Missing or malformed parts leave the old values, so one odd answer from a
        worker cannot wipe out capacity the scheduler relies on. ``TaskCount`` is
        left alone: the manager's count includes placements the worker has not
        reported yet. Whether the node is ready is the caller's call.
        """
        self.Stats = dict(stats)
        cores = _number(stats, "Cores")
        if cores is not None and cores > 0:
            self.Cores = int(cores)
        # goprocinfo's keys, as the book's JSON has them, or the /proc spelling.
        mem_total = _number(_section(stats, "MemStats"), "mem_total", "MemTotal")
        if mem_total is not None and mem_total > 0:
            self.Memory = int(mem_total)
        disk_total = _number(_section(stats, "DiskStats"), "all", "All")
        if disk_total is not None and disk_total > 0:
            self.Disk = int(disk_total)
        cpu = _number(stats, "CpuPercent")
        if cpu is not None:
            self.CpuPercent = min(max(cpu, 0.0), 100.0)


def _section(stats: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = stats.get(key)
    return value if isinstance(value, Mapping) else {}


def _number(section: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = section.get(key)
        # bool is an int subclass, but a True in a stats body is a bug, not "1 core".
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            return float(value)
    return None


_ADAPTER = TypeAdapter(Node)


class NodeRecord(BaseModel):
    """The stored part of a :class:`Node` (see :meth:`Node.record`)."""

    model_config = ConfigDict(extra="ignore")

    Name: str
    Ip: str = ""
    Api: str = ""
    Labels: dict[str, str] = Field(default_factory=dict)
    Attributes: dict[str, str] = Field(default_factory=dict)
    Eligible: bool = True
    Draining: bool = False
    DrainDeadline: str = ""
    Joined: bool = False
    Secret: str = ""


def worker_addresses(text: str) -> list[str]:
    """The workers of a ``-w host:port,host:port`` list, each checked, duplicates dropped.

    An entry is ``host:port`` or an ``http(s)://`` URL. A malformed one raises
    ValueError naming it: a manager given an address it can never call would otherwise
    fail on it every round for as long as it runs. A duplicate (the same worker spelt
    alike or not, ``h:80`` and ``http://H``) is dropped, so a worker is tracked once.
    """
    seen: set[str] = set()
    addresses: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        keys = {_endpoint(entry), Node.for_worker(entry).Name}
        if keys & seen:
            continue
        seen |= keys
        addresses.append(entry)
    if not addresses:
        raise ValueError("name at least one worker, as host:port")
    return addresses


def _endpoint(entry: str) -> str:
    """The worker an address reaches, in one spelling (ValueError if it reaches none)."""
    bad = f"invalid worker address {entry!r}"
    api = entry if "://" in entry else f"http://{entry}"
    parts = urlsplit(api)
    odd = any(c.isspace() or c in "?#" for c in entry)
    if parts.scheme not in ("http", "https") or odd:
        raise ValueError(f"{bad}: expected host:port or an http(s) URL")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        raise ValueError(f"{bad}: the port must be a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError(f"{bad}: the host is missing")
    try:
        httpx.URL(api)  # what the client will be given: refuse here what it would refuse
    except httpx.InvalidURL as exc:
        raise ValueError(f"{bad}: {exc}") from None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}{parts.path.rstrip('/')}"
