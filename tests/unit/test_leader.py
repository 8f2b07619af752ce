"""The election (cube.manager.leader) and the store's fence, on a real etcd: one
leader at a time, terms that only grow, a vacancy filled, a restarted manager taking
its own term over, and a deposed leader's writes refused."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from cube.manager.backend import Change, Deposed, Fence
from cube.manager.etcd_backend import EtcdBackend, _Connection
from cube.manager.leader import Elector, EtcdLeases
from cube.task import Task
from tests.support import EtcdProcess

pytestmark = pytest.mark.anyio


MakeElector = Callable[[str, str], Elector]


@pytest.fixture
async def elector(etcd: EtcdProcess) -> AsyncIterator[MakeElector]:
    """Makes electors, and closes them before the test's loop closes, whatever the test
    did: a gRPC channel left open calls into the closed loop and fails the test."""
    made: list[Elector] = []

    def make(prefix: str, me: str) -> Elector:
        made.append(Elector(EtcdLeases(_Connection([("127.0.0.1", etcd.port)])), prefix, me, ttl=2))
        return made[-1]

    yield make
    for e in made:
        await e.aclose()


async def test_one_leads_the_next_waits_and_leads_when_it_resigns(elector: MakeElector) -> None:
    prefix = f"/el-{uuid.uuid4().hex[:8]}/"
    a, b = elector(prefix, "http://a"), elector(prefix, "http://b")
    first = await a.campaign()
    waiting = asyncio.ensure_future(b.campaign())
    done, _ = await asyncio.wait({waiting}, timeout=0.5)  # b must not lead while a does
    assert not done
    assert (b.leader, b.term) == ("http://a", first.term)
    await a.resign(first)
    second = await asyncio.wait_for(waiting, 10)
    assert second.term > first.term and b.leader == "http://b"


async def test_a_lease_not_refreshed_ends_the_term(elector: MakeElector) -> None:
    prefix = f"/el-{uuid.uuid4().hex[:8]}/"
    a, b = elector(prefix, "http://a"), elector(prefix, "http://b")
    first = await a.campaign()
    keeping = asyncio.ensure_future(a.keep(first))
    waiting = asyncio.ensure_future(b.campaign())
    done, _ = await asyncio.wait({keeping, waiting}, timeout=5)
    assert not done  # kept alive: nobody else leads
    keeping.cancel()  # a stops refreshing (frozen, or cut off): the lease runs out
    second = await asyncio.wait_for(waiting, 10)
    assert second.term > first.term
    # a, refreshing again, learns its lease is gone: keep() returns (it steps down).
    await asyncio.wait_for(a.keep(first), 5)


async def test_a_manager_restarted_at_its_own_address_takes_its_term_over(
    elector: MakeElector,
) -> None:
    prefix = f"/el-{uuid.uuid4().hex[:8]}/"
    before = await elector(prefix, "http://a").campaign()  # then "killed"
    again = await asyncio.wait_for(elector(prefix, "http://a").campaign(), 1.5)
    assert again.term > before.term  # at once, not a lease (2 s) later


async def test_a_deposed_leader_stores_nothing(etcd: EtcdProcess, elector: MakeElector) -> None:
    prefix = f"el-{uuid.uuid4().hex[:8]}"
    a, b = elector(f"/{prefix}/", "http://a"), elector(f"/{prefix}/", "http://b")
    lead = await a.campaign()
    told: list[bool] = []
    fenced = await EtcdBackend.open(
        etcd.url(prefix), Fence(a.key, lead.term, lambda: told.append(True))
    )
    task = Task(Image="a")
    await fenced.commit([Change(None, task)], [])  # while it leads: stored
    await a.resign(lead)
    await b.campaign()
    moved = task.model_copy(update={"Node": "w1"})
    with pytest.raises(Deposed):
        await fenced.commit([Change(task, moved)], [])
    with pytest.raises(Deposed):
        await fenced.delete_token("t1")
    assert told == [True, True]
    reader = await EtcdBackend.open(etcd.url(prefix))
    assert [t.Node for t in reader.load()] == [""]  # the deposed write is not there
    for backend in (fenced, reader):
        await backend.aclose()


async def test_a_stop_asked_for_while_a_watch_is_made_is_not_lost(etcd: EtcdProcess) -> None:
    """Python 3.11's asyncio.wait_for, which aetcd awaits a watch's creation with, can
    swallow a cancellation that arrives with the answer; the follower view then watched
    for ever, and the manager, elected, waited on it and never served."""
    conn = _Connection([("127.0.0.1", etcd.port)])
    cancelled: list[bool] = []
    reached = asyncio.Event()

    class Watch:
        async def cancel(self) -> None:
            cancelled.append(True)

    async def made_as_311_may(client: object) -> Watch:
        reached.set()
        # The stop arrives here, with the answer, and is swallowed, as wait_for does
        # when the call it awaits has just ended.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return Watch()

    try:
        watching = asyncio.ensure_future(conn.watch(made_as_311_may))
        await reached.wait()
        watching.cancel()
        await asyncio.wait({watching})
        assert watching.cancelled() and cancelled == [True]

        async def answered(client: object) -> Watch:
            return Watch()

        assert isinstance(await conn.watch(answered), Watch)  # no stop asked: kept
        assert cancelled == [True]
    finally:
        await conn.aclose()
