"""The manager's own logic, in-process, on virtual time: no Docker, no network.

Workers here are an httpx MockTransport that accepts everything and records what it
was sent; tests that need real workers are in test_manager_inprocess.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from cube.clock import ManualClock
from cube.events import Event
from cube.manager.backend import Change, MemoryBackend
from cube.manager.manager import Manager
from cube.scheduler import Epvm
from cube.task import State, Task, TaskEvent
from cube.worker.client import WorkerClient

pytestmark = pytest.mark.anyio
NODE = "w1:1"


class FlakyBackend(MemoryBackend):
    """Fails the commits it is told to, as a full disk or a locked database would."""

    fail = 0

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("disk full")
        await super().commit(changes, events, stream)


class Recorder:
    """A worker that takes every request with a 201 and remembers it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        return httpx.Response(201 if request.method == "POST" else 204, json=[])


@pytest.fixture
async def manager() -> AsyncIterator[Manager]:
    recorder = Recorder()

    def connect(url: str, token: str) -> WorkerClient:
        return WorkerClient(url, httpx.AsyncClient(transport=httpx.MockTransport(recorder)))

    node = Manager([NODE], Epvm(), FlakyBackend(), clock=ManualClock(), connect=connect)
    worker = node.state.nodes[NODE]
    worker.Cores, worker.Memory, worker.Disk = 4, 4 * 2**20, 2**40
    node.state.node_ready(NODE)
    node.recorder = recorder  # type: ignore[attr-defined]
    yield node
    await node.close()


def event(**task: object) -> TaskEvent:
    return TaskEvent(State=State.RUNNING, Task=Task(Image="img", Memory=2**30, **task))


async def test_a_failed_placement_write_leaks_nothing_and_is_retried(manager: Manager) -> None:
    """Defect 4: the reservation was made and the task dropped from the pending set
    before the write; a failed write leaked both."""
    task = await manager.submit(event())
    backend = manager.backend
    assert isinstance(backend, FlakyBackend) and isinstance(manager.clock, ManualClock)
    backend.fail = 1
    await manager.reconcile_once()
    node = manager.state.nodes[NODE]
    assert (node.TaskCount, node.MemoryAllocated) == (0, 0)
    assert manager.get(task.ID).State is State.PENDING
    await manager.clock.advance(1.0)
    await manager.reconcile_once()
    placed = manager.get(task.ID)
    assert (placed.State, placed.Node) == (State.SCHEDULED, NODE)
    assert (node.TaskCount, node.MemoryAllocated) == (1, 2**20)


async def test_a_stop_is_stored_on_the_task_with_its_event_in_one_commit(
    manager: Manager,
) -> None:
    task = await manager.submit(event())
    await manager.reconcile_once()
    backend = manager.backend
    assert isinstance(backend, FlakyBackend)
    backend.fail = 1
    with pytest.raises(OSError):
        await manager.stop(task.ID)
    assert manager.get(task.ID).DesiredState is State.RUNNING  # nothing half-written
    assert [e.State for e in await manager.history(task.ID)] == [State.RUNNING, State.SCHEDULED]
    stopped = await manager.stop(task.ID)
    assert stopped.DesiredState is State.COMPLETED
    assert backend.load()[0].DesiredState is State.COMPLETED
    assert [e.State for e in await manager.history(task.ID)][-1] is State.COMPLETED


async def test_a_placement_is_not_reconciled_again_but_its_node_lost_is(
    manager: Manager,
) -> None:
    """The pass that placed and sent a task does not queue it for another look (which
    could only decide the same Send again); what happens to it afterwards does."""
    tasks = [await manager.submit(event(Name=f"t{i}")) for i in range(3)]
    await manager.reconcile_once()
    assert all(manager.get(t.ID).State is State.SCHEDULED for t in tasks)
    assert manager.state.take_dirty() == []
    manager.state.node_lost(NODE)
    assert set(manager.state.take_dirty()) == {t.ID for t in tasks}


async def test_a_task_too_big_waits_with_its_reason_then_fits(manager: Manager) -> None:
    big = await manager.submit(event(Name="big", Cpu=8))
    await manager.reconcile_once()
    waiting = manager.get(big.ID)
    assert waiting.State is State.PENDING
    assert "CPU" in waiting.Reason or "cpu" in waiting.Reason
    node = manager.state.nodes[NODE]
    node.Cores = 16
    manager.state.room()
    await manager.reconcile_once()
    await manager.reconcile_once()
    assert manager.get(big.ID).State is State.SCHEDULED


class ClosingBackend(MemoryBackend):
    closed = False

    def close(self) -> None:
        self.closed = True


async def test_a_repeated_worker_address_is_one_worker_with_one_client() -> None:
    """Defect 5: a duplicate -w built a second client that nobody closed."""
    node = Manager(["w1:1", "w1:1", "http://w1:1"], Epvm(), MemoryBackend())
    assert list(node.clients) == ["w1:1"] and [n.Name for n in node.nodes()] == ["w1:1"]
    await node.close()


async def test_close_stops_the_loops_then_what_they_feed_then_connections_and_store() -> None:
    """Defect 6: job sets were closed while the loops feeding them still ran; stores
    were never closed."""
    backend = ClosingBackend()
    node = Manager([NODE], Epvm(), backend, clock=ManualClock())
    await node.start()
    loops = list(node._loops)
    await node.close()
    assert all(loop.done() for loop in loops)
    assert len(node.dispatch.jobs) == 0 and len(node.tracker.jobs) == 0
    assert all(client.is_closed for client in node.clients.values())
    assert node.health.http.is_closed
    assert backend.closed


async def test_an_idle_manager_still_notices_a_silent_worker() -> None:
    """Nothing submitted, nothing changing: the worker timeout must still fire."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def connect(url: str, token: str) -> WorkerClient:
        return WorkerClient(url, httpx.AsyncClient(transport=httpx.MockTransport(refuse)))

    clock = ManualClock()
    node = Manager([NODE], Epvm(), MemoryBackend(), clock=clock, connect=connect)
    await node.start()
    try:
        await clock.advance(9.5)
        assert node.state.lost == set()
        await clock.advance(1.0)
        assert node.state.lost == {NODE}
    finally:
        await node.close()


async def test_a_restart_that_waits_for_room_keeps_why_the_task_failed(manager: Manager) -> None:
    task = await manager.submit(event())  # 1 GiB, on a 4 GiB node
    await manager.reconcile_once()
    placed = manager.get(task.ID)
    await manager.state.commit(
        [placed.model_copy(update={"State": State.FAILED, "Reason": "exited with code 1"})]
    )
    manager.state.nodes[NODE].Memory = 2**19  # the node shrank: no room to restart
    await manager.reconcile_once()
    waiting = manager.get(task.ID)
    assert waiting.State is State.FAILED
    assert waiting.Reason.startswith("exited with code 1 (restart waits: no feasible node")
    manager.state.nodes[NODE].Memory = 4 * 2**20
    manager.state.room()
    await manager.reconcile_once()
    restarted = manager.get(task.ID)
    assert (restarted.State, restarted.RestartCount) == (State.SCHEDULED, 1)
    assert restarted.Reason == "restarting after: exited with code 1"


async def test_a_restart_that_fits_nowhere_does_not_wake_itself(manager: Manager) -> None:
    """Found by the simulator: a restart looked for room by giving its own up, which
    woke every waiting task, itself included, so with no node ready the reconcile loop
    spun at full speed, forever, at one instant."""
    task = await manager.submit(event())
    await manager.reconcile_once()
    placed = manager.get(task.ID)
    await manager.state.commit([placed.model_copy(update={"State": State.FAILED})])
    manager.state.node_lost(NODE)  # nowhere to restart it
    await manager.reconcile_once()  # it waits, and stores why (which marks it once more)
    await manager.reconcile_once()
    assert manager.get(task.ID).Reason.startswith(" (restart waits: no feasible node")
    assert manager.state.take_dirty() == []  # nothing to do until a node or room appears
    manager.state.node_ready(NODE)
    assert manager.state.take_dirty() == [task.ID]


async def test_a_failed_task_to_be_restarted_keeps_its_room(manager: Manager) -> None:
    """A task waiting for room must not take the slot of one whose restart is due."""
    node = manager.state.nodes[NODE]
    first = await manager.submit(event(Cpu=4))
    await manager.reconcile_once()
    waiting = await manager.submit(event(Cpu=4))
    await manager.reconcile_once()
    assert manager.get(waiting.ID).State is State.PENDING
    placed = manager.get(first.ID)
    await manager.state.commit([placed.model_copy(update={"State": State.FAILED})])
    assert node.CpuAllocated == 4  # still held
    await manager.reconcile_once()
    assert (manager.get(first.ID).State, manager.get(first.ID).RestartCount) == (
        State.SCHEDULED,
        1,
    )
    assert manager.get(waiting.ID).State is State.PENDING
    assert node.CpuAllocated == 4 and node.TaskCount == 1


async def test_a_pass_that_fails_drops_no_task(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await manager.submit(event())
    real = manager.scheduler.place
    calls = 0

    def flaky(*args: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in a scoring plugin")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(manager.scheduler, "place", flaky)
    with pytest.raises(RuntimeError):
        await manager.reconcile_once()
    node = manager.state.nodes[NODE]
    assert node.TaskCount == 0
    await manager.reconcile_once()
    assert manager.get(task.ID).State is State.SCHEDULED and node.TaskCount == 1


async def test_a_failure_reported_for_a_task_being_stopped_is_its_stop(manager: Manager) -> None:
    """A probe or a send in flight when the user stops: the task ends Completed."""
    task = await manager.submit(event())
    await manager.reconcile_once()
    placed = manager.get(task.ID)
    await manager.state.commit([placed.model_copy(update={"State": State.RUNNING})])
    await manager.stop(task.ID)
    await manager.report(manager.get(task.ID), State.FAILED, "health check failed: HTTP 500")
    ended = manager.get(task.ID)
    assert (ended.State, ended.Reason) == (State.COMPLETED, "stopped on request")


class Refusing(MemoryBackend):
    """Every commit fails at once, as etcd refusing connections does; after
    ``limit`` attempts it ends the run, so a loop that spins fails the test, not hangs it."""

    class Spun(BaseException):
        pass

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.attempts = 0
        self.refusing = False

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        if not self.refusing:
            return await super().commit(changes, events, stream)
        self.attempts += 1
        if self.attempts > self.limit:
            raise Refusing.Spun(f"{self.attempts} commits at t={self.attempts}")
        raise OSError("etcd did not answer")


def test_a_drain_whose_moves_cannot_be_stored_retries_on_a_timer_not_at_once() -> None:
    """Found by the simulator with etcd down (seed 68 of --managers 3): each pass of the
    reconcile loop planned the drain's moves again, failed to store them, and the retry
    it set woke the loop at once: it spun without ever yielding, a traceback per try."""
    from cube.sim.loop import LoopClock
    from cube.sim.loop import run as run_virtual

    async def main() -> int:
        clock = LoopClock()
        backend = Refusing(limit=200)

        def connect(url: str, token: str) -> WorkerClient:
            transport = httpx.MockTransport(Recorder())
            return WorkerClient(url, httpx.AsyncClient(transport=transport))

        node = Manager([NODE, "w2:1"], Epvm(), backend, clock=clock, connect=connect)
        for name in (NODE, "w2:1"):
            worker = node.state.nodes[name]
            worker.Cores, worker.Memory, worker.Disk = 4, 4 * 2**20, 2**40
            node.state.node_ready(name)
        await node.submit(event(Name="a"))
        await node.submit(event(Name="b"))
        await node.reconcile_once()
        await node.members.drain(
            NODE if any(t.Node == NODE for t in node.state.tasks.values()) else "w2:1"
        )
        backend.refusing = True
        loop = asyncio.ensure_future(node._reconcile_loop())
        await asyncio.sleep(10.0)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await node.close()
        return backend.attempts

    attempts = run_virtual(main, seed=1)
    assert 1 <= attempts <= 12, f"{attempts} failed commits in 10 s: the loop spins"
