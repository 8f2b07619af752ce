"""Task logs end to end: real `cube` processes, real Docker, the CLI as users run it."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.support import (
    CUBE,
    ROOT,
    ManagerProcess,
    WorkerProcess,
    containers_of,
    cube,
    cube_env,
    ok,
    one_line_error,
    task_event,
    wait_for,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
RUNNING, COMPLETED = 2, 3


def submit(manager: ManagerProcess, cmd: str, **task: Any) -> str:
    body = {"Image": "cube/busybox:latest", "Cmd": ["sh", "-c", cmd], **task}
    out = ok(cube("run", "-q", "-f", "-", stdin=json.dumps(body), manager=manager))
    return out.strip()


class Follower:
    """`cube logs ... -f` running, its output read by a thread into a queue."""

    def __init__(self, manager: ManagerProcess, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CUBE, "logs", "-f", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=cube_env(manager),
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.seen: list[str] = []
        self.arrived: list[tuple[float, str]] = []  # (time.time() when read, line)
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.arrived.append((time.time(), line.rstrip("\n")))
            self.lines.put(line.rstrip("\n"))

    def arrival(self, text: str) -> tuple[float, str]:
        """When (wall clock) the first line holding ``text`` was read, and the line."""
        return next((at, line) for at, line in self.arrived if text in line)

    def has(self, text: str) -> bool:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                break
        return any(text in line for line in self.seen)

    def wait_line(self, text: str, timeout: float = 30) -> None:
        wait_for(
            lambda: self.has(text), timeout, what=f"{text!r} from cube logs -f", detail=self.output
        )

    def output(self) -> str:
        return "\n".join(self.seen)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def followers() -> Iterator[Callable[..., Follower]]:
    started: list[Follower] = []

    def start(manager: ManagerProcess, *args: str) -> Follower:
        started.append(Follower(manager, *args))
        return started[-1]

    yield start
    for follower in started:
        follower.stop()


def test_cube_logs_shows_what_a_finished_task_printed(
    workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([workers()])
    task_id = submit(manager, "echo hello from cube; echo to stderr >&2; echo line three")
    manager.wait_task(task_id, lambda t: t["State"] == COMPLETED, what="Completed")

    result = cube("logs", task_id[:8], manager=manager)
    assert ok(result).splitlines() == ["hello from cube", "line three"]
    assert result.stderr.splitlines() == ["to stderr"]

    assert ok(cube("logs", task_id, "--stderr", manager=manager)) == ""
    stamped = ok(cube("logs", task_id, "-t", "--stdout", manager=manager)).splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["hello from cube", "line three"]
    assert all(line[:4].isdigit() and line.split(" ")[0].endswith("Z") for line in stamped)

    # The API says the same, as NDJSON with each line's stream and time.
    answer = httpx.get(f"{manager.url}/tasks/{task_id}/logs", timeout=10)
    assert answer.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert sorted((line["Stream"], line["Line"]) for line in lines) == [
        ("stderr", "to stderr"),
        ("stdout", "hello from cube"),
        ("stdout", "line three"),
    ]
    assert all(line["Time"].endswith("Z") for line in lines)
    # --tail counts lines of both streams, as Docker does, before --stdout picks: the
    # last line is stdout's unless Docker read the stderr pipe last (its order between
    # the two streams is when it read each, not when the task wrote).
    last = lines[-1]
    wanted = f"{last['Line']}\n" if last["Stream"] == "stdout" else ""
    assert ok(cube("logs", task_id, "--stdout", "--tail", "1", manager=manager)) == wanted


def test_follow_shows_a_line_printed_after_it_started(
    workers: StartWorker, managers: StartManager, followers: Callable[..., Follower]
) -> None:
    manager = managers([workers("--stop-timeout", "1")])
    # The task prints a line once the test creates /tmp/go in its container.
    task_id = submit(
        manager,
        "echo started; until [ -e /tmp/go ]; do sleep 0.1; done; echo the line after; "
        "exec sleep 3600",
    )
    task = manager.wait_task(task_id, lambda t: t["State"] == RUNNING, what="Running")
    follower = followers(manager, task_id[:8], "-t")  # each line after the time it was written
    follower.wait_line("started")
    assert not follower.has("the line after")
    subprocess.run(
        ["docker", "exec", task["ContainerID"], "touch", "/tmp/go"], check=True, timeout=30
    )
    follower.wait_line("the line after")
    # Streamed within a second: from the engine's time of the line (the task wrote it)
    # to `cube logs -f` printing it, through the worker and the manager.
    shown, line = follower.arrival("the line after")
    written = datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()
    assert shown - written < 1.0, (line, shown - written)

    # The follow ends by itself once the task's container is gone.
    ok(cube("stop", task_id, manager=manager))
    wait_for(lambda: follower.proc.poll() is not None, 30, what="cube logs -f to end")
    assert follower.proc.returncode == 0, follower.proc.stderr


def test_a_jobs_log_merges_every_replica(
    workers: StartWorker, managers: StartManager, followers: Callable[..., Follower]
) -> None:
    manager = managers([workers("--stop-timeout", "1"), workers("--stop-timeout", "1")])
    name = f"echo-{uuid.uuid4().hex[:6]}"
    job = {
        "Name": name,
        "Count": 3,
        "Task": {
            "Image": "cube/busybox:latest",
            "Cmd": ["sh", "-c", "echo replica $HOSTNAME says hi; echo bye; exec sleep 3600"],
        },
    }
    ok(cube("job", "run", "--detach", "-f", "-", stdin=json.dumps(job), manager=manager))

    def replicas() -> list[dict[str, Any]]:
        tasks = httpx.get(f"{manager.url}/tasks", params={"job": name}, timeout=5).json()
        running = [t for t in tasks if t["State"] == RUNNING]
        return running if len(running) == 3 else []

    ids = [t["ID"] for t in wait_for(replicas, 60, what="3 replicas running")]
    merged = ok(cube("logs", name, manager=manager)).splitlines()
    assert sorted(line.split(" | ")[0] for line in merged) == sorted(2 * [i[:8] for i in ids])
    for task_id in ids:
        assert f"{task_id[:8]} | replica " in "\n".join(merged)
        assert f"{task_id[:8]} | bye" in merged

    follower = followers(manager, name, "--tail", "1")
    for task_id in ids:
        follower.wait_line(f"{task_id[:8]} | bye")
    assert not follower.has(" | replica ")  # --tail 1: the last line of each
    ok(cube("job", "scale", name, "4", manager=manager))  # a replica that starts later shows up too
    fourth = wait_for(
        lambda: [t["ID"] for t in replicas_of(manager, name) if t["ID"] not in ids],
        60,
        what="a 4th replica",
    )[0]
    follower.wait_line(f"{fourth[:8]} | replica ")  # from its first line: it started later
    ok(cube("job", "stop", name, manager=manager))


def replicas_of(manager: ManagerProcess, name: str) -> list[dict[str, Any]]:
    tasks = httpx.get(f"{manager.url}/tasks", params={"job": name}, timeout=5).json()
    return [t for t in tasks if t["State"] == RUNNING]


def test_logs_of_a_task_whose_container_is_gone_say_so(
    workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([workers("--stop-timeout", "1")])
    task_id = submit(manager, "echo bye; exec sleep 3600")
    manager.wait_task(task_id, lambda t: t["State"] == RUNNING, what="Running")
    wait_for(lambda: "bye" in ok(cube("logs", task_id, manager=manager)), what="its line")
    ok(cube("stop", task_id, manager=manager))
    manager.wait_task(task_id, lambda t: t["State"] == COMPLETED, what="stopped")

    line = one_line_error(cube("logs", task_id, manager=manager))
    assert f"the logs of task {task_id} are gone" in line
    assert "removed when the task was stopped" in line
    answer = httpx.get(f"{manager.url}/tasks/{task_id}/logs", timeout=10)
    assert answer.status_code == 410 and "are gone" in answer.json()["Message"]

    unknown = one_line_error(cube("logs", "ffffffff", manager=manager))
    assert "no task with an ID starting with 'ffffffff'" in unknown
    bad = one_line_error(cube("logs", task_id, "--since", "last tuesday", manager=manager))
    assert "since: expected a time" in bad


def test_a_pending_task_has_no_logs_yet(workers: StartWorker, managers: StartManager) -> None:
    manager = managers([workers()])
    task_id = submit(manager, "echo never", Memory=2**50)
    line = one_line_error(cube("logs", task_id, manager=manager))
    assert f"task {task_id} has no logs yet: it is Pending" in line


def test_a_restarted_worker_keeps_the_logs_of_finished_tasks(workers: StartWorker) -> None:
    worker = workers("-d", "persistent", "--keep-exited", "1")
    bodies = [task_event("cube/busybox:latest", Cmd=["echo", f"run {i}"]) for i in range(2)]
    for body in bodies:  # one after the other: the second exits last
        assert httpx.post(f"{worker.url}/tasks", json=body, timeout=10).status_code == 201
        wait_for(lambda b=body: worker_task(worker, b)["State"] == COMPLETED, what="Completed")

    def logs(of: WorkerProcess, body: dict[str, Any]) -> httpx.Response:
        return httpx.get(f"{of.url}/tasks/{body['Task']['ID']}/logs", timeout=10)

    assert logs(worker, bodies[0]).status_code == 410  # it keeps one: the last
    assert json.loads(logs(worker, bodies[1]).text)["Line"] == "run 1"
    worker.kill()
    again = workers("-d", "persistent", "--keep-exited", "1", name=worker.name, port=worker.port)
    answer = logs(again, bodies[1])
    assert answer.status_code == 200 and json.loads(answer.text)["Line"] == "run 1"
    assert [c.labels["cube.task"] for c in containers_of(worker.name)] == [bodies[1]["Task"]["ID"]]


def worker_task(worker: WorkerProcess, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.get(f"{worker.url}/tasks/{body['Task']['ID']}", timeout=5)
    return r.json()  # type: ignore[no-any-return]
