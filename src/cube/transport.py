"""An httpx transport that calls an ASGI app in this process and streams its answer.

httpx's own ``ASGITransport`` runs the app to the end before it returns a response, so a
response that never ends, as a worker's watch stream (``GET /tasks?watch=true``), never
arrives. This one returns the response as soon as the app has started it and hands the
body over chunk by chunk, so tests can drive real worker apps, streams included,
without sockets:

    client = httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://w1")

The app's lifespan is not run (nor is it by httpx's transport): start what it starts
yourself, or enter :func:`lifespan`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["InProcessTransport", "lifespan"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

# Body chunks the app may send ahead of the reader, as a socket's buffer would hold.
_BUFFERED_CHUNKS = 16
# How long a closed response's app gets to end by itself before it is cancelled.
_DISCONNECT_GRACE = 1.0


class _End:
    """The body is complete (``error`` None) or the app failed while sending it."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class InProcessTransport(httpx.AsyncBaseTransport):
    """Send each request to ``app`` in this event loop, one app task per request."""

    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 123)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(key.lower(), value) for key, value in request.headers.raw],
            "scheme": request.url.scheme,
            "path": unquote(request.url.path),
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": "",
        }
        exchange = _Exchange(request.method != "HEAD", body)
        task = asyncio.create_task(exchange.run(self.app, scope))
        try:
            status, headers = await exchange.head
        except BaseException:
            await _cancel(task)
            raise
        return httpx.Response(
            status,
            headers=headers,
            stream=_Body(exchange, task),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )


class _Exchange:
    """One request's ASGI ``receive`` and ``send``, and what the app answered."""

    def __init__(self, with_body: bool, body: bytes) -> None:
        self.with_body = with_body
        self.body: bytes | None = body
        loop = asyncio.get_running_loop()
        self.head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = loop.create_future()
        self.chunks: asyncio.Queue[bytes | _End] = asyncio.Queue(_BUFFERED_CHUNKS)
        self.disconnected = asyncio.Event()
        self.complete = False

    async def run(self, app: ASGIApp, scope: MutableMapping[str, Any]) -> None:
        try:
            await app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.disconnected.is_set():
                return  # nobody reads any more (the app was told with an OSError)
            if not self.head.done():
                self.head.set_exception(exc)  # before the response: the caller gets it
            elif not self.complete:
                await self.chunks.put(_End(exc))  # during the body: the reader gets it
            return  # after the body: the client has its whole answer, as over a socket
        if not self.head.done():
            self.head.set_exception(RuntimeError("the app returned without a response"))
        elif not self.complete:
            await self.chunks.put(_End(RuntimeError("the app returned mid-response")))

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.disconnected.is_set():
            raise OSError("the client closed the response")  # as ASGI says a server does
        if message["type"] == "http.response.start":
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            self.head.set_result((int(message["status"]), headers))
        elif message["type"] == "http.response.body" and not self.complete:
            chunk = bytes(message.get("body", b""))
            if chunk and self.with_body:
                await self.chunks.put(chunk)
            if not message.get("more_body", False):
                self.complete = True
                await self.chunks.put(_End())


class _Body(httpx.AsyncByteStream):
    """The response body as the app sends it; closing it disconnects the app."""

    def __init__(self, exchange: _Exchange, task: asyncio.Task[None]) -> None:
        self._exchange = exchange
        self._task = task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not isinstance(item := await self._exchange.chunks.get(), _End):
            yield item
        if item.error is not None:
            raise httpx.ReadError(f"the app failed mid-response: {item.error!r}") from item.error

    async def aclose(self) -> None:
        """Tell the app the client is gone, and make sure its task ends."""
        self._exchange.disconnected.set()
        if not self._task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DISCONNECT_GRACE):  # not wait_for (gh-86296)
                    await asyncio.shield(self._task)
        await _cancel(self._task)


async def _cancel(task: asyncio.Task[None]) -> None:
    """End the app's task; ``wait`` rather than ``await``, so that only a cancellation
    of the caller itself propagates."""
    task.cancel()
    await asyncio.wait({task})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Run a FastAPI (Starlette) app's start-up and shut-down around the block."""
    async with app.router.lifespan_context(app):
        yield
