"""Fencing against a real `cube worker` process (the simulated runtime: no containers
needed): a deposed manager's request is refused with 409 and the worker's log says
so; with ``-d persistent`` the newest term outlives a restart of the worker."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import WorkerProcess, wait_for, worker_process


def get(worker: WorkerProcess, path: str, term: int) -> httpx.Response:
    return httpx.get(f"{worker.url}{path}", headers={"X-Cube-Term": str(term)}, timeout=10)


def test_a_deposed_term_is_refused_logged_and_remembered_across_a_restart(
    tmp_path: Path,
) -> None:
    # Not the workers fixture: it cleans up containers through Docker, and none are made.
    worker = worker_process(tmp_path, "--runtime", "simulated", "-d", "persistent")
    try:
        check(worker.start().wait_ready())
    finally:
        worker.stop()


def check(worker: WorkerProcess) -> None:
    assert get(worker, "/tasks", 5).status_code == 200
    wait_for(lambda: "now led by term 5" in worker.output(), what="the new term logged")

    refused = get(worker, "/tasks", 4)
    assert refused.status_code == 409
    assert refused.headers["X-Cube-Term"] == "5"
    assert refused.json()["Message"] == (
        "refused: term 4 is older than term 5, which now leads (a deposed manager's command)"
    )
    line = wait_for(
        lambda: next((x for x in worker.output().splitlines() if "stale term 4" in x), None),
        what="the refusal logged",
    )
    assert "WARNING" in line and "term 5" in line and "GET /tasks" in line
    metrics = httpx.get(f"{worker.url}/metrics", timeout=10).text
    assert "cube_worker_stale_commands_total 1.0" in metrics

    # Restarted (same name, same data dir): term 5 still leads.
    worker.stop()
    worker.start().wait_ready()
    again = get(worker, "/stats", 4)
    assert again.status_code == 409 and again.headers["X-Cube-Term"] == "5"
    assert get(worker, "/stats", 5).status_code == 200
    bad = get(worker, "/stats", -1)
    assert bad.status_code == 400 and "X-Cube-Term" in bad.json()["Message"]
    assert "Traceback" not in worker.output()
