"""How the CLI shows things to people: ages, sizes, ports, tables.

Pure functions, so the unit tests pin the exact text a user sees. Tables are Rich
tables without borders, like ``docker ps`` and ``kubectl get``: easy to read, and
easy to ``grep`` or ``awk`` when piped.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

SHORT_ID = 8
MISSING = "-"


def short_id(task_id: uuid.UUID) -> str:
    """The first block of a UUID: unique enough to read and to type (``cube stop`` takes it)."""
    return str(task_id)[:SHORT_ID]


def format_age(when: datetime | None, now: datetime | None = None) -> str:
    """ "2m ago": the largest whole unit, like ``docker ps``; "-" when it never happened."""
    if when is None:
        return MISSING
    now = now or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int((now - when).total_seconds())
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def format_bytes(size: int) -> str:
    """Binary units, because that is what memory limits and ``free -h`` use."""
    if size <= 0:
        return MISSING
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{value:.1f}".removesuffix(".0") if unit != "B" else str(size)
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_mib(kilobytes: int) -> str:
    """Node memory arrives in kB (as /proc/meminfo has it); the table shows whole MiB."""
    return str(kilobytes // 1024)


def format_gib(size: int) -> str:
    """Node disk arrives in bytes; the table shows GiB with one decimal."""
    return f"{size / 1024**3:.1f}"


def format_ports(host_ports: Mapping[str, Sequence[Mapping[str, str]]] | None) -> str:
    """Docker's notation, ``0.0.0.0:49153->80/tcp``, so people know what to curl."""
    parts = []
    for container_port, bindings in (host_ports or {}).items():
        # Docker adds an IPv6 twin ("::") of each binding; the IPv4 one is the one to use.
        ipv4 = [b for b in bindings if ":" not in (b.get("HostIp") or "")]
        for binding in ipv4 or bindings:
            host = binding.get("HostIp") or "0.0.0.0"
            parts.append(f"{host}:{binding.get('HostPort', '?')}->{container_port}")
    return ", ".join(parts) or MISSING


def console() -> Console:
    """A console that never wraps table rows when piped, so output stays one line per row.

    Markup is off: what is printed comes from users (task names, reasons), and a
    bracket in a name must not turn into a style or vanish.
    """
    interactive = sys.stdout.isatty()
    return Console(
        highlight=False, markup=False, soft_wrap=False, width=None if interactive else 1000
    )


def table(
    headers: Iterable[str], rows: Iterable[Sequence[str | Text]], show_header: bool = True
) -> Table:
    """Cells are text, never markup: a task named "[red]" is shown as typed."""
    grid = Table(
        box=None, header_style="bold", pad_edge=False, show_edge=False, show_header=show_header
    )
    for header in headers:
        grid.add_column(header, no_wrap=True, overflow="ellipsis")
    for row in rows:
        grid.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in row))
    return grid


def show(renderable: Table | str) -> None:
    """Print to stdout; when piped, without the padding Rich leaves at the end of rows."""
    out = console()
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_json(data: Any) -> None:
    """Plain JSON on stdout, exactly what the API answered, for scripts and ``jq``."""
    print(json.dumps(data, indent=2))
