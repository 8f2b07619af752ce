"""Time per scheduling decision as the cluster grows: 10 to 5,000 workers.

A micro-benchmark of :mod:`cube.scheduler`, in process: each decision is what the
manager does per task (``place`` — feasibility, score, pick — then ``reserve``) on nodes
that fill up as tasks land, so scores move as they would in a real cluster.

``epvm`` is the manager's default (it scores about 16 feasible nodes from a rotating
start, as Kubernetes' percentageOfNodesToScore and Nomad's log2 limit); ``epvm-all``
scores every node, as the book does; ``roundrobin`` is the book's.

    .venv/bin/python -m bench.scheduler
    .venv/bin/python -m bench.scheduler --smoke
"""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, Result, main
from bench.plot import Series, line_chart
from cube.node import READY, Node
from cube.scheduler import DEFAULT_MAX_CANDIDATES, Epvm, RoundRobin, Scheduler, reserve

SIZES = [10, 100, 1000, 2000, 5000]
GiB_KB = 1024**2


@dataclass(frozen=True)
class _Task:
    ID: uuid.UUID
    Cpu: float = 0.01
    Memory: int = 8 * 1024**2
    Disk: int = 0
    PortBindings: dict[str, str] | None = None


def _nodes(count: int) -> list[Node]:
    nodes = []
    for i in range(count):
        node = Node.for_worker(f"10.0.{i // 250}.{i % 250}:5556")
        node.Cores, node.Memory, node.Disk = 4, 16 * GiB_KB, 100 * 1024**3
        node.CpuPercent = float(i % 50)
        node.Status = READY
        nodes.append(node)
    return nodes


def _schedulers() -> dict[str, Scheduler]:
    return {"epvm": Epvm(), "epvm-all": Epvm(max_candidates=None), "roundrobin": RoundRobin()}


def time_decisions(name: str, size: int, decisions: int) -> float:
    """Microseconds per decision (place + reserve), the best of five rounds.

    The minimum, as ``timeit`` advises: on a shared machine every other figure
    measures the neighbours too.
    """
    rounds = []
    for _ in range(5):
        scheduler = _schedulers()[name]
        nodes = _nodes(size)
        tasks = [_Task(uuid.uuid4()) for _ in range(decisions)]
        started = time.perf_counter()
        for task in tasks:
            placement = scheduler.place(task, nodes)
            assert placement.node is not None, placement.reason
            reserve(placement.node, task)
        rounds.append((time.perf_counter() - started) / decisions * 1e6)
    return min(rounds)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "docs" / "img" / "scheduler-decision.svg"
    )


def run(args: argparse.Namespace) -> Result:
    sizes = [10, 100] if args.smoke else SIZES
    decisions = 50 if args.smoke else 2000
    names = list(_schedulers())
    rows = []
    for size in sizes:
        row: dict[str, object] = {"workers": size}
        for name in names:
            # Fewer decisions where each is slow, so a run stays under a minute.
            count = decisions if name != "epvm-all" or size <= 1000 else decisions // 8
            row[f"{name} (µs)"] = time_decisions(name, size, count)
        rows.append(row)
    if not args.smoke:
        series = [
            Series(name, [(float(r["workers"]), float(r[f"{name} (µs)"])) for r in rows])  # type: ignore[arg-type]
            for name in names
        ]
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        args.plot.write_text(
            line_chart(
                "Time per scheduling decision",
                "workers",
                "µs per decision",
                series,
                log_x=True,
                log_y=True,
            )
        )
    return Result(
        name="scheduler",
        title="Scheduler: time per decision (place + reserve), µs",
        columns=["workers", *(f"{n} (µs)" for n in names)],
        rows=rows,
        settings={"decisions_per_round": decisions, "rounds": 5, "statistic": "min"},
        notes=[
            f"epvm scores at most {DEFAULT_MAX_CANDIDATES} feasible nodes per decision; "
            "epvm-all scores all."
        ],
    )


if __name__ == "__main__":
    main("scheduler", run, configure, __doc__ or "")
