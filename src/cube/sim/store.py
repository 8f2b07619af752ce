"""A simulated etcd: the store several simulated managers share, on virtual time.

It answers the calls Cube makes of an ``aetcd.Client`` (transactions of compares and
puts, gets, prefix reads, watches, leases), so that the real
:class:`~cube.manager.etcd_backend.EtcdBackend` and
:class:`~cube.manager.leader.EtcdLeases` run on it unchanged: the fence on the leader
key's create revision, the compare-and-swap on each task's mod revision and the
election are Cube's own code, not a model of it.

As etcd does: every write (a transaction, a lease's expiry, a revoke) makes one new
revision; a key's create revision is the revision that made it (the leader key's is the
term); a lease not refreshed within its TTL expires on the loop's clock and deletes its
keys; watchers hear of each change. The store can be made unavailable (``refuse``: each
call fails at once; ``hang``: each call waits out its deadline, unless the store comes
back first) and come back; while it is down no lease expires, and on its return every
lease gets its TTL anew (etcd's new leader "promotes" them).

Each manager process has its own :class:`SimClient`; a killed process's client answers
nothing more, so a SIGKILL revokes no lease (it expires).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, Literal

import aetcd
from aetcd import rpc
from aetcd import transactions as tx

from cube.manager.etcd_backend import TIMEOUT, _Connection

Down = Literal["refuse", "hang"]


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass
class _Lease:
    ttl: int
    deadline: float
    timer: asyncio.TimerHandle | None = None
    keys: set[bytes] = field(default_factory=set)


class SimEtcd:
    """The shared data: keys, revisions, leases, watchers, and whether it answers."""

    def __init__(self) -> None:
        self.revision = 1
        self.keys: dict[bytes, KV] = {}
        self.leases: dict[int, _Lease] = {}
        self._next_lease = 0x1000
        self.watchers: dict[bytes, list[asyncio.Queue[Any]]] = {}
        self.down: Down | None = None
        self.up = asyncio.Event()
        self.up.set()

    # --- availability -----------------------------------------------------------------

    def fail(self, mode: Down) -> None:
        """No quorum: calls fail (or hang), watches break, leases stand still."""
        self.down = mode
        self.up.clear()
        for lease in self.leases.values():
            if lease.timer is not None:
                lease.timer.cancel()
                lease.timer = None
        for queues in self.watchers.values():
            for queue in queues:
                queue.put_nowait(None)  # the stream breaks
        self.watchers.clear()

    def recover(self) -> None:
        if self.down is None:
            return
        self.down = None
        self.up.set()
        now = asyncio.get_running_loop().time()
        for lease_id in list(self.leases):
            self._arm(lease_id, now + self.leases[lease_id].ttl)

    async def gate(self, client: SimClient) -> None:
        """Before each call: a dead process sends nothing; a store that is down fails."""
        if client.dead:
            raise asyncio.CancelledError  # a killed process calls nothing more
        if self.down == "refuse":
            raise aetcd.ConnectionFailedError("etcd is unavailable (simulated)")
        if self.down == "hang":
            try:
                await asyncio.wait_for(self.up.wait(), TIMEOUT)
            except TimeoutError:
                raise aetcd.ConnectionTimeoutError("etcd did not answer (simulated)") from None
        if client.dead:
            raise asyncio.CancelledError

    # --- keys -------------------------------------------------------------------------

    def _write(self) -> int:
        self.revision += 1
        return self.revision

    def _put(self, key: bytes, value: bytes, lease: int, revision: int) -> None:
        held = self.keys.get(key)
        if held is not None and held.lease and held.lease in self.leases:
            self.leases[held.lease].keys.discard(key)
        if held is None:
            kv = KV(key, value, revision, revision, 1, lease)
        else:
            kv = replace(held, value=value, mod_revision=revision, version=held.version + 1)
            kv = replace(kv, lease=lease)
        self.keys[key] = kv
        if lease:
            self.leases[lease].keys.add(key)
        self._tell(key, "PUT", kv)

    def _delete(self, key: bytes, revision: int) -> None:
        held = self.keys.pop(key, None)
        if held is None:
            return
        if held.lease in self.leases:
            self.leases[held.lease].keys.discard(key)
        self._tell(key, "DELETE", replace(held, mod_revision=revision))

    def _tell(self, key: bytes, kind: str, kv: KV) -> None:
        for queue in self.watchers.get(key, ()):
            queue.put_nowait(SimpleNamespace(kind=kind, kv=kv))

    def select(self, key: bytes, end: bytes | None) -> list[KV]:
        if end is None:
            return [self.keys[key]] if key in self.keys else []
        return sorted((kv for k, kv in self.keys.items() if key <= k < end), key=lambda v: v.key)

    def _holds(self, compare: Any) -> bool:
        kv = self.keys.get(compare.key)
        if isinstance(compare, tx.Version):
            have: Any = kv.version if kv else 0
        elif isinstance(compare, tx.Create):
            have = kv.create_revision if kv else 0
        elif isinstance(compare, tx.Mod):
            have = kv.mod_revision if kv else 0
        else:
            have = kv.value if kv else None
        want = compare.value
        if compare.op == rpc.Compare.EQUAL:
            return bool(have == want)
        if compare.op == rpc.Compare.NOT_EQUAL:
            return bool(have != want)
        if compare.op == rpc.Compare.LESS:
            return bool(have < want)
        return bool(have > want)

    def transaction(
        self, compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any]
    ) -> tuple[bool, list[Any]]:
        """One atomic transaction, as etcd's Txn: the compares, then one branch's ops,
        all at one new revision if anything is written."""
        ok = all(self._holds(c) for c in compares)
        ops = success if ok else failure
        writes = any(not isinstance(op, tx.Get) for op in ops)
        revision = self._write() if writes else self.revision
        header = SimpleNamespace(revision=revision)
        answers: list[Any] = []
        for op in ops:
            if isinstance(op, tx.Put):
                lease = int(op.lease or 0)
                if lease and lease not in self.leases:
                    raise aetcd.ClientError("requested lease not found")
                self._put(op.key, op.value, lease, revision)
                answers.append(SimpleNamespace(response_put=SimpleNamespace(header=header)))
            elif isinstance(op, tx.Delete):
                for kv in self.select(op.key, op.range_end):
                    self._delete(kv.key, revision)
                answers.append(SimpleNamespace(response_delete_range=SimpleNamespace()))
            else:
                answers.append([(kv.value, kv) for kv in self.select(op.key, op.range_end)])
        return ok, answers

    # --- leases -----------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        self._next_lease += 1
        lease = self._next_lease
        self.leases[lease] = _Lease(ttl, 0.0)
        self._arm(lease, asyncio.get_running_loop().time() + ttl)
        return lease

    def _arm(self, lease_id: int, deadline: float) -> None:
        lease = self.leases[lease_id]
        if lease.timer is not None:
            lease.timer.cancel()
        lease.deadline = deadline
        # In no manager's context: a frozen manager's timers are not the store's.
        lease.timer = asyncio.get_running_loop().call_at(
            deadline, self.revoke, lease_id, context=contextvars.Context()
        )

    def refresh(self, lease_id: int) -> int:
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        self._arm(lease_id, asyncio.get_running_loop().time() + lease.ttl)
        return lease.ttl

    def revoke(self, lease_id: int) -> None:
        """Revoked, or expired: the lease's keys go with it, in one revision."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.timer is not None:
            lease.timer.cancel()
        if lease.keys:
            revision = self._write()
            for key in sorted(lease.keys):
                self._delete(key, revision)


class _Watch:
    def __init__(self, store: SimEtcd, key: bytes) -> None:
        self.store = store
        self.key = key
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        store.watchers.setdefault(key, []).append(self.queue)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            yield event

    async def cancel(self) -> None:
        queues = self.store.watchers.get(self.key, [])
        if self.queue in queues:
            queues.remove(self.queue)


class _Range(list[KV]):
    """A range's answer, as aetcd's: the key-values, and the revision it was read at."""

    def __init__(self, kvs: list[KV], header: SimpleNamespace) -> None:
        super().__init__(kvs)
        self.header = header


class SimClient:
    """One manager process's client: the calls of ``aetcd.Client`` that Cube makes."""

    def __init__(self, store: SimEtcd) -> None:
        self.store = store
        self.dead = False

    async def transaction(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> tuple[bool, list[Any]]:
        await self.store.gate(self)
        return self.store.transaction(compare, success, failure)

    async def get(self, key: bytes) -> KV | None:
        await self.store.gate(self)
        return self.store.keys.get(key)

    async def get_prefix(self, prefix: bytes, sort_order: str = "ascend") -> _Range:
        await self.store.gate(self)
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        return _Range(self.store.select(prefix, end), SimpleNamespace(revision=self.store.revision))

    async def watch(self, key: bytes) -> _Watch:
        await self.store.gate(self)
        return _Watch(self.store, key)

    async def lease(self, ttl: int) -> SimpleNamespace:
        await self.store.gate(self)
        return SimpleNamespace(id=self.store.grant(ttl), ttl=ttl)

    async def refresh_lease(self, lease: int) -> SimpleNamespace:
        await self.store.gate(self)
        return SimpleNamespace(TTL=self.store.refresh(lease))

    async def revoke_lease(self, lease: int) -> None:
        await self.store.gate(self)
        self.store.revoke(lease)


class SimConnection(_Connection):
    """The backend's and the elector's connection, to the simulated store."""

    def __init__(self, client: SimClient) -> None:
        super().__init__([("etcd", 2379)])
        self.sim = client

    async def client(self) -> Any:
        return self.sim

    async def aclose(self) -> None:
        pass
