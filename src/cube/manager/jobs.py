"""Jobs as the manager keeps them, and the effector of the job reconciler.

The jobs' records (spec, versions, deployment) are saved through the backend; their
tasks are ordinary tasks that say which job and version they belong to (``Job``,
``JobVersion``), written through :meth:`State.commit` like any other. The job
reconciler (:mod:`cube.manager.deploy`) is level-triggered: each pass counts a job's
tasks afresh, so a crash between saving a job and creating its tasks loses nothing and
duplicates nothing; the next pass creates what is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from cube.clock import Clock
from cube.job import Deployment, Job, JobRecord, admit
from cube.manager.backend import Backend
from cube.manager.deploy import Create, Member, Progress, Revert, Stop, reconcile_job
from cube.manager.events import job_drafts
from cube.manager.plan import ChangeKind
from cube.manager.state import State as ClusterState
from cube.task import State, Task, TaskEvent

_LIVE = frozenset({State.PENDING, State.SCHEDULED, State.RUNNING})


class UnknownJob(LookupError):
    pass


class JobError(ValueError):
    """A request about a job that cannot be done as asked (a 400 or a 404)."""


class Jobs:
    def __init__(
        self,
        state: ClusterState,
        backend: Backend,
        clock: Clock,
        restarts: Callable[[Task], bool],
        checks_ok: Callable[[Task], bool],
    ) -> None:
        self.state = state
        self.backend = backend
        self.clock = clock
        self.restarts = restarts
        self.checks_ok = checks_ok
        self.records: dict[str, JobRecord] = {r.Job.Name: r for r in backend.load_jobs()}
        # When the manager first saw each job task (for HealthyDeadline); after a manager
        # restart, deadlines count from the restart, as restart backoffs do.
        self._born: dict[uuid.UUID, float] = {}
        self.next_due: float | None = None

    # --- requests ---------------------------------------------------------------------

    def all(self) -> list[JobRecord]:
        return sorted(self.records.values(), key=lambda r: r.Job.Name)

    def get(self, name: str) -> JobRecord:
        record = self.records.get(name)
        if record is None:
            raise UnknownJob(name)
        return record

    def tasks_of(self, name: str) -> list[Task]:
        return [self.state.tasks[i] for i in self.state.by_job.get(name, ())]

    async def submit(self, job: Job) -> JobRecord:
        """Create or update: a new version starts a deployment; the same spec changes
        nothing but Count."""
        current = self.records.get(job.Name)
        admitted = admit(job, current.Job if current else None)
        if current is not None and admitted == current.Job:
            return current
        return await self._save_version(admitted, current)

    async def scale(self, name: str, count: int) -> JobRecord:
        record = self.get(name)
        job = record.Job.model_copy(update={"Count": count, "Stopped": False})
        return await self._save(record.model_copy(update={"Job": job}))

    async def revert(self, name: str, version: int, reason: str = "") -> JobRecord:
        record = self.get(name)
        old = next((v for v in record.Versions if v.Version == version), None)
        if old is None:
            raise JobError(f"job {name} has no version {version}")
        wanted = old.model_copy(update={"Count": record.Job.Count})
        admitted = admit(wanted, record.Job)
        if admitted.Version == record.Job.Version:
            return record  # already that spec
        why = f"reverted to version {version}" + (f": {reason}" if reason else "")
        return await self._save_version(admitted, record, why)

    async def stop(self, name: str) -> JobRecord:
        record = self.get(name)
        job = record.Job.model_copy(update={"Stopped": True})
        return await self._save(record.model_copy(update={"Job": job}))

    async def _save_version(
        self, job: Job, current: JobRecord | None, reason: str = ""
    ) -> JobRecord:
        # A Count-only change (or a stopped job run again) saves its version anew.
        older = [v for v in (current.Versions if current else []) if v.Version != job.Version]
        record = JobRecord(
            Job=job,
            Versions=[job, *older],
            Deployment=Deployment(Version=job.Version, Desired=job.Count, Reason=reason),
            LastGood=current.LastGood if current else None,
        )
        return await self._save(record)

    async def _save(self, record: JobRecord) -> JobRecord:
        await self.backend.save_job(record)
        self.state.events.emit(*job_drafts(self.records.get(record.Job.Name), record))
        self.records[record.Job.Name] = record
        self.state.changed.set()  # the loop runs the job reconciler
        return record

    def plan(self, job: Job) -> tuple[Job, ChangeKind, int, int]:
        """What submitting ``job`` would do first, changing nothing: the job as it would
        be admitted, the kind of change, and how many tasks the job reconciler would
        create and stop in its first pass."""
        record = self.records.get(job.Name)
        current = record.Job if record is not None else None
        admitted = admit(job, current)
        change: ChangeKind
        if current is None:
            change = "create"
        elif admitted == current:
            change = "none"
        elif admitted.Version != current.Version:
            change = "update"
        else:
            change = "scale"  # Count alone, or a stopped job run again
        deployment = record.Deployment if record is not None else None
        if current is None or admitted.Version != current.Version:
            deployment = Deployment(Version=admitted.Version, Desired=admitted.Count)
        now = self.clock.monotonic()
        members = [self._member(t, now, remember=False) for t in self.tasks_of(job.Name)]
        last_good = record.LastGood if record is not None else None
        actions = reconcile_job(admitted, deployment, members, last_good)
        create = sum(a.count for a in actions if isinstance(a, Create))
        stop = sum(len(a.ids) for a in actions if isinstance(a, Stop))
        return admitted, change, create, stop

    # --- reconciling ------------------------------------------------------------------

    async def reconcile(self) -> None:
        """One pass over every job; remembers when the next one falls due by itself."""
        self.next_due = None
        if not self.records:
            return
        by_job = {name: self.tasks_of(name) for name in self.records}
        for name, tasks in by_job.items():
            await self._reconcile(self.records[name], tasks)
        seen = {t.ID for tasks in by_job.values() for t in tasks}
        self._born = {k: v for k, v in self._born.items() if k in seen}

    async def _reconcile(self, record: JobRecord, tasks: list[Task]) -> None:
        job = record.Job
        now = self.clock.monotonic()
        members = [self._member(task, now) for task in tasks]
        for action in reconcile_job(job, record.Deployment, members, record.LastGood):
            if isinstance(action, Create):
                await self._create(job, action.count)
            elif isinstance(action, Stop):
                await self._stop(action.ids, action.reason)
            elif isinstance(action, Progress):
                good = action.deployment.Status == "successful"
                last = action.deployment.Version if good else record.LastGood
                record = await self._save(
                    record.model_copy(update={"Deployment": action.deployment, "LastGood": last})
                )
            elif isinstance(action, Revert):
                why = f"{action.reason}: {record.Deployment.Reason}" if record.Deployment else ""
                record = await self.revert(job.Name, action.version, why or action.reason)
        self._note_due(record.Job, members, now)

    def unhealthy(self, name: str) -> tuple[int, float | None]:
        """How many of the job's live tasks are not healthy (the job reconciler's rule,
        whatever their version), and when the next could turn healthy by waiting."""
        record = self.records.get(name)
        if record is None:
            return 0, None
        now = self.clock.monotonic()
        min_time = record.Job.Update.MinHealthyTime
        count, due = 0, None
        for task in self.tasks_of(name):
            m = self._member(task, now)
            if not m.live or m.healthy(min_time):
                continue
            count += 1
            if m.checks_ok and m.running_for is not None:
                at = now + min_time - m.running_for
                due = at if due is None else min(due, at)
        return count, due

    def _member(self, task: Task, now: float, remember: bool = True) -> Member:
        born = self._born.setdefault(task.ID, now) if remember else self._born.get(task.ID, now)
        wanted = task.DesiredState is State.RUNNING
        live = wanted and (
            task.State in _LIVE or (task.State is State.FAILED and self.restarts(task))
        )
        running = task.State is State.RUNNING
        return Member(
            id=task.ID,
            version=task.JobVersion,
            live=live,
            age=now - born,
            running_for=now - self.state.since.get(task.ID, now) if running else None,
            checks_ok=self.checks_ok(task),
            completed=task.State is State.COMPLETED and wanted,
            failed=task.State is State.FAILED,
        )

    def _note_due(self, job: Job, members: list[Member], now: float) -> None:
        """When this job's picture changes with no event: a task turns healthy, or its
        deadline passes."""
        update = job.Update
        for m in members:
            if not m.live or m.version != job.Version:
                continue
            dues = [now + update.HealthyDeadline - m.age]
            if m.running_for is not None and m.running_for < update.MinHealthyTime:
                dues.append(now + update.MinHealthyTime - m.running_for)
            due = min(d for d in dues if d > now) if any(d > now for d in dues) else None
            if due is not None and (self.next_due is None or due < self.next_due):
                self.next_due = due

    async def _create(self, job: Job, count: int) -> None:
        tasks = [
            job.make_task(Job=job.Name, JobVersion=job.Version, Name=f"{job.Name}-v{job.Version}")
            for _ in range(count)
        ]
        now = self.clock.monotonic()
        for task in tasks:
            self._born[task.ID] = now
        await self.state.commit(tasks, [TaskEvent(State=State.RUNNING, Task=t) for t in tasks])

    async def _stop(self, ids: tuple[uuid.UUID, ...], reason: str) -> None:
        tasks = [self.state.tasks[task_id] for task_id in ids]
        await self.state.ask_to_stop(tasks, f"cancelled: {reason}")
