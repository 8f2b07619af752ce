"""GET /metrics on both servers, in-process: the figures move with what really happens
(a submission placed and run, a task waiting for room, a restart, a failed start, a
failed probe, requests by route template), parsed with the Prometheus client's parser;
every server counts on a registry of its own. The real Prometheus server scrapes a
real cluster in tests/integration/test_prometheus.py."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from cube.clock import ManualClock
from cube.job import Job, TaskTemplate, UpdatePolicy
from cube.manager.api import create_app as manager_app
from cube.manager.backend import MemoryBackend
from cube.manager.health import HealthChecker, HealthSettings
from cube.manager.manager import Manager
from cube.manager.metrics import ManagerMetrics
from cube.manager.settings import Settings
from cube.metrics import CONTENT_TYPE
from cube.runtime.simulated import SimulatedRuntime
from cube.scheduler import Epvm
from cube.stats import StatsSampler
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.transport import InProcessTransport, lifespan
from cube.worker.api import create_app as worker_app
from cube.worker.worker import Worker
from tests.inprocess import cluster, sleeper
from tests.unit.test_health import cluster as probed_tasks

pytestmark = pytest.mark.anyio
GiB = 2**30
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(app: FastAPI, **headers: str) -> Samples:
    """``GET /metrics`` through the app, parsed as Prometheus parses it."""
    async with httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://s") as c:
        answer = await c.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == CONTENT_TYPE
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_the_manager_counts_placements_waits_restarts_and_requests() -> None:
    async with cluster(1) as c:  # one worker with 8 GiB
        m = await c.start_manager(MemoryBackend())
        app = manager_app(m)  # its lifespan unused: the manager runs already
        (big,) = await m.submit_many([sleeper(Memory=6 * GiB)])
        await c.until(lambda: c.task(big.ID).State is State.RUNNING, what="running")
        # A second one fits nowhere: it waits (Pending) for room, 5 virtual seconds.
        (waiting,) = await m.submit_many([sleeper(Memory=6 * GiB)])
        await c.settle(5.0)
        seen = await scrape(app)
        assert value(seen, "cube_tasks", state="Running") == 1
        assert value(seen, "cube_tasks", state="Pending") == 1
        assert value(seen, "cube_tasks", state="Failed") == 0  # every state, 0 too
        assert value(seen, "cube_nodes", status="ready") == 1
        assert value(seen, "cube_nodes", status="down") == 0
        assert value(seen, "cube_placements_total") == 1
        assert value(seen, "cube_placement_latency_seconds_count") == 1
        assert value(seen, "cube_placement_latency_seconds_sum") < 1  # placed at once

        await m.stop(big.ID)  # room: the waiting one is placed
        await c.until(lambda: c.task(waiting.ID).State is State.RUNNING, what="placed")
        seen = await scrape(app)
        assert value(seen, "cube_tasks", state="Running") == 1
        assert value(seen, "cube_tasks", state="Completed") == 1
        assert value(seen, "cube_tasks", state="Pending") == 0
        assert value(seen, "cube_placements_total") == 2
        assert value(seen, "cube_placement_latency_seconds_count") == 2
        assert value(seen, "cube_placement_latency_seconds_sum") >= 5.0
        assert value(seen, "cube_placement_latency_seconds_bucket", le="1.0") == 1
        assert value(seen, "cube_placement_latency_seconds_bucket", le="10.0") == 2
        assert value(seen, "cube_task_restarts_total") == 0
        assert value(seen, "cube_events_stored_total", topic="Task", type="TaskSubmitted") == 2
        assert value(seen, "cube_events_stored_total", topic="Task", type="TaskPlaced") == 2

        # Its container exits 1: restarted (a new incarnation placed), not first placed.
        c.nodes[0].runtime.exit(c.task(waiting.ID).ContainerID, 1)
        await c.until(lambda: c.task(waiting.ID).RestartCount == 1, what="restarted")
        seen = await scrape(app)
        assert value(seen, "cube_task_restarts_total") == 1
        assert value(seen, "cube_placements_total") == 3
        assert value(seen, "cube_placement_latency_seconds_count") == 2

        # Requests, by the route's template: never the task's ID.
        async with httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://m") as h:
            assert (await h.get(f"/tasks/{big.ID}")).status_code == 200
            assert (await h.get("/tasks/not-a-uuid")).status_code == 400
            assert (await h.get(f"/nowhere/{big.ID}")).status_code == 404
            text = (await h.get("/metrics")).text
        assert str(big.ID) not in text and str(waiting.ID) not in text
        seen = await scrape(app)
        get = {"method": "GET", "route": "/tasks/{task_id}"}
        assert value(seen, "cube_http_requests_total", **get, status="200") == 1
        assert value(seen, "cube_http_requests_total", **get, status="400") == 1
        assert value(seen, "cube_http_request_duration_seconds_count", **get) == 2
        assert value(seen, "cube_http_requests_total", method="GET", route="other", status="404")
        metrics = {"method": "GET", "route": "/metrics", "status": "200"}
        assert value(seen, "cube_http_requests_total", **metrics) == 4  # the scrapes before


async def test_the_manager_counts_deployments_by_status_and_ineligible_nodes() -> None:
    update = UpdatePolicy(MaxParallel=1, MinHealthyTime=1, HealthyDeadline=60)
    job = Job(Name="web", Count=2, Task=TaskTemplate(Image="cube/busybox"), Update=update)
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        app = manager_app(m)  # its lifespan unused: the manager runs already
        seen = await scrape(app)
        assert value(seen, "cube_deployments", status="running") == 0
        assert value(seen, "cube_nodes_ineligible") == 0
        await m.jobs.submit(job)
        seen = await scrape(app)
        assert value(seen, "cube_deployments", status="running") == 1
        assert value(seen, "cube_deployments", status="successful") == 0

        def successful() -> bool:
            record = m.jobs.get("web")
            return record.Deployment is not None and record.Deployment.Status == "successful"

        await c.until(successful, what="the deployment successful")
        seen = await scrape(app)
        assert value(seen, "cube_deployments", status="running") == 0
        assert value(seen, "cube_deployments", status="successful") == 1
        await m.members.set_eligible(c.nodes[0].name, False)
        assert value(await scrape(app), "cube_nodes_ineligible") == 1


async def test_the_manager_counts_the_worker_streams_it_follows() -> None:
    """Ready is not yet followed: a worker is polled first, then its watch stream
    opens; a cut link ends the stream, and the count says so."""
    async with cluster(2) as c:
        m = await c.start_manager(MemoryBackend())
        app = manager_app(m)  # its lifespan unused: the manager runs already

        async def streaming() -> float:
            return value(await scrape(app), "cube_nodes_streaming")

        await c.until(lambda: len(m.tracker.streaming) == 2, virtual=5, what="both followed")
        assert await streaming() == 2
        c.nodes[0].link.cut()
        await c.until(lambda: len(m.tracker.streaming) == 1, virtual=5, what="one stream lost")
        assert await streaming() == 1
        c.nodes[0].link.heal()
        await c.until(lambda: len(m.tracker.streaming) == 2, virtual=30, what="followed again")
        assert await streaming() == 2


async def test_the_manager_serves_metrics_to_a_token_holder_only() -> None:
    manager = Manager([], Epvm(), MemoryBackend(), Settings(token="t0k"), clock=ManualClock())
    app = manager_app(manager)
    async with lifespan(app):
        made = await manager.tokens.create("read", "prometheus")
        async with httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://m") as h:
            assert (await h.get("/metrics")).status_code == 401
            wrong = await h.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        assert made.Secret is not None
        seen = await scrape(app, Authorization=f"Bearer {made.Secret}")  # a read token will do
        assert value(seen, "cube_http_requests_total", method="GET", route="/metrics", status="401")
        assert "t0k" not in str(seen) and made.Secret not in str(seen)


async def test_a_worker_counts_starts_failures_engine_calls_and_its_tasks() -> None:
    runtime = SimulatedRuntime(fail_images=frozenset({"cube/missing"}))
    worker = Worker("w1", MemoryStore(), runtime, reconcile_interval=3600)
    app = worker_app(worker, StatsSampler(interval=3600, task_count=worker.running_count))
    async with lifespan(app):
        good = Task(Image="cube/busybox", State=State.SCHEDULED)
        bad = Task(Image="cube/missing", State=State.SCHEDULED)
        for task in (good, bad):
            worker.submit(TaskEvent(State=State.RUNNING, Task=task))
        seen: Samples = {}
        for _ in range(200):  # the consumers start them as the loop runs
            seen = await scrape(app)
            if value(seen, "cube_worker_tasks", state="Scheduled") == 0:
                break
        assert value(seen, "cube_worker_tasks", state="Running") == 1
        assert value(seen, "cube_worker_tasks", state="Failed") == 1
        assert value(seen, "cube_worker_container_starts_total") == 1
        failed = "cube_worker_container_start_failures_total"
        assert value(seen, failed, reason="container") == 1
        assert value(seen, failed, reason="engine_unavailable") == 0
        calls = "cube_worker_docker_call_duration_seconds_count"
        assert value(seen, calls, call="start") == 2  # failed ones too
        assert value(seen, calls, call="ping") >= 1 and value(seen, calls, call="list") >= 1

        # The engine goes away: a start waits for it, counted as such.
        runtime.set_available(False)
        later = Task(Image="cube/busybox", State=State.SCHEDULED)
        worker.submit(TaskEvent(State=State.RUNNING, Task=later))
        for _ in range(200):
            seen = await scrape(app)
            if value(seen, failed, reason="engine_unavailable"):
                break
        assert value(seen, failed, reason="engine_unavailable") == 1
        assert value(seen, "cube_worker_tasks", state="Scheduled") == 1
        route = {"method": "GET", "route": "/metrics", "status": "200"}
        assert value(seen, "cube_http_requests_total", **route) >= 1  # scrapes before


async def test_failed_probes_are_counted() -> None:
    clock = ManualClock()
    metrics = ManagerMetrics(clock)
    state = probed_tasks(3, 8080, clock)
    answers = httpx.MockTransport(lambda request: httpx.Response(503))

    async def report(task: Task, to: State, reason: str) -> None: ...

    health = HealthChecker(state, clock, HealthSettings(), report, answers, metrics)
    try:
        await health.check_all()
        await health.check_all()
    finally:
        await health.close()
    assert metrics.registry.get_sample_value("cube_health_check_failures_total") == 6


async def test_every_server_counts_on_its_own_registry() -> None:
    """Two managers and two workers in one process (as in the simulator): no name is
    registered twice, and each counts only its own."""
    managers = [Manager([], Epvm(), MemoryBackend(), clock=ManualClock()) for _ in range(2)]
    workers = [
        Worker(f"w{i}", MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)
        for i in range(2)
    ]
    await managers[0].submit(sleeper())
    first, second = [await scrape(manager_app(m)) for m in managers]
    assert value(first, "cube_tasks", state="Pending") == 1
    assert value(second, "cube_tasks", state="Pending") == 0
    assert value(first, "cube_events_stored_total", topic="Task", type="TaskSubmitted") == 1
    assert value(second, "cube_events_stored_total", topic="Task", type="TaskSubmitted") == 0
    workers[1].submit(TaskEvent(State=State.RUNNING, Task=Task(Image="cube/busybox")))
    sampler = StatsSampler(interval=3600)
    first, second = [await scrape(worker_app(w, sampler)) for w in workers]
    assert value(first, "cube_worker_tasks", state="Scheduled") == 0
    assert value(second, "cube_worker_tasks", state="Scheduled") == 1
    for worker in workers:
        worker.store.close()
