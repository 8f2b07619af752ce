"""Many seeds in parallel, one replayed, a failure shrunk to the steps that matter."""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cube.sim.run import Outcome, simulate
from cube.sim.schedule import Scenario, Step, generate

REPLAY = "scripts/sim.sh"
FAILURES = Path("sim-failures")


def run_scenario(scenario: Scenario) -> Outcome:
    logging.disable(logging.CRITICAL)  # the trace says what happened; logs are noise here
    with tempfile.TemporaryDirectory(prefix="cube-sim-") as root:
        return simulate(scenario, Path(root))


def _summary(managers: int, seed: int) -> tuple[int, str | None, float, float]:
    outcome = run_scenario(generate(seed, managers))
    return seed, outcome.violation, outcome.virtual_seconds, outcome.wall_seconds


def replay_command(managers: int) -> str:
    return REPLAY if managers == 1 else f"{REPLAY} --managers {managers}"


def explore(
    first: int,
    count: int,
    jobs: int,
    *,
    shrink: bool = True,
    until_failure: bool = False,
    managers: int = 1,
) -> int:
    """``managers``: more than one, and the seeds run them electing a leader."""
    began = time.perf_counter()
    seeds = range(first, first + count)
    failures: list[tuple[int, str]] = []
    virtual = 0.0
    with multiprocessing.get_context("fork").Pool(max(jobs, 1)) as pool:
        done = 0
        summary = partial(_summary, managers)
        for seed, violation, simulated, _ in pool.imap_unordered(summary, seeds):
            done += 1
            virtual += simulated
            if violation:
                failures.append((seed, violation))
                print(f"seed {seed}: {violation}", flush=True)
                print(f"  replay: {replay_command(managers)} --seed {seed}", flush=True)
                if until_failure:
                    break
    wall = time.perf_counter() - began
    led = "" if managers == 1 else f" ({managers} managers)"
    print(
        f"{done} seeds from {first}{led}: {len(failures)} failed; {virtual:,.0f} simulated "
        f"seconds in {wall:.1f} s ({virtual / wall:,.0f} simulated seconds per second, "
        f"{jobs} processes)"
    )
    if failures and shrink:
        seed, violation = min(failures)
        scenario = generate(seed, managers)
        print(f"shrinking seed {seed} ({len(scenario.steps)} steps)...", flush=True)
        small = shrink_scenario(scenario, violation.split(":")[0], run_scenario)
        FAILURES.mkdir(exist_ok=True)
        path = FAILURES / f"seed-{seed}.json"
        path.write_text(small.to_json() + "\n")
        print(f"  {len(small.steps)} steps still fail: {REPLAY} --scenario {path}")
        for step in small.steps:
            print(f"    {step.at:8.3f} {step.describe()}")
    return 1 if failures else 0


def shrink_scenario(
    scenario: Scenario, kind: str, run: Callable[[Scenario], Outcome], budget: int = 200
) -> Scenario:
    """Drop steps while the same invariant still breaks (delta debugging: halves first,
    then smaller and smaller chunks, down to single steps)."""
    current = scenario
    chunk = max(len(current.steps) // 2, 1)
    while chunk >= 1 and budget > 0:
        start, shrunk = 0, False
        while start < len(current.steps) and budget > 0:
            candidate = current.without(set(range(start, start + chunk)))
            budget -= 1
            if candidate.steps and run(candidate).kind == kind:
                current, shrunk = candidate, True  # the same start now names the next chunk
            else:
                start += chunk
        if not shrunk:
            chunk //= 2
    return current


def soak(workers: int, seconds: float) -> int:
    """A quiet cluster for a long while: how fast does simulated time go?"""
    tasks = workers * 5
    steps = [
        Step(
            1.0 + i,
            "submit",
            {"count": 4, "memory_mib": 64, "policy": "always", "health": i % 2 == 0},
        )
        for i in range(tasks // 4)
    ]
    steps.append(Step(seconds, "tick"))
    outcome = run_scenario(Scenario(0, workers, tuple(steps)))
    ratio = outcome.virtual_seconds / outcome.wall_seconds
    print(
        f"{workers} workers, {tasks} tasks (half health-checked), {outcome.virtual_seconds:,.0f} "
        f"simulated seconds in {outcome.wall_seconds:.1f} s: {ratio:,.0f} simulated seconds "
        f"per second; {outcome.violation or 'every invariant held'}"
    )
    return 0 if outcome.ok else 1


def replay(
    seed: int | None, scenario_file: Path | None, trace_file: Path | None, managers: int = 1
) -> int:
    if scenario_file is not None:
        scenario = Scenario.from_json(scenario_file.read_text())
    else:
        assert seed is not None
        scenario = generate(seed, managers)
    outcome = run_scenario(scenario)
    text = "\n".join(outcome.trace) + "\n"
    if trace_file is not None:
        trace_file.write_text(text)
    else:
        print(text, end="")
    ratio = outcome.virtual_seconds / max(outcome.wall_seconds, 1e-9)
    print(
        f"seed {scenario.seed}: {outcome.violation or 'every invariant held'} "
        f"({outcome.virtual_seconds:.0f} simulated s in {outcome.wall_seconds:.2f} s: "
        f"{ratio:,.0f}x)"
    )
    return 0 if outcome.ok else 1
