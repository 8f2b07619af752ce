"""A worker's Prometheus metrics (served at ``GET /metrics``, see cube.metrics).

Container starts and start failures are counted where the worker starts containers;
every call into the container engine is timed by :class:`TimedRuntime`, a wrapper the
worker makes its calls through (so the figures are the engine's as the worker sees
them, the wait for one of Docker's threads included); tasks by state are counted at
scrape time from the worker's own index, kept by its one write path.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from cube.clock import Clock, SystemClock
from cube.metrics import HttpMetrics, gauge, new_registry
from cube.runtime.base import (
    ContainerInfo,
    ContainerSpec,
    EventStream,
    LogOptions,
    LogStream,
    Runtime,
)
from cube.task import State

T = TypeVar("T")
# A ping's milliseconds to a start that pulls an image.
CALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
# Why a start failed: the container's fault (a bad image or command, a port taken) or
# the engine's (it did not answer; the task waits for it to come back).
CONTAINER, ENGINE = "container", "engine_unavailable"


class WorkerMetrics:
    def __init__(self, clock: Clock | None = None, registry: CollectorRegistry | None = None):
        self.clock: Clock = clock or SystemClock()
        self.registry = registry or new_registry()
        self.http = HttpMetrics(self.registry, self.clock)
        self.starts = Counter(
            "cube_worker_container_starts",
            "Containers started for tasks",
            registry=self.registry,
        )
        self.start_failures = Counter(
            "cube_worker_container_start_failures",
            "Container starts that failed, by reason: container (the task is Failed) or "
            "engine_unavailable (it starts when the engine answers again)",
            ["reason"],
            registry=self.registry,
        )
        for reason in (CONTAINER, ENGINE):
            self.start_failures.labels(reason)  # shown at 0 before the first
        self.stale_commands = Counter(
            "cube_worker_stale_commands",
            "Requests refused because they came from a deposed manager (an older term "
            "than the one that now leads: see cube.worker.fencing)",
            registry=self.registry,
        )
        self.calls = Histogram(
            "cube_worker_docker_call_duration_seconds",
            "Seconds each call into the container engine took, by call, failed ones too",
            ["call"],
            registry=self.registry,
            buckets=CALL_BUCKETS,
        )

    def watch(self, states: Mapping[Any, State]) -> None:
        """Serve the tasks by state, counted from ``states`` (task -> state) at each scrape."""
        self.registry.register(_Tasks(states))

    def timed(self, runtime: Runtime) -> TimedRuntime:
        return TimedRuntime(runtime, self)

    @asynccontextmanager
    async def call(self, name: str) -> AsyncIterator[None]:
        start = self.clock.monotonic()
        try:
            yield
        finally:
            self.calls.labels(name).observe(self.clock.monotonic() - start)


class _Tasks:
    def __init__(self, states: Mapping[Any, State]) -> None:
        self.states = states

    def collect(self) -> Iterator[Any]:
        counts = Tally(self.states.values())
        yield gauge(
            "cube_worker_tasks",
            "Tasks this worker holds, by state",
            "state",
            ((s.label, counts[s]) for s in State),
        )


class TimedRuntime:
    """A :class:`Runtime` that times every call into the one it wraps. An event stream
    is no call (it lasts as long as the worker); opening a log is one."""

    def __init__(self, runtime: Runtime, metrics: WorkerMetrics) -> None:
        self.runtime = runtime
        self.metrics = metrics

    async def _timed(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        async with self.metrics.call(name):
            return await call()

    async def start(self, spec: ContainerSpec) -> ContainerInfo:
        return await self._timed("start", lambda: self.runtime.start(spec))

    async def stop(self, container_id: str, timeout: float = 10.0) -> None:
        await self._timed("stop", lambda: self.runtime.stop(container_id, timeout))

    async def remove(self, container_id: str) -> None:
        await self._timed("remove", lambda: self.runtime.remove(container_id))

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        return await self._timed("inspect", lambda: self.runtime.inspect(container_id))

    async def list(self, labels: dict[str, str]) -> list[ContainerInfo]:
        return await self._timed("list", lambda: self.runtime.list(labels))

    def events(self, labels: dict[str, str]) -> EventStream:
        return self.runtime.events(labels)

    async def logs(self, container_id: str, options: LogOptions) -> LogStream:
        return await self._timed("logs", lambda: self.runtime.logs(container_id, options))

    async def ping(self) -> None:
        await self._timed("ping", self.runtime.ping)

    async def close(self) -> None:
        await self.runtime.close()
