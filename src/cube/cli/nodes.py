"""`cube node`: the workers as the manager sees them."""

from __future__ import annotations

import typer
from rich.text import Text

from cube.cli import format as fmt
from cube.cli.options import DEFAULT_MANAGER, Manager, Output, OutputFormat
from cube.manager.client import ManagerClient
from cube.node import READY, Node

NODE_HEADERS = ("NAME", "MEMORY (MiB)", "DISK (GiB)", "ROLE", "TASKS", "CPU %", "STATUS")


def register(app: typer.Typer) -> None:
    app.command("node")(node)


def node_row(node: Node) -> list[str | Text]:
    return [
        node.Name,
        fmt.format_mib(node.Memory),
        fmt.format_gib(node.Disk),
        node.Role,
        str(node.TaskCount),
        f"{node.CpuPercent:.1f}",
        status(node),
    ]


def status(node: Node) -> Text:
    """Ready, down, or ready but without a Docker engine (no tasks are placed there)."""
    if node.Status != READY:
        return Text(node.Status, style="red")
    if not node.Docker:
        return Text(f"{READY}, no docker", style="yellow")
    return Text(READY, style="green")


def node(manager: Manager = DEFAULT_MANAGER, output: OutputFormat = Output.table) -> None:
    """List the workers: capacity, tasks placed there, CPU use, and whether they answer."""
    with ManagerClient(manager) as client:
        nodes = client.nodes()
    if output is Output.json:
        fmt.print_json([n.to_wire() for n in nodes])
        return
    fmt.show(fmt.table(NODE_HEADERS, [node_row(n) for n in nodes]))
