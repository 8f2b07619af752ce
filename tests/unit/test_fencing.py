"""Fencing (cube.worker.fencing): a worker refuses a deposed manager's requests, an
older X-Cube-Term than the newest it has seen, and keeps that term across a restart;
the manager's client sends its term on every request and knows a deposed 409 from
one about a task."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cube.runtime.simulated import SimulatedRuntime
from cube.stats import StatsSampler
from cube.store import Database, MemoryStore, Store
from cube.task import State, Task, TaskEvent
from cube.transport import InProcessTransport, lifespan
from cube.worker.api import create_app
from cube.worker.client import Deposed, WorkerClient, WorkerRejected
from cube.worker.fencing import Fence
from cube.worker.worker import UnknownTask, Worker
from tests.unit.test_worker_client_wire import served as wire_served

pytestmark = pytest.mark.anyio
STALE = "cube_worker_stale_commands_total"


@dataclass
class Served:
    worker: Worker
    fence: Fence
    http: httpx.AsyncClient

    async def get(self, path: str, term: str | None) -> httpx.Response:
        headers = {} if term is None else {"X-Cube-Term": term}
        return await self.http.get(path, headers=headers)

    def refused(self) -> float:
        return self.worker.metrics.registry.get_sample_value(STALE) or 0.0


@contextlib.asynccontextmanager
async def served(
    store: Store[Task] | None = None, fence: Fence | None = None
) -> AsyncIterator[Served]:
    """A worker's app in-process, as `cube worker` makes it (its fence given or not)."""
    worker = Worker("w1", store or MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)
    sampler = StatsSampler(interval=3600, task_count=worker.running_count)
    fence = fence or Fence()
    app = create_app(worker, sampler, fence=fence)
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://w1") as http:
            yield Served(worker, fence, http)


@pytest.fixture
async def w() -> AsyncIterator[Served]:
    async with served() as found:
        yield found


async def test_an_older_term_is_refused_logged_and_counted(
    w: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cube.worker")
    assert (await w.get("/stats", "5")).status_code == 200
    assert w.fence.term == 5
    assert "now led by term 5" in caplog.text

    answer = await w.get("/stats", "4")
    assert answer.status_code == 409
    assert answer.json() == {
        "HTTPStatusCode": 409,
        "Message": "refused: term 4 is older than term 5, which now leads "
        "(a deposed manager's command)",
    }
    assert answer.headers["X-Cube-Term"] == "5"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "stale term 4" in warnings[0].getMessage()
    assert "term 5" in warnings[0].getMessage()
    assert w.refused() == 1
    assert f"{STALE} 1.0" in (await w.http.get("/metrics")).text  # served, as scraped
    assert w.fence.term == 5  # an older term changes nothing


async def test_a_deposed_managers_command_is_not_carried_out(w: Served) -> None:
    await w.get("/tasks", "9")
    task = Task(Image="cube/busybox")
    body = TaskEvent(State=State.RUNNING, Task=task).model_dump_json()
    for posted in (body, f"[{body}]"):
        answer = await w.http.post("/tasks", content=posted, headers={"X-Cube-Term": "8"})
        assert answer.status_code == 409, answer.text
    with pytest.raises(UnknownTask):
        w.worker.get(task.ID)
    gone = await w.http.delete(f"/tasks/{uuid.uuid4()}", headers={"X-Cube-Term": "8"})
    assert gone.status_code == 409  # refused before the route looks for the task
    assert w.refused() == 3


async def test_the_same_or_a_newer_term_is_taken_and_a_newer_one_kept(w: Served) -> None:
    for term, kept in (("3", 3), ("3", 3), ("4", 4), ("10", 10), ("10", 10)):
        answer = await w.get("/tasks", term)
        assert answer.status_code == 200, (term, answer.text)
        assert w.fence.term == kept
    assert w.refused() == 0


async def test_a_request_without_a_term_is_taken_as_before(w: Served) -> None:
    assert (await w.get("/tasks", None)).status_code == 200
    assert w.fence.term is None
    await w.get("/tasks", "7")
    assert (await w.get("/tasks", None)).status_code == 200  # the CLI, a single manager
    task = Task(Image="cube/busybox")
    event = TaskEvent(State=State.RUNNING, Task=task).model_dump_json()
    assert (await w.http.post("/tasks", content=event)).status_code == 201
    assert w.refused() == 0


async def test_health_and_metrics_are_not_fenced(w: Served) -> None:
    """Open to anyone (no credential), so they neither refuse nor record a term: a
    caller without the credential must not be able to fence out the real leader."""
    await w.get("/stats", "5")
    for path in ("/health", "/metrics"):
        assert (await w.get(path, "4")).status_code == 200
        assert (await w.get(path, "99")).status_code == 200
    assert w.fence.term == 5


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "", "9" * 20, "0x10", "+5"])
async def test_a_term_that_is_not_one_is_a_400(w: Served, bad: str) -> None:
    answer = await w.get("/tasks", bad)
    assert answer.status_code == 400
    assert answer.json()["Message"] == (
        f"X-Cube-Term: expected a non-negative integer (a leader's term), not {bad!r}"
    )
    assert w.fence.term is None


async def test_a_watch_of_an_older_term_ends_when_a_newer_one_leads(w: Served) -> None:
    params = {"watch": "true", "wait": "30"}
    async with w.http.stream("GET", "/tasks", params=params, headers={"X-Cube-Term": "1"}) as old:
        lines = old.aiter_lines()
        assert '"Complete":true' in await anext(lines)
        assert (await w.get("/stats", "2")).status_code == 200
        with pytest.raises(StopAsyncIteration):  # ended at once, not at the next beat
            await anext(lines)


async def test_the_newest_term_survives_a_restart_of_a_persistent_worker(tmp_path: Path) -> None:
    db, kept = tmp_path / "worker-w1.db", tmp_path / "worker-w1.term"
    async with served(Database(db).store("tasks", Task), Fence(kept)) as first:
        assert (await first.get("/tasks", "41")).status_code == 200
        assert (await first.get("/tasks", "42")).status_code == 200
    assert kept.read_text() == "42\n"
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed into place
    async with served(Database(db).store("tasks", Task), Fence(kept)) as restarted:
        assert restarted.fence.term == 42
        answer = await restarted.get("/tasks", "41")
        assert answer.status_code == 409 and answer.headers["X-Cube-Term"] == "42"
        assert (await restarted.get("/tasks", "42")).status_code == 200


def test_a_term_file_that_holds_no_term_is_refused_with_its_name(tmp_path: Path) -> None:
    kept = tmp_path / "worker-w1.term"
    kept.write_text("not a term")
    with pytest.raises(ValueError, match=r"worker-w1\.term: not a term: 'not a term'"):
        Fence(kept)


# --- the manager's side: the client --------------------------------------------------


async def chunked(*chunks: bytes) -> AsyncIterator[bytes]:
    """A body as a stream (a body given whole counts as read already: not streamable)."""
    for chunk in chunks:
        yield chunk


class Recorder:
    """A worker that answers everything, and remembers each request's headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path, request.headers.get("X-Cube-Term")))
        path = request.url.path
        if request.url.params.get("watch") == "true":
            line = b'{"Epoch":"e","Version":1,"Complete":true,"Tasks":[]}\n'
            return httpx.Response(
                200, content=chunked(line), headers={"content-type": "application/x-ndjson"}
            )
        if path.endswith("/logs"):
            return httpx.Response(
                200, content=chunked(b""), headers={"content-type": "application/x-ndjson"}
            )
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.method == "POST":
            return httpx.Response(201, content=Task(Image="i").model_dump_json())
        if path == "/tasks":
            return httpx.Response(
                200, json=[], headers={"X-Cube-Epoch": "e", "X-Cube-Version": "1"}
            )
        return httpx.Response(200, json={})


async def every_call(client: WorkerClient) -> None:
    task = Task(Image="cube/busybox")
    event = TaskEvent(State=State.RUNNING, Task=task)
    await client.submit(event)
    await client.submit_many([event, event])
    async for _ in client.watch():
        pass
    async with client.logs(task.ID, {"follow": "false"}) as chunks:
        async for _ in chunks:
            pass
    await client.stop(task.ID)
    await client.stop(task.ID, 2)
    await client.tasks()
    await client.changes()
    await client.changes(1, "e", wait=0.1)
    await client.stats()
    await client.health()


@pytest.mark.parametrize("term", [7, None])
async def test_the_client_sends_its_term_on_every_request(term: int | None) -> None:
    worker = Recorder()
    http = httpx.AsyncClient(transport=httpx.MockTransport(worker))
    client = WorkerClient("http://w1", http, "secret", term=term)
    try:
        await every_call(client)
    finally:
        await client.aclose()
    assert len(worker.seen) == 11  # every method of WorkerClient that calls the worker
    expected = None if term is None else str(term)
    assert [sent for _, _, sent in worker.seen] == [expected] * 11, worker.seen


async def test_a_deposed_409_is_deposed_and_any_other_409_is_not() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/stats" or request.url.params.get("watch"):
            body = {"HTTPStatusCode": 409, "Message": "refused: term 4 is older than term 5"}
            return httpx.Response(409, json=body, headers={"X-Cube-Term": "5"})
        body = {"HTTPStatusCode": 409, "Message": "cannot move a task from Completed to Scheduled"}
        return httpx.Response(409, json=body)

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    client = WorkerClient("http://w1", http, term=4)
    try:
        with pytest.raises(Deposed) as deposed:
            await client.stats()
        assert (deposed.value.term, deposed.value.newest, deposed.value.status) == (4, 5, 409)
        assert "term 4 is older than term 5" in str(deposed.value)
        with pytest.raises(WorkerRejected) as other:
            await client.submit(TaskEvent(Task=Task(Image="i")))
        assert not isinstance(other.value, Deposed) and other.value.status == 409
        with pytest.raises(Deposed):
            async for _ in client.watch():
                pass
    finally:
        await client.aclose()


async def test_the_managers_own_wire_sends_the_term_and_reads_a_deposed_409() -> None:
    """aiohttp (WorkerClient.connect, the manager's path) against a served worker."""
    node = Worker("w1", MemoryStore(), SimulatedRuntime(), reconcile_interval=3600)
    async with wire_served(node) as url:
        leader = WorkerClient.connect(url, timeout=5.0, term=3)
        deposed = WorkerClient.connect(url, timeout=5.0, term=2)
        try:
            await leader.stats()
            with pytest.raises(Deposed) as refused:
                await deposed.stats()
            assert (refused.value.term, refused.value.newest) == (2, 3)
            with pytest.raises(Deposed):
                async for _ in deposed.watch():
                    pass
            with pytest.raises(Deposed):
                async with deposed.logs(uuid.uuid4(), {}):
                    pass
            async for changes in leader.watch(heartbeat=0.2):
                assert changes.complete
                break
        finally:
            await leader.aclose()
            await deposed.aclose()
