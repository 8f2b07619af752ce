"""`cube job`: services with replicas and rolling updates, and batch jobs."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from cube.cli import format as fmt
from cube.cli.errors import CliError
from cube.cli.live import Progress
from cube.cli.options import DEFAULT_MANAGER, Manager, Output, OutputFormat
from cube.cli.taskfile import parse_document, read_text, syntax_of
from cube.cli.tasks import STATE_STYLE
from cube.job import Deployment
from cube.manager.client import JobView, ManagerClient
from cube.task import State, Task

JOB_HEADERS = ("NAME", "TYPE", "VERSION", "COUNT", "DEPLOYMENT", "HEALTHY", "STATUS")
DEPLOYMENT_STYLE = {"running": "cyan", "successful": "green", "failed": "red"}
POLL_INTERVAL = 0.5

app = typer.Typer(help="Jobs: services kept at Count replicas, rolled out MaxParallel at a time.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="job")


def _deployment(d: Deployment | None) -> Text:
    if d is None:
        return Text(fmt.MISSING)
    return Text(f"v{d.Version} {d.Status}", style=DEPLOYMENT_STYLE[d.Status])


def job_row(view: JobView) -> list[str | Text]:
    job, d = view.job, view.deployment
    healthy = f"{d.Healthy}/{d.Desired}" if d else fmt.MISSING
    return [
        job.Name,
        job.Type,
        str(job.Version),
        str(job.Count),
        _deployment(d),
        healthy,
        Text("stopped", style="dim") if job.Stopped else Text("active", style="green"),
    ]


def progress(view: JobView) -> str:
    d = view.deployment
    if d is None:
        return "  no deployment"
    done = "completed" if view.job.Type == "batch" else "healthy"
    line = f"  v{d.Version} {d.Status:<10} placed {d.Placed}/{d.Desired}, {done} {d.Healthy}"
    if d.Unhealthy:
        line += f", unhealthy {d.Unhealthy}"
    return f"{line}; {d.Reason}" if d.Reason else line


@app.command("run")
def run(
    filename: Annotated[
        str, typer.Option("-f", "--filename", help="The job, JSON or YAML; - reads stdin.")
    ] = "job.yaml",
    manager: Manager = DEFAULT_MANAGER,
    detach: Annotated[
        bool, typer.Option("--detach", help="Return once submitted; do not follow.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to follow the deployment.")
    ] = 600.0,
) -> None:
    """Create or update a job; follow its deployment to success (exit 0) or failure (1)."""
    text = read_text(filename)
    body = parse_document(text, syntax_of(filename, text), filename)
    with ManagerClient(manager) as client:
        view = client.submit_job(body)
        job = view.job
        print(f"Job {job.Name} version {job.Version} ({job.Count} x {job.Task.Image}) submitted")
        if detach:
            return
        _follow(client, job.Name, job.Version, timeout)


def _follow(
    client: ManagerClient, name: str, version: int, timeout: float, console: Console | None = None
) -> None:
    """Follow the deployment; on a terminal, live, with the job's tasks (cube.cli.live)."""
    with Progress(console) as shown:
        _follow_with(client, name, version, timeout, shown)


def task_rows(tasks: list[Task]) -> list[list[str | Text]]:
    """The job's tasks that count (not those stopped for good), by node."""
    return [
        [
            fmt.short_id(t.ID),
            str(t.JobVersion),
            Text(t.State.label, style=STATE_STYLE[t.State]),
            t.Node or fmt.MISSING,
            str(t.RestartCount),
            t.Reason or "",
        ]
        for t in sorted(tasks, key=lambda t: (t.Node, -t.JobVersion, str(t.ID)))
        if not (t.DesiredState is State.COMPLETED and t.State is State.COMPLETED)
    ]


TASK_HEADERS = ("TASK", "VERSION", "STATE", "NODE", "RESTARTS", "REASON")


def _follow_with(
    client: ManagerClient, name: str, version: int, timeout: float, shown: Progress
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        view = client.job(name)
        line = progress(view)
        rows = task_rows(client.job_tasks(name)) if shown.interactive else []
        shown.show(line, fmt.table(TASK_HEADERS, rows) if rows else None)
        d = view.deployment
        if view.job.Version != version:
            why = d.Reason if d is not None and d.Reason else line.strip()
            raise CliError(
                f"deployment of {name} version {version} did not finish: the job is at "
                f"version {view.job.Version} ({why})"
            )
        if d is not None and d.Status == "successful":
            return
        if d is not None and d.Status == "failed":
            raise CliError(f"deployment of {name} version {version} failed: {d.Reason}")
        if time.monotonic() > deadline:
            raise CliError(f"deployment of {name} still {line.strip()} after {timeout:g} s")
        time.sleep(POLL_INTERVAL)


@app.command("list")
def list_jobs(manager: Manager = DEFAULT_MANAGER, output: OutputFormat = Output.table) -> None:
    """Every job, its version and how its latest deployment goes."""
    with ManagerClient(manager) as client:
        views = client.jobs()
    if output is Output.json:
        fmt.print_json([v.raw for v in views])
        return
    fmt.show(fmt.table(JOB_HEADERS, [job_row(v) for v in views]))


@app.command("status")
def status(
    name: str, manager: Manager = DEFAULT_MANAGER, output: OutputFormat = Output.table
) -> None:
    """A job: its deployment and its tasks by node."""
    with ManagerClient(manager) as client:
        view = client.job(name)
        tasks = client.job_tasks(name)
    if output is Output.json:
        fmt.print_json({**view.raw, "Tasks": [t.to_wire() for t in tasks]})
        return
    fmt.show(fmt.table(JOB_HEADERS, [job_row(view)]))
    print(progress(view).strip())
    print()
    fmt.show(fmt.table(TASK_HEADERS, task_rows(tasks)))


@app.command("scale")
def scale(name: str, count: int, manager: Manager = DEFAULT_MANAGER) -> None:
    """Set how many tasks the job runs (no new version)."""
    if count < 0:
        raise CliError(f"count must be 0 or more, got {count}")
    with ManagerClient(manager) as client:
        view = client.scale(name, count)
    print(f"Job {name} scaled to {view.job.Count}")


@app.command("history")
def history(
    name: str, manager: Manager = DEFAULT_MANAGER, output: OutputFormat = Output.table
) -> None:
    """Every version of the job, newest first."""
    with ManagerClient(manager) as client:
        versions = client.job_versions(name)
    if output is Output.json:
        fmt.print_json([v.model_dump(mode="json") for v in versions])
        return
    rows = [
        [
            str(v.Version),
            v.Task.Image,
            " ".join(v.Task.Env or []) or fmt.MISSING,
            f"{v.Update.MaxParallel} {v.Update.Order}",
        ]
        for v in versions
    ]
    fmt.show(fmt.table(("VERSION", "IMAGE", "ENV", "UPDATE"), rows))


@app.command("revert")
def revert(name: str, version: int, manager: Manager = DEFAULT_MANAGER) -> None:
    """Go back to an earlier version (as a new version equal to it)."""
    with ManagerClient(manager) as client:
        view = client.revert(name, version)
    print(f"Job {name} is at version {view.job.Version} (the spec of version {version})")


@app.command("stop")
def stop(name: str, manager: Manager = DEFAULT_MANAGER) -> None:
    """Stop every task of the job; `cube job run` runs it again."""
    with ManagerClient(manager) as client:
        client.stop_job(name)
    print(f"Job {name} stopped")
