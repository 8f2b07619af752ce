"""Every kind of change issue 15 lists is an event in the log: task state, placement,
restart, health failure, node down and drain, job version and deployment progress.
The real manager and worker apps on the simulated runtime (tests/inprocess.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest

from cube.events import Event
from cube.job import Job, TaskTemplate, UpdatePolicy
from cube.manager.backend import MemoryBackend
from cube.task import State
from tests.inprocess import SETTINGS, cluster, sleeper

pytestmark = pytest.mark.anyio


def of(events: list[Event], key: str, *types: str) -> list[Event]:
    return [e for e in events if e.Key == key and (not types or e.Type in types)]


async def test_what_the_manager_does_and_sees_is_in_the_event_log() -> None:
    def unhealthy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    settings = replace(SETTINGS, health_interval=1.0, health_grace=0.0)
    async with cluster(3) as c:
        m = await c.start_manager(
            MemoryBackend(), settings, health_transport=httpx.MockTransport(unhealthy)
        )
        w1, w2, w3 = (n.name for n in c.nodes)

        def log() -> list[Event]:
            return m.events.after(0, limit=100_000)

        # A job: registered, its deployment started and done; a new Count: scaled.
        update = UpdatePolicy(MaxParallel=1, MinHealthyTime=1, HealthyDeadline=60)
        job = Job(Name="web", Count=2, Task=TaskTemplate(Image="cube/busybox"), Update=update)
        await m.jobs.submit(job)
        done = "DeploymentSuccessful"
        await c.until(lambda: of(log(), "web", done), what="the deployment successful")
        await m.jobs.scale("web", 3)
        await c.until(lambda: of(log(), "web", "JobScaled"), what="JobScaled")

        # A task whose container exits 1: Failed, then restarted (placed again).
        (crash,) = await m.submit_many([sleeper()])
        await c.until(lambda: c.task(crash.ID).State is State.RUNNING, what="running")
        node = next(n for n in c.nodes if n.name == c.task(crash.ID).Node)
        node.runtime.exit(c.task(crash.ID).ContainerID, 1)
        key = str(crash.ID)
        await c.until(lambda: of(log(), key, "TaskRestarted"), what="TaskRestarted")

        # A task whose health check fails: Failed, saying so.
        probed = sleeper(HealthCheck="/health", ExposedPorts={"80/tcp": {}})
        (sick,) = await m.submit_many([probed])
        failed = "health check failed: HTTP 500"

        def failed_health() -> list[Event]:
            return [
                e
                for e in of(log(), str(sick.ID), "TaskFailed")
                if str(e.Payload.get("Reason", "")).startswith(failed)
            ]

        await c.until(failed_health, virtual=30.0, what="a TaskFailed for its health check")

        # A node drained (and made eligible again), then one that goes silent.
        await m.members.drain(w1)
        await c.until(lambda: of(log(), w1, "NodeDrainComplete"), what="w1 drained")
        await m.members.set_eligible(w1, True)
        c.nodes[2].link.cut()
        await c.until(lambda: of(log(), w3, "NodeDown"), what="w3 down")

        events = log()
        assert [e.Index for e in events] == list(range(1, len(events) + 1))
        seen: dict[str, set[str]] = {}
        for e in events:
            seen.setdefault(e.Topic, set()).add(e.Type)
        assert {"JobRegistered", "JobScaled"} <= seen["Job"]
        assert {"DeploymentStarted", done} <= seen["Deployment"]
        assert {"TaskSubmitted", "TaskPlaced", "TaskRunning", "TaskFailed"} <= seen["Task"]
        assert {"TaskRestarted"} <= seen["Task"]
        assert {"NodeReady", "NodeDrain", "NodeDrainComplete", "NodeEligibility"} <= seen["Node"]
        assert "NodeDown" in seen["Node"]
        # Each event carries the object as it was just after, under its key.
        (placed, *_) = of(events, key, "TaskPlaced")
        assert placed.Topic == "Task" and placed.Payload["Node"] in (w1, w2, w3)
        (drain,) = of(events, w1, "NodeDrain")
        assert drain.Payload["Draining"] is True and "Stats" not in drain.Payload
        (eligible,) = of(events, w1, "NodeEligibility")
        assert eligible.Payload["Eligible"] is True
        scaled: dict[str, Any] = of(events, "web", "JobScaled")[0].Payload
        assert scaled["Count"] == 3
        (down,) = of(events, w3, "NodeDown")
        assert down.Payload["Status"] == "down"
