"""`cube logs`: what a task printed, or every replica of a job, merged.

A name that is a job's shows the lines of each of its tasks, prefixed by the task's
short ID: in time order, or as they come with ``-f`` (which also picks up replicas
that start later, as stern does for pods). Anything else is a task ID or prefix.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TextIO

import typer

from cube.cli import format as fmt
from cube.cli.errors import CliError
from cube.cli.ids import parse_full_id
from cube.cli.options import DEFAULT_MANAGER, Manager
from cube.cli.tasks import resolve
from cube.job import Job
from cube.manager.client import ManagerClient, ManagerError, ManagerRejected
from cube.runtime.base import LogLine
from cube.task import State, Task

# How often `cube logs JOB -f` looks for replicas that started since.
POLL_INTERVAL = 1.0
# Lines read ahead of the terminal, over every replica of a job.
BUFFERED_LINES = 1000
_STOPPED = "stopped on request"  # such a task's container, and its log, went with the stop
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)


def logs(
    name: Annotated[
        str, typer.Argument(help="A task ID or unique prefix, or a job's name: all its tasks.")
    ],
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing lines as they come.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", min=0, help="Only the last N lines (of each task).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only lines since: a duration ago (10m, 1h30m) or a time."),
    ] = None,
    stdout: Annotated[bool, typer.Option("--stdout", help="Only standard output.")] = False,
    stderr: Annotated[bool, typer.Option("--stderr", help="Only standard error.")] = False,
    timestamps: Annotated[
        bool, typer.Option("-t", "--timestamps", help="Show when each line was written.")
    ] = False,
    manager: Manager = DEFAULT_MANAGER,
) -> None:
    """Print a task's output (stdout to stdout, stderr to stderr), or a job's, merged."""
    query: dict[str, Any] = {
        "follow": follow,
        "stdout": stdout or not stderr,
        "stderr": stderr or not stdout,
    }
    if tail is not None:
        query["tail"] = tail
    if since is not None:
        query["since"] = since
    show = _Printer(timestamps)
    try:
        with ManagerClient(manager) as client:
            job = _job(client, name)
            if job is None:
                task = resolve(client, name)
                for line in client.logs(task.ID, query):
                    show(line)
            else:
                _job_logs(client, job, query, show)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # Read by `head` or the like, which has all it wants: leave quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


class _Printer:
    def __init__(self, timestamps: bool) -> None:
        self.timestamps = timestamps

    def __call__(self, line: LogLine, prefix: str = "") -> None:
        out: TextIO = sys.stderr if line.stream == "stderr" else sys.stdout
        when = ""
        if self.timestamps:
            when = line.time.isoformat().replace("+00:00", "Z") + " " if line.time else "- "
        out.write(f"{prefix}{when}{line.text}\n")
        out.flush()


def _job(client: ManagerClient, name: str) -> Job | None:
    """The job of that name, if there is one (a full task ID is never a job's name)."""
    if parse_full_id(name) is not None:
        return None
    try:
        return client.job(name).job
    except ManagerRejected as exc:
        if exc.status == 404:
            return None
        raise


# --- a job: every replica, merged ----------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """A run of a task whose log is read: a restart or a move is a new one."""

    task: uuid.UUID
    container: str


def _readable(task: Task) -> bool:
    """Whether the task has a container whose log may still be there."""
    return bool(task.Node and task.ContainerID) and task.Reason != _STOPPED


def _job_logs(client: ManagerClient, job: Job, query: dict[str, Any], show: _Printer) -> None:
    tasks = [t for t in client.job_tasks(job.Name) if _readable(t)]
    if not query["follow"]:
        lines: list[tuple[datetime, str, LogLine]] = []
        for task in tasks:
            prefix = _prefix(task.ID)
            lines += [(ln.time or _EARLIEST, prefix, ln) for ln in _read(client, task, query)]
        if not lines and not tasks:
            raise CliError(
                f"no task of job {job.Name} has logs: none has a container (not started "
                f"yet, or stopped)"
            )
        for _, prefix, line in sorted(lines, key=lambda item: item[0]):
            show(line, prefix)
        return
    _Merge(client, job.Name, query, show).run(tasks)


def _prefix(task_id: uuid.UUID) -> str:
    return f"{fmt.short_id(task_id)} | "


def _read(client: ManagerClient, task: Task, query: dict[str, Any]) -> Iterator[LogLine]:
    """The task's lines; none when its logs are gone or not there yet (a job's merge
    shows the replicas that have some, not an error for each that has not)."""
    try:
        yield from client.logs(task.ID, query)
    except ManagerRejected as exc:
        if exc.status not in (404, 409, 410):
            raise


class _Merge:
    """Every replica's lines as they come: a thread per replica, one bounded queue."""

    def __init__(
        self, client: ManagerClient, job: str, query: dict[str, Any], show: _Printer
    ) -> None:
        self.client = client
        self.job = job
        self.query = query
        self.show = show
        self.lines: queue.Queue[tuple[str, LogLine] | BaseException | None] = queue.Queue(
            BUFFERED_LINES
        )
        self.sources: set[_Source] = set()
        self.running = 0

    def run(self, tasks: list[Task]) -> None:
        """Until Ctrl-C, or until nothing more can come (see :meth:`_over`)."""
        self._start(tasks, self.query)
        # A replica that starts later is shown from its first line, whatever --tail said.
        later = {k: v for k, v in self.query.items() if k != "tail"}
        next_look = time.monotonic() + POLL_INTERVAL
        while True:
            wait = next_look - time.monotonic()
            if wait <= 0:
                tasks = self.client.job_tasks(self.job)
                self._start([t for t in tasks if _readable(t)], later)
                if self.running == 0 and self._over(tasks):
                    return
                next_look = time.monotonic() + POLL_INTERVAL
                continue
            try:
                item = self.lines.get(timeout=wait)
            except queue.Empty:
                continue
            if item is None:  # a replica's stream ended
                self.running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                self.show(item[1], item[0])

    def _over(self, tasks: list[Task]) -> bool:
        """Nothing more can come: the job is stopped, or a batch job is done."""
        view = self.client.job(self.job)
        if view.job.Stopped:
            return True
        return view.job.Type == "batch" and all(t.State is State.COMPLETED for t in tasks)

    def _start(self, tasks: list[Task], query: dict[str, Any]) -> None:
        for task in tasks:
            source = _Source(task.ID, task.ContainerID)
            if source in self.sources:
                continue
            self.sources.add(source)
            self.running += 1
            threading.Thread(target=self._pump, args=(task, query), daemon=True).start()

    def _pump(self, task: Task, query: dict[str, Any]) -> None:
        prefix = _prefix(task.ID)
        try:
            for line in _read(self.client, task, query):
                self.lines.put((prefix, line))
        except ManagerError as exc:
            self.lines.put(exc)
        finally:
            self.lines.put(None)
