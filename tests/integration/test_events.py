"""The event stream with real processes: `GET /events?index=N` resumes across manager
restarts (SIGTERM and SIGKILL) with no gap and no repeat, a consumer that never reads
does not hold the manager up, and `cube events -f` prints what happens as it happens.
The worker runs the simulated runtime: the events are the manager's, not Docker's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import httpx

from tests.support import CUBE, ROOT, ManagerProcess, WorkerProcess, task_event, wait_for

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
RUNNING = 2


def events(manager: ManagerProcess, index: int = 0) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{manager.url}/events", params={"index": index, "follow": "false"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return [json.loads(line) for line in answer.text.splitlines()]


def run_tasks(manager: ManagerProcess, count: int) -> list[str]:
    body = [task_event("cube/busybox:latest", Cmd=["sleep", "600"]) for _ in range(count)]
    answer = httpx.post(f"{manager.url}/tasks", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    ids = [t["ID"] for t in answer.json()]

    def running() -> bool:
        tasks = {t["ID"]: t for t in manager.tasks()}
        return all(tasks[i]["State"] == RUNNING for i in ids)

    wait_for(running, timeout=60, what=f"{count} tasks Running")
    return ids


def contiguous(seen: list[dict[str, Any]], start: int) -> bool:
    return [e["Index"] for e in seen] == list(range(start, start + len(seen)))


def test_a_reader_resumes_across_restarts_with_no_gap_and_no_repeat(
    workers: StartWorker, managers: StartManager
) -> None:
    worker = workers("--runtime", "simulated")
    manager = managers([worker], "-d", "persistent")
    first_ids = run_tasks(manager, 5)
    before = events(manager)
    assert before and contiguous(before, 1)
    kinds = {(e["Key"], e["Type"]) for e in before}
    for task_id in first_ids:  # each task's story is there
        assert {(task_id, "TaskSubmitted"), (task_id, "TaskRunning")} <= kinds
    assert any(e["Topic"] == "Node" and e["Type"] == "NodeReady" for e in before)

    seen = list(before)
    for restart in ("stop", "kill"):
        getattr(manager, restart)()
        manager = managers([worker], "-d", "persistent", port=manager.port)
        ids = run_tasks(manager, 3)
        resumed = events(manager, index=seen[-1]["Index"])
        assert resumed and contiguous(resumed, seen[-1]["Index"] + 1), restart
        assert {i for i in ids} <= {e["Key"] for e in resumed}
        seen += resumed
    assert contiguous(seen, 1)
    assert len({e["Index"] for e in seen}) == len(seen)


def test_a_reader_that_never_reads_does_not_hold_the_manager_up(
    workers: StartWorker, managers: StartManager
) -> None:
    worker = workers("--runtime", "simulated")
    manager = managers([worker])
    stalled = socket.create_connection(("127.0.0.1", manager.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /events?heartbeat=0.1 HTTP/1.1\r\nHost: m\r\n\r\n")
    try:
        run_tasks(manager, 300)  # thousands of events the stalled reader never takes
        assert httpx.get(f"{manager.url}/health", timeout=5).json()["Tasks"] == 300
        assert len(events(manager)) > 600  # a reader that does read gets them all
    finally:
        stalled.close()


def test_cube_events_follows_what_happens(workers: StartWorker, managers: StartManager) -> None:
    worker = workers("--runtime", "simulated")
    manager = managers([worker])
    last = events(manager)[-1]["Index"] if events(manager) else 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUBE_")}
    follow = subprocess.Popen(
        [*CUBE, "events", "-f", "--index", str(last), "--topic", "task", "-m", manager.url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (task_id,) = run_tasks(manager, 1)
        lines: list[str] = []

        def printed() -> bool:
            assert follow.stdout is not None
            lines.append(follow.stdout.readline())
            return "TaskRunning" in lines[-1] and task_id[:8] in lines[-1]

        wait_for(printed, timeout=30, what="cube events -f printing the task Running")
        assert any("TaskSubmitted" in line and task_id[:8] in line for line in lines)
    finally:
        follow.terminate()
        follow.wait(10)


def test_retention_keeps_the_newest_events(workers: StartWorker, managers: StartManager) -> None:
    worker = workers("--runtime", "simulated")
    manager = managers([worker], "-d", "persistent")
    run_tasks(manager, 5)
    last = events(manager)[-1]["Index"]
    assert last > 10
    manager.stop()
    manager = managers(
        [worker], "-d", "persistent", "--event-retention-count", "4", port=manager.port
    )
    wait_for(lambda: events(manager)[0]["Index"] > last - 4, what="the old events trimmed")
    kept = events(manager)
    assert contiguous(kept, kept[0]["Index"]) and kept[0]["Index"] > 1
