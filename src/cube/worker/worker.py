"""The worker: keeps the containers of its tasks in the state it was asked for.

As in the book, the queue holds *desired* state and the store holds *current* state.
Every request (an API call, a Docker event, a periodic check) ends in the same place:
the task's ID goes on the queue, and one of a bounded pool of consumers compares what
is wanted with what is, and acts. A per-task lock keeps two consumers (or a consumer
and a Docker event) from acting on one task at once, while different tasks start
concurrently.

The worker touches only containers labelled with its own name, so several workers can
share one Docker engine, and a restarted worker can find what it owned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cube.background import Background
from cube.runtime.base import (
    ContainerError,
    ContainerInfo,
    ContainerSpec,
    LogOptions,
    LogStream,
    NoSuchContainer,
    Runtime,
    RuntimeUnavailable,
)
from cube.store import Store
from cube.task import InvalidTransition, State, Task, TaskEvent, is_terminal, transition
from cube.worker.metrics import CONTAINER, ENGINE, WorkerMetrics

log = logging.getLogger(__name__)

LABEL_WORKER = "cube.worker"
LABEL_TASK = "cube.task"
LABEL_RESTART = "cube.restart"
DEAD_ACTIONS = frozenset({"die", "oom", "destroy", "kill"})
# Exited containers kept for their logs (Nomad keeps 50 finished allocations).
KEEP_EXITED = 50
STOPPED = "stopped on request"
VANISHED = "container vanished"
_FINISHED = (State.COMPLETED, State.FAILED)
_EPOCH = datetime.fromtimestamp(0, UTC)


class UnknownTask(KeyError):
    """No task with that ID on this worker (the API answers 404)."""


class BadEvent(ValueError):
    """A TaskEvent whose desired state a worker cannot act on (the API answers 400)."""


class NotStarted(LookupError):
    """The task has no container yet, so no logs yet (the API answers 409)."""


class LogsGone(LookupError):
    """The task's container, and with it its logs, is gone (the API answers 410)."""


@dataclass(frozen=True)
class Desired:
    """What was last asked for a task: run this incarnation, or stop it."""

    run: bool
    restart_count: int = 0


@dataclass(frozen=True)
class Capacity:
    """What this worker offers the scheduler; unset parts are the machine's own.

    Like Nomad's ``memory_total_mb``: useful to share a machine between workers, or
    to keep room for things Cube does not run.
    """

    cores: float = 0.0
    memory: int = 0  # bytes
    disk: int = 0  # bytes


# A task as it arrives for a new run: no trace of an earlier container.
_FRESH: dict[str, Any] = {
    "State": State.SCHEDULED,
    "ContainerID": "",
    "HostPorts": None,
    "StartTime": None,
    "FinishTime": None,
    "Reason": "",
}


def container_name(task: Task) -> str:
    """Readable, unique per task and per restart, so a restart never collides."""
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", task.Name).strip("-.")[:40] or "task"
    return f"{slug}-{task.ID.hex[:12]}-{task.RestartCount}"


def container_spec(task: Task, worker: str) -> ContainerSpec:
    return ContainerSpec(
        name=container_name(task),
        image=task.Image,
        cmd=task.Cmd,
        env=list(task.Env or []),
        cpu=task.Cpu,
        memory=task.Memory,
        exposed_ports=task.container_ports(),
        port_bindings=dict(task.PortBindings or {}),
        labels={
            LABEL_WORKER: worker,
            LABEL_TASK: str(task.ID),
            LABEL_RESTART: str(task.RestartCount),
        },
    )


def exit_outcome(info: ContainerInfo | None) -> tuple[State, str]:
    """Map how a container ended to a task state and a reason a person can act on."""
    if info is None:
        return State.FAILED, VANISHED
    if info.oom_killed:
        return State.FAILED, "container was killed: out of memory"
    if info.exit_code == 0:
        return State.COMPLETED, "exited with code 0"
    if info.error:
        return State.FAILED, f"container error: {info.error}"
    return State.FAILED, f"exited with code {info.exit_code}"


class Worker:
    def __init__(
        self,
        name: str,
        store: Store[Task],
        runtime: Runtime,
        *,
        concurrency: int = 32,
        reconcile_interval: float = 5.0,
        stop_timeout: float = 10.0,
        keep_exited: int = KEEP_EXITED,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """``keep_exited``: how many containers that exited by themselves are kept for
        their logs; beyond that the oldest are removed (0: removed at once)."""
        self.name = name
        self.store = store
        self.runtime = runtime
        # Its own registry: the simulator and the tests run many workers in one process.
        self.metrics = metrics or WorkerMetrics()
        self._engine = self.metrics.timed(runtime)  # every call into the engine, timed
        self.concurrency = concurrency
        self.reconcile_interval = reconcile_interval
        self.stop_timeout = stop_timeout
        self.keep_exited = max(0, keep_exited)
        # Exited containers kept for their logs, by task, the one that exited first first.
        self._exited: dict[uuid.UUID, str] = {}
        self._desired: dict[uuid.UUID, Desired] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._queue: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        self._background: list[asyncio.Task[None]] = []
        self._checks = Background(f"worker {name}")
        self._labels = {LABEL_WORKER: name}
        self.docker_ok = False
        # Change tracking, so a manager can ask for what changed since it last looked
        # and wait for the next change instead of polling every task: each stored
        # change gets the next version number; tasks are kept in the order of their
        # latest change. The epoch names this process's numbering.
        self.epoch = uuid.uuid4().hex
        self.version = 0
        self._versions: dict[uuid.UUID, int] = {}
        self._changed = asyncio.Event()
        # Each task's state, and the tasks stored as Running (kept by _save, the one
        # write path): for /metrics, and for every stats sample.
        self._states = {task.ID: task.State for task in store.list()}
        self._running: dict[uuid.UUID, None] = {
            task_id: None for task_id, state in self._states.items() if state is State.RUNNING
        }
        self.metrics.watch(self._states)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Adopt what a previous run left behind, then start reacting."""
        for task in self.store.list():
            if not is_terminal(task.State):
                self._desired[task.ID] = Desired(run=True, restart_count=task.RestartCount)
        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [
            self._watch_events,
            self._reconcile_loop,
        ]
        loops += [self._consume] * self.concurrency
        self._background = [asyncio.create_task(loop()) for loop in loops]

    async def close(self) -> None:
        """Stop the loops, then the checks they started, then close the store and runtime.

        In that order: a loop still running could start a check after the checks were
        cancelled (the event loop reads Docker's events until it ends), or write to a
        closed store. The worker owns its store and runtime; closing the runtime ends
        its event streams and abandons calls still in progress (an image pull), which
        must not hold up a stop.
        """
        loops, self._background = self._background, []
        for job in loops:
            job.cancel()
        for job in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await self._checks.close()
        await self.runtime.close()
        self.store.close()

    # --- requests (sync: they only record intent, the consumers do the work) -------

    def tasks(self) -> list[Task]:
        return self.store.list()

    def get(self, task_id: uuid.UUID) -> Task:
        task = self.store.get(str(task_id))
        if task is None:
            raise UnknownTask(str(task_id))
        return task

    async def logs(self, task_id: uuid.UUID, options: LogOptions) -> LogStream:
        """The output of the task's container: while it runs, and after it exited for as
        long as the container is kept (a stop removes it; so does a restart, whose new
        container's log starts afresh)."""
        task = self.get(task_id)
        if not task.ContainerID:
            if task.State in _FINISHED:
                why = f": {task.Reason}" if task.Reason else ""
                raise LogsGone(f"task {task_id} has no logs: it never started a container{why}")
            raise NotStarted(
                f"task {task_id} has no logs yet: it is {task.State.label}, "
                f"its container has not started"
            )
        try:
            return await self._engine.logs(task.ContainerID, options)
        except NoSuchContainer:
            if task.Reason == STOPPED:
                why = "it was removed when the task was stopped"
            elif task.State in _FINISHED and task.Reason != VANISHED:
                kept = f"the last {self.keep_exited}" if self.keep_exited else "none"
                why = f"removed: worker {self.name} keeps {kept} of its exited containers"
            else:
                why = "it was removed behind the worker's back"
            raise LogsGone(
                f"the logs of task {task_id} are gone: its container "
                f"{task.ContainerID[:12]} is not on worker {self.name} any more ({why})"
            ) from None

    def running_count(self) -> int:
        """From memory: every stats sample asks, and reading the store parsed every task."""
        return len(self._running)

    def submit(self, event: TaskEvent) -> Task:
        """Record a TaskEvent and queue the work; idempotent for a repeated event.

        A run request carries the incarnation (RestartCount) the sender wants. The same
        incarnation again is a duplicate and changes nothing, so a manager may retry a
        send safely; a higher one is a restart. Re-running a Completed incarnation is
        refused (409): a finished run is final.
        """
        if event.State is State.COMPLETED:
            return self.stop(event.Task.ID)
        if event.State not in (State.SCHEDULED, State.RUNNING):
            raise BadEvent(
                f"a TaskEvent's State must be Scheduled, Running or Completed, "
                f"not {event.State.label}"
            )
        wanted = event.Task
        current = self.store.get(str(wanted.ID))
        if current is None:
            task = wanted.model_copy(update=_FRESH | {"Node": self.name})
        elif wanted.RestartCount < current.RestartCount:
            return current  # an old incarnation, superseded
        elif wanted.RestartCount == current.RestartCount:
            if current.State is State.COMPLETED:
                raise InvalidTransition(current.State, State.SCHEDULED)
            return current  # a repeat: already accepted
        elif current.State is State.COMPLETED:
            # A finished run stays finished; a manager that moved the task away and
            # back asks for a new incarnation, which starts as a new run.
            task = wanted.model_copy(update=_FRESH | {"Node": self.name})
        else:
            task = transition(current, State.SCHEDULED).model_copy(
                update={"RestartCount": wanted.RestartCount}
            )
        self._save(task, notify=False)
        self._want(task.ID, Desired(run=True, restart_count=task.RestartCount))
        return task

    def stop(self, task_id: uuid.UUID, up_to: int | None = None) -> Task:
        """Stop a task; with ``up_to``, only if its incarnation is no newer than that.

        A manager stopping a copy it saw as a stray names the incarnation it saw, so
        that a stop still in flight cannot end a newer incarnation sent here since.
        """
        task = self.get(task_id)
        if up_to is not None and task.RestartCount > up_to:
            return task
        self._want(task.ID, Desired(run=False, restart_count=task.RestartCount))
        return task

    def _want(self, task_id: uuid.UUID, desired: Desired) -> None:
        self._desired[task_id] = desired
        self._queue.put_nowait(task_id)

    # --- the consumers -----------------------------------------------------------------

    def _lock(self, task_id: uuid.UUID) -> asyncio.Lock:
        return self._locks.setdefault(task_id, asyncio.Lock())

    async def _consume(self) -> None:
        while True:
            task_id = await self._queue.get()
            try:
                async with self._lock(task_id):
                    await self._converge(task_id)
            except RuntimeUnavailable as exc:
                log.warning("task %s: docker unavailable: %s", task_id, exc)
            except Exception:
                log.exception("task %s: unexpected error", task_id)

    async def _converge(self, task_id: uuid.UUID) -> None:
        task = self.store.get(str(task_id))
        desired = self._desired.get(task_id)
        if task is None or desired is None:
            return
        if desired.run:
            if task.State is State.SCHEDULED:
                await self._start(task)
        else:
            await self._stop(task)

    async def _start(self, task: Task) -> None:
        spec = container_spec(task, self.name)
        self._exited.pop(task.ID, None)  # the new run's log replaces the old one's
        if task.RestartCount > 0:
            await self._remove_other_incarnations(task)
        try:
            info = await self._engine.start(spec)
        except ContainerError as exc:
            self.metrics.start_failures.labels(CONTAINER).inc()
            log.info("task %s: failed to start: %s", task.ID, exc)
            self._save(transition(task, State.FAILED, reason=str(exc)))
            return
        except RuntimeUnavailable as exc:
            # Not the task's fault: it stays Scheduled and starts when Docker is back
            # (the reconcile after reconnecting picks up every Scheduled task).
            self.metrics.start_failures.labels(ENGINE).inc()
            log.warning("task %s: docker unavailable, will start when it is back: %s", task.ID, exc)
            self._save(task.model_copy(update={"Reason": f"waiting for docker: {exc}"}))
            return
        self.metrics.starts.inc()
        # StartTime even for a run too short to be seen running: it did start.
        task = task.model_copy(
            update={
                "ContainerID": info.id,
                "HostPorts": info.host_ports,
                "StartTime": info.started_at,
            }
        )
        if info.running:
            if self._save(transition(task, State.RUNNING, at=info.started_at)):
                log.info("task %s: running as %s", task.ID, info.name)
            else:
                await self._engine.remove(info.id)  # started for an incarnation now gone
        else:
            await self._finish(task, info)

    async def _remove_other_incarnations(self, task: Task) -> None:
        """A restart replaces the previous container, which may still be running."""
        labels = {**self._labels, LABEL_TASK: str(task.ID)}
        for info in await self._engine.list(labels):
            if _stale(task, info):
                await self._engine.remove(info.id)

    async def _stop(self, task: Task) -> None:
        if task.ContainerID:
            self._exited.pop(task.ID, None)
            await self._engine.stop(task.ContainerID, self.stop_timeout)
        if task.State is State.FAILED or task.State is State.COMPLETED:
            return
        self._save(transition(task, State.COMPLETED, reason=STOPPED))
        log.info("task %s: stopped", task.ID)

    async def _finish(self, task: Task, info: ContainerInfo | None) -> None:
        """Record how a container ended, and keep it for its logs (its state is kept
        on the task); a container of an incarnation replaced meanwhile goes."""
        state, reason = exit_outcome(info)
        at = info.finished_at if info else None
        saved = self._save(transition(task, state, reason=reason, at=at))
        log.info("task %s: %s (%s)", task.ID, state.label, reason)
        if info is None:
            return
        if saved and self.keep_exited:
            self._exited.pop(task.ID, None)
            self._exited[task.ID] = info.id
            await self._trim_exited()
        else:
            await self._engine.remove(info.id)

    async def _trim_exited(self) -> None:
        """Remove the containers that exited first, beyond the ``keep_exited`` last."""
        while len(self._exited) > self.keep_exited:
            task_id = next(iter(self._exited))
            container_id = self._exited.pop(task_id)
            log.info("task %s: removing its exited container %s", task_id, container_id[:12])
            await self._engine.remove(container_id)

    def _save(self, task: Task, *, notify: bool = True) -> bool:
        """Store a task unless a newer incarnation arrived while we were busy with it.

        ``submit`` records a restart without waiting for the per-task lock (it must
        answer at once), so whoever holds the lock may be working on a stale copy;
        the incarnation only ever moves forward.

        ``notify=False`` records the change without waking long polls: the next change
        reports it too. A submission is such a change, since its sender already has
        the answer; waking a manager's poll for it would cost a request for no news.
        """
        current = self.store.get(str(task.ID))
        if current is not None and current.RestartCount > task.RestartCount:
            log.info(
                "task %s: dropping a stale update of incarnation %d", task.ID, task.RestartCount
            )
            return False
        self.store.put(str(task.ID), task)
        self._states[task.ID] = task.State
        if task.State is State.RUNNING:
            self._running[task.ID] = None
        else:
            self._running.pop(task.ID, None)
        self.version += 1
        self._versions.pop(task.ID, None)
        self._versions[task.ID] = self.version
        if notify:
            self._changed.set()
            self._changed = asyncio.Event()
        return True

    # --- what changed (for the manager's tracking) --------------------------------------

    def changes(self, since: int | None, epoch: str | None) -> tuple[bool, list[Task]]:
        """The tasks changed after version ``since`` of ``epoch``, or all of them.

        The first value says whether the list is complete: it is whenever the caller's
        numbering is not this process's (no ``since``, another epoch: the worker
        restarted) or is ahead of it, so a caller never misses a task.
        """
        if since is None or epoch != self.epoch or not 0 <= since <= self.version:
            return True, self.store.list()
        changed: list[Task] = []
        for task_id in reversed(self._versions):
            if self._versions[task_id] <= since:
                break
            task = self.store.get(str(task_id))
            if task is not None:
                changed.append(task)
        changed.reverse()
        return False, changed

    def notify(self) -> None:
        """Wake whoever waits for a change (a watch stream that should end)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, since: int, epoch: str | None, timeout: float) -> None:
        """Return once something changed after ``since`` (at once if it already has)."""
        if epoch != self.epoch or since != self.version or timeout <= 0:
            return
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation (CPython gh-86296), and a stream that should end would go on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    # --- noticing dead containers -----------------------------------------------------

    async def check(self, task_id: uuid.UUID, container_id: str | None = None) -> None:
        """Look at a task's container and record it if it stopped behind our back."""
        async with self._lock(task_id):
            task = self.store.get(str(task_id))
            if task is None or task.State is not State.RUNNING or not task.ContainerID:
                return
            if container_id and container_id != task.ContainerID:
                return
            desired = self._desired.get(task_id)
            if desired is not None and not desired.run:
                return  # a stop is under way; the consumer records it
            info = await self._engine.inspect(task.ContainerID)
            if info is None or not info.running:
                await self._finish(task, info)

    async def _watch_events(self) -> None:
        """Follow Docker's event stream; reconnect with backoff when the engine goes away."""
        delay = 0.2
        warned = False
        while True:
            try:
                await self._engine.ping()
                if not self.docker_ok:
                    self._docker_is(True)
                    warned = False
                    log.info("docker is available")
                    await self.reconcile()
                delay = 0.2
                # aclosing: the stream's reader thread ends with it, also on cancel.
                async with contextlib.aclosing(self._engine.events(self._labels)) as events:
                    async for event in events:
                        if event.action in DEAD_ACTIONS:
                            task_id = _task_id(event.labels.get(LABEL_TASK, ""))
                            if task_id is not None:
                                self._checks.spawn(self.check(task_id, event.container_id))
            except RuntimeUnavailable as exc:
                if not warned:
                    log.warning("docker unavailable, retrying with backoff: %s", exc)
                    warned = True
                self._docker_is(False)
            except Exception:
                log.exception("docker event stream failed")
                self._docker_is(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _docker_is(self, ok: bool) -> None:
        """Record whether the engine answers; a change goes out on the watch streams at
        once, so that the manager stops (or resumes) placing tasks here."""
        if ok != self.docker_ok:
            self.docker_ok = ok
            self.notify()

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            try:
                await self.reconcile()
            except RuntimeUnavailable as exc:
                log.warning("reconcile skipped: docker unavailable: %s", exc)
            except Exception:
                log.exception("reconcile failed")

    async def reconcile(self) -> None:
        """Compare the store with Docker: adopt, record deaths, remove strays, and retry
        the starts and stops Docker could not take.

        Runs at start-up (this is how a restarted worker re-adopts its containers), as
        soon as Docker answers again after an outage, and periodically as a safety net
        under the event stream. A consumer that met an unavailable engine only logs it:
        this is where its work is taken up again, without waiting for a manager to ask.
        """
        containers = await self._engine.list(self._labels)
        by_task: dict[str, list[ContainerInfo]] = {}
        kept: list[tuple[ContainerInfo, Task]] = []
        for info in containers:
            by_task.setdefault(info.labels.get(LABEL_TASK, ""), []).append(info)
            task = self.store.get(info.labels.get(LABEL_TASK, ""))
            if task is not None and self._keeps(task, info):
                kept.append((info, task))
            elif task is None or task.State in _FINISHED or _stale(task, info):
                log.info("removing stray container %s", info.name)
                await self._engine.remove(info.id)
        # Exited containers an earlier run of this worker kept, oldest first.
        kept.sort(key=lambda pair: pair[0].finished_at or _EPOCH)
        for info, task in kept:
            if task.ID not in self._exited:
                self._exited = {task.ID: info.id, **self._exited}
        await self._trim_exited()
        alive = {info.id for info in containers if info.running}
        for task in self.store.list():
            desired = self._desired.get(task.ID)
            if desired is not None and not desired.run and not is_terminal(task.State):
                self._retry(task.ID)  # a stop not done yet
            elif task.State is State.RUNNING and task.ContainerID not in alive:
                await self.check(task.ID)
            elif task.State is State.SCHEDULED:
                await self._adopt_or_start(task, by_task.get(str(task.ID), []))

    def _retry(self, task_id: uuid.UUID) -> None:
        """Queue a task again, unless a consumer is at it now: a second entry would only
        hold another consumer on the lock (if that attempt fails, the next reconcile
        takes the task up)."""
        lock = self._locks.get(task_id)
        if lock is None or not lock.locked():
            self._queue.put_nowait(task_id)

    async def _adopt_or_start(self, task: Task, containers: list[ContainerInfo]) -> None:
        """A task caught mid-start by a crash: adopt its container if it made it, else start."""
        async with self._lock(task.ID):
            current = self.store.get(str(task.ID))
            if current is None or current.State is not State.SCHEDULED:
                return
            mine = [c for c in containers if c.labels.get(LABEL_RESTART) == str(task.RestartCount)]
            live = next((c for c in mine if c.running), None)
            if live is not None:
                adopted = current.model_copy(
                    update={"ContainerID": live.id, "HostPorts": live.host_ports}
                )
                self._save(transition(adopted, State.RUNNING, at=live.started_at))
                log.info("task %s: adopted container %s", task.ID, live.name)
                return
        if self._desired.get(task.ID, Desired(run=True)).run:
            self._queue.put_nowait(task.ID)

    def _keeps(self, task: Task, info: ContainerInfo) -> bool:
        """A finished task's container that exited by itself is kept for its logs."""
        return (
            self.keep_exited > 0
            and task.State in _FINISHED
            and task.Reason != STOPPED
            and not info.running
            and info.id == task.ContainerID
        )


def _stale(task: Task, info: ContainerInfo) -> bool:
    return info.labels.get(LABEL_RESTART) != str(task.RestartCount)


def _task_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
