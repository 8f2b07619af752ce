"""`cube run`, `cube status`, `cube stop`: tasks, as the book's chapter 12 has them."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from cube.cli import format as fmt
from cube.cli.errors import CliError
from cube.cli.ids import match_prefix, parse_full_id
from cube.cli.live import Progress
from cube.cli.options import DEFAULT_MANAGER, Manager, Output, OutputFormat
from cube.cli.taskfile import load_event
from cube.explain import summary
from cube.manager.client import ManagerClient
from cube.task import State, Task
from cube.worker.worker import container_name

STATUS_HEADERS = (
    "ID",
    "NAME",
    "CREATED",
    "STATE",
    "CONTAINERNAME",
    "IMAGE",
    "RESTARTS",
    "NODE",
)
STATE_STYLE = {
    State.PENDING: "yellow",
    State.SCHEDULED: "cyan",
    State.RUNNING: "green",
    State.COMPLETED: "dim",
    State.FAILED: "red",
}
POLL_INTERVAL = 0.2


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("status")(status)
    app.command("stop")(stop)


# --- presentation ------------------------------------------------------------------


def shown_container(task: Task) -> str:
    """The worker's name for the task's container, once it has been placed somewhere."""
    return container_name(task) if task.Node or task.ContainerID else fmt.MISSING


def status_row(task: Task) -> list[str | Text]:
    return [
        fmt.short_id(task.ID),
        task.Name or fmt.MISSING,
        fmt.format_age(task.StartTime),
        Text(task.State.label, style=STATE_STYLE[task.State]),
        shown_container(task),
        task.Image,
        str(task.RestartCount),
        task.Node or fmt.MISSING,
    ]


def progress(task: Task) -> str:
    """One line per change while `cube run --wait` watches a task."""
    where = f"on {task.Node}" if task.Node else ""
    if task.State is State.PENDING:
        detail = task.Reason or "waiting to be placed"
    elif task.State is State.RUNNING:
        detail = f"{where}, container {container_name(task)}"
        if task.HostPorts:
            detail += f", ports {fmt.format_ports(task.HostPorts)}"
    else:
        detail = "; ".join(part for part in (where, task.Reason) if part)
    return f"  {task.State.label:<10} {detail}".rstrip()


def details(task: Task) -> list[tuple[str, str]]:
    """What `cube status TASK_ID` adds below the row: the things you act on next."""
    return [
        ("ID", str(task.ID)),
        ("Reason", task.Reason or fmt.MISSING),
        ("Placement", summary(task.Placement) if task.Placement else fmt.MISSING),
        ("Ports", fmt.format_ports(task.HostPorts)),
        ("Health check", task.HealthCheck or fmt.MISSING),
        ("Restart policy", task.RestartPolicy or "on-failure (default)"),
        ("Cpu", f"{task.Cpu:g}" if task.Cpu else fmt.MISSING),
        ("Memory", fmt.format_bytes(task.Memory)),
        ("Container ID", task.ContainerID[:12] or fmt.MISSING),
        ("Started", fmt.format_age(task.StartTime)),
        ("Finished", fmt.format_age(task.FinishTime)),
    ]


def resolve(client: ManagerClient, text: str) -> Task:
    """A full ID is asked for directly; anything shorter is matched against all tasks."""
    full = parse_full_id(text)
    if full is not None:
        return client.task(full)
    tasks = {t.ID: t for t in client.tasks()}
    return tasks[match_prefix(text, tasks)]


# --- commands ----------------------------------------------------------------------


def run(
    filename: Annotated[
        str,
        typer.Option(
            "-f",
            "--filename",
            help="The book's TaskEvent JSON, or a bare task in JSON or YAML; - reads stdin.",
        ),
    ] = "task.json",
    manager: Manager = DEFAULT_MANAGER,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Follow the task until it runs; say why not and exit 1 if it fails."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds --wait waits for Running.")
    ] = 60.0,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only the task ID.")] = False,
) -> None:
    """Submit a task to the manager, which places it on a worker and keeps it running."""
    body = load_event(filename)
    with ManagerClient(manager) as client:
        task = client.submit(body)
        if quiet:
            print(task.ID)
        else:
            print(f"Task {task.ID} ({task.Name or 'unnamed'}) submitted to {client.url}")
        if task.State is not State.PENDING and not quiet:
            print(f"  (a task with this ID already exists; it is {task.State.label})")
        if wait:
            watch(client, task, timeout, quiet)


RESTARTING = "restarting after: "


def watch(
    client: ManagerClient,
    task: Task,
    timeout: float,
    quiet: bool = False,
    console: Console | None = None,
) -> Task:
    """Follow a task to Running, with a deadline; live on a terminal (cube.cli.live).

    Completed counts as success too: a short batch task can finish between two polls
    and never be seen Running. Failed ends the wait at once, even if the manager will
    restart the task, because a first run that fails is what the user needs to hear;
    so does a restart seen instead (the manager restarts a first failure at once, so
    a poll may never catch the task Failed).
    """
    with Progress(console, quiet) as shown:
        return _watch(client, task, timeout, shown)


def _watch(client: ManagerClient, task: Task, timeout: float, shown: Progress) -> Task:
    deadline = time.monotonic() + timeout
    first_run = task.RestartCount
    while True:
        shown.show(progress(task))
        if task.RestartCount > first_run:
            reason = task.Reason.removeprefix(RESTARTING) or "no reason given"
            raise CliError(f"task {task.ID} failed: {reason} (restarting)")
        if task.State in (State.RUNNING, State.COMPLETED):
            return task
        if task.State is State.FAILED:
            reason = task.Reason or "no reason given"
            raise CliError(f"task {task.ID} failed: {reason}")
        if time.monotonic() >= deadline:
            why = f": {task.Reason}" if task.Reason else ""
            raise CliError(
                f"task {task.ID} is not running after {timeout:g}s: still {task.State.label}{why}"
            )
        time.sleep(POLL_INTERVAL)
        task = client.task(task.ID)


def status(
    task_id: Annotated[
        str | None, typer.Argument(help="A task ID or unique prefix; all tasks when left out.")
    ] = None,
    manager: Manager = DEFAULT_MANAGER,
    output: OutputFormat = Output.table,
) -> None:
    """Show tasks: where they run, their state, and how often they restarted."""
    with ManagerClient(manager) as client:
        tasks = [resolve(client, task_id)] if task_id is not None else client.tasks()
    if output is Output.json:
        fmt.print_json(tasks[0].to_wire() if task_id is not None else [t.to_wire() for t in tasks])
        return
    fmt.show(fmt.table(STATUS_HEADERS, [status_row(t) for t in tasks]))
    if task_id is not None:
        print()
        fmt.show(fmt.table(("", ""), details(tasks[0]), show_header=False))


def stop(
    task_id: Annotated[str, typer.Argument(help="A task ID or a unique prefix of one.")],
    manager: Manager = DEFAULT_MANAGER,
) -> None:
    """Stop a task: its worker stops the container and the task becomes Completed."""
    with ManagerClient(manager) as client:
        task = resolve(client, task_id)
        if task.State is State.COMPLETED:
            print(f"Task {task.ID} ({task.Name or 'unnamed'}) is already Completed")
            return
        client.stop(task.ID)
    print(f"Stopping task {task.ID} ({task.Name or 'unnamed'})")
