"""The job reconciler: a job, its tasks and its deployment in; a list of actions out.

Pure, as the task reconciler is (after Nomad's ``scheduler/reconcile``): no I/O, no
clock of its own (ages come in as numbers), so every rule is a row of a table-driven
test. The manager turns the actions into task versions through its one write path.

Per job, with ``V`` its current version:

- **live** tasks are those to keep running: not stopped, not ended for good (a Failed
  task the task reconciler will restart is still live). *new* ones are of version V,
  *old* ones of an earlier version. A service replaces any task that ended (its
  RestartPolicy decides first whether it restarts in place), so Count stay live.
- **healthy**: Running for ``MinHealthyTime`` with its health checks passing.
- **rolling update** (old tasks live), ``MaxParallel = P``. ``start-first``: at most P
  new tasks not yet healthy at a time; an old task stops for each new one that turns
  healthy, so healthy tasks never drop below Count. ``stop-first``: up to P old tasks
  stop first (those not serving first), new ones take their places.
- **deployment**: successful once Count new tasks are healthy and no old one is left;
  failed when a new task is not healthy within ``HealthyDeadline`` or fails; then, with
  ``AutoRevert``, the job goes back to its last version whose deployment succeeded.
- **scale**: down stops old versions first, then tasks not healthy, then the newest.
- **batch**: Count tasks run to completion; the job is done once Count have Completed,
  and failed if a task fails for good.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cube.job import Deployment, DeploymentStatus, Job


@dataclass(frozen=True)
class Member:
    """What the job reconciler needs to know of one of the job's tasks."""

    id: uuid.UUID
    version: int
    live: bool  # to keep running (see the module docstring)
    age: float  # seconds since the task was created
    running_for: float | None = None  # seconds Running, None if not Running
    checks_ok: bool = True  # its health checks pass (or it has none)
    completed: bool = False  # ended Completed
    failed: bool = False  # Failed: ended for good, or waiting for a restart

    def healthy(self, min_healthy_time: float) -> bool:
        return (
            self.live
            and self.running_for is not None
            and self.running_for >= min_healthy_time
            and self.checks_ok
        )


@dataclass(frozen=True)
class Create:
    version: int
    count: int


@dataclass(frozen=True)
class Stop:
    ids: tuple[uuid.UUID, ...]
    reason: str


@dataclass(frozen=True)
class Progress:
    deployment: Deployment


@dataclass(frozen=True)
class Revert:
    version: int
    reason: str


Action = Create | Stop | Progress | Revert


def reconcile_job(
    job: Job,
    deployment: Deployment | None,
    tasks: Sequence[Member],
    last_good: int | None = None,
) -> list[Action]:
    live = [m for m in tasks if m.live]
    if job.Stopped:
        return [Stop(_ids(live), "job stopped")] if live else []
    if job.Type == "batch":
        return _batch(job, deployment, tasks, live)
    return _service(job, deployment, live, last_good)


def _service(
    job: Job, deployment: Deployment | None, live: list[Member], last_good: int | None
) -> list[Action]:
    update, count, version = job.Update, job.Count, job.Version
    new = [m for m in live if m.version == version]
    old = [m for m in live if m.version != version]
    healthy = [m for m in new if m.healthy(update.MinHealthyTime)]
    # The deployment of this version, if it has one (a newer submission supersedes).
    current = deployment if deployment is not None and deployment.Version == version else None
    deploying = current is not None and current.Status == "running"
    actions: list[Action] = []

    late = [
        m
        for m in new
        if not m.healthy(update.MinHealthyTime) and (m.failed or m.age >= update.HealthyDeadline)
    ]
    if deploying and late:
        deadline = f"{update.HealthyDeadline:g} s"
        why = f"{len(late)} task(s) of version {version} not healthy within {deadline}"
        actions.append(Progress(_report(version, "failed", count, new, healthy, late, why)))
        if update.AutoRevert and last_good is not None and last_good != version:
            actions.append(Revert(last_good, f"deployment of version {version} failed"))
        return actions
    failed_rollout = current is not None and current.Status == "failed"

    if old and failed_rollout:
        # The rollout stopped where it is; the job still runs Count tasks (found by the
        # simulator: a failed rollout whose tasks then ended was left short for good).
        # Above Count (a start-first surge) it stays as it is: what to stop is the user's
        # call (a revert, a new version, a scale).
        if len(new) + len(old) < count:
            actions.append(Create(version, count - len(new) - len(old)))
    elif old:
        actions += _roll(job, new, old, healthy)
    else:
        if len(new) < count:
            actions.append(Create(version, count - len(new)))
        elif len(new) > count:
            extra = _stop_order(new, update.MinHealthyTime)[: len(new) - count]
            actions.append(Stop(_ids(extra), f"scaled down to {count}"))

    if deploying and current is not None:
        done = not old and len(new) == count and len(healthy) == count
        status: DeploymentStatus = "successful" if done else "running"
        report = _report(version, status, count, new, healthy, [], current.Reason)
        if report != current:
            actions.append(Progress(report))
    return actions


def _roll(job: Job, new: list[Member], old: list[Member], healthy: list[Member]) -> list[Action]:
    update, count, version = job.Update, job.Count, job.Version
    parallel = update.MaxParallel
    actions: list[Action] = []
    in_flight = len(new) - len(healthy)
    stop: list[Member] = []
    if update.Order == "start-first":
        # Each new task that turned healthy lets one old task go (those not serving first).
        excess = len(old) + len(healthy) - count
        stop = _stop_order(old, update.MinHealthyTime)[: max(excess, 0)]
        room = min(parallel - in_flight, count - len(new))
        if room > 0:
            actions.append(Create(version, room))
    else:
        serving = len(healthy) + sum(1 for m in old if m.healthy(update.MinHealthyTime))
        unavailable = max(count - serving, 0)
        can_stop = max(parallel - unavailable, 0) + max(len(old) + len(new) - count, 0)
        stop = _stop_order(old, update.MinHealthyTime)[: min(can_stop, len(old))]
        room = min(count - len(new) - (len(old) - len(stop)), parallel - in_flight)
        if room > 0:
            actions.append(Create(version, room))
    if stop:
        actions.insert(0, Stop(_ids(stop), f"replaced by version {version}"))
    return actions


def _batch(
    job: Job, deployment: Deployment | None, tasks: Sequence[Member], live: list[Member]
) -> list[Action]:
    done = sum(1 for m in tasks if m.completed)
    failed = [m for m in tasks if m.failed and not m.live]
    actions: list[Action] = []
    need = job.Count - done - len(live)
    if need > 0 and not failed:
        actions.append(Create(job.Version, need))
    if deployment is not None and deployment.Status == "running":
        status: DeploymentStatus = "successful" if done >= job.Count else "running"
        why = ""
        if failed:
            why, status = f"{len(failed)} task(s) failed for good", "failed"
        report = Deployment(
            Version=job.Version,
            Status=status,
            Desired=job.Count,
            Placed=len(live) + done,
            Healthy=done,
            Unhealthy=len(failed),
            Reason=why,
        )
        if report != deployment:
            actions.append(Progress(report))
    return actions


def _stop_order(members: list[Member], min_healthy_time: float) -> list[Member]:
    """Who goes first: older versions, then those not healthy, then the newest."""
    return sorted(
        members,
        key=lambda m: (m.version, m.healthy(min_healthy_time), m.age, str(m.id)),
    )


def _report(
    version: int,
    status: DeploymentStatus,
    count: int,
    new: list[Member],
    healthy: list[Member],
    late: list[Member],
    reason: str,
) -> Deployment:
    return Deployment(
        Version=version,
        Status=status,
        Desired=count,
        Placed=len(new),
        Healthy=len(healthy),
        Unhealthy=len(late),
        Reason=reason,
    )


def _ids(members: Sequence[Member]) -> tuple[uuid.UUID, ...]:
    return tuple(m.id for m in members)
