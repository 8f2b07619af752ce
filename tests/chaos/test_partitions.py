"""Partitions: workers cut off by real network faults, then healed.

Each worker runs in a network namespace of its own, with a Docker engine of its own,
joined to the host by a veth link (tests/chaos/netns.py); the manager, in the host
namespace, reaches each worker by its address on that link. A task's published port is
therefore at its worker's address, as on a machine of its own, and the manager's health
checks cross the same faulty link as everything else. Faults: the link cut (down) and
healed, flapped, lossy (iptables' statistic match) and slow (a proxy that delays every
chunk: these kernels have no netem qdisc); and the worker frozen by SIGSTOP while its
containers keep running.

"Exactly once" is counted from the engines themselves: running containers by their
cube.task label, across every worker's engine, beside the task's state in the API.
Where namespaces cannot be made (not root, no iproute2, iptables or dockerd) these
tests skip and say why.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos import netns
from tests.chaos.netns import Fleet, NetnsWorker
from tests.support import ManagerProcess, task_event, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.chaos]

StartManager = Callable[..., ManagerProcess]
RUNNING, COMPLETED = 2, 3
WORKER_TIMEOUT = 3.0
# A lost worker's tasks are restarted elsewhere at once (backoff 0.1 s), so the time
# they take to move is the manager's detection, not a policy's delay.
MANAGER_FLAGS = ("--worker-timeout", str(WORKER_TIMEOUT), "--restart-backoff", "0.1")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with netns.fleet(tmp_path) as made:
        yield made


def sleeper() -> dict[str, Any]:
    """A task that should run forever, wherever it is: "always", so no restart limit."""
    return task_event("cube/busybox:latest", Cmd=["sleep", "86400"], RestartPolicy="always")


def web() -> dict[str, Any]:
    """busybox httpd with a health check on its published port."""
    return task_event("cube/http:latest", HealthCheck="/health", ExposedPorts={"80/tcp": {}})


def view(manager: ManagerProcess, fleet: Fleet, ids: set[str]) -> dict[str, Any]:
    """What the API and the engines say, for convergence checks and failure messages."""
    tasks = {t["ID"]: t for t in manager.tasks()}
    copies = fleet.running_copies()
    return {
        "not running": {i: (tasks[i]["State"], tasks[i]["Reason"]) for i in ids
                        if tasks[i]["State"] != RUNNING},
        "completed": {i: tasks[i]["Reason"] for i in ids if tasks[i]["State"] == COMPLETED},
        "copies": {i: n for i, n in copies.items() if n != 1 or i not in ids},
        "missing": sorted(ids - set(copies)),
        "nodes": {n["Name"]: n["Status"] for n in httpx.get(f"{manager.url}/nodes").json()},
    }  # fmt: skip


def exactly_once(manager: ManagerProcess, fleet: Fleet, ids: set[str]) -> bool:
    now = view(manager, fleet, ids)
    return not (now["not running"] or now["copies"] or now["missing"])


def log_lines(manager: ManagerProcess, *words: str) -> str:
    """The manager's log lines that mention any of ``words``: why it did what it did."""
    lines = manager.output().splitlines()
    return "\n".join(line for line in lines if any(w in line for w in words))


def start_cluster(
    fleet: Fleet, managers: StartManager, count: int, *flags: str, **start: Any
) -> tuple[list[NetnsWorker], ManagerProcess]:
    nodes = fleet.start(count, **start)
    return nodes, managers(nodes, *flags)


def submit_running(
    manager: ManagerProcess, fleet: Fleet, make: Callable[[], dict[str, Any]], count: int
) -> set[str]:
    ids = {manager.submit(make())["ID"] for _ in range(count)}
    wait_for(
        lambda: exactly_once(manager, fleet, ids),
        90,
        what=f"{count} tasks running once",
        detail=lambda: view(manager, fleet, ids),
    )
    return ids


def hold(seconds: float, watch: Callable[[], None]) -> None:
    """Keep a fault in place for ``seconds`` (its length is the fault, not a wait for
    something), calling ``watch`` all along to record or check what happens."""
    until = time.monotonic() + seconds
    while True:
        watch()
        if time.monotonic() >= until:
            return
        time.sleep(min(0.2, max(until - time.monotonic(), 0)))


def cut_link(worker: NetnsWorker) -> None:
    worker.link.down()


def heal_link(worker: NetnsWorker) -> None:
    worker.link.up()


FAULTS: dict[str, tuple[Callable[[NetnsWorker], None], Callable[[NetnsWorker], None]]] = {
    "link-down": (cut_link, heal_link),
    "sigstop": (NetnsWorker.freeze, NetnsWorker.thaw),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_cut_off_worker_tasks_move_and_run_once_when_healed(
    fleet: Fleet, managers: StartManager, fault: str
) -> None:
    cut, heal = FAULTS[fault]
    nodes, manager = start_cluster(fleet, managers, 3, *MANAGER_FLAGS)
    ids = submit_running(manager, fleet, sleeper, 12)
    victim = nodes[0]
    on_victim = {t["ID"] for t in manager.tasks() if t["Node"] == victim.address}
    assert on_victim, "placement left the first worker empty"

    cut(victim)  # its containers keep running: nothing can reach them now

    def moved() -> bool:
        tasks = {t["ID"]: t for t in manager.tasks()}
        return all(
            tasks[i]["State"] == RUNNING and tasks[i]["Node"] not in ("", victim.address)
            for i in on_victim
        )

    wait_for(
        moved,
        WORKER_TIMEOUT + 10,
        what=f"the cut-off worker's tasks running elsewhere ({fault})",
        detail=lambda: view(manager, fleet, ids),
    )
    survivors = sum((w.running_copies() for w in nodes[1:]), start=Counter[str]())
    assert all(survivors[i] == 1 for i in ids), f"not once on the other workers: {survivors}"

    heal(victim)

    def healed() -> bool:
        now = view(manager, fleet, ids)
        ready = all(status == "ready" for status in now["nodes"].values())
        return ready and exactly_once(manager, fleet, ids)

    # Well within the manager's 30 s resync: a returning worker's whole list is read as
    # soon as it answers, and the copies moved away meanwhile are stopped then.
    wait_for(
        healed,
        20,
        what=f"every task running exactly once after the {fault} healed",
        detail=lambda: {
            **view(manager, fleet, ids),
            "manager log": log_lines(manager, "down", "ready", "stray", "Completed", "409"),
        },
    )
    assert not view(manager, fleet, ids)["completed"], "a task ended though nobody stopped it"


# Ten flaps within 60 s: half of the downs a blip the manager should ride out, half
# long enough that it marks the worker down (its timeout plus a request's timeout, about
# 5 s here) and moves its tasks, just before the worker comes back.
FLAPS_DOWN = (1.0, 7.0, 0.5, 7.0, 2.0, 7.0, 1.0, 7.0, 0.5, 7.0)
FLAP_UP = 1.0


def test_flapping_link_ends_with_every_task_once(fleet: Fleet, managers: StartManager) -> None:
    nodes, manager = start_cluster(fleet, managers, 3, *MANAGER_FLAGS)
    ids = submit_running(manager, fleet, sleeper, 12)
    victim = nodes[0]
    seen: set[str] = set()

    def watch() -> None:
        with_timeout = httpx.get(f"{manager.url}/nodes", timeout=5).json()
        seen.update(n["Status"] for n in with_timeout if n["Name"] == victim.address)

    started = time.monotonic()
    for down in FLAPS_DOWN:
        victim.link.down()
        hold(down, watch)
        victim.link.up()
        hold(FLAP_UP, watch)
    assert time.monotonic() - started <= 60
    assert "down" in seen, f"the flaps never cut the worker off long enough: {seen}"

    wait_for(
        lambda: exactly_once(manager, fleet, ids),
        60,
        what="every task running exactly once after 10 flaps",
        detail=lambda: {
            **view(manager, fleet, ids),
            "manager log": log_lines(manager, "down", "ready", "stray", "Completed", "409"),
        },
    )
    assert not view(manager, fleet, ids)["completed"], "a task ended though nobody stopped it"


HEALTH_INTERVAL = 2.0
LOSS = 0.05
WINDOW = 5 * HEALTH_INTERVAL


def health_url(task: dict[str, Any], path: str) -> str:
    """The task's published port at its worker's address: where the manager probes."""
    host = task["Node"].rsplit(":", 1)[0]
    port = next(iter(task["HostPorts"].values()))[0]["HostPort"]
    return f"http://{host}:{port}{path}"


def test_lossy_slow_links_restart_no_healthy_task(fleet: Fleet, managers: StartManager) -> None:
    """5% loss and 200 ms each way on every worker's link: health checks are slower and
    some packets are sent again, but every task stays healthy and keeps its container.
    The worker timeout is the manager's default here: this is about health checks."""
    nodes, manager = start_cluster(
        fleet, managers, 3,
        "--health-interval", str(HEALTH_INTERVAL), "--health-grace", "1",
        proxy=True,
    )  # fmt: skip
    ids = submit_running(manager, fleet, web, 6)
    for task in manager.tasks():
        assert httpx.get(health_url(task, "/health"), timeout=5).status_code == 200

    for worker in nodes:
        fleet.proxies[worker.link.tag].delay(True)
        worker.link.lose(LOSS)
    took = min(_timed_health(nodes[0]) for _ in range(3))
    assert took >= 0.4, f"a request over the link took {took:.3f}s: no delay on it"

    before = {t["ID"]: (t["ContainerID"], t["RestartCount"]) for t in manager.tasks()}
    assert all(count == 0 for _, count in before.values()), before

    def unchanged() -> None:
        now = {t["ID"]: (t["ContainerID"], t["RestartCount"], t["State"]) for t in manager.tasks()}
        changed = {i: now[i] for i in ids if now[i][:2] != before[i] or now[i][2] != RUNNING}
        assert not changed, (
            f"healthy tasks restarted under {LOSS:.0%} loss and 200 ms latency: {changed}\n"
            + log_lines(manager, "health", "down")
        )

    hold(WINDOW, unchanged)
    dropped = {w.name: w.link.dropped() for w in nodes}
    assert all(dropped.values()), f"no packet lost on some link: {dropped}"

    # The checks do cross the faulty links: a task made sick is restarted.
    canary = manager.task(sorted(ids)[0])
    wait_for(
        lambda: httpx.get(health_url(canary, "/cgi-bin/sick"), timeout=5).status_code == 200,
        20,
        what="the canary made sick",
    )
    manager.wait_task(
        canary["ID"],
        lambda t: t["RestartCount"] >= 1 and t["State"] == RUNNING,
        timeout=30,
        what="the sick canary restarted by its failing health check",
    )


def _timed_health(worker: NetnsWorker) -> float:
    started = time.monotonic()
    httpx.get(f"{worker.url}/health", timeout=10)
    return time.monotonic() - started
