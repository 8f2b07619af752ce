"""The simulated network: every manager ↔ worker request, and every health probe.

A :class:`Link` is the path from the manager to one worker. It carries requests to the
worker's real app (through :class:`~cube.transport.InProcessTransport`) and can, as
the fault schedule says:

- **partition** it: ``refuse`` (connections refused, open streams reset) or
  ``blackhole`` (nothing gets through: new requests time out, open streams stall and
  go on if the partition heals before the reader gives up);
- **lose** messages: a request that never arrives, or an answer that never comes back
  after the worker acted on the request (the caller cannot tell which);
- **delay** them by a random amount, which also reorders concurrent requests;
- **duplicate** writes: a POST or DELETE arrives twice.

A lost or stalled message surfaces as the timeout the caller asked for (httpx's
``timeout`` extension), on virtual time, as it would over a real network. Random
choices come from the link's own generator, seeded by the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Literal

import httpx

Partition = Literal["refuse", "blackhole"]
_WRITES = frozenset({"POST", "DELETE", "PUT"})


def _timeout(request: httpx.Request, kind: str) -> float | None:
    timeouts = request.extensions.get("timeout") or {}
    value = timeouts.get(kind)
    return None if value is None else float(value)


class Link(httpx.AsyncBaseTransport):
    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.app: httpx.AsyncBaseTransport | None = None  # None: the process is down
        self.partition: Partition | None = None
        self.loss = 0.0
        self.delay = 0.0
        self.duplicate = 0.0
        self.clear = asyncio.Event()  # set while not blackholed
        self.clear.set()
        self._open: dict[_Body, None] = {}
        self._copies: dict[asyncio.Task[None], None] = {}
        self.delivered = 0

    # --- the fault schedule's levers ------------------------------------------------

    def cut(self, mode: Partition) -> None:
        self.partition = mode
        if mode == "refuse":
            self._break_streams()
        else:
            self.clear.clear()

    def heal(self) -> None:
        self.partition = None
        self.clear.set()

    def attach(self, app: httpx.AsyncBaseTransport | None) -> None:
        """The worker process started (an app) or died (None: its connections reset)."""
        self.app = app
        if app is None:
            self._break_streams()

    def _break_streams(self) -> None:
        for body in list(self._open):
            body.broken.set()

    # --- carrying a request -------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        read = _timeout(request, "read")
        if self.partition == "blackhole":
            connect = _timeout(request, "connect")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.clear.wait(), connect)
            if not self.clear.is_set():
                raise httpx.ConnectTimeout(f"{self.name}: no route (partitioned)", request=request)
        if self.partition == "refuse" or self.app is None:
            raise httpx.ConnectError(f"{self.name}: connection refused", request=request)
        lost_request = self.rng.random() < self.loss
        lost_answer = self.rng.random() < self.loss
        again = request.method in _WRITES and self.rng.random() < self.duplicate
        if self.delay:
            await asyncio.sleep(self.rng.uniform(0.0, self.delay))
        if lost_request:
            await self._time_out(request, read)
        app = self.app
        if app is None:
            raise httpx.ConnectError(f"{self.name}: connection reset", request=request)
        if again:
            copy = asyncio.create_task(self._deliver_copy(app, request))
            self._copies[copy] = None
            copy.add_done_callback(lambda t: self._copies.pop(t, None))
        response = await app.handle_async_request(request)
        self.delivered += 1
        if lost_answer and request.method in _WRITES:
            await response.aread()  # the worker did it; the answer is what got lost
            await response.aclose()
            await self._time_out(request, read)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Body(response.stream, self, read),
            request=request,
            extensions=response.extensions,
        )

    async def _time_out(self, request: httpx.Request, timeout: float | None) -> None:
        await asyncio.sleep(timeout if timeout is not None else 3600.0)
        raise httpx.ReadTimeout(f"{self.name}: no answer (lost)", request=request)

    async def _deliver_copy(self, app: httpx.AsyncBaseTransport, request: httpx.Request) -> None:
        """The same request once more, a little later; its answer goes nowhere."""
        await asyncio.sleep(self.rng.uniform(0.0, max(self.delay, 0.05)))
        with contextlib.suppress(Exception):
            response = await app.handle_async_request(request)
            await response.aread()
            await response.aclose()


class _Body(httpx.AsyncByteStream):
    """An answer's body crossing the link: reset by a refusing partition or a crash,
    stalled by a blackhole, and subject to the caller's read timeout per chunk."""

    def __init__(self, inner: httpx.AsyncByteStream, link: Link, read: float | None) -> None:
        self.inner = inner
        self.link = link
        self.read = read
        self.broken = asyncio.Event()
        link._open[self] = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self.inner.__aiter__()
        while True:
            chunk = await self._next(chunks.__anext__)
            if chunk is None:
                return
            yield chunk

    async def _next(self, step: Callable[[], object]) -> bytes | None:
        async def arrive() -> bytes | None:
            try:
                chunk = await step()  # type: ignore[misc]
            except StopAsyncIteration:
                return None
            await self.link.clear.wait()  # a blackhole holds what is in flight
            assert isinstance(chunk, bytes)
            return chunk

        arriving = asyncio.ensure_future(arrive())
        broken = asyncio.ensure_future(self.broken.wait())
        try:
            done, _ = await asyncio.wait(
                {arriving, broken}, timeout=self.read, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            broken.cancel()
            if not arriving.done():
                arriving.cancel()
            # Whatever it ends with is the link's business, not an unretrieved error.
            arriving.add_done_callback(_swallow)
        if arriving in done and not self.broken.is_set():
            return arriving.result()
        if self.broken.is_set():
            raise httpx.ReadError(f"{self.link.name}: connection reset")
        raise httpx.ReadTimeout(f"{self.link.name}: read timed out")

    async def aclose(self) -> None:
        self.link._open.pop(self, None)
        await self.inner.aclose()


def _swallow(future: asyncio.Future[bytes | None]) -> None:
    if not future.cancelled():
        future.exception()
