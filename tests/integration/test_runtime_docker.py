"""DockerRuntime against the real engine, with the offline cube/busybox and cube/http images.

Every test labels its containers with a label of its own and removes them afterwards,
and waits by polling with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import docker
import httpx
import pytest

from cube.runtime import ContainerError, ContainerInfo, ContainerSpec, RuntimeUnavailable
from cube.runtime.base import parse_docker_time
from cube.runtime.docker import DockerRuntime
from tests.support import EngineProxy

BUSYBOX = "cube/busybox:latest"
HTTP = "cube/http:latest"
MiB = 1024 * 1024
T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def api() -> Iterator[docker.APIClient]:
    try:
        client = docker.APIClient(version="auto", timeout=30)
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    client.close()


@pytest.fixture
def labels(api: docker.APIClient) -> Iterator[dict[str, str]]:
    """A label unique to this test; every container carrying it is removed afterwards."""
    value = uuid.uuid4().hex
    yield {"cube.test": value}
    for row in api.containers(all=True, filters={"label": f"cube.test={value}"}):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(row["Id"], force=True)


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(max_concurrency=8)
    yield rt
    await rt.close()


def spec(labels: dict[str, str], image: str = BUSYBOX, **kwargs: Any) -> ContainerSpec:
    name = kwargs.pop("name", f"cube-test-{uuid.uuid4().hex[:12]}")
    return ContainerSpec(name=name, image=image, labels=labels, **kwargs)


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; last saw {last!r}")
        await anyio.sleep(0.05)


async def exited(rt: DockerRuntime, container_id: str) -> ContainerInfo:
    async def check() -> ContainerInfo | None:
        info = await rt.inspect(container_id)
        assert info is not None
        return info if info.status == "exited" else None

    return await eventually(check)


async def http_status(port: str, path: str = "/health") -> int:
    async with httpx.AsyncClient(timeout=2) as client:
        response = await client.get(f"http://127.0.0.1:{port}{path}")
        return response.status_code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_docker_zero_time_is_none() -> None:
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None
    assert parse_docker_time(None) is None
    parsed = parse_docker_time("2024-05-01T12:00:01.123456789Z")
    assert parsed == datetime(2024, 5, 1, 12, 0, 1, 123456, tzinfo=UTC)
    shifted = parse_docker_time("2024-05-01T14:00:01+02:00")
    assert shifted == datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)


@pytest.mark.anyio
async def test_unreachable_engine_is_runtime_unavailable(tmp_path: Any) -> None:
    rt = DockerRuntime(base_url=f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(RuntimeUnavailable):
        await rt.ping()
    with pytest.raises(RuntimeUnavailable):
        await rt.start(ContainerSpec(name="never", image=BUSYBOX))
    with pytest.raises(RuntimeUnavailable):
        await rt.inspect("whatever")
    await rt.close()


@pytest.mark.docker
@pytest.mark.anyio
async def test_http_container_publishes_a_port_that_answers(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    await runtime.ping()
    s = spec(labels, HTTP, exposed_ports=["80/tcp"])
    info = await runtime.start(s)

    assert info.running and info.status == "running"
    assert info.name == s.name and info.image == HTTP
    assert info.labels["cube.test"] == labels["cube.test"]
    assert info.exit_code is None and info.error == ""
    assert info.started_at is not None and info.started_at.tzinfo is not None
    assert info.finished_at is None
    port = info.host_ports["80/tcp"][0]["HostPort"]
    assert port.isdigit()
    assert await eventually(lambda: http_status(port)) == 200


@pytest.mark.docker
@pytest.mark.anyio
async def test_memory_and_cpu_limits_are_applied(
    runtime: DockerRuntime, labels: dict[str, str], api: docker.APIClient
) -> None:
    info = await runtime.start(spec(labels, cmd=["sleep", "300"], memory=64 * MiB, cpu=0.5))

    host_config = api.inspect_container(info.id)["HostConfig"]
    assert host_config["Memory"] == 64 * MiB
    assert host_config["NanoCpus"] == 500_000_000


@pytest.mark.docker
@pytest.mark.anyio
async def test_fixed_port_binding_is_honoured(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    port = str(free_port())
    info = await runtime.start(
        spec(labels, HTTP, exposed_ports=["80/tcp"], port_bindings={"80/tcp": port})
    )

    assert {b["HostPort"] for b in info.host_ports["80/tcp"]} == {port}
    assert await eventually(lambda: http_status(port)) == 200


@pytest.mark.docker
@pytest.mark.anyio
async def test_port_already_allocated_is_a_container_error(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    port = str(free_port())
    first = await runtime.start(spec(labels, HTTP, port_bindings={"80/tcp": port}))
    second = spec(labels, HTTP, port_bindings={"80/tcp": port})

    with pytest.raises(ContainerError, match="could not start"):
        await runtime.start(second)
    assert await runtime.inspect(second.name) is None  # removed before raising
    still = await runtime.inspect(first.id)
    assert still is not None and still.running


@pytest.mark.docker
@pytest.mark.anyio
async def test_cmd_exit_code_is_reported(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    info = await runtime.start(spec(labels, cmd=["sh", "-c", "exit 3"]))

    done = await exited(runtime, info.id)
    assert done.exit_code == 3
    assert not done.running and not done.oom_killed
    assert done.finished_at is not None and done.started_at is not None
    assert done.finished_at >= done.started_at


@pytest.mark.docker
@pytest.mark.anyio
async def test_env_reaches_the_command(
    runtime: DockerRuntime, labels: dict[str, str], api: docker.APIClient
) -> None:
    info = await runtime.start(
        spec(labels, cmd=["sh", "-c", "echo $FOO"], env=["FOO=hello from cube"])
    )

    done = await exited(runtime, info.id)
    assert done.exit_code == 0
    assert api.logs(info.id).decode().strip() == "hello from cube"


@pytest.mark.docker
@pytest.mark.anyio
async def test_bad_command_is_a_container_error_and_leaves_nothing(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    s = spec(labels, cmd=["/no/such/program"])

    with pytest.raises(ContainerError, match="could not start") as caught:
        await runtime.start(s)
    assert "\n" not in str(caught.value)
    assert await runtime.inspect(s.name) is None


@pytest.mark.docker
@pytest.mark.anyio
async def test_same_name_twice_replaces_the_leftover(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    name = f"cube-test-{uuid.uuid4().hex[:12]}"
    first = await runtime.start(spec(labels, name=name, cmd=["sleep", "300"]))
    second = await runtime.start(spec(labels, name=name, cmd=["sleep", "300"]))

    assert second.id != first.id
    assert second.running and second.name == name
    assert await runtime.inspect(first.id) is None


@pytest.mark.docker
@pytest.mark.anyio
async def test_stop_removes_the_container(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    info = await runtime.start(spec(labels, HTTP, exposed_ports=["80/tcp"]))

    await runtime.stop(info.id, timeout=1)
    assert await runtime.inspect(info.id) is None
    await runtime.stop(info.id)  # already gone: not an error
    await runtime.remove(info.id)


@pytest.mark.docker
@pytest.mark.anyio
async def test_unknown_image_is_a_clear_container_error(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    image = f"cube-test/nope-{uuid.uuid4().hex[:8]}"
    s = spec(labels, image)

    with pytest.raises(ContainerError) as caught:
        await runtime.start(s)
    message = str(caught.value)
    assert f"image '{image}:latest' not found locally and pull failed:" in message
    assert "\n" not in message
    assert await runtime.inspect(s.name) is None


@pytest.mark.docker
@pytest.mark.anyio
async def test_outside_kill_arrives_as_a_die_event(
    runtime: DockerRuntime, labels: dict[str, str], api: docker.APIClient
) -> None:
    info = await runtime.start(spec(labels, cmd=["sleep", "300"]))
    events = runtime.events(labels)
    api.kill(info.id)

    async with contextlib.aclosing(events):  # type: ignore[type-var]
        with anyio.fail_after(15):
            async for event in events:
                if event.container_id == info.id and event.action == "die":
                    break
    assert event.labels["cube.test"] == labels["cube.test"]
    assert "name" not in event.labels and "image" not in event.labels
    assert event.exit_code == 137

    def reader_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "cube-docker-events"]

    async def no_reader() -> bool:
        return not reader_threads()

    await eventually(no_reader, timeout=5)  # closing the iterator ended its thread


@pytest.mark.docker
@pytest.mark.anyio
async def test_memory_limit_is_enforced_as_an_oom_kill(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    events = runtime.events(labels)
    # dd fills a 64 MiB buffer, far over the 8 MiB limit. It waits a second first: the
    # engine only notices OOM kills once it watches the container's cgroup, and a process
    # killed within milliseconds of starting dies with no "oom" event at all.
    cmd = ["sh", "-c", "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1"]
    info = await runtime.start(spec(labels, cmd=cmd, memory=8 * MiB))

    actions: set[str] = set()
    try:
        with anyio.move_on_after(20):
            async for event in events:
                if event.container_id == info.id:
                    actions.add(event.action)
                    if {"oom", "die"} <= actions:  # the engine reports them in either order
                        break
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    assert {"oom", "die"} <= actions, actions
    done = await exited(runtime, info.id)
    # State.OOMKilled is not asserted: Docker 20.10 leaves it false when the "oom" event
    # is processed after the exit. The event and the SIGKILL exit code are what count.
    assert done.exit_code == 137, done


@pytest.mark.docker
@pytest.mark.anyio
async def test_events_are_filtered_by_label(
    runtime: DockerRuntime, labels: dict[str, str], api: docker.APIClient
) -> None:
    other = {"cube.test": labels["cube.test"] + "-other"}
    events = runtime.events(labels)
    try:
        stranger = await runtime.start(spec(other, cmd=["true"]))
        mine = await runtime.start(spec(labels, cmd=["true"]))
        seen = []
        with anyio.fail_after(15):
            async for event in events:
                seen.append(event.container_id)
                if event.container_id == mine.id and event.action == "die":
                    break
        assert stranger.id not in seen
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        for row in api.containers(all=True, filters={"label": f"cube.test={other['cube.test']}"}):
            api.remove_container(row["Id"], force=True)


@pytest.mark.docker
@pytest.mark.anyio
async def test_list_filters_by_labels(runtime: DockerRuntime, labels: dict[str, str]) -> None:
    a = await runtime.start(spec(labels, cmd=["sleep", "300"]))
    b = await runtime.start(spec({**labels, "cube.extra": "yes"}, cmd=["sleep", "300"]))
    c = await runtime.start(spec(labels, cmd=["true"]))  # exits at once: listed all the same
    await exited(runtime, c.id)

    assert {i.id for i in await runtime.list(labels)} == {a.id, b.id, c.id}
    assert {i.id for i in await runtime.list({**labels, "cube.extra": "yes"})} == {b.id}
    assert await runtime.list({"cube.test": uuid.uuid4().hex}) == []


@pytest.mark.docker
@pytest.mark.anyio
async def test_engine_outage_is_survivable(tmp_path: Any, labels: dict[str, str]) -> None:
    if not os.path.exists("/var/run/docker.sock"):
        pytest.skip("needs the engine on /var/run/docker.sock")
    proxy = EngineProxy(str(tmp_path / "docker.sock"))
    await proxy.up()
    rt = DockerRuntime(base_url=f"unix://{proxy.path}")
    try:
        first = await rt.start(spec(labels, cmd=["sleep", "300"]))
        events = rt.events(labels)
        # The subscription is live once an event has come through it.
        probe = await rt.start(spec(labels, cmd=["true"]))
        with anyio.fail_after(15):
            async for event in events:
                if event.container_id == probe.id:
                    break

        await proxy.down()
        with pytest.raises(RuntimeUnavailable), anyio.fail_after(15):
            async for _ in events:
                pass
        with pytest.raises(RuntimeUnavailable):
            await rt.inspect(first.id)

        await proxy.up()
        await rt.ping()
        info = await rt.inspect(first.id)
        assert info is not None and info.running
    finally:
        await rt.close()
        with contextlib.suppress(Exception):
            await proxy.down()
