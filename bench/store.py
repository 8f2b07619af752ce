"""Control-plane throughput on etcd over SQLite: the scale workload, one store at a time.

Issue 17's target: with ``--store etcd://`` a manager keeps at least 0.7x the
throughput it has with ``--store sqlite`` (1,000 simulated workers). Both are measured
in the same run, in turns (A B C, then C B A, see ``bench.common.interleaved``), by
``bench.scale``'s own measure: a fresh simulated fleet and a fresh manager each run,
the same task events submitted 100 per request, the time from the first submission
to every task Running (from the manager's log).

- **sqlite**: ``--store sqlite``, the single manager's default durable store;
- **etcd (1 member)**: ``--store etcd://`` on one fresh etcd member on loopback, its
  limits raised as docs/operations.md asks (``--max-txn-ops=100000
  --max-request-bytes=33554432``);
- **etcd (3 members)**: the same on a fresh 3-member cluster (``--etcd-members 1 3``).

On etcd the manager elects itself leader first (``cube.manager.leader``); the clock
starts once it leads and its workers are ready, as it does on SQLite.

    .venv/bin/python -m bench.store                 # 1,000 workers, 10,000 tasks, 3 runs each
    .venv/bin/python -m bench.store --smoke         # 20 workers, 200 tasks, once each
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import scale
from bench.common import (
    Result,
    Table,
    Target,
    cpu_seconds,
    interleaved,
    main,
    task_event,
    workdir,
)
from bench.etcd import ETCD, RAISED_LIMITS, EtcdCluster, EtcdProcess
from bench.scale import IMAGE, MANAGER_CPU, P50, P99, PLACED, RATE, RUNNING

SQLITE = "sqlite"
RATIO_TARGET = 0.7  # etcd's tasks/s over SQLite's, at least
ETCD_CPU = "etcd CPU time, whole run (s)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=32, help="submissions in flight at once")
    parser.add_argument("--batch", type=int, default=100, help="TaskEvents per POST")
    parser.add_argument("--start-latency", type=float, default=0.0, help="simulated start, s")
    parser.add_argument("--scheduler", default="epvm")
    parser.add_argument(
        "--etcd-members",
        type=int,
        nargs="+",
        choices=[1, 3],
        default=[1],
        help="etcd cluster sizes to measure (1, 3 or both)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each store (--smoke: 1)")


def etcd_name(members: int) -> str:
    return f"etcd ({members} member{'s' if members > 1 else ''})"


@contextlib.contextmanager
def etcd(where: Path, members: int) -> Iterator[tuple[str, list[EtcdProcess]]]:
    """A fresh etcd of ``members`` members, its store URL and its processes."""
    if members == 1:
        one = EtcdProcess(where / "etcd").start()
        try:
            yield one.url(), [one]
        finally:
            one.stop()
        return
    cluster = EtcdCluster.of(where / "etcd", members).start()
    try:
        yield cluster.url(), cluster.members
    finally:
        cluster.stop()


def measure(
    args: argparse.Namespace, where: Path, bodies: list[dict[str, Any]], workers: int, members: int
) -> dict[str, float]:
    """One run of bench.scale's measure on SQLite (``members`` 0) or a fresh etcd."""
    if not members:
        return scale.measure_cube(args, where, bodies, workers, store=["--store", SQLITE])
    with etcd(where, members) as (url, procs):
        before = sum(cpu_seconds(p.proc.pid) for p in procs if p.proc is not None)
        measured = scale.measure_cube(args, where, bodies, workers, store=["--store", url])
        after = sum(cpu_seconds(p.proc.pid) for p in procs if p.proc is not None)
    return {**measured, ETCD_CPU: after - before}


def run(args: argparse.Namespace) -> Result:
    workers = 20 if args.smoke else args.workers
    tasks = 200 if args.smoke else args.tasks
    repeat = 1 if args.smoke else args.repeat
    if repeat < 1:
        raise SystemExit("error: --repeat must be at least 1")
    if not ETCD.exists():
        raise SystemExit(f"error: {ETCD} is missing (scripts/setup.sh installs etcd-server)")
    args.dbtype = "persistent"  # what bench.scale's measure reads; --store overrides it
    members = sorted(set(args.etcd_members))
    bodies = [task_event(IMAGE, ["sleep", "3600"]) for _ in range(tasks)]
    with workdir("store") as tmp:
        counter = iter(range(1_000_000))

        def place(name: str) -> Path:
            where = tmp / f"{next(counter):02d}-{name.split()[0]}"
            where.mkdir()
            return where

        def system(name: str, size: int) -> Callable[[], dict[str, float]]:
            return lambda: measure(args, place(name), bodies, workers, size)

        systems = {SQLITE: system(SQLITE, 0)}
        systems.update({etcd_name(m): system(etcd_name(m), m) for m in members})
        runs = interleaved(systems, repeat)
    return _result(args, workers, tasks, repeat, runs)


def _median(runs: list[dict[str, float]], measure: str) -> float | None:
    values = [run[measure] for run in runs if measure in run]
    return statistics.median(values) if values else None


def _result(
    args: argparse.Namespace,
    workers: int,
    tasks: int,
    repeat: int,
    runs: dict[str, list[dict[str, float]]],
) -> Result:
    shown = [RUNNING, RATE, PLACED, P50, P99, MANAGER_CPU, ETCD_CPU]
    medians = {name: {m: _median(r, m) for m in shown} for name, r in runs.items()}
    base = medians[SQLITE][RATE]
    assert base is not None
    columns = ["store", "all Running (s)", "tasks/s", "vs sqlite"]
    columns += ["manager CPU (s)", "etcd CPU (s)"]
    rows: list[dict[str, Any]] = []
    targets: list[Target] = []
    for name, m in medians.items():
        rate = m[RATE] or 0.0
        rows.append(
            {
                "store": name,
                "all Running (s)": m[RUNNING],
                "tasks/s": rate,
                "vs sqlite": f"{rate / base:.2f}x",
                "manager CPU (s)": m[MANAGER_CPU],
                "etcd CPU (s)": m[ETCD_CPU],
            }
        )
        if name != SQLITE:
            targets.append(
                Target(
                    f"{name} over sqlite",
                    f">= {RATIO_TARGET:.1f}x SQLite's tasks/s",
                    f"{rate / base:.2f}x",
                    rate / base >= RATIO_TARGET,
                )
            )
    detail = Table(
        f"Medians of {repeat} run(s) each",
        ["measure", *medians],
        [{"measure": m, **{n: medians[n][m] for n in medians}} for m in shown],
    )
    return Result(
        name="store",
        title=(
            f"Control plane on etcd over SQLite: {tasks:,} tasks on {workers:,} simulated workers"
        ),
        columns=columns,
        rows=rows,
        tables=[detail],
        targets=targets,
        settings={
            "workers": workers,
            "tasks": tasks,
            "clients": args.clients,
            "batch": args.batch,
            "scheduler": args.scheduler,
            "start_latency_s": args.start_latency,
            "repeat": repeat,
            "etcd_members": sorted(set(args.etcd_members)),
            "etcd_flags": " ".join(RAISED_LIMITS),
            "manager_flags": "defaults (poll 1 s, stats 2 s), --log-level info",
        },
        notes=[
            "tasks/s: tasks over the time from the first submission to all Running, "
            "the median of each store's runs; vs sqlite: that over SQLite's.",
            "etcd CPU: the etcd members' CPU time over the whole run (its start-up load too).",
            "Manager, etcd, simulated workers and the submitting client share the machine's cores.",
        ],
        extra={"runs": runs},
    )


if __name__ == "__main__":
    main("store", run, configure, __doc__ or "")
