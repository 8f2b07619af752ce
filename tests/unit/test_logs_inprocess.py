"""Task logs in-process: the worker's and the manager's GET /tasks/{id}/logs on the
simulated runtime, through the in-process transport (tests/inprocess.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from cube import logs as wire
from cube.manager.api import create_app as manager_app
from cube.manager.backend import MemoryBackend
from cube.manager.manager import Manager
from cube.runtime.base import ContainerInfo, ContainerSpec, LogLine, LogOptions, LogStream
from cube.runtime.simulated import SimulatedRuntime
from cube.scheduler import Epvm
from cube.stats import StatsSampler
from cube.store import MemoryStore
from cube.task import State, Task, TaskEvent
from cube.transport import InProcessTransport, lifespan
from cube.worker.api import create_app
from cube.worker.worker import Worker
from tests.inprocess import SETTINGS, Cluster, cluster, sleeper

pytestmark = pytest.mark.anyio
DEADLINE = 20.0  # seconds a stream that should end gets before the test fails


class Counted:
    """A log stream that counts the lines it handed out and whether it was closed."""

    def __init__(self, inner: LogStream) -> None:
        self.inner = inner
        self.handed = 0
        self.closed = False

    def __aiter__(self) -> Counted:
        return self

    async def __anext__(self) -> LogLine:
        line = await self.inner.__anext__()
        self.handed += 1
        return line

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


class Engine(SimulatedRuntime):
    """The simulated engine, on a clock the test sets, keeping every log reader it
    opened, and holding container starts while ``held`` is clear."""

    def __init__(self) -> None:
        self.clock = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        super().__init__(now=lambda: self.clock)
        self.readers: list[Counted] = []
        self.held = asyncio.Event()
        self.held.set()

    async def start(self, spec: ContainerSpec) -> ContainerInfo:
        await self.held.wait()
        return await super().start(spec)

    async def logs(self, container_id: str, options: LogOptions) -> LogStream:
        reader = Counted(await super().logs(container_id, options))
        self.readers.append(reader)
        return reader


async def eventually(check: Callable[[], Any], what: str, rounds: int = 20_000) -> Any:
    """Run the loop until ``check`` holds (no clock involved: everything is in-process)."""
    for _ in range(rounds):
        if value := check():
            return value
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
async def node() -> AsyncIterator[tuple[Worker, Engine, httpx.AsyncClient]]:
    engine = Engine()
    worker = Worker("w1", MemoryStore(), engine, reconcile_interval=3600, keep_exited=2)
    app = create_app(worker, StatsSampler(interval=3600, task_count=worker.running_count))
    async with lifespan(app):
        transport = InProcessTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://w1") as client:
            yield worker, engine, client


async def running(worker: Worker) -> Task:
    task = Task(Image="cube/busybox")
    worker.submit(TaskEvent(Task=task))
    return await eventually(
        lambda: (t := worker.get(task.ID)).State is State.RUNNING and t, what="Running"
    )


def parsed(body: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


async def test_lines_come_with_their_stream_and_time(node: Any) -> None:
    worker, engine, client = node
    task = await running(worker)
    engine.write(task.ContainerID, "one\ntwo")
    engine.clock += timedelta(seconds=30)
    engine.write(task.ContainerID, "oops", "stderr")

    answer = await client.get(f"/tasks/{task.ID}/logs")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/x-ndjson"
    assert parsed(answer.text) == [
        {"Stream": "stdout", "Time": "2026-03-01T12:00:00Z", "Line": "one"},
        {"Stream": "stdout", "Time": "2026-03-01T12:00:00Z", "Line": "two"},
        {"Stream": "stderr", "Time": "2026-03-01T12:00:30Z", "Line": "oops"},
    ]

    async def lines(**query: Any) -> list[str]:
        answer = await client.get(f"/tasks/{task.ID}/logs", params=query)
        assert answer.status_code == 200, answer.text
        return [line["Line"] for line in parsed(answer.text)]

    assert await lines(stderr="false") == ["one", "two"]
    assert await lines(stdout="false") == ["oops"]
    assert await lines(tail=2) == ["two", "oops"]
    assert await lines(tail="all") == ["one", "two", "oops"]
    assert await lines(tail=0) == []
    assert await lines(since="2026-03-01T12:00:10Z") == ["oops"]
    assert await lines(since=str(engine.clock.timestamp())) == ["oops"]


async def test_follow_streams_new_lines_and_ends_when_the_container_stops(node: Any) -> None:
    worker, engine, client = node
    task = await running(worker)
    engine.write(task.ContainerID, "before")
    async with client.stream("GET", f"/tasks/{task.ID}/logs", params={"follow": True}) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        assert json.loads(await anext(lines))["Line"] == "before"
        engine.write(task.ContainerID, "after", "stderr")
        assert json.loads(await anext(lines)) | {"Time": ""} == {
            "Stream": "stderr",
            "Time": "",
            "Line": "after",
        }
        engine.exit(task.ContainerID, 0)
        async with asyncio.timeout(DEADLINE):  # a safety net for a broken build, not a measure
            rest = [line async for line in lines]
    assert rest == []  # the stream ended with the container
    assert engine.readers[-1].closed


async def test_a_reader_that_goes_away_closes_the_engines_stream(node: Any) -> None:
    worker, engine, client = node
    task = await running(worker)
    engine.write(task.ContainerID, "hello")
    async with client.stream("GET", f"/tasks/{task.ID}/logs", params={"follow": True}) as r:
        assert json.loads(await anext(r.aiter_lines()))["Line"] == "hello"
        reader = engine.readers[-1]
        assert not reader.closed
    await eventually(lambda: reader.closed, what="the engine's stream closed")
    assert worker.get(task.ID).State is State.RUNNING  # the task itself goes on


async def test_a_slow_reader_holds_the_worker_to_a_bounded_number_of_lines(node: Any) -> None:
    worker, engine, client = node
    task = await running(worker)
    engine.write(task.ContainerID, "\n".join(f"line {i}" for i in range(5000)))
    async with client.stream("GET", f"/tasks/{task.ID}/logs", params={"follow": True}) as r:
        reader = await eventually(lambda: engine.readers and engine.readers[-1], what="reading")
        await eventually(lambda: reader.handed > 0, what="the first lines")
        for _ in range(2000):  # all the time in the world, for a worker that did not wait
            await asyncio.sleep(0)
        held = reader.handed
        assert held < 100, f"the worker read {held} lines ahead of a reader that reads none"
        lines = r.aiter_lines()
        got = [json.loads(await anext(lines))["Line"] for _ in range(5000)]
    assert got == [f"line {i}" for i in range(5000)]


async def test_a_quiet_follow_sends_heartbeats(node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "HEARTBEAT", 0.01)
    worker, _, client = node
    task = await running(worker)
    async with client.stream("GET", f"/tasks/{task.ID}/logs", params={"follow": True}) as r:
        async for line in r.aiter_lines():
            assert line == ""  # a heartbeat: the container wrote nothing
            break


async def test_a_stopping_worker_ends_its_follows() -> None:
    """uvicorn waits for open answers before it stops: a follow must end at once."""
    engine = Engine()
    worker = Worker("w1", MemoryStore(), engine, reconcile_interval=3600)
    app = create_app(worker, StatsSampler(interval=3600, task_count=worker.running_count))
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://w1") as client,
    ):
        task = await running(worker)
        engine.write(task.ContainerID, "hello")
        async with client.stream("GET", f"/tasks/{task.ID}/logs", params={"follow": True}) as r:
            lines = r.aiter_lines()
            assert json.loads(await anext(lines))["Line"] == "hello"
            for on_exit in app.state.on_exit:  # what a SIGTERM calls
                on_exit()
            async with asyncio.timeout(DEADLINE):
                assert [line async for line in lines] == []
        assert engine.readers[-1].closed
        assert worker.get(task.ID).State is State.RUNNING  # the task is not the server


async def test_a_finished_task_keeps_its_logs_until_newer_ones_push_them_out(node: Any) -> None:
    worker, engine, client = node
    tasks = [await running(worker) for _ in range(3)]
    for number, task in enumerate(tasks):
        engine.write(task.ContainerID, f"run {number}")
        engine.exit(task.ContainerID, number)  # 0 Completed, then Failed
        await eventually(lambda t=task: worker.get(t.ID).State is not State.RUNNING, "exited")
    assert worker.get(tasks[0].ID).State is State.COMPLETED
    assert worker.get(tasks[1].ID).State is State.FAILED
    for number, task in enumerate(tasks[1:], 1):
        answer = await client.get(f"/tasks/{task.ID}/logs")
        assert [line["Line"] for line in parsed(answer.text)] == [f"run {number}"]
    gone = await client.get(f"/tasks/{tasks[0].ID}/logs")  # the worker keeps the last 2
    assert gone.status_code == 410
    assert "keeps the last 2 of its exited containers" in gone.json()["Message"]
    assert [c.id for c in engine.containers] == [t.ContainerID for t in tasks[1:]]


async def test_no_logs_says_why(node: Any) -> None:
    worker, engine, client = node
    unknown = await client.get(f"/tasks/{uuid.uuid4()}/logs")
    assert unknown.status_code == 404 and "not found" in unknown.json()["Message"]
    bad = await client.get("/tasks/nope/logs")
    assert bad.status_code == 400 and "UUID" in bad.json()["Message"]

    engine.held.clear()
    waiting = Task(Image="cube/busybox")
    worker.submit(TaskEvent(Task=waiting))
    early = await client.get(f"/tasks/{waiting.ID}/logs")
    assert early.status_code == 409 and "has not started" in early.json()["Message"]
    engine.held.set()

    stopped = await running(worker)
    worker.stop(stopped.ID)
    await eventually(lambda: worker.get(stopped.ID).State is State.COMPLETED, "stopped")
    answer = await client.get(f"/tasks/{stopped.ID}/logs")
    assert answer.status_code == 410
    assert "removed when the task was stopped" in answer.json()["Message"]

    vanished = await running(worker)
    await engine.remove(vanished.ContainerID)  # behind the worker's back (docker rm -f)
    answer = await client.get(f"/tasks/{vanished.ID}/logs")
    assert answer.status_code == 410
    assert f"its container {vanished.ContainerID[:12]} is not on worker w1" in answer.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"tail": "ten"}, "tail: expected a number of lines or 'all'"),
        ({"tail": "-1"}, "tail: expected"),
        ({"since": "yesterday"}, "since: expected a time (RFC 3339), Unix seconds or a duration"),
        ({"stdout": "false", "stderr": "false"}, "nothing to show"),
        ({"follow": "maybe"}, "follow"),
    ],
)
async def test_a_bad_query_is_a_400(node: Any, query: dict[str, str], message: str) -> None:
    worker, _, client = node
    task = await running(worker)
    answer = await client.get(f"/tasks/{task.ID}/logs", params=query)
    assert answer.status_code == 400
    assert message in answer.json()["Message"]


def test_since_takes_times_seconds_and_durations() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert wire.parse_since("10m", now) == now - timedelta(minutes=10)
    assert wire.parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert wire.parse_since("2d", now) == now - timedelta(days=2)
    assert wire.parse_since("2026-03-01T11:00:00+01:00") == now - timedelta(hours=2)
    assert wire.parse_since("0") == datetime.fromtimestamp(0, UTC)
    for bad in ("", "10 m", "m10", "-5", "1h-3m", "tomorrow"):
        with pytest.raises(ValueError, match="since"):
            wire.parse_since(bad, now)


# --- through the manager ----------------------------------------------------------------


@pytest.fixture
async def managed() -> AsyncIterator[tuple[Cluster, httpx.AsyncClient]]:
    async with cluster(2) as c:
        await c.start_manager(MemoryBackend())
        transport = InProcessTransport(manager_app(c.m))
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            yield c, client


async def placed(c: Cluster, **task: Any) -> Task:
    (submitted,) = await c.m.submit_many([sleeper(**task)])
    return await c.until(
        lambda: (t := c.task(submitted.ID)).State is State.RUNNING and t, what="Running"
    )


def engine_of(c: Cluster, task: Task) -> SimulatedRuntime:
    return next(n.runtime for n in c.nodes if n.name == task.Node)


async def test_the_manager_relays_the_workers_stream(managed: Any) -> None:
    c, client = managed
    task = await placed(c)
    engine = engine_of(c, task)
    engine.write(task.ContainerID, "hello from the task")
    answer = await client.get(f"/tasks/{task.ID}/logs")
    assert answer.status_code == 200
    assert [(line["Stream"], line["Line"]) for line in parsed(answer.text)] == [
        ("stdout", "hello from the task")
    ]
    async with client.stream("GET", f"/tasks/{task.ID}/logs", params={"follow": True}) as r:
        lines = r.aiter_lines()
        assert json.loads(await anext(lines))["Line"] == "hello from the task"
        engine.write(task.ContainerID, "written while followed")
        assert json.loads(await anext(lines))["Line"] == "written while followed"
        engine.exit(task.ContainerID, 0)
        async with asyncio.timeout(DEADLINE):
            assert [line async for line in lines] == []


async def test_a_manager_reader_that_goes_away_ends_the_read_on_the_worker(
    managed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers: list[Counted] = []
    plain = SimulatedRuntime.logs

    async def counted(self: SimulatedRuntime, cid: str, options: LogOptions) -> LogStream:
        readers.append(Counted(await plain(self, cid, options)))
        return readers[-1]

    monkeypatch.setattr(SimulatedRuntime, "logs", counted)
    c, client = managed
    task = await placed(c)
    engine_of(c, task).write(task.ContainerID, "hello")
    async with client.stream("GET", f"/tasks/{task.ID}/logs", params={"follow": True}) as r:
        assert json.loads(await anext(r.aiter_lines()))["Line"] == "hello"
        assert len(readers) == 1 and not readers[0].closed
    await eventually(lambda: readers[0].closed, what="the worker's engine stream closed")


async def test_a_stopping_manager_ends_its_relays() -> None:
    async with cluster(1) as c:
        m = Manager(
            [c.nodes[0].name], Epvm(), MemoryBackend(), SETTINGS, clock=c.clock, connect=c.connect
        )
        app = manager_app(m)
        async with (
            lifespan(app),
            httpx.AsyncClient(transport=InProcessTransport(app), base_url="http://m") as client,
        ):
            c.manager = m
            try:
                await c.until(lambda: m.state.ready, what="the worker ready")
                task = await placed(c)
                engine_of(c, task).write(task.ContainerID, "hello")
                query = {"follow": True}
                async with client.stream("GET", f"/tasks/{task.ID}/logs", params=query) as r:
                    lines = r.aiter_lines()
                    assert json.loads(await anext(lines))["Line"] == "hello"
                    for on_exit in app.state.on_exit:  # what a SIGTERM calls
                        on_exit()
                    async with asyncio.timeout(DEADLINE):
                        assert [line async for line in lines] == []
            finally:
                c.manager = None  # the app's lifespan closes it


async def test_the_manager_says_why_there_are_no_logs(managed: Any) -> None:
    c, client = managed
    huge = await c.m.submit_many([sleeper(Memory=2**50)])
    answer = await client.get(f"/tasks/{huge[0].ID}/logs")
    assert answer.status_code == 409
    assert "it is Pending" in answer.json()["Message"]

    unknown = await client.get(f"/tasks/{uuid.uuid4()}/logs")
    assert unknown.status_code == 404

    bad = await client.get(f"/tasks/{huge[0].ID}/logs", params={"tail": "x"})
    assert bad.status_code == 400 and "tail" in bad.json()["Message"]

    task = await placed(c, RestartPolicy="no")
    await engine_of(c, task).remove(task.ContainerID)
    gone = await client.get(f"/tasks/{task.ID}/logs")
    assert gone.status_code == 410
    assert gone.json()["Message"].startswith(f"worker {task.Node}: the logs of task {task.ID}")


async def test_a_worker_out_of_reach_is_a_503(managed: Any) -> None:
    c, client = managed
    task = await placed(c, RestartPolicy="no")
    node = next(n for n in c.nodes if n.name == task.Node)
    node.link.cut()
    answer = await client.get(f"/tasks/{task.ID}/logs")
    assert answer.status_code == 503
    assert f"cannot read the logs from worker {task.Node}" in answer.json()["Message"]
    await c.until(lambda: task.Node in c.m.state.lost, what="the worker lost")
    assert c.task(task.ID).State is State.FAILED  # RestartPolicy "no": not moved
    answer = await client.get(f"/tasks/{task.ID}/logs")
    assert answer.status_code == 503
    assert f"worker {task.Node}, which is down" in answer.json()["Message"]


async def test_a_stream_that_breaks_half_way_ends_with_an_error_line(managed: Any) -> None:
    c, client = managed
    task = await placed(c)
    node = next(n for n in c.nodes if n.name == task.Node)
    node.runtime.write(task.ContainerID, "first")
    async with client.stream("GET", f"/tasks/{task.ID}/logs", params={"follow": True}) as r:
        lines = r.aiter_lines()
        assert json.loads(await anext(lines))["Line"] == "first"
        node.link.cut()
        rest = [json.loads(line) async for line in lines if line.strip()]
    assert len(rest) == 1 and "the log stream from worker" in rest[0]["Error"]


async def test_a_simulated_log_keeps_its_newest_lines() -> None:
    from cube.runtime.simulated import MAX_LOG_LINES

    engine = SimulatedRuntime()
    info = await engine.start(ContainerSpec(name="chatty", image="busybox"))
    engine.write(info.id, "first")
    early = await engine.logs(info.id, LogOptions(follow=True))  # before the rotation
    engine.write(info.id, "\n".join(str(i) for i in range(MAX_LOG_LINES)))
    kept = [line.text async for line in await engine.logs(info.id, LogOptions())]
    assert kept == [str(i) for i in range(MAX_LOG_LINES // 2, MAX_LOG_LINES)]
    assert (await anext(early)).text == str(MAX_LOG_LINES // 2)  # what is left, in order
    await early.aclose()


async def test_the_openapi_documents_say_what_the_log_routes_answer(
    node: Any, managed: Any
) -> None:
    _, _, worker_api = node
    _, manager_api = managed
    for api, codes in (
        (worker_api, {"404", "409", "410", "503"}),
        (manager_api, {"404", "409", "410", "502", "503"}),
    ):
        doc = (await api.get("/openapi.json")).json()
        route = doc["paths"]["/tasks/{task_id}/logs"]["get"]
        assert set(route["responses"]) >= {"200", "400"} | codes
        line = route["responses"]["200"]["content"]["application/x-ndjson"]["schema"]
        model = line["$ref"].removeprefix("#/components/schemas/")
        assert set(doc["components"]["schemas"][model]["properties"]) == {
            "Stream",
            "Time",
            "Line",
            "Error",
        }
        assert [p["name"] for p in route["parameters"] if p["in"] != "header"] == [
            "task_id",
            "follow",
            "tail",
            "since",
            "stdout",
            "stderr",
        ]
        # A worker's is fenced (cube.worker.fencing): the leader's term, if it sends one.
        headers = [p["name"] for p in route["parameters"] if p["in"] == "header"]
        assert headers == (["X-Cube-Term"] if api is worker_api else [])
