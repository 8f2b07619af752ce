"""Docker's long streams (container events, a container's log), read off the event loop.

The SDK reads them by blocking, for as long as they last, so each is read by a thread
of its own (never the runtime's pool: a follow must not take a slot that starts need)
and handed to the loop one item at a time. :class:`ThreadStream` is that hand-over,
once: the queue the loop reads, closing (shut the engine's connection under the lock so
the thread ends wherever it is, then wake a reader), and how the end or a failure
reaches the reader. :class:`EventReader` and :class:`LogReader` say what to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

import docker
from docker.errors import APIError, NotFound
from docker.types.daemon import CancellableStream

from cube.runtime.base import (
    ContainerEvent,
    LogLine,
    LogOptions,
    NoSuchContainer,
    RuntimeUnavailable,
    parse_docker_time,
)

T = TypeVar("T")
Engine = Callable[[], AbstractContextManager[docker.APIClient]]

# Event attributes that Docker adds next to a container's labels.
_EVENT_ATTRIBUTES = frozenset({"image", "name", "exitCode", "signal", "execDuration"})

# Lines a log reader holds for its reader: beyond that its thread waits, and so does
# the engine's stream behind it, rather than memory growing for a slow reader.
LOG_BUFFER = 256
_STREAMS = {1: "stdout", 2: "stderr"}


class ThreadStream(Generic[T]):
    """An async iterator of what a thread reads from the engine (see the module).

    A subclass's ``_pump`` runs on the thread: it opens the engine's stream, publishes
    it with :meth:`_opened_stream` (so :meth:`aclose` can shut it), and hands items,
    the end (None) or a failure to the loop with :meth:`_hand`.
    """

    _thread_name = "cube-docker-stream"

    def __init__(self, engine: Engine, forget: Callable[[Any], None]) -> None:
        self._engine = engine
        self._forget = forget  # the runtime stops tracking a stream that is over
        self._queue: asyncio.Queue[T | BaseException | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._docker_stream: Any = None
        self._cancelled = False
        self._done = False

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, name=self._thread_name, daemon=True).start()

    def _pump(self) -> None:
        raise NotImplementedError

    def __aiter__(self) -> ThreadStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        if self._loop is None:
            self._start()
        item = await self._queue.get()
        if item is not None and not isinstance(item, BaseException):
            self._took()
            return item
        self._done = True
        self._forget(self)
        if item is None:
            raise StopAsyncIteration
        raise item

    def _took(self) -> None:
        """The reader took an item (a log gives its thread a credit back)."""

    async def aclose(self) -> None:
        """End it: close the engine's stream so that the reading thread ends."""
        self._forget(self)
        with self._lock:
            self._cancelled = True
            stream, self._docker_stream = self._docker_stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        self._closing()
        if not self._done:
            self._done = True
            self._queue.put_nowait(None)  # wake a reader waiting in __anext__

    def _closing(self) -> None:
        """What else wakes the thread when the stream is closed."""

    def _opened_stream(self, stream: Any) -> bool:
        """Publish the engine's stream; False (and it is closed) if already cancelled."""
        with self._lock:
            if self._cancelled:
                stream.close()
                return False
            self._docker_stream = stream
        return True

    def _hand(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop; False once nobody listens any more."""
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            with self._lock:
                self._cancelled = True
            return False
        return True


class EventReader(ThreadStream[ContainerEvent]):
    """Container events carrying all of some labels, from the moment it was made."""

    _thread_name = "cube-docker-events"

    def __init__(self, engine: Engine, forget: Callable[[Any], None], labels: dict[str, str]):
        super().__init__(engine, forget)
        self._filters = {
            "type": "container",
            "label": [f"{key}={value}" for key, value in labels.items()],
        }
        ns = time.time_ns()
        self._since = f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"

    def _pump(self) -> None:
        deliver = self._queue.put_nowait
        try:
            with self._engine() as api:
                # The stub types ``since`` as a whole second; the engine takes nanoseconds.
                open_events: Any = api.events
                stream = open_events(since=self._since, filters=self._filters, decode=True)
                if not self._opened_stream(stream):
                    return
                for raw in stream:
                    event = _container_event(raw)
                    if event is not None and not self._hand(deliver, event):
                        stream.close()
                        return
        except RuntimeUnavailable as exc:
            self._hand(deliver, exc)
            return
        except Exception as exc:
            failed = RuntimeUnavailable(f"Docker event stream failed: {one_line(exc)}")
            self._hand(deliver, failed)
            return
        # The SDK ends the iteration quietly when the connection drops.
        if self._cancelled:
            self._hand(deliver, None)
        else:
            self._hand(deliver, RuntimeUnavailable("the Docker engine closed the event stream"))


class LogReader(ThreadStream[LogLine]):
    """``GET /containers/{id}/logs``, as (stream, time, line).

    The SDK's own log reader drops which stream a line came from, so the multiplexed
    frames (an 8-byte header: stream, size) are read here. The thread may run ahead of
    the reader by :data:`LOG_BUFFER` lines (credits it takes per line and the reader
    gives back), then waits; closing shuts the engine's connection and gives a credit,
    which ends the thread wherever it is.
    """

    _thread_name = "cube-docker-logs"

    def __init__(
        self,
        engine: Engine,
        forget: Callable[[Any], None],
        container_id: str,
        options: LogOptions,
    ) -> None:
        super().__init__(engine, forget)
        self._container_id = container_id
        self._options = options
        self._credits = threading.Semaphore(LOG_BUFFER)
        self._opened: asyncio.Future[None] | None = None

    async def open(self) -> None:
        """Until the engine has answered: a missing container fails here."""
        self._opened = asyncio.get_running_loop().create_future()
        self._start()
        await self._opened

    def _took(self) -> None:
        self._credits.release()

    def _closing(self) -> None:
        self._credits.release()  # a thread waiting for room wakes, and sees it is over

    def _pump(self) -> None:
        try:
            with self._engine() as api:
                stream = self._request(api)
                if not self._opened_stream(stream):
                    return
                self._hand(self._opened_ok)
                for kind, payload in stream:
                    for line in _log_lines(kind, payload):
                        self._credits.acquire()
                        if self._cancelled or not self._hand(self._queue.put_nowait, line):
                            stream.close()
                            return
        except NotFound:
            self._fail(NoSuchContainer(self._container_id))
            return
        except APIError as exc:
            self._fail(RuntimeUnavailable(f"Docker engine error: {explain(exc)}"))
            return
        except Exception as exc:
            if self._cancelled:
                return  # the reader closed the stream under this thread: nobody to tell
            if not isinstance(exc, RuntimeUnavailable):
                exc = RuntimeUnavailable(f"Docker log stream failed: {one_line(exc)}")
            self._fail(exc)
            return
        # The end of the log (a follow: the container stopped), or closed by the reader.
        self._hand(self._queue.put_nowait, None)

    def _request(self, api: docker.APIClient) -> CancellableStream[tuple[int, bytes]]:
        options = self._options
        params: dict[str, Any] = {
            "stdout": int(options.stdout),
            "stderr": int(options.stderr),
            "timestamps": 1,
            "follow": int(options.follow),
            "tail": "all" if options.tail is None else max(0, options.tail),
        }
        if options.since is not None:
            ns = round(options.since.timestamp() * 1e9)
            params["since"] = f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"
        client: Any = api  # the SDK's request helpers, which its stubs do not list
        response = client._get(
            client._url("/containers/{0}/logs", self._container_id), params=params, stream=True
        )
        client._raise_for_status(response)
        # As the SDK does for its own streams: a quiet container is not a timeout.
        client._disable_socket_timeout(client._get_raw_response_socket(response))
        return CancellableStream(_frames(response), response)

    def _opened_ok(self) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        def fail() -> None:
            if self._opened is not None and not self._opened.done():
                self._opened.set_exception(exc)
            else:
                self._queue.put_nowait(exc)

        self._hand(fail)


def _frames(response: Any) -> Iterator[tuple[int, bytes]]:
    """Docker's multiplexed stream: (1 stdout or 2 stderr, payload) per frame."""
    while True:
        header = response.raw.read(8)
        if len(header) < 8:
            return
        kind, size = struct.unpack(">BxxxL", header)
        payload = response.raw.read(size) if size else b""
        if size and not payload:
            return
        yield kind, payload


def _log_lines(kind: int, payload: bytes) -> Iterator[LogLine]:
    """A frame holds a line (or a part of a long one) behind its RFC 3339 timestamp."""
    stream = _STREAMS.get(kind, "stdout")
    for raw in payload.removesuffix(b"\n").split(b"\n"):
        stamp, _, rest = raw.partition(b" ")
        when = parse_docker_time(stamp.decode(errors="replace"))
        text = rest if when is not None else raw
        yield LogLine(stream, when, text.decode(errors="replace").removesuffix("\r"))


def _container_event(raw: Any) -> ContainerEvent | None:
    if not isinstance(raw, Mapping) or raw.get("Type", "container") != "container":
        return None
    actor: Mapping[str, Any] = raw.get("Actor") or {}
    container_id = str(actor.get("ID") or raw.get("id") or "")
    action = str(raw.get("Action") or raw.get("status") or "")
    if not container_id or not action:
        return None
    attributes = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
    exit_code: int | None = None
    with contextlib.suppress(KeyError, ValueError):
        exit_code = int(attributes["exitCode"])
    labels = {k: v for k, v in attributes.items() if k not in _EVENT_ATTRIBUTES}
    return ContainerEvent(
        container_id=container_id, action=action, labels=labels, exit_code=exit_code
    )


def explain(exc: APIError) -> str:
    """What the engine said, on one line."""
    return one_line(exc.explanation or exc)


def one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text or type(value).__name__
