"""The simulator's own parts: virtual time, the network's faults, determinism, shrinking."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cube.sim.explore import shrink_scenario
from cube.sim.loop import LoopClock, Spinning, Stalled, run
from cube.sim.net import Link
from cube.sim.run import Outcome
from cube.sim.schedule import Scenario, Step, generate
from cube.transport import InProcessTransport

ROOT = Path(__file__).resolve().parents[2]


def test_an_hour_of_sleeping_takes_no_time() -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return asyncio.get_running_loop().time()

    began = time.perf_counter()
    assert run(main, seed=1) >= 3600
    assert time.perf_counter() - began < 5  # a virtual hour, not a real one


def test_timeouts_fire_on_virtual_time() -> None:
    async def main() -> tuple[bool, float]:
        clock = LoopClock()
        start = clock.monotonic()
        woke = await clock.wait(asyncio.Event(), 30)
        return woke, clock.monotonic() - start

    woke, waited = run(main, seed=1)
    assert not woke and 30 <= waited < 30.001


def test_a_coroutine_spinning_at_one_instant_is_caught() -> None:
    async def spin() -> None:
        while True:
            await asyncio.sleep(0)

    with pytest.raises(Spinning, match="spin"):
        run(spin, seed=1)


def test_everyone_waiting_for_everyone_is_caught() -> None:
    async def wait_forever() -> None:
        await asyncio.Event().wait()

    with pytest.raises(Stalled):
        run(wait_forever, seed=1)


def test_uuids_come_from_the_seed() -> None:
    import uuid

    async def draw() -> list[uuid.UUID]:
        return [uuid.uuid4() for _ in range(3)]

    assert run(draw, seed=5) == run(draw, seed=5)
    assert run(draw, seed=5) != run(draw, seed=6)


async def _echo(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def,type-arg]
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_partition_refuses_or_times_out_and_heals() -> None:
    async def main() -> list[str]:
        import random

        link = Link("w1", random.Random(1))
        link.attach(InProcessTransport(_echo))
        seen = []
        async with httpx.AsyncClient(transport=link, timeout=5.0) as client:
            seen.append((await client.get("http://w1/")).text)
            link.cut("refuse")
            with pytest.raises(httpx.ConnectError):
                await client.get("http://w1/")
            link.cut("blackhole")
            start = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ConnectTimeout):
                await client.get("http://w1/")
            seen.append(f"{asyncio.get_running_loop().time() - start:.0f}")
            link.heal()
            seen.append((await client.get("http://w1/")).text)
        return seen

    assert run(main, seed=1) == ["ok", "5", "ok"]


def test_a_lost_request_never_reaches_the_worker_and_times_out() -> None:
    async def main() -> int:
        import random

        calls = []

        async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def,type-arg]
            calls.append(scope["method"])
            await _echo(scope, receive, send)

        link = Link("w1", random.Random(1))
        link.attach(InProcessTransport(app))
        link.loss = 1.0  # every message lost: here the request itself
        async with httpx.AsyncClient(transport=link, timeout=5.0) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("http://w1/", content=b"x")
        return len(calls)

    assert run(main, seed=1) == 0


def _outcome(scenario: Scenario, kind: str | None) -> Outcome:
    return Outcome(scenario, f"{kind}: x" if kind else None, [], 0.0, 0.0)


def test_the_shrinker_keeps_only_the_steps_that_matter() -> None:
    steps = tuple(Step(float(i), "submit" if i != 7 else "stop", {}) for i in range(20))
    scenario = Scenario(1, 2, steps)

    def fails_with_stop(candidate: Scenario) -> Outcome:
        stop = any(s.kind == "stop" for s in candidate.steps)
        return _outcome(candidate, "stopped-runs" if stop else None)

    small = shrink_scenario(scenario, "stopped-runs", fails_with_stop)
    assert [s.kind for s in small.steps] == ["stop"]


def test_a_scenario_survives_a_round_trip_through_its_file() -> None:
    scenario = generate(3)
    assert Scenario.from_json(scenario.to_json()) == scenario


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "cube.sim", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_one_seed_gives_the_same_trace_byte_for_byte(tmp_path: Path) -> None:
    first, second = tmp_path / "a.trace", tmp_path / "b.trace"
    for path in (first, second):
        done = _sim("--seed", "11", "--trace", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
    text = first.read_text()
    assert "acknowledged" in text and "event {" in text  # a run with tasks, events
    assert first.read_bytes() == second.read_bytes()
    other = tmp_path / "c.trace"
    _sim("--seed", "12", "--trace", str(other))
    assert other.read_bytes() != text.encode()


def test_a_run_reports_simulated_seconds_per_second() -> None:
    done = _sim("--seeds", "4", "--jobs", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 seeds from 1: 0 failed" in done.stdout
    assert "simulated seconds per second" in done.stdout
