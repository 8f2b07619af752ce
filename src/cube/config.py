"""Cross-cutting set-up shared by every Cube process: logging, memory and serving HTTP."""

from __future__ import annotations

import gc
import logging
import ssl
import sys
import time
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

if TYPE_CHECKING:
    from cube.manager.replica import Replica

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LINES = "cube_lines"  # a record made by log_lines: each line of its message a log line


def log_lines(logger: logging.Logger, level: int, lines: Iterable[str]) -> None:
    """Log each of ``lines`` as a line of its own, all in one record.

    A busy manager logs a line per task placed and per task that starts: ten thousand
    records cost ~0.1 s of its CPU (a record, its handler's lock, a write and a flush
    each), about a tenth of what it spends placing them. One record per batch writes
    the very same lines (each with the batch's time stamp) through one write.
    ``lines`` is only read when the level is enabled.
    """
    if logger.isEnabledFor(level):
        text = "\n".join(lines)
        if text:
            logger.log(level, text, extra={_LINES: True})


class LineFormatter(logging.Formatter):
    """``LOG_FORMAT``'s lines, the same to the character, made for a third of the CPU.

    A busy manager logs two lines per task (placed, Running), and the generic path
    (a dict of the record's fields, ``strftime`` per record, %-style templating) was
    most of each line's cost; the time stamp's seconds change once a second.
    """

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)  # tracebacks: the generic path
        message = record.getMessage()
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        record.message = message
        prefix = f"{self._stamp},{int(record.msecs):03d} {record.levelname} {record.name}: "
        if getattr(record, _LINES, False):
            return prefix + message.replace("\n", "\n" + prefix)
        return prefix + message


def setup_logging(level: str = "info") -> None:
    """One line per event on stderr, so `cube up` can interleave processes readably."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Each request line is noise at info level; failures are logged by Cube itself.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every request at info: the manager's polling would fill `cube up`'s logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The format uses neither the caller's file and line nor thread or process names:
    # don't compute them for every record (the logging HOWTO's "Optimization" knobs).
    # Walking the stack for the caller was 7% of a busy manager's time.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


# Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000
# Young collections between two of the middle generation (default 10), and middle
# ones between two full collections (default 10): see tune_gc.
GC_MIDDLE_THRESHOLD = 1
GC_OLD_THRESHOLD = 50


def tune_gc() -> None:
    """Collect cycles less often, in short pauses, and never scan what start-up built.

    A full collection walks every tracked object, and CPython starts one each time the
    long-lived heap has grown by a quarter: a manager taking in ten thousand tasks
    (each a pydantic model with its dicts and lists) grows that fast, and spent 1.5 s
    of its 3.8 s of CPU in the scale benchmark in eleven full collections. Collecting
    the young generation every 50,000 allocations rather than 700 makes every
    generation's collections about seventy times rarer (they are counted in young
    collections), and freezing what exists before serving (modules, the app, a
    persistent store just loaded) takes it out of every later scan. Memory is still
    reclaimed by reference counting at once; only cycles wait a little longer (and a
    manager makes next to none: in the scale benchmark not one collection found any).

    The middle generation is collected every second young collection, not every
    tenth: it then holds what survived one young collection, not ten, so its pause is
    ~20 ms rather than ~150 ms (the manager sends nothing meanwhile, and the workers
    wait), and each object is walked 1.5 times on average rather than twice. Full
    collections stay as rare as before (every 100 young ones at most).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, GC_OLD_THRESHOLD)


def serve(
    app: FastAPI | Replica,
    host: str,
    port: int,
    log_level: str = "info",
    loop: str = "auto",
    tls: ssl.SSLContext | None = None,
) -> None:
    """Run an API until SIGINT/SIGTERM; the app's lifespan starts and stops its loops.

    ``loop`` is uvicorn's: "auto" takes uvloop when installed (the manager's many
    connections gain from it), "asyncio" the standard loop. With ``tls`` (from
    cube.tls.server_context), HTTPS only.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        log_level=log_level.lower(),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        # Longer than clients keep idle connections (WorkerClient: 60 s), so a client
        # never reuses a connection the server is closing; the manager polls each
        # worker every few seconds and should not reconnect every time.
        timeout_keep_alive=75,
        # The context as made, client-certificate rules and all (uvicorn's own takes
        # file names and makes one of its own).
        ssl_context_factory=None if tls is None else lambda _config, _default: tls,
    )

    class Server(uvicorn.Server):
        """Tells the app when a stop is asked for, through the callbacks in
        ``app.state.on_exit``, so that a stream it serves (a worker's watch) can end at
        once rather than hold the graceful shutdown for its whole timeout."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            for callback in getattr(app.state, "on_exit", ()):
                callback()

    tune_gc()
    Server(config).run()
