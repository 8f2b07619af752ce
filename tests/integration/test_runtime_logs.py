"""DockerRuntime.logs against the real engine: streams, times, follow, and its thread.

Every test labels its containers with a label of its own and removes them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import docker
import pytest

from cube.runtime.base import ContainerSpec, LogOptions, NoSuchContainer
from cube.runtime.docker import DockerRuntime
from cube.runtime.docker_streams import LOG_BUFFER
from tests.support import eventually

pytestmark = [pytest.mark.docker, pytest.mark.anyio]
BUSYBOX = "cube/busybox:latest"
DEADLINE = 30.0  # seconds a stream that should end gets before the test fails


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def labels() -> Iterator[dict[str, str]]:
    value = uuid.uuid4().hex
    yield {"cube.test": value}
    api = docker.APIClient(version="auto", timeout=30)
    for row in api.containers(all=True, filters={"label": f"cube.test={value}"}):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(row["Id"], force=True)
    api.close()


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(max_concurrency=4, init=True)
    yield rt
    await rt.close()


def readers() -> int:
    return sum(t.name == "cube-docker-logs" for t in threading.enumerate())


async def start(runtime: DockerRuntime, labels: dict[str, str], script: str) -> str:
    name = f"cube-test-{uuid.uuid4().hex[:12]}"
    spec = ContainerSpec(name=name, image=BUSYBOX, cmd=["sh", "-c", script], labels=labels)
    return (await runtime.start(spec)).id


async def exited(runtime: DockerRuntime, container: str) -> Callable[[], Any]:
    info = await runtime.inspect(container)
    return lambda: info is not None and not info.running


async def test_lines_have_their_stream_and_time(runtime: DockerRuntime, labels: Any) -> None:
    container = await start(runtime, labels, "echo out; echo err >&2; printf 'no newline'")
    follow = await runtime.logs(container, LogOptions(follow=True))
    async with asyncio.timeout(DEADLINE):
        lines = [line async for line in follow]  # ends when the container does
    assert sorted((line.stream, line.text) for line in lines) == [
        ("stderr", "err"),
        ("stdout", "no newline"),
        ("stdout", "out"),
    ]
    info = await runtime.inspect(container)
    assert info is not None and info.started_at is not None
    for line in lines:  # the engine's clock when it took the line: the run's, not year 1
        assert line.time is not None and abs(line.time - info.started_at) < timedelta(minutes=1)

    only_err = await runtime.logs(container, LogOptions(stdout=False))
    assert [line.text async for line in only_err] == ["err"]
    since = max(line.time for line in lines if line.time is not None)
    late = await runtime.logs(container, LogOptions(since=since + timedelta(seconds=1)))
    assert [line async for line in late] == []
    await eventually(lambda: readers() == 0, what="every reader thread gone")

    await runtime.remove(container)
    with pytest.raises(NoSuchContainer):
        await runtime.logs(container, LogOptions())


async def test_closing_a_follow_ends_its_thread(runtime: DockerRuntime, labels: Any) -> None:
    container = await start(runtime, labels, "echo ready; exec sleep 3600")
    before = readers()
    follow = await runtime.logs(container, LogOptions(follow=True))
    assert (await anext(follow)).text == "ready"
    assert readers() == before + 1
    await follow.aclose()  # the container still runs, quiet: the read must end anyway
    await eventually(lambda: readers() == before, what="the reader thread gone")
    info = await runtime.inspect(container)
    assert info is not None and info.running


async def test_a_slow_reader_holds_a_bounded_number_of_lines(
    runtime: DockerRuntime, labels: Any
) -> None:
    total = 20 * LOG_BUFFER
    container = await start(runtime, labels, f"seq 1 {total}; exec sleep 3600")
    follow = await runtime.logs(container, LogOptions(follow=True))
    queue: asyncio.Queue[Any] = follow._queue  # type: ignore[attr-defined]
    credits: threading.Semaphore = follow._credits  # type: ignore[attr-defined]
    # The reader settles one way or the other: waiting for room with its buffer full,
    # or (a reader without a bound) running on with every line the container wrote.
    await eventually(
        lambda: queue.qsize() > LOG_BUFFER or (credits._value == 0 and queue.qsize()),
        timeout=DEADLINE,
        what="the reader to fill its buffer",
    )
    assert queue.qsize() == LOG_BUFFER
    got = [(await anext(follow)).text for _ in range(total)]
    assert got == [str(i) for i in range(1, total + 1)]
    await follow.aclose()
