"""Workers take commands from their manager only: every route but /health and /metrics
needs the credential the worker gave at join (or its shared --token); the manager's
client presents it over both of its wires; a manager calls a joined worker with its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from cube.manager.backend import MemoryBackend
from cube.manager.membership import Registration
from cube.runtime.simulated import SimulatedRuntime
from cube.stats import StatsSampler
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.transport import InProcessTransport, lifespan
from cube.worker.api import create_app
from cube.worker.client import WorkerClient, WorkerRejected
from cube.worker.credentials import Credentials, Unauthorized
from cube.worker.worker import Worker
from tests.inprocess import SETTINGS, cluster
from tests.unit.test_worker_client_wire import served

pytestmark = pytest.mark.anyio
FILL = {"{task_id}": "9b6b5b43-3c0a-4bd5-9c8d-22b2a6d3f4a1"}
# Open without the manager's credential: /health for supervisors and joins; /metrics
# because a scraper cannot hold the secret a worker shares with its manager alone (the
# listener decides who reaches it: loopback, or mutual TLS). It serves counts only.
OPEN = {"/health", "/metrics"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_worker() -> Worker:
    return Worker("w1", MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    worker = new_worker()
    sampler = StatsSampler(interval=3600, task_count=worker.running_count)
    app = create_app(worker, sampler, credentials=Credentials("shared", "joined-secret"))
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://w1") as client:
            yield client


async def test_every_route_but_health_and_metrics_needs_the_managers_credential(
    api: httpx.AsyncClient,
) -> None:
    doc = (await api.get("/openapi.json")).json()
    checked = 0
    for path, operations in doc["paths"].items():
        url = path
        for hole, value in FILL.items():
            url = url.replace(hole, value)
        for method in operations:
            if path in OPEN and method == "get":
                continue
            body = TaskEvent(State=State.RUNNING, Task=Task(Image="x")).model_dump_json()
            content = body if method == "post" else None
            for headers in ({}, bearer("wrong"), bearer("shared-"), {"Authorization": "Basic a"}):
                answer = await api.request(method, url, content=content, headers=headers)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert "from its manager only" in answer.json()["Message"]
            for token in ("shared", "joined-secret"):
                answer = await api.request(method, url, content=content, headers=bearer(token))
                assert answer.status_code not in (401, 403), (method, path, answer.text)
            checked += 1
        # The document says so, for clients generated from it.
        for operation in operations.values():
            if path in OPEN:
                assert "security" not in operation, path
            else:
                assert operation["security"] == [{"WorkerToken": []}], path
    assert checked >= 5  # list, submit, get, stop, stats
    assert (await api.get("/health")).status_code == 200  # open to supervisors and joins
    for headers in ({}, bearer("wrong")):  # open to scrapers: counts, no secrets
        scraped = await api.get("/metrics", headers=headers)
        assert scraped.status_code == 200, scraped.text
        assert "cube_worker_tasks" in scraped.text
        assert "shared" not in scraped.text and "joined-secret" not in scraped.text


async def test_a_worker_with_no_credential_takes_commands_from_anyone() -> None:
    worker = new_worker()
    sampler = StatsSampler(interval=3600, task_count=worker.running_count)
    app = create_app(worker, sampler)
    async with lifespan(app), httpx.AsyncClient(transport=InProcessTransport(app)) as client:
        assert (await client.get("http://w1/tasks")).status_code == 200


def test_credentials_compare_every_secret() -> None:
    both = Credentials("a-secret", None, "", "b-secret")
    assert both.required and not Credentials(None, "").required
    both.check("a-secret")
    both.check("b-secret")
    for wrong in (None, "", "a-secre", "a-secret ", "A-SECRET"):
        with pytest.raises(Unauthorized):
            both.check(wrong)
    Credentials().check(None)  # open


async def test_the_client_presents_the_credential_over_both_wires() -> None:
    task = Task(Image="cube/busybox", State=State.SCHEDULED)
    # aiohttp, as a manager calls workers, over a real socket.
    async with served(new_worker(), Credentials("s3cret")) as url:
        stranger = WorkerClient.connect(url, timeout=5.0)
        manager = WorkerClient.connect(url, timeout=5.0, token="s3cret")
        try:
            with pytest.raises(WorkerRejected) as refused:
                await stranger.submit(TaskEvent(State=State.RUNNING, Task=task))
            assert refused.value.status == 401
            await manager.submit(TaskEvent(State=State.RUNNING, Task=task))
            async for change in manager.watch(heartbeat=1.0):  # streams carry it too
                assert [t.ID for t in change.tasks] == [task.ID]
                break
        finally:
            await stranger.aclose()
            await manager.aclose()
    # httpx, as tests and the simulator call workers.
    worker = new_worker()
    app = create_app(worker, StatsSampler(interval=3600), credentials=Credentials("s3cret"))
    async with lifespan(app):
        transport = InProcessTransport(app)
        right = WorkerClient("http://w1", httpx.AsyncClient(transport=transport), "s3cret")
        wrong = WorkerClient("http://w1", httpx.AsyncClient(transport=transport), "nope")
        assert (await right.changes()).tasks == []
        with pytest.raises(WorkerRejected):
            await wrong.changes()
        await right.aclose()
        await wrong.aclose()


async def test_a_joined_worker_is_called_with_the_secret_it_gave() -> None:
    settings = SETTINGS.__class__(**{**SETTINGS.__dict__, "join_token": "join"})
    async with cluster(1) as c:
        calls: list[tuple[str, str]] = []
        real = c.connect

        def connect(url: str, token: str = "") -> WorkerClient:
            calls.append((url, token))
            return real(url, token)

        c.connect = connect  # type: ignore[method-assign]
        m = await c.start_manager(MemoryBackend(), settings, static=0)
        name = c.nodes[0].name
        await m.members.join(Registration(Name=name, Api=f"http://{name}", Secret="first"))
        assert calls == [(f"http://{name}", "first")]
        assert "first" not in str(m.members.get(name).to_wire())  # never on the wire
        # The worker restarted: same name and address, a new secret; a new client.
        await m.members.join(Registration(Name=name, Api=f"http://{name}", Secret="second"))
        assert calls[-1] == (f"http://{name}", "second")
        assert m.state.nodes[name].record().Secret == "second"  # kept across restarts
