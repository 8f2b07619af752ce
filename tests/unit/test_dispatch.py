"""Sends: batched per worker under load, and a worker that hangs keeps no slot for long."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import httpx
import pytest

from cube.clock import ManualClock
from cube.manager.backend import MemoryBackend
from cube.manager.dispatch import SLOT_HOLD, Dispatcher, _quietly
from cube.manager.state import State as ClusterState
from cube.node import Node
from cube.task import State, Task
from cube.worker.client import WorkerClient

pytestmark = pytest.mark.anyio
SLOW, FAST = "slow:1", "fast:1"


async def turns(count: int = 20) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_hanging_worker_keeps_its_slot_only_while_its_send_is_young() -> None:
    answer = asyncio.Event()  # the slow worker answers only when this is set
    batches: list[list[str]] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        await answer.wait()
        return httpx.Response(201, json=[])

    def fast(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        events = body if isinstance(body, list) else [body]  # a single one is sent as is
        batches.append([event["Task"]["ID"] for event in events])
        return httpx.Response(201, json=events[0]["Task"] if body is events[0] else [])

    def client(handler: object) -> WorkerClient:
        transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
        return WorkerClient("http://w", httpx.AsyncClient(transport=transport))

    state = ClusterState(MemoryBackend(), [Node(Name=SLOW), Node(Name=FAST)])
    clock = ManualClock()

    async def report(task: Task, state: State, reason: str) -> None:
        raise AssertionError(f"nothing fails here: {reason}")

    dispatch = Dispatcher(state, {SLOW: client(slow), FAST: client(fast)}, clock, report, 1)
    tasks = [Task(Image="i", State=State.SCHEDULED, Node=node) for node in (SLOW, FAST, FAST, FAST)]
    await state.commit(tasks)
    try:
        dispatch.send(tasks[0])
        await turns()
        dispatch.send(tasks[1])
        dispatch.send(tasks[2])
        await turns()
        assert batches == []  # the one slot is the hanging send's, for now
        await clock.advance(SLOT_HOLD)
        # Both sends to the fast worker waited for the slot: they went together.
        assert batches == [[str(tasks[1].ID), str(tasks[2].ID)]]
        dispatch.send(tasks[3])
        await turns()
        assert batches[1:] == [[str(tasks[3].ID)]]  # the slow send holds no slot any more
    finally:
        answer.set()
        await dispatch.close()


async def test_a_quiet_call_is_made_only_once_its_job_starts() -> None:
    """stop_copy's job, cancelled before it starts (the manager stopping), leaves no
    worker call made and never awaited (Python warned of one in the simulator)."""
    made: list[str] = []

    async def call() -> None:
        made.append("called")

    def factory() -> Coroutine[Any, Any, None]:
        made.append("made")
        return call()

    job = _quietly(factory)
    job.close()  # what Background does with a job cancelled before it started
    assert made == []
    await _quietly(factory)
    assert made == ["made", "called"]
