"""Electing one leader among managers that share an etcd: a key held by a lease.

Several managers on one etcd must not all place, send and restart: one leads, the
others forward to it (:mod:`cube.manager.replica`). Cube grows no consensus protocol of
its own; etcd's is the proven one, and its lease is the lock, as in Kubernetes' and
etcd's own election recipes:

* **Campaign**: grant a lease of ``ttl`` seconds, then, in one transaction, create
  ``<prefix>leader`` (the manager's address as its value, attached to the lease) if
  nobody holds it. The revision that created the key is the leadership's **term**: it
  only grows, so a worker told two terms knows which is newer (fencing).
* **Keep**: refresh the lease every third of its TTL. The leader counts its TTL from
  when it *sent* the last refresh etcd answered, which is no later than etcd counts it
  from, so it steps down before etcd can give the key to another.
* **Follow**: the others watch the key; when it goes (its lease expired, or the leader
  resigned on a clean stop), they campaign again. A watch that goes quiet is checked
  with a read every TTL, so a broken stream cannot hide a vacancy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aetcd

from cube.clock import Clock, SystemClock
from cube.manager.backend import StoreUnavailable
from cube.manager.etcd_backend import _Connection

log = logging.getLogger(__name__)

DEFAULT_TTL = 5
# After etcd did not answer a campaign, it is tried again this much later.
RETRY_AFTER = 0.5


@dataclass(frozen=True, slots=True)
class Leadership:
    """What a won campaign holds: the term, the lease, and when the lease was granted."""

    term: int
    lease: int
    ttl: float
    since: float  # monotonic time the grant was sent: the lease runs from no earlier


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the leader key: its value (an address) and the term it was made in."""

    leader: str
    term: int
    lease: int = 0


class Leases(Protocol):
    """What an election needs of a store — etcd's leases and a create-if-absent — so
    that the simulator can elect on virtual time with a store of its own."""

    async def grant(self, ttl: int) -> tuple[int, float]:
        """A new lease: its id and the TTL granted."""
        ...

    async def claim(self, key: bytes, value: str, lease: int) -> tuple[bool, Holder | None]:
        """Create ``key`` on ``lease`` if nobody holds it: (won, who holds it now)."""
        ...

    async def holder(self, key: bytes) -> Holder | None: ...

    async def until_gone(self, key: bytes, seen: Callable[[Holder], None]) -> None:
        """Return when ``key`` is deleted, telling ``seen`` of every new holder; raise
        if the store stops saying (the caller reads again)."""
        ...

    async def refresh(self, lease: int) -> float:
        """Refresh ``lease``: the TTL left (0 or less: it is gone)."""
        ...

    async def revoke(self, lease: int) -> None: ...

    async def aclose(self) -> None:
        """Close the connection (a gRPC channel must close on the loop that opened it)."""
        ...


class EtcdLeases:
    """:class:`Leases` on etcd, through the backend's connection."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    async def grant(self, ttl: int) -> tuple[int, float]:
        lease = await self.conn.call(lambda c: c.lease(ttl))
        return int(lease.id), float(lease.ttl)

    async def claim(self, key: bytes, value: str, lease: int) -> tuple[bool, Holder | None]:
        tx = aetcd.Transactions()
        ok, answers = await self.conn.call(
            lambda c: c.transaction(
                [tx.create(key) == 0], [tx.put(key, value.encode(), lease=lease)], [tx.get(key)]
            )
        )
        if ok:
            return True, Holder(value, int(answers[0].response_put.header.revision))
        held = answers[0]  # a range's answer: (value, key-value) pairs
        return False, _holder(held[0][1]) if held else None

    async def holder(self, key: bytes) -> Holder | None:
        held = await self.conn.call(lambda c: c.get(key))
        return None if held is None else _holder(held)

    async def until_gone(self, key: bytes, seen: Callable[[Holder], None]) -> None:
        watch = await self.conn.watch(lambda c: c.watch(key))
        try:
            async for event in watch:
                if event.kind == "DELETE":
                    return
                seen(_holder(event.kv))
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()
        raise StoreUnavailable("the leader key's watch ended")

    async def refresh(self, lease: int) -> float:
        reply = await self.conn.call(lambda c: c.refresh_lease(lease))
        return 0.0 if reply is None else float(reply.TTL)

    async def revoke(self, lease: int) -> None:
        await self.conn.call(lambda c: c.revoke_lease(lease))

    async def aclose(self) -> None:
        await self.conn.aclose()


def _holder(kv: Any) -> Holder:
    return Holder(bytes(kv.value).decode(), int(kv.create_revision), int(kv.lease))


class Elector:
    """Campaigns for ``<prefix>leader``, keeps it while it can, and tells who leads."""

    def __init__(
        self,
        leases: Leases,
        prefix: str,
        me: str,
        ttl: int = DEFAULT_TTL,
        clock: Clock | None = None,
    ) -> None:
        self.leases = leases
        self.key = f"{prefix}leader".encode()
        self.me = me
        self.ttl = ttl
        self.clock: Clock = clock or SystemClock()
        self.leader: str | None = None  # who leads, as last seen (None: nobody, or unknown)
        self.term = 0  # the newest term seen

    # --- campaigning -------------------------------------------------------------------

    async def campaign(self) -> Leadership:
        """Until this manager leads: try, and when another leads, wait for it to go."""
        while True:
            try:
                won = await self._try()
                if won is not None:
                    return won
                await self._until_vacant()
            except (aetcd.ClientError, StoreUnavailable) as exc:
                log.warning("election: the store did not answer (%s); trying again", exc)
                self.leader = None
                await self.clock.sleep(RETRY_AFTER)

    async def _try(self, take_over: bool = True) -> Leadership | None:
        since = self.clock.monotonic()
        lease, ttl = await self.leases.grant(self.ttl)
        won, holder = await self.leases.claim(self.key, self.me, lease)
        if won and holder is not None:
            self.leader, self.term = self.me, holder.term
            log.info("leading, term %d (lease of %g s)", holder.term, ttl)
            return Leadership(holder.term, lease, ttl, since)
        with contextlib.suppress(aetcd.ClientError, StoreUnavailable):
            await self.leases.revoke(lease)  # not needed: another leads
        if take_over and holder is not None and holder.leader == self.me and holder.lease:
            # Held under this manager's own address: its predecessor, killed and
            # restarted (it cannot still serve the address this one listens on). Its
            # lease need not be waited out; the new term fences off anything it left.
            log.info("term %d was this manager's before a restart: taking over", holder.term)
            with contextlib.suppress(aetcd.ClientError, StoreUnavailable):
                await self.leases.revoke(holder.lease)
            return await self._try(take_over=False)
        if holder is not None:
            self._saw(holder)
        return None

    def _saw(self, holder: Holder) -> None:
        if (holder.leader, holder.term) != (self.leader, self.term):
            log.info("%s leads, term %d", holder.leader, holder.term)
        self.leader, self.term = holder.leader, max(self.term, holder.term)

    async def _until_vacant(self) -> None:
        """Until the leader key is gone: its watch says so, or a read made when the
        watch has been quiet for a TTL does."""
        gone = asyncio.Event()
        failed: list[BaseException] = []

        async def follow() -> None:
            try:
                await self.leases.until_gone(self.key, self._saw)
            except Exception as exc:  # the stream broke: a read below decides
                failed.append(exc)
            gone.set()

        watcher = asyncio.ensure_future(follow())
        try:
            while True:
                if await self.clock.wait(gone, self.ttl) and not failed:
                    return
                holder = await self.leases.holder(self.key)
                if holder is None:
                    return
                self._saw(holder)
                if failed:
                    raise StoreUnavailable(f"the leader's watch broke: {failed[0]}")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # --- leading -----------------------------------------------------------------------

    async def keep(self, lead: Leadership) -> None:
        """Refresh the lease for as long as it lasts; return when this manager no
        longer leads (the store says the lease is gone, or a TTL passed since the last
        refresh it answered was sent)."""
        last = lead.since
        while True:
            await self.clock.sleep(max(lead.ttl / 3 - (self.clock.monotonic() - last), 0.0))
            sent = self.clock.monotonic()
            left = last + lead.ttl - sent
            if left <= 0:
                log.warning("term %d: the lease ran out unrefreshed; stepping down", lead.term)
                return
            try:
                async with asyncio.timeout(left):  # not wait_for: see _Connection.watch
                    remaining = await self.leases.refresh(lead.lease)
            except (TimeoutError, aetcd.ClientError, StoreUnavailable) as exc:
                reason = exc or type(exc).__name__
                log.warning("term %d: refreshing the lease failed (%s)", lead.term, reason)
                await self.clock.sleep(min(RETRY_AFTER, max(left, 0.0)))
                continue
            if remaining <= 0:
                log.warning("term %d: the lease expired; stepping down", lead.term)
                return
            last = sent

    async def resign(self, lead: Leadership) -> None:
        """Give the key up at once (a clean stop): another manager leads without
        waiting out the TTL."""
        with contextlib.suppress(aetcd.ClientError, StoreUnavailable):
            await self.leases.revoke(lead.lease)
        if self.leader == self.me:
            self.leader = None

    async def aclose(self) -> None:
        """Close the store connection: a stopping manager's last step."""
        await self.leases.aclose()
