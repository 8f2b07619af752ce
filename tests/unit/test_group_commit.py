"""Group commit (State.commit): writes that come while one is on its way to a store
that yields (etcd: a round trip) go together in the next write; SQLite's never yield,
so there each goes alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cube.events import Event
from cube.manager.backend import Change, Conflict, MemoryBackend
from cube.manager.state import State
from cube.task import State as TaskState
from cube.task import Task, TaskEvent

pytestmark = pytest.mark.anyio


class SlowStore(MemoryBackend):
    """A store whose writes take a round trip, released by the test; it records what
    each write carried."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[str]] = []
        self.go = asyncio.Event()
        self.fail: Exception | None = None

    async def commit(
        self, changes: Sequence[Change], events: Sequence[TaskEvent], stream: Sequence[Event] = ()
    ) -> None:
        self.writes.append([c.after.Name for c in changes])
        await self.go.wait()
        if self.fail is not None:
            raise self.fail
        await super().commit(changes, events, stream)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_writes_that_wait_go_together_in_the_next_write() -> None:
    store = SlowStore()
    state = State(store, [])
    a, b, c = Task(Name="a", Image="x"), Task(Name="b", Image="x"), Task(Name="c", Image="x")
    first = asyncio.ensure_future(state.commit([a]))
    await settle()
    rest = [asyncio.ensure_future(state.commit([t])) for t in (b, c)]
    await settle()
    assert store.writes == [["a"]]  # b and c wait for a's write
    store.go.set()
    await asyncio.gather(first, *rest)
    assert store.writes == [["a"], ["b", "c"]]
    assert set(state.tasks) == {a.ID, b.ID, c.ID}
    assert state.take_dirty() == [a.ID, b.ID, c.ID]  # each marked, as a commit does


async def test_one_task_twice_goes_in_two_writes_and_a_stale_one_conflicts() -> None:
    store = SlowStore()
    state = State(store, [])
    a = Task(Name="a", Image="x")
    store.go.set()
    await state.commit([a])
    store.go.clear()
    running = a.model_copy(update={"State": TaskState.RUNNING, "Name": "a-running"})
    failed = a.model_copy(update={"State": TaskState.FAILED, "Name": "a-failed"})
    other = Task(Name="b", Image="x")
    first = asyncio.ensure_future(state.commit([other]))
    await settle()
    # Both made from the same version of a: the second is stale once the first lands.
    one = asyncio.ensure_future(state.commit([running]))
    two = asyncio.ensure_future(state.commit([failed]))
    await settle()
    store.go.set()
    await first
    await one
    with pytest.raises(Conflict):
        await two
    assert store.writes[1:] == [["b"], ["a-running"], ["a-failed"]]
    assert state.tasks[a.ID].State is TaskState.RUNNING


async def test_a_failed_write_fails_every_write_it_carried_and_nothing_else() -> None:
    store = SlowStore()
    state = State(store, [])
    first = asyncio.ensure_future(state.commit([Task(Name="a", Image="x")]))
    await settle()
    waiting = [asyncio.ensure_future(state.commit([Task(Name=n, Image="x")])) for n in "bc"]
    gave_up = asyncio.ensure_future(state.commit([Task(Name="d", Image="x")]))
    await settle()
    gave_up.cancel()  # its caller went away: its write is still made, with the others
    store.fail = OSError("disk full")
    store.go.set()
    with pytest.raises(OSError):
        await first
    for write in waiting:
        with pytest.raises(OSError, match="disk full"):
            await write
    assert store.writes == [["a"], ["b", "c", "d"]] and state.tasks == {}
    store.fail = None
    await state.commit([Task(Name="e", Image="x")])  # and the next write goes alone
    assert store.writes[-1] == ["e"]
