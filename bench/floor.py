"""The floor under the scale benchmark: the same tasks straight to the workers, no manager.

A manager's work between a submission and Running is to take the task in, place it,
send it and learn that it runs. The workers' share of that (taking a batch, starting
simulated containers, streaming the change) and the HTTP between them cannot get
cheaper by improving the manager, and it moves with the machine: the same commit
measured 3,090 tasks/s on one machine and 960-1,170 on another. So ``bench.scale``
also measures this floor, in the same run on a fleet started the same way, and
reports Cube's time over the floor's: two times taken on the same machine at the
same moment, whose ratio the machine moves far less than either time.

The floor does what the manager does at the edges and nothing in between: it follows
every worker's watch stream (``GET /tasks?watch=true``, with the manager's heartbeat
and stats period), sends each worker its share in one batch (``POST /tasks`` with an
array, 64 requests in flight, which delivers them soonest), with the manager's own
worker client, and takes a task to be Running when its worker's stream says so, as
the manager does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cube.task import State, Task, TaskEvent
from cube.worker.client import WorkerClient

# The manager's defaults (cube.manager Settings), so the floor loads the workers alike.
REQUEST_TIMEOUT = 5.0
WATCH_HEARTBEAT = 10.0
STATS_INTERVAL = 2.0
MAX_STATS_RATE = 200.0
WORKER_TIMEOUT = 10.0
# More than the manager's 16: the floor's 1,000 requests are all there from the start,
# and 64 in flight delivered them sooner (1.89 s against 2.43 s, medians of 3), so 64
# keeps the floor a floor. The manager's 16 is for batching, which the floor has done.
SEND_CONCURRENCY = 64


@dataclass
class FloorRun:
    """When the deliveries started, when each task was seen Running, and when each was sent."""

    started: float
    sent: float
    running: dict[str, float] = field(default_factory=dict)


def scheduled(bodies: Iterable[dict[str, Any]], addresses: list[str]) -> dict[str, list[TaskEvent]]:
    """The submissions as the manager would send them, spread evenly over the workers.

    Each becomes a Scheduled TaskEvent for a Scheduled task on its worker, the body
    a manager's placement produces; worker ``i % n`` gets the ``i``-th.
    """
    shares: dict[str, list[TaskEvent]] = {address: [] for address in addresses}
    for index, body in enumerate(bodies):
        address = addresses[index % len(addresses)]
        task = Task.model_validate(body["Task"]).model_copy(
            update={"State": State.SCHEDULED, "Node": address}
        )
        shares[address].append(TaskEvent(State=State.SCHEDULED, Task=task))
    return shares


async def deliver(
    shares: dict[str, list[TaskEvent]],
    timeout: float,
    clock: Callable[[], float] = time.time,
    on_start: Callable[[], None] = lambda: None,
) -> FloorRun:
    """Send each worker its share in one request and wait until every task is Running.

    ``on_start`` is called when the clock starts, once every stream is open (for CPU
    counters, which should not count the opening either).
    """
    clients = {
        address: WorkerClient.connect(f"http://{address}", REQUEST_TIMEOUT) for address in shares
    }
    running: dict[str, float] = {}
    # As the manager's Tracker.stats_period: stats less often on a large fleet.
    spread = min(len(shares) / MAX_STATS_RATE, WORKER_TIMEOUT / 2)
    stats = max(STATS_INTERVAL, spread)
    following: dict[str, asyncio.Event] = {address: asyncio.Event() for address in shares}
    done: dict[str, asyncio.Event] = {address: asyncio.Event() for address in shares}

    async def follow(address: str) -> None:
        due = {str(event.Task.ID) for event in shares[address]}
        if not due:
            done[address].set()
        changes = clients[address].watch(heartbeat=WATCH_HEARTBEAT, stats=stats)
        async with contextlib.aclosing(changes):
            async for change in changes:
                now = clock()
                following[address].set()
                for task in change.tasks:
                    if task.State is State.RUNNING and str(task.ID) in due:
                        running.setdefault(str(task.ID), now)
                        due.discard(str(task.ID))
                if not due:
                    done[address].set()

    slots = asyncio.Semaphore(SEND_CONCURRENCY)

    async def send(address: str) -> None:
        events = shares[address]
        if events:
            async with slots:
                await clients[address].submit_many(events)

    watches = [asyncio.create_task(follow(address)) for address in shares]
    try:
        # Streams open before the clock starts, as a manager's are before a submission.
        await _all(following.values(), watches, timeout)
        on_start()
        started = clock()
        await asyncio.gather(*(send(address) for address in shares))
        sent = clock()
        await _all(done.values(), watches, timeout)
        return FloorRun(started, sent, running)
    finally:
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        await asyncio.gather(*(client.aclose() for client in clients.values()))


async def _all(
    events: Iterable[asyncio.Event], watches: list[asyncio.Task[None]], timeout: float
) -> None:
    """Wait for every event; a watch that ends meanwhile (it broke) fails the run."""
    waiting: asyncio.Future[Any] = asyncio.gather(*(event.wait() for event in events))
    either: list[asyncio.Future[Any]] = [waiting, *watches]
    try:
        async with asyncio.timeout(timeout):
            while not waiting.done():
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                broken = [w for w in watches if w.done() and not w.cancelled()]
                for watch in broken:
                    watch.result()  # raises what broke it
                    raise RuntimeError("a worker's watch stream ended")
    finally:
        waiting.cancel()
