"""``python -m cube.sim``: run seeds, replay one, shrink a failure. See docs/testing.md."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cube.sim.explore import explore, replay, soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cube.sim",
        description="Run Cube's control plane under random faults on virtual time.",
    )
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--first", type=int, default=1, help="the first seed")
    parser.add_argument(
        "--managers",
        type=int,
        default=1,
        help="managers electing a leader on a simulated etcd (1: one manager on SQLite)",
    )
    parser.add_argument("--seed", type=int, help="replay this one seed (prints its trace)")
    parser.add_argument("--scenario", type=Path, help="replay a (shrunk) scenario file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--no-shrink", action="store_true", help="report failures as found")
    parser.add_argument("--until-failure", action="store_true", help="stop at the first")
    parser.add_argument(
        "--soak", type=int, metavar="WORKERS", help="a quiet cluster of this many workers"
    )
    parser.add_argument("--seconds", type=float, default=3600.0, help="how long --soak runs")
    parser.add_argument("--trace", type=Path, help="write the trace of --seed/--scenario here")
    args = parser.parse_args(argv)
    if args.managers < 1:
        parser.error("--managers: at least 1")
    if os.environ.get("PYTHONHASHSEED") != "0":
        # String hashing must be the same in every run, and only a new process can fix it.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "cube.sim", *sys.argv[1:]], env)
    if args.soak:
        return soak(args.soak, args.seconds)
    if args.seed is not None or args.scenario is not None:
        return replay(args.seed, args.scenario, args.trace, args.managers)
    shrink = not args.no_shrink
    return explore(
        args.first,
        args.seeds,
        args.jobs,
        shrink=shrink,
        until_failure=args.until_failure,
        managers=args.managers,
    )


if __name__ == "__main__":
    sys.exit(main())
