"""Several managers given to the CLI and to workers: whichever answers is used, a
request goes on to the next only when sending it again is safe, and streams resume
where they were. Managers here are httpx MockTransports keyed by port."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cube.cli import main
from cube.clock import ManualClock
from cube.manager.client import ManagerClient, ManagerUnreachable
from cube.worker.join import Joiner
from tests.support import eventually

DOWN, UP = "127.0.0.1:1", "127.0.0.1:2"
BOTH = f"{DOWN},{UP}"
Handler = Callable[[httpx.Request], httpx.Response]


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def no_leader(_: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"HTTPStatusCode": 503, "Message": "no leader"})


class Managers:
    """Managers by port: what each does with a request, and what each was sent."""

    def __init__(self, **by_port: Handler) -> None:
        self.by_port = {int(port.removeprefix("p")): h for port, h in by_port.items()}
        self.sent: list[tuple[int, str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or 0
        self.sent.append((port, request.method, request.url.path))
        return self.by_port[port](request)

    def ports(self) -> list[int]:
        return [port for port, _, _ in self.sent]

    def client(self, address: str = BOTH) -> ManagerClient:
        return ManagerClient(address, transport=httpx.MockTransport(self))


def tasks_ok(request: httpx.Request) -> httpx.Response:
    if request.method == "POST":
        return httpx.Response(201, json=json.loads(request.content)["Task"])
    return httpx.Response(200, json=[])


def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], m: Managers, *args: str
) -> tuple[int, str, str]:
    """`cube ARGS` as main() runs it, its ManagerClient talking to ``m``."""
    from cube.cli import tasks

    transport = httpx.MockTransport(m)
    monkeypatch.setattr(
        tasks, "ManagerClient", functools.partial(ManagerClient, transport=transport)
    )
    monkeypatch.setattr(sys, "argv", ["cube", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_uses_the_manager_that_answers_and_sticks_to_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    m = Managers(p1=refused, p2=tasks_ok)
    code, out, err = cli(monkeypatch, capsys, m, "status", "-m", BOTH, "-o", "json")
    assert (code, out.strip(), err) == (0, "[]", "")
    assert m.ports() == [1, 2]
    task = tmp_path / "t.json"
    task.write_text(json.dumps({"Name": "t", "Image": "cube/busybox"}))
    code, out, err = cli(monkeypatch, capsys, m, "run", "-f", str(task), "-m", BOTH)
    assert code == 0, err
    assert "submitted to http://127.0.0.1:2" in out  # a refused POST goes on
    with m.client() as client:
        m.sent.clear()
        client.tasks()
        client.tasks()
        client.stop("f0e1d2c3-0000-4000-8000-000000000000")
    assert m.ports() == [1, 2, 2, 2]  # the first call finds it, later ones stick


def test_a_get_answered_503_goes_to_the_next_manager() -> None:
    m = Managers(p1=no_leader, p2=tasks_ok)
    with m.client() as client:
        assert client.tasks() == []
        assert client.url == "http://127.0.0.1:2"
        assert client.tasks() == []
    assert m.ports() == [1, 2, 2]


def test_a_post_that_may_have_arrived_is_not_sent_again() -> None:
    """A drain timed out waiting for its answer: the manager may have done it. A task
    submission is different: posting the same task twice is acknowledged, not doubled."""

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    m = Managers(p1=slow, p2=tasks_ok)
    with m.client() as client, pytest.raises(ManagerUnreachable) as caught:
        client.drain("w1")
    assert m.sent == [(1, "POST", "/nodes/w1/drain")]
    assert str(caught.value) == (
        "no manager answered: http://127.0.0.1:1 (timed out); not sent to another "
        "manager, as it may have been carried out"
    )
    m.sent.clear()
    with m.client() as client:
        task = client.submit({"Task": {"ID": "f0e1d2c3-0000-4000-8000-000000000000", "Image": "x"}})
    assert str(task.ID).startswith("f0e1d2c3")
    assert m.sent == [(1, "POST", "/tasks"), (2, "POST", "/tasks")]
    m.sent.clear()
    m.by_port[1] = no_leader  # a 503 to a drain: may have been forwarded, not resent
    with m.client() as client, pytest.raises(ManagerUnreachable, match="HTTP 503: no leader"):
        client.drain("w1")
    assert m.ports() == [1]


def test_while_no_manager_leads_a_read_goes_round_again_until_one_does() -> None:
    """A leader died: the others say 503 until its lease runs out and one of them
    leads. The client goes round the list again, pausing longer each time, within
    CUBE_FAILOVER_WAIT; then the user sees the error."""
    rounds = {"left": 2}

    def electing(request: httpx.Request) -> httpx.Response:
        if rounds["left"]:
            return no_leader(request)
        return tasks_ok(request)

    def next_round(_: httpx.Request) -> httpx.Response:
        rounds["left"] -= 1
        return no_leader(_)

    m = Managers(p1=refused, p2=electing, p3=next_round)
    slept: list[float] = []
    with m.client(f"{BOTH},127.0.0.1:3") as client:
        client._endpoints._sleep = slept.append
        assert client.tasks() == []
    assert slept == [0.2, 0.4]
    assert m.ports() == [1, 2, 3, 1, 2, 3, 1, 2]

    now = [0.0]
    m = Managers(p1=no_leader, p2=refused)
    with m.client() as client:
        client._endpoints.wait = 1.0
        client._endpoints._monotonic = lambda: now[0]
        client._endpoints._sleep = lambda s: now.__setitem__(0, now[0] + s)
        with pytest.raises(ManagerUnreachable, match="HTTP 503: no leader"):
            client.tasks()
    assert now == [0.2 + 0.4]  # 0.8 more would pass the wait: the error, not a third pause


def test_with_every_manager_down_the_cli_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUBE_FAILOVER_WAIT", "0")  # no election to wait out here
    m = Managers(p1=refused, p2=no_leader, p3=refused)
    code, out, err = cli(monkeypatch, capsys, m, "status", "-m", f"{BOTH},127.0.0.1:3")
    assert (code, out) == (1, "")
    assert err == (
        "cube: no manager answered: http://127.0.0.1:1 (connection refused), "
        "http://127.0.0.1:2 (HTTP 503: no leader), http://127.0.0.1:3 (connection refused)\n"
    )


class Broken(httpx.SyncByteStream):
    """A body that sends ``lines`` and then loses its connection."""

    def __init__(self, lines: list[dict[str, object]]) -> None:
        self.lines = lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self.lines:
            yield json.dumps(line).encode() + b"\n"
        raise httpx.ReadError("connection reset by peer")


def event(index: int) -> dict[str, object]:
    return {
        "Index": index,
        "Topic": "Node",
        "Type": "NodeRegistered",
        "Key": "w1",
        "Time": "2026-01-01T00:00:00Z",
        "Payload": {},
    }


def test_an_event_stream_resumes_at_the_next_manager_after_the_last_index() -> None:
    asked: list[str | None] = []

    def first(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("index"))
        return httpx.Response(200, stream=Broken([event(7), {}, event(8)]))

    def second(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("index")
        asked.append(after)
        return httpx.Response(200, stream=Broken([e for e in [event(9)] if int(after) < 9]))

    m = Managers(p1=first, p2=second)
    with m.client() as client:
        seen = client.stream(index=6)
        got = [e.Index if e else None for e in (next(seen), next(seen), next(seen), next(seen))]
        assert got == [7, None, 8, 9]
        # The second goes too: the first (refusing now) is tried, then the second again
        # (where the stream breaks before a line), then it is an error naming both.
        m.by_port[1] = refused
        with pytest.raises(ManagerUnreachable) as caught:
            next(seen)
    assert str(caught.value) == (
        "no manager answered: http://127.0.0.1:1 (connection refused), "
        "http://127.0.0.1:2 (connection reset by peer)"
    )
    assert asked == ["6", "8", "9"]


def test_a_log_stream_resumes_at_the_next_manager_without_repeating_lines() -> None:
    def line(second: int, text: str) -> dict[str, object]:
        return {"Stream": "stdout", "Line": text, "Time": f"2026-01-01T00:00:0{second}Z"}

    since: list[str | None] = []

    def first(request: httpx.Request) -> httpx.Response:
        since.append(request.url.params.get("since"))
        return httpx.Response(200, stream=Broken([line(1, "a"), line(2, "b")]))

    def second(request: httpx.Request) -> httpx.Response:
        since.append(request.url.params.get("since"))
        lines = [line(2, "b"), line(2, "c"), line(3, "d")]
        return httpx.Response(200, content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))

    m = Managers(p1=first, p2=second)
    with m.client() as client:
        texts = [ln.text for ln in client.logs("t1", {"follow": True, "tail": 5})]
    assert texts == ["a", "b", "c", "d"]
    assert since == [None, "2026-01-01T00:00:02Z"]


def test_a_log_streams_lines_out_of_time_order_are_all_shown() -> None:
    """Docker merges stdout and stderr from two pipes: a stderr line may come after a
    later stdout line. Nothing is skipped but what a resumed stream replays (CI once
    lost `echo to stderr >&2` between two stdout lines)."""

    def line(stream: str, second: int, text: str) -> dict[str, object]:
        return {"Stream": stream, "Line": text, "Time": f"2026-01-01T00:00:0{second}Z"}

    lines = [line("stdout", 1, "hello"), line("stdout", 3, "three"), line("stderr", 2, "err")]

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))

    with Managers(p1=answer).client("127.0.0.1:1") as client:
        assert [ln.text for ln in client.logs("t1", {"tail": 5})] == ["hello", "three", "err"]


# --- workers -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_worker_fails_over_on_heartbeat_and_rejoins_where_it_is_unknown() -> None:
    known: dict[int, bool] = {1: False, 2: False}
    down: set[int] = set()
    sent: list[tuple[int, str]] = []

    async def manager(request: httpx.Request) -> httpx.Response:
        port = request.url.port or 0
        what = request.url.path.rsplit("/", 1)[-1]
        sent.append((port, what))
        if port in down:
            raise httpx.ConnectError("connection refused", request=request)
        if what == "register":
            known[port] = True
            return httpx.Response(201, json={"HeartbeatInterval": 1})
        if not known[port]:
            return httpx.Response(404, json={"Message": "unknown node"})
        return httpx.Response(200, json={"HeartbeatInterval": 1})

    clock = ManualClock()
    joiner = Joiner(
        BOTH, "tok", {"Name": "w1"}, clock=clock, transport=httpx.MockTransport(manager)
    )
    assert await joiner.register()
    assert sent == [(1, "register")]
    beats = asyncio.create_task(joiner.run())
    try:

        async def after_tick(count: int) -> None:
            await clock.advance(1)
            await eventually(lambda: len(sent) >= count or None, what=f"{count} calls")

        await eventually(lambda: len(sent) >= 2 or None)  # the first beat, at once
        down.add(1)
        await after_tick(5)
        # The first is down: the second answers 404 (it never saw w1): w1 joins there.
        assert sent[1:5] == [(1, "heartbeat"), (1, "heartbeat"), (2, "heartbeat"), (2, "register")]
        await after_tick(6)
        assert sent[5] == (2, "heartbeat")  # and stays there
        assert joiner.base == "http://127.0.0.1:2"
    finally:
        beats.cancel()
