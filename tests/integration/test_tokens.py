"""API tokens with a real `cube manager` and the real CLI: no token or a wrong one is
one line and exit 1; --token and CUBE_TOKEN work; a read token cannot write."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import (
    ManagerProcess,
    WorkerProcess,
    containers_of,
    cube,
    free_port,
    manager_process,
    one_line_error,
    task_event,
    wait_for,
)

StartManager = Callable[..., ManagerProcess]
StartWorker = Callable[..., WorkerProcess]
SECRET = "mgmt-7c1f0a"


@pytest.mark.docker
def test_the_cli_sends_its_token_and_a_read_token_cannot_write(
    tmp_path: Path, workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([workers()], "--token", SECRET)
    m = ["-m", f"127.0.0.1:{manager.port}"]
    assert "a token is needed" in one_line_error(cube("status", *m))
    assert "unknown token" in one_line_error(cube("--token", "nope", "status", *m))
    assert cube("--token", SECRET, "status", *m).returncode == 0
    assert cube("status", *m, CUBE_TOKEN=SECRET).returncode == 0

    made = cube("--token", SECRET, "token", "create", "--role", "read", "--name", "ci", *m)
    assert made.returncode == 0, made.stderr
    reader = made.stdout.splitlines()[0]
    assert reader.startswith("cube_")
    assert cube("--token", reader, "node", *m).returncode == 0  # reads
    # Prometheus scrapes the manager with a token like any client; a read one will do.
    scrape = f"{manager.url}/metrics"
    assert httpx.get(scrape, timeout=5).status_code == 401
    assert httpx.get(scrape, headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    task = tmp_path / "t.json"
    task.write_text('{"Image": "cube/busybox:latest", "Cmd": ["sleep", "5"]}')
    line = one_line_error(cube("--token", reader, "run", "-f", str(task), *m))
    assert "a read token cannot change anything" in line
    assert "only a management token" in one_line_error(cube("--token", reader, "token", "list", *m))

    listed = cube("--token", SECRET, "token", "list", *m)
    assert "ci" in listed.stdout and "read" in listed.stdout and reader not in listed.stdout
    token_id = next(line.split()[0] for line in listed.stdout.splitlines() if " ci " in line)
    assert cube("--token", SECRET, "token", "revoke", token_id, *m).returncode == 0
    assert "unknown token" in one_line_error(cube("--token", reader, "status", *m))


def refused_by(worker: WorkerProcess, token: str | None) -> int:
    """What the worker answers a stranger who sends it a task, with ``token``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = task_event("cube/busybox:latest", Cmd=["sleep", "60"])
    return httpx.post(f"{worker.url}/tasks", json=body, headers=headers, timeout=10).status_code


@pytest.mark.docker
def test_a_joined_worker_takes_commands_from_its_manager_only(
    workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([], "--token", SECRET, "--join-token", "join-3e1")
    worker = workers("--join", f"127.0.0.1:{manager.port}", "--join-token", "join-3e1")
    manager.wait_ready(workers=1)
    # The manager calls it with the credential it gave at join: a task runs.
    task = manager.submit(task_event("cube/busybox:latest", Cmd=["sleep", "60"]))
    manager.wait_task(task["ID"], lambda t: t["State"] == 2, what="Running on the joined worker")
    # Anyone else, with whatever token they hold, is refused; nothing is started.
    for token in (None, "guess", "join-3e1", SECRET):
        assert refused_by(worker, token) == 401, token
    for path in ("/tasks", "/stats", f"/tasks/{task['ID']}"):
        assert httpx.get(f"{worker.url}{path}", timeout=5).status_code == 401, path
    assert httpx.get(f"{worker.url}/health", timeout=5).status_code == 200  # supervisors
    # And scrapers: a scraper cannot hold the secret the worker gave its manager, so
    # /metrics is open; the listener (loopback here, or mutual TLS) decides who reaches
    # it, and it holds counts only.
    scraped = httpx.get(f"{worker.url}/metrics", timeout=5)
    assert scraped.status_code == 200, scraped.text
    assert 'cube_worker_tasks{state="Running"} 1.0' in scraped.text
    assert len(containers_of(worker.name)) == 1


@pytest.mark.docker
def test_a_static_worker_shares_its_token_with_its_manager(
    workers: StartWorker, managers: StartManager
) -> None:
    worker = workers("--token", "w-shared-51")
    manager = managers([worker], "--token", SECRET, "--worker-token", "w-shared-51")
    manager.wait_ready(workers=1)
    task = manager.submit(task_event("cube/busybox:latest", Cmd=["sleep", "60"]))
    manager.wait_task(task["ID"], lambda t: t["State"] == 2, what="Running on the -w worker")
    for token in (None, "guess", SECRET):
        assert refused_by(worker, token) == 401, token
    assert refused_by(worker, "w-shared-51") == 201  # the shared token is the key


def test_a_server_beyond_loopback_needs_a_token_or_insecure(tmp_path: Path) -> None:
    """Secure by default: no token (a worker: no credential or TLS) on 0.0.0.0 is a
    refusal that says why; loopback, a token, or --insecure start."""
    port = str(free_port())
    data = ["--data-dir", str(tmp_path)]
    line = one_line_error(cube("manager", "-H", "0.0.0.0", "-p", port, *data))
    assert "refusing to listen on 0.0.0.0 without --token" in line and "--insecure" in line
    line = one_line_error(cube("worker", "-H", "0.0.0.0", "-p", port, *data))
    assert "without a credential (--join or --token) and TLS" in line
    line = one_line_error(cube("worker", "-H", "0.0.0.0", "-p", port, "--token", "t", *data))
    assert "refusing to listen on 0.0.0.0 without TLS" in line
    for args in (
        ["manager", "-H", "0.0.0.0", "--token", SECRET, "-w", "127.0.0.1:1"],
        ["manager", "-H", "0.0.0.0", "--insecure", "-w", "127.0.0.1:1"],
        ["manager", "-w", "127.0.0.1:1"],  # loopback by default
        ["worker", "-H", "0.0.0.0", "--insecure"],
    ):
        server = ManagerProcess(
            args=[*args, "-p", port, *data], log=tmp_path / f"{args[0]}.log", port=int(port)
        ).start()
        try:
            wait_for(
                lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200,
                what=f"{args} serving",
            )
        finally:
            server.stop()


def test_a_manager_finds_its_tokens_in_its_data_directory(
    tmp_path: Path, workers: StartWorker
) -> None:
    """No --token and no CUBE_TOKEN: the data directory's token file is the management
    token, its join-token file the join token (as `cube up` leaves them)."""
    (tmp_path / "token").write_text("from-the-file-9c4e\n")
    (tmp_path / "join-token").write_text("join-from-the-file-27d1\n")
    manager = manager_process(tmp_path, [])
    manager.env = {"CUBE_TOKEN": "", "CUBE_JOIN_TOKEN": ""}  # none from the test's shell
    manager.start()
    try:
        url = manager.url
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, what="up")
        assert httpx.get(f"{url}/tasks", timeout=5).status_code == 401
        file_token = {"Authorization": "Bearer from-the-file-9c4e"}
        assert httpx.get(f"{url}/tasks", headers=file_token, timeout=5).status_code == 200
        m = ["-m", f"127.0.0.1:{manager.port}"]
        assert "a token is needed" in one_line_error(cube("status", *m))
        assert cube("status", *m, CUBE_TOKEN="from-the-file-9c4e").returncode == 0
        # A worker joins with the join-token file's token.
        join = ("--join", f"127.0.0.1:{manager.port}", "--join-token", "join-from-the-file-27d1")
        joined = workers("--runtime", "simulated", *join)

        def ready() -> bool:
            nodes = httpx.get(f"{url}/nodes", headers=file_token, timeout=5).json()
            return [(n["Name"], n["Status"]) for n in nodes] == [(joined.name, "ready")]

        wait_for(ready, 30, what="the worker joined with the file's join token")
    finally:
        manager.stop()

    # An empty token file is a mistake, said in one line (not an open API).
    (tmp_path / "token").write_text("\n")
    line = one_line_error(cube("manager", "-p", str(free_port()), "--data-dir", str(tmp_path)))
    assert line == f"cube: {tmp_path / 'token'} is empty: put the token in it, or remove it"
