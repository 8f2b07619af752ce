"""The simulated runtime keeps the Runtime contract, so scale tests measure Cube, not it."""

from __future__ import annotations

import asyncio

import pytest

from cube.runtime.base import ContainerError, ContainerSpec, Runtime, RuntimeUnavailable
from cube.runtime.simulated import SimulatedRuntime

pytestmark = pytest.mark.anyio


def spec(name: str = "t-1", **kwargs: object) -> ContainerSpec:
    return ContainerSpec(name=name, image="cube/busybox:latest", labels={"w": "a"}, **kwargs)  # type: ignore[arg-type]


async def test_start_inspect_list_and_ports() -> None:
    runtime: Runtime = SimulatedRuntime()
    info = await runtime.start(spec(exposed_ports=["80/tcp"], port_bindings={"81/tcp": "8081"}))
    assert info.running and info.started_at is not None
    assert info.host_ports["81/tcp"][0]["HostPort"] == "8081"
    assert info.host_ports["80/tcp"][0]["HostPort"].isdigit()
    assert await runtime.inspect(info.id) == info
    assert [c.id for c in await runtime.list({"w": "a"})] == [info.id]
    assert await runtime.list({"w": "b"}) == []
    assert isinstance(runtime, SimulatedRuntime) and runtime.starts == 1


async def test_a_name_taken_by_a_leftover_is_replaced() -> None:
    runtime = SimulatedRuntime()
    first = await runtime.start(spec())
    second = await runtime.start(spec())
    assert await runtime.inspect(first.id) is None
    assert [c.id for c in runtime.containers] == [second.id]


async def test_events_report_exits_and_removals() -> None:
    runtime = SimulatedRuntime()
    events = runtime.events({"w": "a"})
    info = await runtime.start(spec())
    runtime.exit(info.id, 3)
    await runtime.remove(info.id)
    seen = [await asyncio.wait_for(anext(events), 1) for _ in range(3)]
    assert [(e.action, e.exit_code) for e in seen] == [("start", None), ("die", 3), ("destroy", 3)]
    exited = seen[1]
    assert exited.container_id == info.id and exited.labels == {"w": "a"}


async def test_stop_ends_and_removes() -> None:
    runtime = SimulatedRuntime()
    info = await runtime.start(spec())
    await runtime.stop(info.id)
    assert await runtime.inspect(info.id) is None


async def test_failing_image_and_outage() -> None:
    runtime = SimulatedRuntime(fail_images=frozenset({"nope"}))
    with pytest.raises(ContainerError):
        await runtime.start(ContainerSpec(name="x", image="nope"))
    events = runtime.events({})
    runtime.set_available(False)
    with pytest.raises(RuntimeUnavailable):
        await runtime.ping()
    with pytest.raises(RuntimeUnavailable):
        await asyncio.wait_for(anext(events), 1)
    runtime.set_available(True)
    await runtime.ping()
    await runtime.close()
    with pytest.raises(RuntimeUnavailable):
        await runtime.ping()
