"""`cube plan -f FILE`: where a task or a job would go, and why, changing nothing.

The file is what `cube run -f` or `cube job run -f` takes; a job is told from a task by
its job-only fields (``Name`` beside ``Task``, ``Count``, ``Type``, ``Update``), since a
TaskEvent has none of them. The exit status lets a script gate a submission on the
plan, as ``terraform plan -detailed-exitcode`` does: 0 when every task would be placed,
3 when some would wait for room (2 is taken: a command line Typer cannot parse).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from cube.cli import format as fmt
from cube.cli.options import DEFAULT_MANAGER, Manager, Output, OutputFormat
from cube.cli.taskfile import STDIN, event_body, parse_document, read_text, syntax_of
from cube.explain import summary
from cube.manager.client import ManagerClient
from cube.manager.plan import Plan

WOULD_WAIT = 3  # the exit status when some task would fit nowhere now (2: a usage error)
_JOB_ONLY = ("Name", "Count", "Type", "Update")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)


def is_job(document: Mapping[str, Any]) -> bool:
    return "Task" in document and any(key in document for key in _JOB_ONLY)


def plan(
    filename: Annotated[
        str,
        typer.Option(
            "-f", "--filename", help="A task, TaskEvent or job, JSON or YAML; - reads stdin."
        ),
    ],
    manager: Manager = DEFAULT_MANAGER,
    output: OutputFormat = Output.table,
) -> None:
    """Dry run: where each task would be placed now and why; nothing is submitted.
    Exits 3 when some task would wait for room."""
    text = read_text(filename)
    source = "standard input" if filename == STDIN else filename
    document = parse_document(text, syntax_of(filename, text), source)
    with ManagerClient(manager) as client:
        if is_job(document):
            answer = client.plan(document, job=str(document.get("Name", "")))
        else:
            answer = client.plan(event_body(document))
    if output is Output.json:
        fmt.print_json(answer.model_dump(mode="json"))
    else:
        show(answer)
    if answer.Waiting:
        raise typer.Exit(WOULD_WAIT)


def headline(answer: Plan) -> str:
    placing = f"{len(answer.Place)} to place"
    if answer.Waiting:
        placing += f" ({answer.Waiting} would wait)"
    if not answer.Job:
        return f"Task: {placing}"
    change = {
        "create": f"new job, version {answer.Version}",
        "update": f"new version {answer.Version}",
        "scale": f"version {answer.Version}, new Count",
        "none": f"no change to version {answer.Version}",
    }.get(answer.Change, f"version {answer.Version}")
    return f"Job {answer.Job}: {change}; {placing}, {answer.Stop} to stop"


def show(answer: Plan) -> None:
    print(headline(answer))
    if not answer.Place:
        return
    rows = [
        [p.Name or fmt.MISSING, p.Node or fmt.MISSING, p.Reason or summary(p.Placement)]
        for p in answer.Place
    ]
    fmt.show(fmt.table(("TASK", "NODE", "WHY"), rows))
