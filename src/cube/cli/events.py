"""`cube events`: what the cluster did, and (with -f) what it does now."""

from __future__ import annotations

from typing import Annotated

import typer

from cube.cli.options import DEFAULT_MANAGER, Manager, Output, OutputFormat
from cube.events import TOPICS, Event
from cube.manager.client import ManagerClient
from cube.task import State


def register(root: typer.Typer) -> None:
    root.command("events")(events)


def events(
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing events as they happen.")
    ] = False,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", help=f"Only these: {', '.join(TOPICS)} (repeatable)."),
    ] = None,
    index: Annotated[
        int, typer.Option("--index", min=0, help="Start after this event (resume where you were).")
    ] = 0,
    manager: Manager = DEFAULT_MANAGER,
    output: OutputFormat = Output.table,
) -> None:
    """The cluster's events: tasks, nodes, jobs and deployments, oldest first."""
    topics = [t.capitalize() for t in topic or ()]
    with ManagerClient(manager) as client:
        try:
            for event in client.stream(index, topics, follow):
                if event is None:
                    continue  # a heartbeat: the manager is there, nothing happened
                if output is Output.json:
                    print(event.model_dump_json(), flush=True)
                else:
                    print(line(event), flush=True)
        except KeyboardInterrupt:
            return


def line(event: Event) -> str:
    """One event for people: when, what, to what, and the gist of it."""
    when = event.Time.strftime("%H:%M:%S")
    key = event.Key[:8] if event.Topic == "Task" else event.Key
    return f"{event.Index:>7}  {when}  {event.Type:<20} {key:<12} {gist(event)}".rstrip()


def _state(value: object) -> str:
    try:
        return State(value).label if isinstance(value, int) else str(value or "")
    except ValueError:
        return str(value)


def gist(event: Event) -> str:
    p = event.Payload
    if event.Topic == "Task":
        parts = [str(p.get("Name") or ""), _state(p.get("State"))]
        if p.get("Node"):
            parts.append(f"on {p['Node']}")
        if p.get("Reason"):
            parts.append(f"({p['Reason']})")
        return " ".join(part for part in parts if part)
    if event.Topic == "Node":
        drain = " draining" if p.get("Draining") else ""
        eligible = "" if p.get("Eligible", True) else " ineligible"
        return f"{p.get('Status', '')}{eligible}{drain}"
    if event.Topic == "Job":
        return f"version {p.get('Version')}, count {p.get('Count')}"
    return (
        f"version {p.get('Version')} {p.get('Status')}: {p.get('Healthy', 0)} healthy, "
        f"{p.get('Placed', 0)} placed of {p.get('Desired', 0)}"
    )
