"""The manager's Prometheus metrics (served at ``GET /metrics``, see cube.metrics).

What the manager holds (tasks by state, nodes by status, deployments by status) is
counted from its state at scrape time, by a collector, so a gauge can never drift
from what ``GET /tasks`` shows. What it does is counted as it happens, at the one
place each thing happens: placements and restarts where a pass's placements are
stored (:meth:`Manager.apply`), health-check failures where a probe fails, events
where the event log stores them. Timing goes through the manager's clock.

Placement latency is the seconds from the manager storing a task Pending (its
submission; for a task loaded Pending after a manager restart, that restart) to
storing its first placement: how long a task waited for a node, the time to find room
included. Restarts and moves are not in it, since their wait is mostly the restart
backoff, by design.
"""

from __future__ import annotations

import uuid
from collections import Counter as Tally
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram

from cube.clock import Clock
from cube.job import DeploymentStatus
from cube.metrics import HttpMetrics, gauge, new_registry
from cube.node import DOWN, READY
from cube.task import State, Task

if TYPE_CHECKING:
    from cube.manager.jobs import Jobs
    from cube.manager.state import State as ClusterState

# A task's wait for a node: a burst's milliseconds to an hour waiting for room.
PLACEMENT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
DEPLOYMENT_STATUSES: tuple[str, ...] = get_args(DeploymentStatus)


@dataclass(frozen=True)
class Placing:
    """A pass's placements, counted before they are stored."""

    count: int
    restarts: int
    waits: list[float]


class ManagerMetrics:
    def __init__(self, clock: Clock, registry: CollectorRegistry | None = None) -> None:
        self.clock = clock
        self.registry = registry or new_registry()
        self.http = HttpMetrics(self.registry, clock)
        self.placements = Counter(
            "cube_placements",
            "Tasks placed on a node: first placements, restarts and moves",
            registry=self.registry,
        )
        self.placement_latency = Histogram(
            "cube_placement_latency_seconds",
            "Seconds from a task stored Pending to its first placement stored",
            registry=self.registry,
            buckets=PLACEMENT_BUCKETS,
        )
        self.restarts = Counter(
            "cube_task_restarts",
            "New incarnations placed: a restart after a failure, or a move off a lost "
            "or drained node",
            registry=self.registry,
        )
        self.health_failures = Counter(
            "cube_health_check_failures",
            "Health-check probes that failed (a task is Failed after --health-failures "
            "of them in a row)",
            registry=self.registry,
        )
        self.events = Counter(
            "cube_events_stored",
            "Events stored in the event log (GET /events), by topic and type",
            ["topic", "type"],
            registry=self.registry,
        )
        self.events_dropped = Counter(
            "cube_events_dropped",
            "Events dropped unstored: their writes could not keep up",
            registry=self.registry,
        )

    def watch(self, state: ClusterState, jobs: Jobs, streaming: Collection[str]) -> None:
        """Serve the gauges of what ``state`` and ``jobs`` hold, and how many workers'
        streams are followed (``streaming``, the tracker's), computed at each scrape."""
        self.registry.register(_Holdings(state, jobs, streaming))

    # --- what happens --------------------------------------------------------------

    def placing(
        self,
        placed: Sequence[Task],
        tasks: Mapping[uuid.UUID, Task],
        since: Mapping[uuid.UUID, float],
    ) -> Placing:
        """Before a pass's placements are stored (``tasks`` and ``since`` are the
        state's, still as before them): what :meth:`placed` counts once they are."""
        now = self.clock.monotonic()
        restarts, waits = 0, []
        pending = State.PENDING  # read once: it is asked of every task placed
        for task in placed:
            old = tasks.get(task.ID)
            if old is None:
                continue
            if task.RestartCount > old.RestartCount:
                restarts += 1
            elif old.State is pending and (stored := since.get(task.ID)) is not None:
                waits.append(now - stored if now > stored else 0.0)
        return Placing(len(placed), restarts, waits)

    def placed(self, placing: Placing) -> None:
        """The placements :meth:`placing` looked at are stored."""
        self.placements.inc(placing.count)
        self.restarts.inc(placing.restarts)
        for seconds in placing.waits:
            self.placement_latency.observe(seconds)

    def stored(self, kinds: Iterable[tuple[str, str]]) -> None:
        """The event log stored events of these kinds (Topic, Type)."""
        for kind, count in Tally(kinds).items():
            self.events.labels(*kind).inc(count)


class _Holdings:
    """The gauges of what the manager holds, counted afresh at every scrape (a pass
    over the tasks: a few milliseconds for ten thousand)."""

    def __init__(self, state: ClusterState, jobs: Jobs, streaming: Collection[str]) -> None:
        self.state = state
        self.jobs = jobs
        self.streaming = streaming

    def collect(self) -> Iterator[Any]:
        tasks = Tally(task.State for task in self.state.tasks.values())
        yield gauge(
            "cube_tasks",
            "Tasks the manager holds, by state",
            "state",
            ((s.label, tasks[s]) for s in State),
        )
        nodes = self.state.nodes.values()
        statuses = Tally(node.Status for node in nodes)
        yield gauge(
            "cube_nodes",
            "Workers the manager knows, by status (ready: answering; down: not heard "
            "from since the manager started, or silent past the worker timeout)",
            "status",
            ((s, statuses[s]) for s in (READY, DOWN)),
        )
        yield gauge(
            "cube_nodes_ineligible",
            "Workers that take no new tasks: drained, draining, or made ineligible",
            value=sum(not node.Eligible for node in nodes),
        )
        yield gauge(
            "cube_nodes_streaming",
            "Workers whose watch stream the manager follows (a ready worker not among "
            "them is being polled, or its stream is opening)",
            value=len(self.streaming),
        )
        records = self.jobs.all()
        deployments: Tally[str] = Tally(
            r.Deployment.Status for r in records if r.Deployment is not None
        )
        yield gauge(
            "cube_deployments",
            "Jobs by the status of their latest deployment",
            "status",
            ((s, deployments[s]) for s in DEPLOYMENT_STATUSES),
        )
