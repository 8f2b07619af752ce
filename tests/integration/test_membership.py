"""Membership with real processes: `cube worker --join` against a real `cube manager`,
heartbeats lost to SIGKILL and SIGSTOP, drains and eligibility through the CLI, real
Docker containers throughout."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    ManagerProcess,
    WorkerProcess,
    containers_of,
    cube,
    one_line_error,
    task_event,
    wait_for,
    worker_process,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]
TOKEN = "join-me-9f2c"
RUNNING = 2


def joined(workers: StartWorker, manager: ManagerProcess, *extra: str, **kw: Any) -> WorkerProcess:
    return workers("--join", f"127.0.0.1:{manager.port}", "--join-token", TOKEN, *extra, **kw)


def nodes(manager: ManagerProcess) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{manager.url}/nodes", timeout=5).json()
    return {n["Name"]: n for n in answer}


def node_status(manager: ManagerProcess, name: str, status: str) -> Callable[[], bool]:
    return lambda: nodes(manager).get(name, {}).get("Status") == status


def running_on(manager: ManagerProcess) -> dict[str, str]:
    """Task ID -> node, for the tasks Running and meant to keep running."""
    return {
        t["ID"]: t["Node"]
        for t in manager.tasks()
        if t["State"] == RUNNING and t["DesiredState"] == RUNNING
    }


def test_a_worker_joins_a_wrong_token_is_refused_and_a_new_port_is_the_same_node(
    tmp_path: Path, workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([], "--join-token", TOKEN)
    worker = joined(workers, manager, "--label", "zone=a", name="joiner")
    wait_for(node_status(manager, "joiner", "ready"), 20, what="joined worker ready")
    node = nodes(manager)["joiner"]
    assert node["Joined"] and node["Api"] == worker.url and node["Labels"] == {"zone": "a"}
    assert node["Attributes"]["cores"] == str(os.cpu_count())
    task = manager.submit(task_event())
    placed = manager.wait_task(task["ID"], lambda t: t["State"] == RUNNING, what="running")
    assert placed["Node"] == "joiner" and containers_of("joiner", all=False)

    # A wrong token: one line, a non-zero exit, never listed.
    intruder = worker_process(tmp_path, "--join", f"127.0.0.1:{manager.port}", name="intruder")
    intruder.args += ["--join-token", "not-the-token"]
    intruder.start()
    assert intruder.proc is not None and intruder.proc.wait(30) == 1
    lines = intruder.output().strip().splitlines()
    assert lines[-1] == (
        f"cube: the manager at http://127.0.0.1:{manager.port} refused to join: wrong join token"
    )
    assert "Traceback" not in intruder.output()
    assert "intruder" not in nodes(manager)

    # The same worker restarted on a new port is the same node, reached there.
    worker.stop()
    again = joined(workers, manager, name="joiner")
    assert again.port != worker.port
    wait_for(lambda: nodes(manager)["joiner"]["Api"] == again.url, 20, what="new address")
    assert list(nodes(manager)).count("joiner") == 1
    wait_for(node_status(manager, "joiner", "ready"), 20, what="ready at its new address")
    second = manager.submit(task_event())
    placed = manager.wait_task(second["ID"], lambda t: t["State"] == RUNNING, what="running")
    assert placed["Node"] == "joiner"


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_heartbeats_stop_the_node_is_down_and_its_tasks_run_elsewhere(
    how: str, workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([], "--join-token", TOKEN)
    first = joined(workers, manager, name=f"hb-a-{how.lower()}")
    second = joined(workers, manager, name=f"hb-b-{how.lower()}")
    wait_for(lambda: len(running_on(manager)) == 0 and len(nodes(manager)) == 2, 20)
    wait_for(node_status(manager, second.name, "ready"), 20, what="both ready")
    ids = [manager.submit(task_event())["ID"] for _ in range(4)]
    wait_for(lambda: len(running_on(manager)) == 4, 60, what="4 running")
    victim_tasks = [i for i, n in running_on(manager).items() if n == first.name]
    assert victim_tasks, "EPVM spreads four tasks over two nodes"
    assert first.proc is not None
    if how == "SIGKILL":
        first.kill()
    else:
        os.kill(first.proc.pid, signal.SIGSTOP)  # frozen, its containers still running
    try:
        wait_for(node_status(manager, first.name, "down"), 30, what="node down")
        wait_for(
            lambda: (
                set(running_on(manager)) == set(ids)
                and all(n == second.name for n in running_on(manager).values())
            ),
            60,
            what="all 4 running on the other node",
        )
    finally:
        if how == "SIGSTOP":
            os.kill(first.proc.pid, signal.SIGCONT)
    if how == "SIGSTOP":
        # Back: ready again, and the copies it kept running are stopped (one copy each).
        wait_for(node_status(manager, first.name, "ready"), 30, what="back after SIGCONT")
        wait_for(lambda: not containers_of(first.name, all=False), 60, what="old copies stopped")


def test_a_manager_restarted_while_a_worker_is_away_still_declares_it_lost(
    workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([], "--join-token", TOKEN, "-d", "persistent")
    worker = joined(workers, manager, name="away")
    wait_for(node_status(manager, "away", "ready"), 20, what="ready")
    manager.stop()
    worker.kill()
    restarted = managers([], "--join-token", TOKEN, "-d", "persistent")
    assert "away" in nodes(restarted)  # known from the store
    wait_for(node_status(restarted, "away", "down"), 30, what="declared lost")


def test_drain_moves_six_tasks_then_no_new_work_until_eligible(
    workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([], "--join-token", TOKEN)
    joined(workers, manager, name="drainme")
    wait_for(node_status(manager, "drainme", "ready"), 20, what="ready")
    ids = [manager.submit(task_event())["ID"] for _ in range(6)]
    wait_for(lambda: list(running_on(manager).values()) == ["drainme"] * 6, 60, what="6 on it")
    others = [joined(workers, manager, name=f"spare-{i}") for i in range(2)]
    for other in others:
        wait_for(node_status(manager, other.name, "ready"), 20, what="spare ready")
    m = f"127.0.0.1:{manager.port}"

    drained = cube("node", "drain", "drainme", "-m", m)
    assert drained.returncode == 0, drained.stderr
    assert "drained" in drained.stdout.splitlines()[-1]
    wait_for(
        lambda: (
            set(running_on(manager)) == set(ids) and "drainme" not in running_on(manager).values()
        ),
        60,
        what="all 6 running elsewhere",
    )
    wait_for(lambda: not containers_of("drainme", all=False), 30, what="its containers stopped")
    listing = cube("node", "-m", m)
    assert any("drainme" in line and "ineligible" in line for line in listing.stdout.splitlines())

    later = [manager.submit(task_event())["ID"] for _ in range(4)]
    wait_for(lambda: set(later) <= set(running_on(manager)), 60, what="4 more running")
    assert "drainme" not in running_on(manager).values()

    assert cube("node", "eligible", "drainme", "-m", m).returncode == 0
    more = [manager.submit(task_event())["ID"] for _ in range(6)]
    wait_for(lambda: set(more) <= set(running_on(manager)), 60, what="6 more running")
    assert "drainme" in running_on(manager).values()


def test_node_commands_say_what_is_wrong_in_one_line(managers: StartManager) -> None:
    manager = managers([], "--join-token", TOKEN)
    m = f"127.0.0.1:{manager.port}"
    for args, message in [
        (["drain", "ghost"], "node ghost not found"),
        (["eligible", "ghost"], "node ghost not found"),
        (["rm", "ghost"], "node ghost not found"),
        (["drain", "ghost", "--deadline", "soon"], "invalid duration 'soon'"),
    ]:
        assert message in one_line_error(cube("node", *args, "-m", m))


def test_constraints_place_only_on_matching_nodes_and_explain_what_fits_nowhere(
    workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([], "--join-token", TOKEN)
    for name, zone in (("zone-a-1", "a"), ("zone-a-2", "a"), ("zone-b-1", "b")):
        joined(workers, manager, "--label", f"zone={zone}", name=name)
    wait_for(lambda: sum(n["Status"] == "ready" for n in nodes(manager).values()) == 3, 30)

    in_a = [{"Attribute": "zone", "Operator": "=", "Value": "a"}]
    ids = [manager.submit(task_event(Constraints=in_a))["ID"] for _ in range(4)]
    wait_for(lambda: set(ids) <= set(running_on(manager)), 60, what="4 constrained running")
    assert {running_on(manager)[i] for i in ids} <= {"zone-a-1", "zone-a-2"}

    # A job with DistinctHosts: one task per node at most; the fourth waits, explained.
    job = {
        "Name": "spread",
        "Count": 4,
        "DistinctHosts": True,
        "Task": {"Image": "cube/busybox:latest", "Cmd": ["sleep", "3600"]},
    }
    assert httpx.post(f"{manager.url}/jobs", json=job, timeout=10).status_code == 201
    spread = f"{manager.url}/tasks?job=spread"
    wait_for(
        lambda: sum(t["State"] == RUNNING for t in httpx.get(spread, timeout=5).json()) == 3,
        60,
        what="3 of the job running",
    )
    tasks = httpx.get(spread, timeout=5).json()
    on_nodes = [t["Node"] for t in tasks if t["State"] == RUNNING]
    assert sorted(on_nodes) == ["zone-a-1", "zone-a-2", "zone-b-1"]
    (waiting,) = [t for t in tasks if t["State"] != RUNNING]
    assert "3 nodes already run a task of job spread (DistinctHosts)" in waiting["Reason"]

    # A constraint nothing satisfies: Pending, and the reason names it and the count.
    nowhere = [{"Attribute": "zone", "Operator": "=", "Value": "c"}]
    lost = manager.submit(task_event(Constraints=nowhere))
    pending = manager.wait_task(lost["ID"], lambda t: "zone = c" in t["Reason"], what="reason")
    assert pending["State"] == 0
    assert "3 nodes fail constraint zone = c" in pending["Reason"], pending["Reason"]

    # Bad constraints: a 400 with a Message, nothing stored.
    bad = task_event(Constraints=[{"Attribute": "zone", "Operator": "~", "Value": "a"}])
    answer = httpx.post(f"{manager.url}/tasks", json=bad, timeout=10)
    assert answer.status_code == 400 and "Operator" in answer.json()["Message"]
    assert bad["Task"]["ID"] not in {t["ID"] for t in manager.tasks()}
