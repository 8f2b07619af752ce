"""`cube node`: the workers as the manager sees them; drain, eligibility, removal."""

from __future__ import annotations

import re
import time
from typing import Annotated

import typer
from rich.text import Text

from cube.cli import format as fmt
from cube.cli.errors import CliError
from cube.cli.options import DEFAULT_MANAGER, Manager, Output, OutputFormat
from cube.manager.client import ManagerClient
from cube.node import READY, Node

NODE_HEADERS = (
    "NAME",
    "MEMORY (MiB)",
    "DISK (GiB)",
    "ROLE",
    "TASKS",
    "CPU %",
    "STATUS",
    "ELIGIBILITY",
    "LABELS",
)
POLL_INTERVAL = 0.5

app = typer.Typer(
    help="List the workers: capacity, tasks, status, eligibility and labels; drain, "
    "make eligible or ineligible, remove.",
    invoke_without_command=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="node")


def node_row(node: Node) -> list[str | Text]:
    return [
        node.Name,
        fmt.format_mib(node.Memory),
        fmt.format_gib(node.Disk),
        node.Role,
        str(node.TaskCount),
        f"{node.CpuPercent:.1f}",
        status(node),
        eligibility(node),
        ",".join(f"{k}={v}" for k, v in sorted(node.Labels.items())) or fmt.MISSING,
    ]


def status(node: Node) -> Text:
    """Ready, down, or ready but without a Docker engine (no tasks are placed there)."""
    if node.Status != READY:
        return Text(node.Status, style="red")
    if not node.Docker:
        return Text(f"{READY}, no docker", style="yellow")
    return Text(READY, style="green")


def eligibility(node: Node) -> Text:
    if node.Draining:
        return Text("draining", style="yellow")
    if not node.Eligible:
        return Text("ineligible", style="yellow")
    return Text("eligible", style="green")


@app.callback()
def node(
    ctx: typer.Context, manager: Manager = DEFAULT_MANAGER, output: OutputFormat = Output.table
) -> None:
    """List the workers: capacity, tasks placed there, CPU use, whether they answer,
    whether they take new work, and their labels."""
    if ctx.invoked_subcommand is not None:
        return
    with ManagerClient(manager) as client:
        nodes = client.nodes()
    if output is Output.json:
        fmt.print_json([n.to_wire() for n in nodes])  # as the API answers
        return
    rows = [node_row(n) for n in sorted(nodes, key=lambda n: n.Name)]
    fmt.show(fmt.table(NODE_HEADERS, rows))


Name = Annotated[str, typer.Argument(help="The node's name (see `cube node`).")]


@app.command("drain")
def drain(
    name: Name,
    deadline: Annotated[
        str | None,
        typer.Option(
            "--deadline", help="After this (e.g. 90s, 5m, 1h), what is left moves at once."
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return at once; don't wait for the drain.")
    ] = False,
    manager: Manager = DEFAULT_MANAGER,
) -> None:
    """Move the node's tasks to other nodes (a job's no faster than its MaxParallel);
    it then takes no new work until `cube node eligible`."""
    seconds = None if deadline is None else parse_duration(deadline)
    with ManagerClient(manager) as client:
        found = client.drain(name, seconds)
        print(f"node {name}: draining{f' (deadline {deadline})' if deadline else ''}")
        if detach:
            return
        left = -1
        while found.Draining:
            if found.TaskCount != left:
                left = found.TaskCount
                print(f"node {name}: {left} task{'s' if left != 1 else ''} left", flush=True)
            time.sleep(POLL_INTERVAL)
            found = client.node(name)
    print(f"node {name}: drained; it takes no new work until `cube node eligible {name}`")


@app.command("eligible")
def eligible(name: Name, manager: Manager = DEFAULT_MANAGER) -> None:
    """Let the node take new work again (ends a drain in progress)."""
    with ManagerClient(manager) as client:
        client.set_eligible(name, True)
    print(f"node {name}: eligible")


@app.command("ineligible")
def ineligible(name: Name, manager: Manager = DEFAULT_MANAGER) -> None:
    """Give the node no new work; what runs there stays (drain moves it)."""
    with ManagerClient(manager) as client:
        client.set_eligible(name, False)
    print(f"node {name}: ineligible")


@app.command("rm")
def remove(name: Name, manager: Manager = DEFAULT_MANAGER) -> None:
    """Forget a node that is gone for good (it must be down)."""
    with ManagerClient(manager) as client:
        client.remove_node(name)
    print(f"node {name}: removed")


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m``: seconds; a clear error otherwise."""
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[smhd]?)+)\s*", text)
    total = 0.0
    if parts is not None:
        for number, unit in re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", parts.group(1)):
            total += float(number) * _UNITS[unit]
    if parts is None or total <= 0:
        raise CliError(f"invalid duration {text!r}: expected e.g. 90s, 5m or 1h")
    return total
