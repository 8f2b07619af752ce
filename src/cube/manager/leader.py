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
from dataclasses import dataclass
from typing import Any

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


class Elector:
    """Campaigns for ``<prefix>leader``, keeps it while it can, and tells who leads."""

    def __init__(
        self,
        conn: _Connection,
        prefix: str,
        me: str,
        ttl: int = DEFAULT_TTL,
        clock: Clock | None = None,
    ) -> None:
        self.conn = conn
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
                log.warning("election: etcd did not answer (%s); trying again", exc or exc)
                self.leader = None
                await self.clock.sleep(RETRY_AFTER)

    async def _try(self) -> Leadership | None:
        since = self.clock.monotonic()
        lease = await self.conn.call(lambda c: c.lease(self.ttl))
        tx = aetcd.Transactions()
        ok, answers = await self.conn.call(
            lambda c: c.transaction(
                [tx.create(self.key) == 0],
                [tx.put(self.key, self.me.encode(), lease=lease.id)],
                [tx.get(self.key)],
            )
        )
        if ok:
            term = int(answers[0].response_put.header.revision)
            self.leader, self.term = self.me, term
            log.info("leading, term %d (lease of %d s)", term, lease.ttl)
            return Leadership(term, int(lease.id), float(lease.ttl), since)
        with contextlib.suppress(aetcd.ClientError, StoreUnavailable):
            await self.conn.call(lambda c: c.revoke_lease(lease.id))  # not needed: another leads
        held = answers[0]  # a range's answer: (value, key-value) pairs
        if held:
            self._saw(held[0][1])
        return None

    def _saw(self, kv: Any) -> None:
        leader, term = bytes(kv.value).decode(), int(kv.create_revision)
        if (leader, term) != (self.leader, self.term):
            log.info("%s leads, term %d", leader, term)
        self.leader, self.term = leader, max(self.term, term)

    async def _until_vacant(self) -> None:
        """Until the leader key is gone: its watch says so, or a read made when the
        watch has been quiet for a TTL does."""
        gone = asyncio.Event()
        failed: list[BaseException] = []

        async def follow() -> None:
            try:
                watch = await self.conn.call(lambda c: c.watch(self.key))
                async for event in watch:
                    if event.kind == "DELETE":
                        break
                    self._saw(event.kv)
            except Exception as exc:  # the stream broke: a read below decides
                failed.append(exc)
            gone.set()

        watcher = asyncio.ensure_future(follow())
        try:
            while True:
                if await self.clock.wait(gone, self.ttl) and not failed:
                    return
                held = await self.conn.call(lambda c: c.get(self.key))
                if held is None:
                    return
                self._saw(held)
                if failed:
                    raise StoreUnavailable(f"the leader's watch broke: {failed[0]}")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # --- leading -----------------------------------------------------------------------

    async def keep(self, lead: Leadership) -> None:
        """Refresh the lease for as long as it lasts; return when this manager no
        longer leads (etcd says the lease is gone, or a TTL passed since the last
        refresh it answered was sent)."""
        last = lead.since
        while True:
            await self.clock.sleep(max(lead.ttl / 3 - (self.clock.monotonic() - last), 0.0))
            sent = self.clock.monotonic()
            left = last + lead.ttl - sent
            if left <= 0:
                log.warning(
                    "term %d: the lease was not refreshed in time; stepping down", lead.term
                )
                return
            try:
                reply = await asyncio.wait_for(
                    self.conn.call(lambda c: c.refresh_lease(lead.lease)), timeout=left
                )
            except (TimeoutError, aetcd.ClientError, StoreUnavailable) as exc:
                log.warning("term %d: refreshing the lease failed (%s)", lead.term, exc or exc)
                await self.clock.sleep(min(RETRY_AFTER, max(left, 0.0)))
                continue
            if reply is None or int(reply.TTL) <= 0:
                log.warning("term %d: the lease expired; stepping down", lead.term)
                return
            last = sent

    async def resign(self, lead: Leadership) -> None:
        """Give the key up at once (a clean stop): another manager leads without
        waiting out the TTL."""
        with contextlib.suppress(aetcd.ClientError, StoreUnavailable):
            await self.conn.call(lambda c: c.revoke_lease(lead.lease))
        if self.leader == self.me:
            self.leader = None
