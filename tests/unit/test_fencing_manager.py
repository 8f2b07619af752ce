"""A deposed manager (cube.worker.fencing) acts on nothing a worker refuses it: its
effectors drop the action and call ``on_deposed``, never ``report``; a plain 409 is
still an answer about the task. And the manager's term reaches every worker."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import httpx
import pytest

from cube.clock import ManualClock
from cube.errors import ApiError
from cube.manager.backend import MemoryBackend
from cube.manager.dispatch import Dispatcher
from cube.manager.logs import open_logs
from cube.manager.manager import Manager
from cube.manager.settings import Settings
from cube.manager.state import State as ClusterState
from cube.manager.tracking import Tracker, TrackingSettings
from cube.node import Node
from cube.scheduler import Epvm
from cube.task import State, Task
from cube.worker.client import Deposed, WorkerClient
from cube.worker.worker import UnknownTask
from tests.inprocess import SETTINGS, cluster, sleeper
from tests.support import eventually
from tests.unit.test_worker_client_wire import served as wire_served

pytestmark = pytest.mark.anyio
W = "w:1"
REFUSED = {"HTTPStatusCode": 409, "Message": "refused: term 4 is older than term 5"}


def worker(deposed: bool) -> Callable[[httpx.Request], httpx.Response]:
    """Every command answered 409: as a deposed manager's (with the worker's newest
    term), or as an incarnation that already finished there."""

    def answer(_: httpx.Request) -> httpx.Response:
        if deposed:
            return httpx.Response(409, json=REFUSED, headers={"X-Cube-Term": "5"})
        return httpx.Response(409, json={"HTTPStatusCode": 409, "Message": "finished"})

    return answer


async def turns(count: int = 50) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.parametrize("deposed", [True, False])
async def test_the_effectors_drop_what_a_deposed_manager_is_refused(deposed: bool) -> None:
    transport = httpx.MockTransport(worker(deposed))
    client = WorkerClient(f"http://{W}", httpx.AsyncClient(transport=transport), term=4)
    state = ClusterState(MemoryBackend(), [Node(Name=W)])
    state.node_ready(W)
    reports: list[tuple[uuid.UUID, State]] = []
    told: list[tuple[str, int]] = []

    async def report(task: Task, state: State, reason: str) -> None:
        reports.append((task.ID, state))

    def on_deposed(node: str, exc: Deposed) -> None:
        told.append((node, exc.newest))

    dispatch = Dispatcher(state, {W: client}, ManualClock(), report, 4, on_deposed)
    sent, batch, stopped = (Task(Image="i", State=State.SCHEDULED, Node=W) for _ in range(3))
    running = Task(Image="i", State=State.RUNNING, Node=W)
    await state.commit([sent, batch, stopped, running])
    try:
        dispatch.send(sent)  # alone: one request
        await turns()
        dispatch.send(batch)
        dispatch.send(stopped)  # two: a batch, then (refused) one at a time
        await turns()
        dispatch.stop(running)
        dispatch.stop_copy(W, running)
        await turns()
    finally:
        await dispatch.close()
        await client.aclose()
    assert reports == []  # neither way is the task's end: tracking says how it ended
    if deposed:
        assert told and set(told) == {(W, 5)}
        assert len(told) == 4  # a send, a batch, a stop, a stray copy's stop
    else:
        assert told == []


async def test_tracking_reads_nothing_a_deposed_manager_is_refused() -> None:
    transport = httpx.MockTransport(worker(deposed=True))
    client = WorkerClient(f"http://{W}", httpx.AsyncClient(transport=transport), term=4)
    state = ClusterState(MemoryBackend(), [Node(Name=W)])
    state.node_ready(W)
    told: list[tuple[str, int]] = []

    async def observed(node: str, tasks: list[Task], complete: bool) -> None:
        raise AssertionError("a deposed manager reads nothing from its workers")

    def on_deposed(node: str, exc: Deposed) -> None:
        told.append((node, exc.newest))

    tracker = Tracker(state, {W: client}, ManualClock(), TrackingSettings(), observed, on_deposed)
    try:
        assert await tracker._track(tracker.workers[W]) is False  # the watch
        assert told == [(W, 5)]
        await tracker.poll(W)  # the stats poll
        assert told == [(W, 5)] * 2
    finally:
        await tracker.close()
        await client.aclose()


async def test_a_deposed_manager_calls_on_deposed_and_leaves_its_tasks_be(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cube.worker.api")
    told: list[tuple[str, int | None, int]] = []
    async with cluster(1) as c:
        node = c.nodes[0]
        c.term = 4
        settings = Settings(**{**vars(SETTINGS), "term": 4})
        m = await c.start_manager(MemoryBackend(), settings)
        monkeypatch.setattr(m, "on_deposed", lambda n, exc: told.append((n, exc.term, exc.newest)))
        # A new leader's first request: the worker now takes commands from term 5 only.
        async with httpx.AsyncClient(transport=node.link) as leader:
            answer = await leader.get(f"http://{node.name}/stats", headers={"X-Cube-Term": "5"})
            assert answer.status_code == 200
        await c.until(lambda: told, what="the old manager's watch refused")

        task = (await m.submit(sleeper())).ID
        await c.until(lambda: "refused POST /tasks: stale term 4" in caplog.text, what="send")
        await c.settle(2.0)
        assert set(told) == {(node.name, 4, 5)}
        assert c.task(task).State is State.SCHEDULED  # neither Failed nor Completed
        assert c.task(task).Node == node.name
        assert not node.running()
        with pytest.raises(UnknownTask):
            node.worker.get(task)
        # Its logs neither: this manager no longer leads (503: ask again, of the leader).
        told.clear()
        with pytest.raises(ApiError) as relayed:
            await open_logs(m, c.task(task), {})
        assert relayed.value.status == 503 and "no longer leads" in relayed.value.message
        assert told == [(node.name, 4, 5)]


async def test_the_managers_term_reaches_its_workers_with_the_default_connect() -> None:
    """Settings.term is all a leader sets: every worker call carries it (aiohttp)."""
    from cube.runtime.simulated import SimulatedRuntime
    from cube.store import MemoryStore
    from cube.worker.worker import Worker

    node = Worker("w1", MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)
    async with wire_served(node) as url:
        address = url.removeprefix("http://")
        m = Manager([address], Epvm(), MemoryBackend(), Settings(term=7))
        await m.start()
        try:
            await eventually(lambda: address in m.state.ready, what="the worker ready")
            assert m.clients[address].term == 7
        finally:
            await m.close()
        # The worker heard term 7 from the manager: term 6 is refused, with 7 named.
        async with httpx.AsyncClient() as other:
            answer = await other.get(f"{url}/stats", headers={"X-Cube-Term": "6"})
        assert answer.status_code == 409 and answer.headers["X-Cube-Term"] == "7"
