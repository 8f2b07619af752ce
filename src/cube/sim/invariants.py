"""What must hold in every simulated run, whatever the faults.

Checked after every step (the safety properties) and once the cluster is quiet again
(those, and what a converged cluster must look like). Each check returns a message
starting with the invariant's name, or None.

To add one when a feature lands: write a function of (world, user view) here, add it to
:data:`ALWAYS` or :data:`WHEN_QUIET`, and break the feature once to see a seed find it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cube.feasible import Demand
from cube.job import Job
from cube.manager.manager import Manager
from cube.manager.plan import plan_job
from cube.sim import terms
from cube.sim.world import World
from cube.task import State, Task

_HOLDING = (State.SCHEDULED, State.RUNNING)


@dataclass
class UserView:
    """What the simulated user did and was told."""

    submitted: list[uuid.UUID] = field(default_factory=list)
    acknowledged: list[uuid.UUID] = field(default_factory=list)  # a 201 came back
    stop_asked: set[uuid.UUID] = field(default_factory=set)  # acknowledged or not
    stopped: set[uuid.UUID] = field(default_factory=set)  # the stop was acknowledged
    exited_zero: set[uuid.UUID] = field(default_factory=set)  # a container of it exited 0
    health_checked: set[uuid.UUID] = field(default_factory=set)
    drained: set[str] = field(default_factory=set)  # drains acknowledged, not undone since
    intruded: set[uuid.UUID] = field(default_factory=set)  # sent to a worker by a stranger
    let_in: list[str] = field(default_factory=list)  # a worker answered a stranger but 401
    # A reader of GET /events that resumes where it left off, whatever the manager does.
    event_index: int = 0
    told: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> last payload
    plan_changed: list[str] = field(default_factory=list)  # what a dry run changed


def _short(task_id: uuid.UUID) -> str:
    return str(task_id)[:8]


def acknowledged_kept(m: Manager, user: UserView, _: World) -> str | None:
    for task_id in user.acknowledged:
        if task_id not in m.state.tasks:
            return f"lost: acknowledged task {_short(task_id)} is not in the manager's state"
    return None


def completed_only_if_done(m: Manager, user: UserView, _: World) -> str | None:
    for task in m.state.tasks.values():
        asked = task.DesiredState is State.COMPLETED  # a stop is stored on the task
        if asked and not task.Job and task.ID not in user.stop_asked:
            return f"completed: {_short(task.ID)} is to stop though the user never asked"
        if task.State is State.COMPLETED and not asked and task.ID not in user.exited_zero:
            return (
                f"completed: {_short(task.ID)} is Completed ({task.Reason!r}) though it "
                f"never exited 0 and nobody stopped it"
            )
    return None


def reservations_add_up(m: Manager, _: UserView, __: World) -> str | None:
    if m.state.in_flight:
        # A commit is in flight (on etcd it takes a while): the placements it carries
        # are held ahead of it by design (ClusterState.hold), given back if it fails.
        return None
    held: dict[str, list[Task]] = {name: [] for name in m.state.nodes}
    for task in m.state.tasks.values():
        holds = task.State in _HOLDING or (
            task.State is State.FAILED
            and task.DesiredState is State.RUNNING
            and m._will_restart(task)
        )
        if holds and task.Node in held:
            held[task.Node].append(task)
    for name, node in m.state.nodes.items():
        tasks = held[name]
        memory = sum(Demand.of(t).memory_kb for t in tasks)
        if node.TaskCount != len(tasks) or node.MemoryAllocated != memory:
            return (
                f"reservations: {name} holds {node.TaskCount} tasks, {node.MemoryAllocated} kB; "
                f"its placed tasks add up to {len(tasks)}, {memory} kB"
            )
        if node.Memory and node.MemoryAllocated > node.Memory:
            return f"reservations: {name} has {node.MemoryAllocated} kB reserved of {node.Memory}"
    return None


class RestartCounts:
    """RestartCount never goes down, across manager restarts too."""

    def __init__(self, seen: dict[uuid.UUID, int]) -> None:
        self.seen = seen

    def __call__(self, m: Manager, _: UserView, __: World) -> str | None:
        for task in m.state.tasks.values():
            before = self.seen.get(task.ID, 0)
            if task.RestartCount < before:
                return f"restart-count: {_short(task.ID)} went from {before} to {task.RestartCount}"
            self.seen[task.ID] = task.RestartCount
        return None


def exactly_once(m: Manager, user: UserView, world: World) -> str | None:
    copies: dict[uuid.UUID, int] = {}
    for w in world.workers:
        for task_id, n in w.running().items():
            copies[task_id] = copies.get(task_id, 0) + n
    for task_id, n in copies.items():
        task = m.state.tasks.get(task_id)
        if task_id in user.stopped and n:
            return f"stopped-runs: {_short(task_id)} was stopped yet runs {n}x"
        if task is None:
            return f"stray: {_short(task_id)} runs {n}x but the manager never heard of it"
        if task.DesiredState is State.RUNNING and task.State is State.RUNNING and n != 1:
            return f"exactly-once: {_short(task_id)} runs {n}x"
        if task.State is not State.RUNNING and n:
            return f"exactly-once: {_short(task_id)} is {task.State.label} yet runs {n}x"
    for task in m.state.tasks.values():
        if task.DesiredState is not State.RUNNING or copies.get(task.ID, 0) == 1:
            continue
        waits = (
            task.State is State.PENDING
            or (task.State is State.SCHEDULED and not task.Node)  # moved, waiting for room
            or (task.State is State.FAILED and m._will_restart(task))
        )
        if waits and not _fits_somewhere(m, task):
            continue  # no room anywhere: waiting is right
        if task.State in (State.COMPLETED, State.FAILED) and not waits:
            continue  # ended, not to be restarted
        return (
            f"exactly-once: {_short(task.ID)} should run ({task.State.label}, "
            f"{task.Reason!r}) but runs {copies.get(task.ID, 0)}x"
        )
    return None


def _fits_somewhere(m: Manager, task: Task) -> bool:
    """Would any ready node take it, its own room (if it holds some) counted free?"""
    need = Demand.of(task).memory_kb
    for name in m.state.ready:
        node = m.state.nodes[name]
        free = node.Memory - node.MemoryAllocated
        if task.State is State.FAILED and task.Node == name:
            free += need
        if node.Docker and node.Eligible and free >= need:
            return True
    return False


def views_agree(m: Manager, _: UserView, world: World) -> str | None:
    for w in world.workers:
        assert w.worker is not None
        theirs = {t.ID: t for t in w.worker.tasks()}
        for task in m.state.tasks.values():
            if task.Node != w.name or task.State is not State.RUNNING:
                continue
            other = theirs.get(task.ID)
            if other is None or other.State is not State.RUNNING:
                seen = other.State.label if other else "nothing"
                return (
                    f"views: manager has {_short(task.ID)} Running on {w.name}, worker has {seen}"
                )
            if other.RestartCount != task.RestartCount:
                return (
                    f"views: {_short(task.ID)} RestartCount {task.RestartCount} in the "
                    f"manager, {other.RestartCount} on {w.name}"
                )
    return None


def jobs_converge(m: Manager, _: UserView, __: World) -> str | None:
    """Once quiet, a service job runs Count tasks, all of its current version (unless
    its deployment failed, or there is no room for them)."""
    for record in m.jobs.all():
        job = record.Job
        if job.Type != "service":
            continue
        # Live as the job reconciler counts: to run, or Failed and to be restarted.
        live = [
            t
            for t in m.jobs.tasks_of(job.Name)
            if t.DesiredState is State.RUNNING
            and (
                t.State in (State.PENDING, *_HOLDING)
                or (t.State is State.FAILED and m._will_restart(t))
            )
        ]
        want = 0 if job.Stopped else job.Count
        failed = record.Deployment is not None and record.Deployment.Status == "failed"
        waiting = [
            t
            for t in live
            if t.State in (State.PENDING, State.FAILED)
            or (t.State is State.SCHEDULED and not t.Node)
        ]
        if waiting and not any(_fits_somewhere(m, t) for t in waiting):
            continue  # no room: waiting is right
        versions = sorted({t.JobVersion for t in live})
        # A failed rollout stays where it stopped: a start-first surge may remain.
        surge = job.Update.MaxParallel if failed and job.Update.Order == "start-first" else 0
        short_or_over = not want <= len(live) <= want + surge
        if short_or_over or (live and versions != [job.Version] and not failed):
            return (
                f"job: {job.Name} v{job.Version} wants {want}, has {len(live)} live "
                f"of versions {versions}"
            )
    return None


def nodes_ready(m: Manager, _: UserView, world: World) -> str | None:
    """Once quiet (every worker up, every link healed), the manager has every worker
    ready: one it cannot command (a refused credential, say) would leave every task
    waiting "for room" and pass every other check."""
    for w in world.workers:
        node = m.state.nodes.get(w.name)
        if node is None or not node.is_ready:
            return f"nodes: {w.name} is up but {'unknown' if node is None else node.Status}"
    return None


def strangers_refused(_: Manager, user: UserView, world: World) -> str | None:
    """A worker takes commands from its manager only: a stranger's task is never there."""
    if user.let_in:
        return f"intruder: {user.let_in[0]}"
    if not user.intruded:
        return None
    for w in world.workers:
        # Point lookups of the strangers' tasks: reading every stored task after every
        # step made this check a large part of a run.
        stored = w.worker is not None and any(
            w.worker.store.get(str(task_id)) is not None for task_id in user.intruded
        )
        if stored or user.intruded & set(w.running()):
            return f"intruder: a stranger's task is on {w.name}"
    return None


def events_follow(m: Manager, user: UserView, _: World) -> str | None:
    """Read on from the last event seen, as a client of GET /events does across
    manager restarts: each index follows the last, none missing, none twice."""
    while batch := m.events.after(user.event_index, limit=1000):
        for event in batch:
            if event.Index != user.event_index + 1:
                return f"events: after {user.event_index} came {event.Index}"
            user.event_index = event.Index
            if event.Topic == "Task":
                user.told[event.Key] = event.Payload
    return None


def events_tell_the_truth(m: Manager, user: UserView, _: World) -> str | None:
    """Once quiet, a task's last event shows the task as the manager holds it: a
    client that keeps a view from the stream alone (the UI) is right."""
    for task in m.state.tasks.values():
        told = user.told.get(str(task.ID))
        if told != task.to_wire():
            seen = "nothing" if told is None else f"{told.get('State')}/{told.get('Node')!r}"
            return f"events: {_short(task.ID)} is {task.State.label} but its events said {seen}"
    return None


def placements_explained(m: Manager, _: UserView, __: World) -> str | None:
    """Every placed task carries the decision that put it where it is (cube.explain)."""
    for task in m.state.tasks.values():
        if task.State in _HOLDING and task.Node:
            record = task.Placement
            if record is None or record.Node != task.Node:
                said = "none" if record is None else repr(record.Node)
                return f"explained: {_short(task.ID)} is on {task.Node}, its decision says {said}"
    return None


def plans_change_nothing(_: Manager, user: UserView, __: World) -> str | None:
    return f"plan: {user.plan_changed[0]}" if user.plan_changed else None


def dry_run(m: Manager, job: Job) -> str | None:
    """Plan ``job`` as `cube plan` does, and say what, if anything, the plan changed."""
    before = _picture_of(m)
    admitted, change, create, stop = m.jobs.plan(job)
    plan_job(admitted, change, create, stop, m.nodes(), m.scheduler)
    after = _picture_of(m)
    changed = [name for name in before if before[name] != after[name]]
    if not changed:
        return None
    return f"planning job {job.Name} changed the manager's {', '.join(changed)}"


def _picture_of(m: Manager) -> dict[str, Any]:
    nodes = [
        (
            n.Name,
            n.TaskCount,
            n.MemoryAllocated,
            n.DiskAllocated,
            n.CpuAllocated,
            sorted(n.PortsAllocated),
            dict(n.JobTasks),
        )
        for n in m.state.nodes.values()
    ]
    return {
        "tasks": dict(m.state.tasks),
        "nodes": nodes,
        "jobs": dict(m.jobs.records),
        "job clocks": dict(m.jobs._born),
        "events": m.events.last,
    }


def placed_where_eligible(m: Manager, _: UserView, world: World) -> str | None:
    """No task is ever placed on a node that takes no new work (drained, ineligible)."""
    return world.scheduler.misplaced[0] if world.scheduler.misplaced else None


def drains_finish(m: Manager, user: UserView, _: World) -> str | None:
    """Once quiet, a drained node runs nothing to keep running but what fits on no
    other node (a drain without a deadline waits for room), and a drain with nothing
    left is over."""
    for task in m.state.tasks.values():
        to_run = task.DesiredState is State.RUNNING and task.State in _HOLDING
        if to_run and task.Node in user.drained and m.members.fits(task):
            return f"drain: {_short(task.ID)} still {task.State.label} on {task.Node}"
    for node in m.state.nodes.values():
        if node.Draining and not any(t.Node == node.Name for t in m.state.tasks.values()):
            return f"drain: {node.Name} still draining, with nothing left on it"
    return None


Check = Callable[[Manager, UserView, World], str | None]
ALWAYS: list[Check] = [
    acknowledged_kept,
    completed_only_if_done,
    reservations_add_up,
    placed_where_eligible,
    strangers_refused,
    events_follow,
    placements_explained,
    plans_change_nothing,
]
WHEN_QUIET: list[Check] = [
    exactly_once,
    views_agree,
    jobs_converge,
    drains_finish,
    nodes_ready,
    events_tell_the_truth,
]


def check(
    world: World, user: UserView, restarts: dict[uuid.UUID, int], *, final: bool
) -> str | None:
    if world.leaders is not None:
        violation = terms.check(world.leaders)
        if violation:
            return violation
    world.follow_leader()  # several managers: the one that leads now, if any
    m = world.manager
    if m is None or world.manager_dead:
        return None  # nothing to ask; checked again once it is back
    checks: list[Check] = [*ALWAYS, RestartCounts(restarts), *(WHEN_QUIET if final else [])]
    for invariant in checks:
        violation = invariant(m, user, world)
        if violation:
            return violation
    return None


def picture(world: World) -> str:
    """Everything that should stop changing once the cluster is quiet."""
    world.follow_leader()
    m = world.manager
    parts = []
    if m is not None:
        for task in sorted(m.state.tasks.values(), key=lambda t: str(t.ID)):
            parts.append(f"{_short(task.ID)}:{task.State.label}:{task.Node}:{task.RestartCount}")
    for w in world.workers:
        running = sorted(str(t)[:8] for t in w.running())
        parts.append(f"{w.name}={','.join(running)}")
    return " ".join(parts)
