"""A container engine that lives in memory, for scale tests (as Kubernetes' kubemark does).

It honours the same :class:`~cube.runtime.base.Runtime` contract as Docker: containers
have IDs, names that must be unique, labels, published ports and exit codes; starting
one under a name already taken replaces the leftover; a container that stops emits
``die`` and, when removed, ``destroy`` on the event stream; what a test :meth:`writes
<SimulatedRuntime.write>` to a container is its log. Nothing runs, so a
"container" costs a few hundred bytes and starts as fast as ``start_latency`` allows,
which lets one process host a thousand workers and a manager be measured rather than
the engine.

It is never chosen by accident: a real ``cube worker`` uses Docker unless started with
the hidden ``--runtime simulated`` flag, and the simulated fleet of
:mod:`cube.worker.fleet` is a separate entry point.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cube.runtime.base import (
    ContainerError,
    ContainerEvent,
    ContainerInfo,
    ContainerSpec,
    EventStream,
    LogLine,
    LogOptions,
    LogStream,
    NoSuchContainer,
    RuntimeUnavailable,
)

__all__ = ["SimulatedRuntime"]

_List = list  # ``SimulatedRuntime.list`` shadows the builtin inside the class body.

# Host ports handed out to published container ports, as Docker's ephemeral range.
_FIRST_HOST_PORT = 32768
_LAST_HOST_PORT = 60999
# Lines a container's log keeps; beyond that its oldest half goes (as a rotated log).
MAX_LOG_LINES = 10_000


@dataclass
class _Container:
    info: ContainerInfo
    spec: ContainerSpec
    log: list[LogLine] = field(default_factory=list)
    dropped: int = 0  # lines rotated away: log[i] is line number dropped + i
    changed: asyncio.Event | None = None  # made by the first follower: most have none
    removed: bool = False

    def wake(self) -> None:
        """Wake every follower (a line was written, or the container ended)."""
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    async def wait(self) -> None:
        if self.changed is None:
            self.changed = asyncio.Event()
        await self.changed.wait()


class SimulatedRuntime:
    """Containers as records in a dict; events through asyncio queues.

    ``start_latency`` (seconds) delays each start, to model an engine's create + start;
    ``fail_images`` names images whose containers cannot be created (a missing image).
    ``available`` can be switched off to model an engine outage: every call then raises
    :class:`RuntimeUnavailable` and open event streams end with it.
    """

    def __init__(
        self,
        start_latency: float = 0.0,
        *,
        fail_images: frozenset[str] = frozenset(),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if start_latency < 0:
            raise ValueError(f"start latency must not be negative, got {start_latency}")
        self.start_latency = start_latency
        self.fail_images = fail_images
        self.now = now  # the deterministic simulator gives its virtual clock
        self.available = True
        self.starts = 0
        self._containers: dict[str, _Container] = {}
        self._ids_by_name: dict[str, str] = {}
        self._ports = itertools.cycle(range(_FIRST_HOST_PORT, _LAST_HOST_PORT + 1))
        # A dict, not a set: events reach subscribers in the order they subscribed, so a
        # simulated run does not depend on where objects happen to sit in memory.
        self._subscribers: dict[_Subscription, None] = {}
        self._closed = False

    # -- the Runtime interface ---------------------------------------------------------

    async def start(self, spec: ContainerSpec) -> ContainerInfo:
        self._check()
        if self.start_latency:
            await asyncio.sleep(self.start_latency)  # the engine at work, not a wait for state
            self._check()
        if spec.image in self.fail_images:
            raise ContainerError(f"image {spec.image!r} not found locally and pull failed")
        leftover = self._ids_by_name.get(spec.name)
        if leftover is not None:
            self._drop(leftover)
        container_id = uuid.uuid4().hex + uuid.uuid4().hex
        host_ports: dict[str, list[dict[str, str]]] = {}
        for port in spec.exposed_ports:
            host_ports[_port_key(port)] = [
                {"HostIp": "0.0.0.0", "HostPort": str(next(self._ports))}
            ]
        for port, host in spec.port_bindings.items():
            host_ports[_port_key(port)] = [{"HostIp": "0.0.0.0", "HostPort": str(host)}]
        info = ContainerInfo(
            id=container_id,
            name=spec.name,
            image=spec.image,
            labels=dict(spec.labels),
            status="running",
            running=True,
            exit_code=None,
            oom_killed=False,
            error="",
            host_ports=host_ports,
            started_at=self.now(),
            finished_at=None,
        )
        self._containers[container_id] = _Container(info, spec)
        self._ids_by_name[spec.name] = container_id
        self.starts += 1
        self._emit(info, "start")
        return info

    async def stop(self, container_id: str, timeout: float = 10.0) -> None:
        self._check()
        if self.exit(container_id, 143) is not None:
            await self.remove(container_id)

    async def remove(self, container_id: str) -> None:
        self._check()
        container = self._containers.get(container_id)
        if container is None:
            return
        if container.info.running:
            self.exit(container_id, 137)
        self._drop(container_id)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        self._check()
        container = self._containers.get(container_id)
        return None if container is None else container.info

    async def list(self, labels: dict[str, str]) -> _List[ContainerInfo]:
        self._check()
        return [c.info for c in self._containers.values() if _matches(c.info.labels, labels)]

    def events(self, labels: dict[str, str]) -> EventStream:
        subscription = _Subscription(self, dict(labels))
        if not self.available or self._closed:
            subscription.end(RuntimeUnavailable("the simulated engine is unavailable"))
        else:
            self._subscribers[subscription] = None
        return subscription

    async def logs(self, container_id: str, options: LogOptions) -> LogStream:
        self._check()
        container = self._containers.get(container_id)
        if container is None:
            raise NoSuchContainer(container_id)
        return _LogReader(self, container, options)

    async def ping(self) -> None:
        self._check()

    async def close(self) -> None:
        self._closed = True
        for subscription in _List(self._subscribers):
            subscription.end(None)
        self._subscribers.clear()
        self._wake_all()

    # -- controls for tests and benchmarks -----------------------------------------------

    def exit(
        self, container_id: str, exit_code: int = 0, *, oom_killed: bool = False
    ) -> ContainerInfo | None:
        """End a running container as if its process exited; None if it is not running."""
        container = self._containers.get(container_id)
        if container is None or not container.info.running:
            return None
        container.info = replace(
            container.info,
            status="exited",
            running=False,
            exit_code=exit_code,
            oom_killed=oom_killed,
            finished_at=self.now(),
        )
        self._emit(container.info, "oom" if oom_killed else "die")
        container.wake()
        return container.info

    def write(self, container_id: str, text: str, stream: str = "stdout") -> None:
        """The container prints ``text`` (each of its lines a log line) on ``stream``."""
        container = self._containers[container_id]
        now = self.now()
        container.log.extend(LogLine(stream, now, line) for line in text.splitlines())
        if len(container.log) > MAX_LOG_LINES:
            cut = len(container.log) - MAX_LOG_LINES // 2
            del container.log[:cut]
            container.dropped += cut
        container.wake()

    def set_available(self, available: bool) -> None:
        """Model the engine going away (streams end) or coming back."""
        self.available = available
        if not available:
            for subscription in _List(self._subscribers):
                subscription.end(RuntimeUnavailable("the simulated engine went away"))
            self._subscribers.clear()
            self._wake_all()

    @property
    def containers(self) -> _List[ContainerInfo]:
        return [c.info for c in self._containers.values()]

    # -- plumbing --------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise RuntimeUnavailable("the simulated runtime is closed")
        if not self.available:
            raise RuntimeUnavailable("the simulated engine is unavailable")

    def _wake_all(self) -> None:
        for container in self._containers.values():
            container.wake()

    def _drop(self, container_id: str) -> None:
        container = self._containers.pop(container_id, None)
        if container is None:
            return
        container.removed = True
        container.wake()
        if self._ids_by_name.get(container.info.name) == container_id:
            del self._ids_by_name[container.info.name]
        self._emit(container.info, "destroy")

    def _emit(self, info: ContainerInfo, action: str) -> None:
        if not self._subscribers:
            return
        event = ContainerEvent(
            container_id=info.id, action=action, labels=info.labels, exit_code=info.exit_code
        )
        for subscription in _List(self._subscribers):
            if _matches(info.labels, subscription.labels):
                subscription.queue.put_nowait(event)


class _Subscription:
    def __init__(self, runtime: SimulatedRuntime, labels: dict[str, str]) -> None:
        self.runtime = runtime
        self.labels = labels
        self.queue: asyncio.Queue[ContainerEvent | BaseException | None] = asyncio.Queue()
        self._done = False

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> ContainerEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, ContainerEvent):
            return item
        self._done = True
        if item is None:
            raise StopAsyncIteration
        raise item

    def end(self, item: BaseException | None) -> None:
        self.queue.put_nowait(item)

    async def aclose(self) -> None:
        self.runtime._subscribers.pop(self, None)
        if not self._done:
            self.end(None)


class _LogReader:
    """Reads a container's log where it lies: a reader holds a position, not a copy, so
    a slow one costs nothing however much the container writes."""

    def __init__(self, runtime: SimulatedRuntime, container: _Container, options: LogOptions):
        self._runtime = runtime
        self._container = container
        self._options = options
        end = container.dropped + len(container.log)
        # As Docker does: the last ``tail`` lines of the log, then those asked for.
        tail = end if options.tail is None else options.tail
        self._next = max(container.dropped, end - tail)
        self._follow = options.follow
        self._done = False

    def __aiter__(self) -> _LogReader:
        return self

    async def __anext__(self) -> LogLine:
        c, options = self._container, self._options
        while not self._done:
            self._next = max(self._next, c.dropped)
            if self._next < c.dropped + len(c.log):
                line = c.log[self._next - c.dropped]
                self._next += 1
                if _wanted(line, options):
                    return line
                continue
            runtime = self._runtime
            if not self._follow or not c.info.running or c.removed or runtime._closed:
                break
            if not runtime.available:
                break
            await c.wait()
        self._done = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._done = True
        self._container.wake()  # a reader waiting in __anext__ sees it is done


def _wanted(line: LogLine, options: LogOptions) -> bool:
    if not (options.stdout if line.stream == "stdout" else options.stderr):
        return False
    since = options.since
    return since is None or line.time is None or line.time >= since


def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())


def _port_key(port: str) -> str:
    port = str(port).strip()
    return port if "/" in port else f"{port}/tcp"
