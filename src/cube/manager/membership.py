"""The manager's nodes: workers join, heartbeat, are drained, made eligible, removed.

A node is identified by its worker's name, not its address: a worker that joins again
under the same name from a new address is the same node, with its eligibility and
drain kept. Every node is stored (:meth:`Backend.save_nodes`), so a manager restarted
while a worker was away still knows it, and declares it lost when it stays silent.

Joining is Swarm's and k3s's: the worker presents a shared join token
(``cube manager --join-token``), compared in constant time; a worker without the right
one is refused and never listed. A joined worker then heartbeats every
``heartbeat_interval`` seconds (the manager tells it the interval when it joins, as a
Nomad server gives its clients their heartbeat TTL); silent past the interval plus
``heartbeat_grace`` it is down and its tasks move (the reconciler's lost-node rule).
Heartbeats are one signal among several: the task stream and the stats a worker sends
show it alive too.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cube import task as task_module  # its now() is the simulator's in a simulation
from cube.clock import Clock
from cube.manager.backend import Backend
from cube.manager.dispatch import Dispatcher
from cube.manager.drain import Budget, Draining, plan_drains
from cube.manager.events import node_draft
from cube.manager.jobs import Jobs
from cube.manager.reconciler import Move
from cube.manager.state import State as ClusterState
from cube.manager.tracking import Tracker
from cube.node import Node, worker_addresses
from cube.scheduler import Scheduler
from cube.task import State, Task
from cube.worker.client import WorkerClient

log = logging.getLogger(__name__)

# A -w worker's node is named host:port, so a joined one may be too.
NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._:-]{0,251}[A-Za-z0-9])?$")


class UnknownNode(LookupError):
    """No such node (the API answers 404)."""


class JoinRefused(PermissionError):
    """Wrong or missing join token (401), or joining is off (403: ``off``)."""

    def __init__(self, message: str, *, off: bool = False) -> None:
        super().__init__(message)
        self.off = off


class NodeBusy(RuntimeError):
    """The node cannot be removed while it answers (409)."""


class Registration(BaseModel):
    """What a worker says about itself when it joins (``POST /nodes/register``)."""

    model_config = ConfigDict(extra="ignore")

    Name: str = Field(
        description="The worker's name: the node's identity.",
        json_schema_extra={"pattern": NAME.pattern},
    )
    Api: str = Field(description="Where the manager reaches the worker: http(s)://host:port.")
    Labels: dict[str, str] = Field(default_factory=dict)
    Attributes: dict[str, str] = Field(default_factory=dict)
    Secret: str = Field(
        default="",
        max_length=512,
        description="The worker's credential: the manager presents it on every call to the "
        "worker from now on (cube.worker.credentials).",
    )

    @field_validator("Name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                "Name must be 1 to 253 of letters, digits, '.', '_', ':' and '-', starting and "
                f"ending with a letter or digit, got {value!r}"
            )
        return value

    @field_validator("Api")
    @classmethod
    def _api(cls, value: str) -> str:
        if len(worker_addresses(value)) != 1:  # ValueError naming what is wrong with it
            raise ValueError("Api must be one address")
        return value if "://" in value else f"http://{value}"


class Joined(BaseModel):
    """The answer to a join or a heartbeat: how often to send the next."""

    Name: str
    Status: str
    HeartbeatInterval: float


@dataclass
class HeartbeatSettings:
    interval: float = 1.0
    grace: float = 2.0
    join_token: str | None = None  # None: no worker may join


def known_nodes(backend: Backend, workers: Sequence[str], token: str = "") -> dict[str, Node]:
    """The stored nodes, and the ``-w`` ones (a repeat counts once; one stored keeps
    what was decided about it, such as a drain). ``token``: what the ``-w`` workers
    take commands with (their shared ``--token``)."""
    nodes = {r.Name: Node.from_record(r) for r in backend.load_nodes()}
    for node in map(Node.for_worker, workers):
        node.Secret = token
        stored = nodes.get(node.Name)
        if stored is not None:
            stored.Ip, stored.Api, stored.Secret = node.Ip, node.Api, token
        else:
            nodes[node.Name] = node
    return nodes


class Membership:
    def __init__(
        self,
        state: ClusterState,
        tracker: Tracker,
        dispatch: Dispatcher,
        clients: dict[str, WorkerClient],
        backend: Backend,
        clock: Clock,
        connect: Callable[[str, str], WorkerClient],
        heartbeat: HeartbeatSettings,
        *,
        scheduler: Scheduler,
    ) -> None:
        self.state = state
        self.tracker = tracker
        self.dispatch = dispatch
        self.clients = clients
        self.backend = backend
        self.clock = clock
        self.connect = connect
        self.heartbeat = heartbeat
        self.scheduler = scheduler
        token = heartbeat.join_token
        self._token = token.encode() if token else None
        # Drain deadlines in the manager's monotonic seconds (stored as wall times).
        self._deadlines: dict[str, float] = {}
        self.next_due: float | None = None
        for node in state.nodes.values():
            if node.Draining and node.DrainDeadline:
                self._deadlines[node.Name] = self._monotonic(node.DrainDeadline)

    # --- joining ----------------------------------------------------------------------

    def check_token(self, presented: str | None) -> None:
        if self._token is None:
            raise JoinRefused(
                "this manager takes no joins: start it with --join-token "
                "(or put a token in its data directory's join-token file)",
                off=True,
            )
        if not presented or not hmac.compare_digest(presented.encode(), self._token):
            raise JoinRefused("wrong join token")

    async def join(self, reg: Registration) -> Joined:
        """Add the worker as a node, or take the new address of one already known."""
        node = self.state.nodes.get(reg.Name)
        fresh = Node.for_worker(reg.Api)
        if node is None:
            node = Node(Name=reg.Name, Ip=fresh.Ip, Api=fresh.Api, Joined=True, Secret=reg.Secret)
            node.Labels, node.Attributes = dict(reg.Labels), dict(reg.Attributes)
            self.state.add_node(node)
            self._reach(node)
            log.info("worker %s joined from %s", node.Name, node.Api)
        else:
            moved = (node.Api, node.Secret) != (fresh.Api, reg.Secret)  # a restarted worker
            relabelled = (node.Labels, node.Attributes) != (reg.Labels, reg.Attributes)
            node.Ip, node.Api, node.Joined, node.Secret = fresh.Ip, fresh.Api, True, reg.Secret
            node.Labels, node.Attributes = dict(reg.Labels), dict(reg.Attributes)
            if relabelled:
                self.state.room()  # tasks waiting on a constraint may fit here now
            if moved or node.Name not in self.clients:
                self._reach(node)
                log.info("worker %s joined again, from %s", node.Name, node.Api)
            self.tracker.heard(node.Name)
            self.state.events.emit(node_draft("NodeJoined", node))
        await self.backend.save_nodes([node.record()])
        return self._answer(node)

    def _reach(self, node: Node) -> None:
        """Call the worker at the node's address from now on (closing an older client)
        and follow it there."""
        old = self.clients.get(node.Name)
        self.clients[node.Name] = client = self.connect(node.Api, node.Secret)
        if node.Name in self.tracker.workers:
            self.tracker.replace(node.Name, client)
        else:
            self.tracker.add(node.Name, client)
        if old is not None:
            self.dispatch.jobs.spawn(old.aclose())

    def beat(self, name: str) -> Joined:
        node = self.state.nodes.get(name)
        if node is None or name not in self.tracker.workers:
            raise UnknownNode(name)
        self.tracker.heard(name)
        if name not in self.state.ready:
            self.tracker.poke(name)  # back, or just listening: ask for its capacity now
        return self._answer(node)

    def _answer(self, node: Node) -> Joined:
        return Joined(Name=node.Name, Status=node.Status, HeartbeatInterval=self.heartbeat.interval)

    # --- drains and eligibility -------------------------------------------------------

    def get(self, name: str) -> Node:
        node = self.state.nodes.get(name)
        if node is None:
            raise UnknownNode(name)
        return node

    async def drain(self, name: str, deadline: float | None = None) -> Node:
        """Start (or re-time) a drain; ``deadline`` in seconds from now."""
        node = self.get(name)
        due, wall = None, ""
        if deadline is not None:
            due = self.clock.monotonic() + deadline
            wall = _rfc3339(task_module.now() + timedelta(seconds=deadline))
        await self._decide(node, Eligible=False, Draining=True, DrainDeadline=wall)
        self._deadlines.pop(name, None)
        if due is not None:
            self._deadlines[name] = due
        self.state.events.emit(node_draft("NodeDrain", node))
        log.info("node %s: draining%s", name, f" (deadline {deadline:g}s)" if deadline else "")
        self.state.changed.set()
        return node

    async def set_eligible(self, name: str, eligible: bool) -> Node:
        """Eligible again (which ends a drain), or not (``cube node ineligible``:
        its tasks stay, new ones go elsewhere)."""
        node = self.get(name)
        if eligible:  # which ends a drain
            await self._decide(node, Eligible=True, Draining=False, DrainDeadline="")
            self._deadlines.pop(name, None)
        else:
            await self._decide(node, Eligible=False)
        self.state.events.emit(node_draft("NodeEligibility", node))
        log.info("node %s: %s", name, "eligible" if eligible else "ineligible")
        if eligible:
            self.state.room()  # tasks waiting for room may fit there now
        self.state.changed.set()
        return node

    async def _decide(self, node: Node, **decided: bool | str) -> None:
        """Store a decision about a node, then make it: a write that fails changes
        nothing, and the loop, which may run while the write is awaited, never acts on a
        decision the store has not kept."""
        await self.backend.save_nodes([node.record().model_copy(update=decided)])
        for field, value in decided.items():
            setattr(node, field, value)

    async def remove(self, name: str) -> None:
        node = self.get(name)
        if node.is_ready:
            raise NodeBusy(f"node {name} is ready: drain it and stop its worker before removing it")
        self.state.remove_node(name)
        self.tracker.remove(name)
        self._deadlines.pop(name, None)
        client = self.clients.pop(name, None)
        if client is not None:
            self.dispatch.jobs.spawn(client.aclose())
        await self.backend.delete_node(name)
        log.info("node %s removed", name)

    async def drain_pass(self, jobs: Jobs) -> list[Move]:
        """The moves due now for every drain in progress; finished drains are noted."""
        self.next_due = None
        names = [n.Name for n in self.state.nodes.values() if n.Draining]
        if not names:
            return []
        now = self.clock.monotonic()
        draining = []
        involved: set[str] = set()
        for name in names:
            tasks, others = self._on(name)
            involved.update(t.Job for t in tasks if t.Job)
            draining.append(Draining(name, tasks, self._deadlines.get(name), others))
        budgets = {}
        for job_name in involved:
            record = jobs.records.get(job_name)
            if record is None:
                continue
            unhealthy, due = jobs.unhealthy(job_name)
            if due is not None:
                self._due(due)
            budgets[job_name] = Budget(record.Job.Update.MaxParallel, unhealthy)
        for drain in draining:
            if drain.deadline is not None and drain.deadline > now:
                self._due(drain.deadline)
        plan = plan_drains(draining, budgets, now, self.fits)
        for name in plan.done:
            await self._finish(name)
        return plan.moves

    def fits(self, task: Task) -> bool:
        """Some node other than the task's own has room for it now."""
        moved = task.model_copy(update={"Node": ""})
        nodes = [n for n in self.state.nodes.values() if n.Name != task.Node]
        return bool(self.scheduler.select_candidates(moved, nodes).nodes)

    def _on(self, name: str) -> tuple[list[Task], int]:
        """The node's tasks to move (placed or running there, to run), and how many
        others hold room there (Failed ones to be restarted)."""
        tasks, others = [], 0
        for task_id in self.state.held_on(name):
            task = self.state.tasks[task_id]
            if task.DesiredState is not State.RUNNING:
                continue  # being stopped
            if task.State in (State.SCHEDULED, State.RUNNING):
                tasks.append(task)
            else:
                others += 1
        return sorted(tasks, key=lambda t: (t.Job, str(t.ID))), others

    async def _finish(self, name: str) -> None:
        node = self.state.nodes[name]
        await self._decide(node, Draining=False, DrainDeadline="")
        self._deadlines.pop(name, None)
        self.state.events.emit(node_draft("NodeDrainComplete", node))
        log.info("node %s: drain complete; it takes no new work until made eligible", name)

    def _due(self, at: float) -> None:
        if self.next_due is None or at < self.next_due:
            self.next_due = at

    def _monotonic(self, wall: str) -> float:
        try:
            when = datetime.fromisoformat(wall.replace("Z", "+00:00"))
        except ValueError:
            return self.clock.monotonic()
        return self.clock.monotonic() + (when - task_module.now()).total_seconds()


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
