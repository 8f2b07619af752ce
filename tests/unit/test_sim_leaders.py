"""The simulator's leaders: its etcd on virtual time, freezing a process, HA seeds."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cube.manager.backend import Change, Deposed, Fence, StoreUnavailable
from cube.manager.etcd_backend import TIMEOUT, EtcdBackend
from cube.manager.leader import Elector, EtcdLeases
from cube.sim.loop import OWNER, LoopClock, VirtualLoop, run
from cube.sim.schedule import Scenario, generate
from cube.sim.store import SimClient, SimConnection, SimEtcd
from cube.sim.terms import check as check_terms
from cube.task import Task

ROOT = Path(__file__).resolve().parents[2]
KEY = b"/cube/leader"
LEADERS_SEED = ("--managers", "3", "--seed", "5")


def _elector(store: SimEtcd, me: str) -> Elector:
    conn = SimConnection(SimClient(store))
    return Elector(EtcdLeases(conn), "/cube/", me, ttl=5, clock=LoopClock())


def test_an_unrefreshed_lease_expires_on_virtual_time_and_the_next_leads() -> None:
    async def main() -> None:
        store = SimEtcd()
        first = await _elector(store, "a").campaign()
        assert store.keys[KEY].create_revision == first.term
        # b waits on the key's watch; nobody refreshes a's lease.
        second = await asyncio.wait_for(_elector(store, "b").campaign(), 30)
        assert second.term > first.term
        assert asyncio.get_running_loop().time() == pytest.approx(5.0, abs=0.01)
        assert store.keys[KEY].value == b"b"

    run(main, seed=1)


def test_a_fenced_write_of_an_old_term_is_refused_and_says_so() -> None:
    async def main() -> None:
        store = SimEtcd()
        elector = _elector(store, "a")
        lead = await elector.campaign()
        told: list[int] = []
        fence = Fence(KEY, lead.term, lambda: told.append(lead.term))
        backend = EtcdBackend(SimConnection(SimClient(store)), "/cube/", fence)
        await backend._load()
        task = Task(Image="img")
        await backend.commit([Change(None, task)], [])
        store.revoke(lead.lease)  # the lease is gone: another may lead
        await _elector(store, "b").campaign()
        with pytest.raises(Deposed):
            await backend.commit([Change(task, task.model_copy(update={"Name": "x"}))], [])
        assert told == [lead.term]

    run(main, seed=1)


@pytest.mark.parametrize(("mode", "took"), [("refuse", 0.0), ("hang", TIMEOUT)])
def test_etcd_down_refuses_or_hangs_until_its_deadline_then_comes_back(
    mode: str, took: float
) -> None:
    async def main() -> None:
        store = SimEtcd()
        backend = EtcdBackend(SimConnection(SimClient(store)), "/cube/")
        store.fail(mode)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(StoreUnavailable):
            await backend._load()
        assert loop.time() - began == pytest.approx(took, abs=0.01)
        store.recover()
        await backend._load()

    run(main, seed=1)


def test_a_frozen_process_runs_nothing_until_thawed() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualLoop)
        loop.track_owners()
        said: list[str] = []

        async def ticking() -> None:
            while True:
                await asyncio.sleep(1.0)
                said.append(f"{loop.time():.1f}")

        context = contextvars.copy_context()
        context.run(OWNER.set, "m1")
        ticker = loop.create_task(ticking(), context=context)
        await asyncio.sleep(2.5)
        loop.freeze("m1")
        await asyncio.sleep(5.0)
        loop.thaw("m1")
        await asyncio.sleep(1.2)
        assert loop.tasks_of("m1") == [ticker]
        ticker.cancel()
        return said

    # Two ticks, nothing while frozen, the one due meanwhile at the thaw, then on.
    assert run(main, seed=1) == ["1.0", "2.0", "7.5", "8.5"]


def test_the_terms_invariants_catch_two_leaders_and_a_stale_command() -> None:
    from cube.sim.leaders import Received

    class Box:
        def __init__(self) -> None:
            self.senders: dict[int, str] = {}
            self.received: list[Received] = []

    box = Box()
    box.received = [Received("w1", "m1", 4, "GET", "/tasks", 200, 0)]
    assert check_terms(box) is None  # type: ignore[arg-type]
    box.received = [Received("w1", "m2", 4, "GET", "/tasks", 200, 4)]
    assert (check_terms(box) or "").startswith("two-leaders: term 4")  # type: ignore[arg-type]
    box.received = [Received("w2", "m1", 4, "POST", "/tasks", 409, 9)]
    assert check_terms(box) is None  # type: ignore[arg-type]  # refused: right
    box.received = [Received("w2", "m1", 4, "POST", "/tasks", 201, 9)]
    assert (check_terms(box) or "").startswith("stale-term: w2")  # type: ignore[arg-type]


def test_leader_scenarios_keep_single_manager_seeds_as_they_were() -> None:
    single, led = generate(7), generate(7, managers=3)
    assert single.managers == 1 and led.managers == 3
    assert {"freeze", "etcd_down", "leader_crash"} & {s.kind for s in generate(2, 3).steps}
    assert not {"freeze", "etcd_down", "leader_crash"} & {s.kind for s in single.steps}
    assert Scenario.from_json(led.to_json()) == led


def test_a_leaders_seed_gives_the_same_trace_byte_for_byte(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    traces = []
    for name in ("a", "b"):
        path = tmp_path / name
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cube.sim",
                *("--managers", "3", "--seed", "5"),
                "--trace",
                str(path),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        traces.append(path.read_bytes())
    assert b"froze m" in traces[0] or b"killed m" in traces[0]
    assert traces[0] == traces[1]
