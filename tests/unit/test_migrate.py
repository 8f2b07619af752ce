"""`cube migrate`: a manager's SQLite file copied into a real etcd that keeps etcd's
default limits (128 operations, 1.5 MiB a transaction), read back by EtcdBackend as a
manager started on it would; a prefix that holds anything refused; bad arguments
refused in one line."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aetcd
import pytest

from cube.events import Draft, Event
from cube.job import Job, JobRecord, TaskTemplate
from cube.manager.auth import TokenRecord
from cube.manager.backend import Change, SqliteBackend
from cube.manager.etcd_backend import EtcdBackend, _Connection, parse_url
from cube.manager.migrate import Limits, MigrateError, Writer, copy, open_sqlite
from cube.node import NodeRecord
from cube.task import State, Task, TaskEvent
from tests.support import ETCD, EtcdProcess, cube, free_port, ok, one_line_error

TASKS = 150  # with their histories, far past 128 keys and 1.5 MiB
NODES = 300
BULK = "PAD=" + "x" * 8000  # each task's Env: 150 tasks, each stored 3 times, ~3.6 MB in all


@pytest.fixture(scope="module")
def etcd_defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """An etcd with its own default limits, as an operator's may be."""
    if not ETCD.exists():
        pytest.skip(f"{ETCD} is missing: scripts/setup.sh installs Debian's etcd-server")
    server = EtcdProcess(tmp_path_factory.mktemp("etcd"), raised=False).start()
    try:
        yield server
    finally:
        server.stop()


def url(server: EtcdProcess) -> str:
    return server.url(f"m-{uuid.uuid4().hex[:8]}")


async def manager_db(path: Path) -> dict[str, Any]:
    """A manager's database with some of everything; what it holds, to compare."""
    backend = SqliteBackend(path)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    index = 0
    for n in range(TASKS):
        task = Task(Image="cube/busybox:latest", Env=[f"N={n}", BULK])
        placed = task.model_copy(update={"State": State.SCHEDULED, "Node": "w1"})
        stopped = placed.model_copy(update={"DesiredState": State.COMPLETED})
        steps = [(None, task), (task, placed)] + ([(placed, stopped)] if n % 3 == 0 else [])
        for before, after in steps:
            index += 1
            log = Event.of(index, at, Draft.of("Task", "TaskUpdated", str(after.ID), after))
            # Two TaskEvents in one commit: their order within it must survive too.
            changes = [TaskEvent(State=after.State, Task=after), TaskEvent(Task=after)]
            await backend.commit([Change(before, after)], changes, [log])
    v1 = Job(Name="web", Count=2, Task=TaskTemplate(Image="a"), Version=1)
    v2 = v1.model_copy(update={"Version": 2, "Count": 3})
    await backend.save_job(JobRecord(Job=v2, Versions=[v2, v1]))
    # Many small keys: past 128 operations long before 1.5 MiB.
    await backend.save_nodes([NodeRecord(Name=f"w{n}", Api=f"http://w{n}") for n in range(NODES)])
    await backend.save_token(TokenRecord(ID="t1", Name="ci", Hash="ab"))
    held = {
        "tasks": {t.ID: t for t in backend.load()},
        "history": {t.ID: await backend.history(t.ID) for t in backend.load()},
        "events": backend.stream.after(0, 10_000),
        "jobs": backend.load_jobs(),
        "nodes": backend.load_nodes(),
        "tokens": backend.load_tokens(),
    }
    backend.close()
    return held


@pytest.mark.anyio
async def test_everything_comes_back_from_etcd_through_its_default_limits(
    tmp_path: Path, etcd_defaults: EtcdProcess
) -> None:
    held = await manager_db(tmp_path / "manager.db")
    target = url(etcd_defaults)
    where = parse_url(target)
    conn = _Connection(where.endpoints)
    with open_sqlite(f"sqlite:{tmp_path}") as source:
        copied = await copy(source, conn, where.prefix)
    await conn.aclose()
    assert (copied.tasks, copied.jobs, copied.nodes, copied.tokens) == (TASKS, 1, NODES, 1)
    assert copied.history == sum(map(len, held["history"].values()))
    assert copied.events == len(held["events"]) and copied.indexes == (1, len(held["events"]))
    assert copied.transactions > copied.history // 128

    again = await EtcdBackend.open(target)
    try:
        assert {t.ID: t for t in again.load()} == held["tasks"]
        for task_id, history in held["history"].items():
            assert await again.history(task_id) == history
        assert again.stream.after(0, 10_000) == held["events"]
        assert again.stream.last_index() == len(held["events"])  # numbered on from there
        assert again.load_jobs() == held["jobs"]
        assert [v.Version for v in again.load_jobs()[0].Versions] == [2, 1]
        by_name = sorted(held["nodes"], key=lambda n: n.Name)  # etcd lists them by key
        assert sorted(again.load_nodes(), key=lambda n: n.Name) == by_name
        assert again.load_tokens() == held["tokens"]
    finally:
        await again.aclose()


class Recorder:
    """A connection that keeps each transaction's size instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, int]] = []  # compares, puts, bytes

    async def call(self, fn: Any) -> Any:
        return await fn(self)

    async def transaction(self, compares: list[Any], puts: list[Any], _: Any) -> Any:
        size = sum(len(p.key) + len(p.value) for p in puts)
        self.sent.append((len(compares), len(puts), size))
        return True, []


@pytest.mark.anyio
async def test_batches_stay_under_both_limits_and_a_large_value_goes_alone() -> None:
    recorder = Recorder()
    writer = Writer(recorder, Limits(ops=128, bytes=10_000))  # type: ignore[arg-type]
    for n in range(300):
        await writer.put(f"/cube/k/{n}".encode(), b"v")
    await writer.put(b"/cube/big", b"x" * 20_000)
    for n in range(50):
        await writer.put(f"/cube/m/{n}".encode(), b"y" * 500)
    await writer.flush()
    assert [c for c, _, _ in recorder.sent] == [p for _, p, _ in recorder.sent]
    assert all(puts <= 128 for _, puts, _ in recorder.sent)
    assert sum(puts for _, puts, _ in recorder.sent) == 351
    assert (1, 1, len(b"/cube/big") + 20_000) in recorder.sent
    assert all(size <= 10_000 for _, puts, size in recorder.sent if puts > 1)
    assert writer.transactions == len(recorder.sent)


@pytest.mark.anyio
async def test_a_prefix_that_holds_anything_is_refused_unless_forced(
    tmp_path: Path, etcd_defaults: EtcdProcess
) -> None:
    source = SqliteBackend(tmp_path / "manager.db")
    await source.save_token(TokenRecord(ID="t1", Hash="ab"))
    target = url(etcd_defaults)
    prefix = parse_url(target).prefix
    conn = _Connection(parse_url(target).endpoints)
    client = await conn.client()
    await client.put(f"{prefix}leader".encode(), b"someone")
    try:
        with pytest.raises(MigrateError, match=r"already holds 1 keys .* --force replaces"):
            await copy(source, conn, prefix)
        assert [kv.key for kv in await client.get_prefix(prefix.encode())] == [
            f"{prefix}leader".encode()
        ]  # nothing written
        copied = await copy(source, conn, prefix, force=True)
        assert (copied.replaced, copied.tokens) == (1, 1)
        keys = [kv.key for kv in await client.get_prefix(prefix.encode())]
        assert keys == [f"{prefix}tokens/t1".encode()]
        with pytest.raises(MigrateError, match="already holds 1 keys"):  # a second run
            await copy(source, conn, prefix)
    finally:
        source.close()
        await conn.aclose()


def test_a_key_that_appears_meanwhile_stops_the_copy(etcd_defaults: EtcdProcess) -> None:
    """Each put is only if absent: a writer that got there first is not overwritten."""
    target = url(etcd_defaults)
    prefix = parse_url(target).prefix

    async def race() -> None:
        conn = _Connection(parse_url(target).endpoints)
        writer = Writer(conn)
        await writer.put(f"{prefix}tokens/t1".encode(), b"ours")
        await (await conn.client()).put(f"{prefix}tokens/t1".encode(), b"theirs")
        try:
            with pytest.raises(MigrateError, match="appeared in etcd while copying"):
                await writer.flush()
            held = await (await conn.client()).get(f"{prefix}tokens/t1".encode())
            assert held.value == b"theirs"
        finally:
            await conn.aclose()

    asyncio.run(race())


# --- the command ----------------------------------------------------------------------


def test_the_command_copies_and_says_what(tmp_path: Path, etcd_defaults: EtcdProcess) -> None:
    backend = SqliteBackend(tmp_path / "manager.db")
    task = Task(Image="a")
    asyncio.run(backend.commit([Change(None, task)], [TaskEvent(Task=task)]))
    backend.close()
    target = url(etcd_defaults)
    said = ok(cube("migrate", "--from", f"sqlite:{tmp_path}", "--to", target))
    assert said.strip() == (
        f"copied 1 tasks, 1 task events, 0 events, 0 jobs, 0 nodes, 0 tokens to {target} "
        "in 1 transactions"
    )
    again = cube("migrate", "--from", f"sqlite:{tmp_path / 'manager.db'}", "--to", target)
    assert "already holds 2 keys" in one_line_error(again)
    forced = cube("migrate", "--from", f"sqlite:{tmp_path}", "--to", target, "--force")
    assert ok(forced).strip().endswith("replacing 2 keys")


def test_the_command_explains_itself() -> None:
    said = ok(cube("migrate", "--help"))
    assert "--from" in said and "--to" in said and "--force" in said


def test_bad_arguments_get_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database, surely\n" * 100)
    foreign = sqlite3.connect(tmp_path / "other.db")
    foreign.execute("CREATE TABLE people (name TEXT)")
    foreign.commit()
    foreign.close()
    (tmp_path / "empty").mkdir()
    good = tmp_path / "good"
    SqliteBackend(good / "manager.db").close()
    down = f"etcd://127.0.0.1:{free_port()}"
    cases = [
        (("nothing:x", down), "give sqlite:PATH"),
        (("sqlite:", down), "give sqlite:PATH"),
        ((f"sqlite:{tmp_path / 'missing.db'}", down), "missing.db: no such file"),
        ((f"sqlite:{tmp_path / 'empty'}", down), "has no manager.db"),
        ((f"sqlite:{tmp_path / 'notes.txt'}", down), "is not a Cube database (file is not"),
        ((f"sqlite:{tmp_path / 'other.db'}", down), "is not a Cube database (it has no Cube"),
        ((f"sqlite:{good}", "http://127.0.0.1:2379"), "is not etcd://HOST:PORT"),
        ((f"sqlite:{good}", "etcd://h:port"), "the port must be a number"),
        ((f"sqlite:{good}", down), "no etcd endpoint answers"),
    ]
    for (source, target), said in cases:
        line = one_line_error(cube("migrate", "--from", source, "--to", target))
        assert said in line, (source, target, line)
    # A foreign SQLite file is left as it was: no Cube tables made in it.
    tables = sqlite3.connect(tmp_path / "other.db").execute("SELECT name FROM sqlite_master")
    assert [name for (name,) in tables] == ["people"]


def test_aetcd_is_what_the_recorder_stands_for() -> None:
    """The recorder reads a put's key and value as aetcd's Put keeps them."""
    put = aetcd.Transactions().put(b"k", b"v")
    assert (put.key, put.value) == (b"k", b"v")
