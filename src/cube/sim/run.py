"""One simulated run: a scenario's steps carried out on a :class:`~cube.sim.world.World`,
the invariants checked after every step and once the cluster is quiet again.

The run writes a trace: each step with its virtual time, what came of it, and at the
end the manager's whole event log. Two runs of one scenario give the same trace, byte
for byte; that is what makes a failure worth a replay command.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cube.job import Job, TaskTemplate, UpdatePolicy
from cube.manager.jobs import JobError, UnknownJob
from cube.sim import invariants
from cube.sim.loop import Spinning, Stalled
from cube.sim.loop import run as run_virtual
from cube.sim.net import Link
from cube.sim.schedule import Scenario, Step
from cube.sim.world import SimWorker, World
from cube.task import State, Task, TaskEvent

QUIET_STEP = 5.0  # virtual seconds between looks while waiting for quiet
QUIET_LOOKS = 8  # the same picture this many looks in a row: quiet
QUIET_LIMIT = 900.0  # no quiet after this long: a liveness failure
LEADER_STEPS = ("leader_crash", "manager_crash", "freeze", "etcd_down")


@dataclass
class Outcome:
    scenario: Scenario
    violation: str | None
    trace: list[str]
    virtual_seconds: float
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return self.violation is None

    @property
    def kind(self) -> str | None:
        """The invariant broken (the violation's first word), for the shrinker."""
        return None if self.violation is None else self.violation.split(":")[0]


@dataclass
class Run:
    scenario: Scenario
    world: World
    trace: list[str] = field(default_factory=list)
    user: invariants.UserView = field(default_factory=invariants.UserView)
    restarts: dict[uuid.UUID, int] = field(default_factory=dict)
    undo: dict[asyncio.Task[None], None] = field(default_factory=dict)

    def log(self, text: str) -> None:
        self.trace.append(f"{asyncio.get_running_loop().time():10.3f} {text}")

    def later(self, seconds: float, action: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def wait_then() -> None:
            await asyncio.sleep(seconds)
            await action()

        job = asyncio.create_task(wait_then())
        self.undo[job] = None
        job.add_done_callback(lambda j: self.undo.pop(j, None))

    def worker(self, index: int) -> SimWorker:
        return self.world.workers[index % len(self.world.workers)]

    # --- steps --------------------------------------------------------------------------

    async def step(self, step: Step) -> None:
        await self.world.bury_manager()
        a = step.args
        kind = step.kind
        if kind == "submit":
            await self.submit(a)
        elif kind == "stop":
            await self.stop(a["pick"])
        elif kind == "exit":
            self.exit(self.worker(a["worker"]), a["pick"], a["code"])
        elif kind == "partition":
            cut = [self.worker(i) for i in a["workers"]]
            links = [w.link for w in cut] + [w.uplink for w in cut if w.uplink is not None]
            for link in links:
                link.cut(a["mode"])
            self.later(a["for"], lambda: _heal(links))
        elif kind in ("lossy", "slow", "duplicate"):
            link = self.worker(a["worker"]).link
            attr, value = {
                "lossy": ("loss", "p"),
                "slow": ("delay", "max"),
                "duplicate": ("duplicate", "p"),
            }[kind]
            setattr(link, attr, a[value])
            self.later(a["for"], lambda: _reset(link, attr))
        elif kind == "worker_crash":
            w = self.worker(a["worker"])
            await self.world.crash_worker(w)
            self.later(a["for"], lambda: self.world.start_worker(w, keep_store=a["keep_store"]))
        elif self.world.leaders is not None and kind in LEADER_STEPS:
            self.log(await self.world.leaders.step(kind, a, self.later))
        elif kind == "manager_crash":
            await self.world.crash_manager()
            self.later(a["for"], self.world.start_manager)
        elif kind == "manager_crash_commit":
            if self.world.backend is not None:
                self.world.backend.armed = (a["commits"], a["after"])
                self.world.restart_after = a["for"]
        elif kind == "docker_down":
            runtime = self.worker(a["worker"]).runtime
            runtime.set_available(False)
            self.later(a["for"], lambda: _docker_up(runtime))
        elif kind == "health":
            self.health(a["pick"], a["mode"], a["for"])
        elif kind in ("job", "job_scale", "job_stop", "job_revert"):
            await self.job(kind, a)
        elif kind in ("drain", "eligible", "ineligible"):
            await self.node(kind, self.worker(a["worker"]).name, a.get("deadline"))
        elif kind == "intrude":
            await self.intrude(self.worker(a["worker"]), a["token"])
        elif kind == "tick":
            pass  # a moment that only marks time (a soak's end)
        else:
            raise ValueError(f"unknown step {kind!r}")

    async def submit(self, a: dict[str, Any]) -> None:
        manager = self.world.manager
        tasks = [
            Task(
                Image="cube/busybox",
                Memory=a["memory_mib"] << 20,
                RestartPolicy=a["policy"],
                HealthCheck="/health" if a["health"] else "",
                ExposedPorts={"80/tcp": {}} if a["health"] else None,
            )
            for _ in range(a["count"])
        ]
        self.user.submitted += [t.ID for t in tasks]
        if manager is None:
            self.log("  not acknowledged: the manager is down")
            return
        try:
            await manager.submit_many([TaskEvent(State=State.RUNNING, Task=t) for t in tasks])
        except (Exception, asyncio.CancelledError) as exc:
            self.log(f"  not acknowledged: {type(exc).__name__}")
            return
        self.user.acknowledged += [t.ID for t in tasks]
        self.log("  acknowledged " + " ".join(str(t.ID)[:8] for t in tasks))

    async def stop(self, pick: int) -> None:
        if not self.user.acknowledged:
            return
        task_id = self.user.acknowledged[pick % len(self.user.acknowledged)]
        self.user.stop_asked.add(task_id)
        manager = self.world.manager
        if manager is None:
            self.log(f"  stop {str(task_id)[:8]} not acknowledged: the manager is down")
            return
        try:
            await manager.stop(task_id)
        except (Exception, asyncio.CancelledError) as exc:
            self.log(f"  stop {str(task_id)[:8]} not acknowledged: {type(exc).__name__}")
            return
        self.user.stopped.add(task_id)
        self.log(f"  stopped {str(task_id)[:8]}")

    async def job(self, kind: str, a: dict[str, Any]) -> None:
        manager = self.world.manager
        if manager is None:
            self.log("  not acknowledged: the manager is down")
            return
        try:
            if kind == "job":
                task = TaskTemplate(
                    Image="cube/busybox", Env=[f"V={a['env']}"], Memory=a["memory_mib"] << 20
                )
                update = UpdatePolicy(
                    MaxParallel=a["parallel"],
                    MinHealthyTime=1,
                    HealthyDeadline=30,
                    Order=a["order"],
                )
                job = Job(Name=a["name"], Count=a["count"], Task=task, Update=update)
                # `cube plan` first, as a careful user does: it must change nothing.
                changed = invariants.dry_run(manager, job)
                if changed:
                    self.user.plan_changed.append(changed)
                record = await manager.jobs.submit(job)
            elif kind == "job_scale":
                record = await manager.jobs.scale(a["name"], a["count"])
            elif kind == "job_revert":
                record = await manager.jobs.revert(a["name"], a["version"])
            else:
                record = await manager.jobs.stop(a["name"])
        except (UnknownJob, JobError) as exc:
            self.log(f"  refused: {type(exc).__name__} {exc}")
            return
        except (Exception, asyncio.CancelledError) as exc:
            self.log(f"  not acknowledged: {type(exc).__name__}")
            return
        self.log(f"  job {record.Job.Name} v{record.Job.Version} x{record.Job.Count}")

    async def node(self, kind: str, name: str, deadline: float | None) -> None:
        manager = self.world.manager
        if kind != "drain":
            self.user.drained.discard(name)  # whether or not it is acknowledged
        if manager is None:
            self.log("  not acknowledged: the manager is down")
            return
        try:
            if kind == "drain":
                await manager.members.drain(name, deadline)
                self.user.drained.add(name)
            else:
                await manager.members.set_eligible(name, kind == "eligible")
        except (Exception, asyncio.CancelledError) as exc:
            self.log(f"  not acknowledged: {type(exc).__name__}")
            return
        self.log(f"  {kind} {name}")

    async def intrude(self, w: SimWorker, token: str) -> None:
        """A stranger (no token, a guessed one, another worker's) sends ``w`` a task."""
        if token == "other":
            others = [o for o in self.world.workers if o is not w and o.joins]
            token = self.world.secret(others[0]) if others else "secret-of-nobody"
        task = Task(Image="cube/busybox")
        self.user.intruded.add(task.ID)
        event = TaskEvent(State=State.RUNNING, Task=task).model_dump_json()
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with httpx.AsyncClient(transport=w.link, timeout=5.0) as client:
            try:
                answer = await client.post(f"http://{w.name}/tasks", content=event, headers=headers)
            except httpx.HTTPError as exc:
                self.log(f"  intruder on {w.name}: {type(exc).__name__}")
                return
        self.log(f"  intruder on {w.name}: {answer.status_code}")
        if answer.status_code != 401:
            self.user.let_in.append(f"{w.name} answered {answer.status_code} to a stranger")

    def exit(self, w: SimWorker, pick: int, code: int) -> None:
        running = sorted(
            (info for info in w.runtime.containers if info.running), key=lambda i: i.name
        )
        if not running:
            return
        info = running[pick % len(running)]
        task_id = uuid.UUID(info.labels["cube.task"])
        if code == 0:
            self.user.exited_zero.add(task_id)
        w.runtime.exit(info.id, code)
        self.log(f"  {str(task_id)[:8]} exited {code} on {w.name}")

    def health(self, pick: int, mode: str, lasting: float) -> None:
        checked = [t for t in self.user.acknowledged if t in self.user.health_checked]
        if not checked or self.world.health is None:
            return
        task_id = checked[pick % len(checked)]
        faults = self.world.health.failing if mode == "fail" else self.world.health.slow
        faults.add(task_id)

        async def clear() -> None:
            faults.discard(task_id)

        self.log(f"  health of {str(task_id)[:8]}: {mode}")
        self.later(lasting, clear)

    # --- running it -------------------------------------------------------------------

    async def main(self) -> str | None:
        for w in self.world.workers:
            await self.world.start_worker(w)
        await self.world.start_manager()
        loop = asyncio.get_running_loop()
        for step in self.scenario.steps:
            await asyncio.sleep(max(step.at - loop.time(), 0.0))
            self.log(step.describe())
            await self.step(step)
            if step.kind == "submit" and step.args["health"]:
                self.user.health_checked.update(self.user.submitted[-step.args["count"] :])
            violation = self.check(final=False)
            if violation:
                return violation
        return await self.quiesce()

    async def quiesce(self) -> str | None:
        """Faults end, everything comes back; then time runs until nothing changes."""
        self.log("quiesce")
        for job in list(self.undo):
            job.cancel()
        await asyncio.gather(*self.undo, return_exceptions=True)
        await self.world.bury_manager()
        if self.world.backend is not None:
            self.world.backend.armed = None
        for w in self.world.workers:
            w.link.loss = w.link.delay = w.link.duplicate = 0.0
            w.link.heal()
            if w.uplink is not None:
                w.uplink.heal()
            w.runtime.set_available(True)
            await self.world.start_worker(w)
        if self.world.health is not None:
            self.world.health.failing.clear()
            self.world.health.slow.clear()
        if self.world.leaders is not None:
            self.world.leaders.store.recover()
        await self.world.start_manager()
        loop = asyncio.get_running_loop()
        start, last, same = loop.time(), None, 0
        while same < QUIET_LOOKS or self.world.manager is None:  # quiet, and led
            await asyncio.sleep(QUIET_STEP)
            violation = self.check(final=False)
            if violation:
                return violation
            picture = invariants.picture(self.world)
            same = same + 1 if picture == last else 0
            last = picture
            if loop.time() - start > QUIET_LIMIT:
                return (
                    f"liveness: no quiet after {QUIET_LIMIT:.0f} s; still changing: {picture[:300]}"
                )
        self.log("quiet")
        return self.check(final=True)

    def check(self, *, final: bool) -> str | None:
        violation = invariants.check(self.world, self.user, self.restarts, final=final)
        if violation:
            self.log(f"VIOLATION {violation}")
        return violation


async def _heal(links: list[Link]) -> None:
    for link in links:
        link.heal()


async def _reset(link: Link, attr: str) -> None:
    setattr(link, attr, 0.0)


async def _docker_up(runtime: Any) -> None:
    runtime.set_available(True)


def simulate(scenario: Scenario, root: Path) -> Outcome:
    """Carry out ``scenario`` in ``root`` (an empty directory) on virtual time."""
    began = time.perf_counter()
    rngs = {}

    def link(name: str) -> Link:
        rngs[name] = random.Random(f"{scenario.seed}/{name}")
        return Link(name, rngs[name])

    box: dict[str, Any] = {}

    async def main() -> None:
        world = World.build(root, scenario.workers, link, scenario.joining, scenario.managers)
        run = Run(scenario, world)
        box["run"], box["leaders"] = run, world.leaders
        try:
            box["violation"] = await run.main()
        finally:
            box["virtual"] = asyncio.get_running_loop().time()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                for job in list(run.undo):
                    job.cancel()
                await world.close()

    try:
        run_virtual(main, scenario.seed)
    except (Spinning, Stalled) as exc:
        box["violation"] = f"liveness: {exc}"
        box.setdefault("virtual", 0.0)
    run = box["run"]
    if isinstance(box.get("violation"), str) and box["violation"].startswith("liveness: the"):
        run.trace.append(f"VIOLATION {box['violation']}")
    leaders = box.get("leaders")
    trace = run.trace + (
        _event_log(root / "manager.db") if leaders is None else leaders.event_log()
    )
    return Outcome(
        scenario, box.get("violation"), trace, box["virtual"], time.perf_counter() - began
    )


def _event_log(path: Path) -> list[str]:
    """The manager's stored events, in order, as stored."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT value FROM events ORDER BY seq").fetchall()
    return [f"event {row[0]}" for row in rows]
