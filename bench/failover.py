"""Failover: the leading manager SIGKILLed, how long until another one places work.

Issue 17's target: a new leader placing within the lease TTL plus a second. Three
`cube manager --store etcd://…` on a fresh 3-member etcd on loopback, a few
`cube worker --runtime simulated` joined with the list of managers; then, each round:

1. the leader (the one whose GET /health says Leading) is SIGKILLed: the clock starts;
2. a task is submitted at once to the surviving managers, in turns, retried on a 503
   or a refused connection as any client does (a retried submission is acknowledged
   once);
3. **new leader elected**: the first moment a survivor's GET /health says it leads, in
   a term newer than the dead one's;
4. **new leader placing**: the first moment GET /tasks/ID (through any survivor)
   shows the task Scheduled or Running on a worker;
5. the killed manager is started again (same port, same flags) and, before the next
   round, follows the new leader, every worker is ready and the task is Running.

Both times are polled every 10 ms, so they are late by at most that and one request.
Each TTL given (``--lease-ttl 2 5``) is measured with managers of its own.

    .venv/bin/python -m bench.failover                  # 10 rounds, the default TTL
    .venv/bin/python -m bench.failover --lease-ttl 2 5  # 10 rounds at each
    .venv/bin/python -m bench.failover --smoke          # 2 rounds, TTL 2 s
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    CUBE,
    Proc,
    Result,
    Table,
    Target,
    free_port,
    main,
    percentile,
    task_event,
    wait_for,
    workdir,
)
from bench.etcd import ETCD, EtcdCluster
from cube.manager.leader import DEFAULT_TTL

JOIN = "bench-failover-join-token"
SCHEDULED, RUNNING = 1, 2
POLL = 0.01  # seconds between two looks at the survivors
MARGIN = 1.0  # the target: a new leader placing within the lease TTL plus this


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lease-ttl",
        type=int,
        nargs="+",
        default=[DEFAULT_TTL],
        help=f"the managers' --lease-ttl, seconds (at least 2; default {DEFAULT_TTL}, "
        "the manager's): each value measured with managers of its own",
    )
    parser.add_argument("--rounds", type=int, default=10, help="leaders killed per TTL")
    parser.add_argument("--workers", type=int, default=3, help="simulated workers")


@dataclass
class Managers:
    """Three managers on one etcd prefix, and the simulated workers joined to them."""

    tmp: Path
    store: str
    ttl: int
    procs: list[tuple[Proc, str]] = field(default_factory=list)  # (process, URL)
    workers: list[Proc] = field(default_factory=list)

    def start(self, count: int = 3) -> Managers:
        for i in range(count):
            port = free_port()
            args = [
                *CUBE,
                *("manager", "-H", "127.0.0.1", "-p", str(port), "--log-level", "info"),
                *("--store", self.store, "--lease-ttl", str(self.ttl), "--join-token", JOIN),
                *("--data-dir", str(self.tmp / f"m{i}")),
            ]
            proc = Proc(args, self.tmp / f"manager-{i}.log").start()
            self.procs.append((proc, f"http://127.0.0.1:{port}"))
        self.leader(timeout=60)
        return self

    def join(self, count: int) -> None:
        managers = ",".join(url.removeprefix("http://") for _, url in self.procs)
        for i in range(count):
            name = f"sim-{i}"
            args = [
                *CUBE,
                *("worker", "-H", "127.0.0.1", "-p", str(free_port()), "-n", name),
                *("--data-dir", str(self.tmp / name), "--log-level", "warning"),
                *("--runtime", "simulated", "--join", managers, "--join-token", JOIN),
            ]
            self.workers.append(Proc(args, self.tmp / f"{name}.log").start())

    def live(self) -> list[tuple[Proc, str]]:
        return [(p, url) for p, url in self.procs if p.alive()]

    def leader(self, timeout: float = 30) -> tuple[Proc, str, int]:
        """The one live manager that leads, once every live one names it."""

        def found() -> tuple[Proc, str, int] | None:
            seen = [(p, url, health(url)) for p, url in self.live()]
            leading = [(p, url, h) for p, url, h in seen if h and h.get("Leading")]
            if len(leading) != 1 or any(h is None for *_, h in seen):
                return None
            proc, url, held = leading[0]
            if {(h or {}).get("Leader") for *_, h in seen} != {url}:
                return None
            return proc, url, int(held["Term"])

        return wait_for(found, timeout, "one manager leading, named by all", interval=0.05)

    def steady(self, workers: int, task_id: str | None = None) -> None:
        """Every manager up and following one leader, every worker ready, the task Running."""
        for proc, _ in self.procs:
            proc.check_alive()
        _, url, _ = self.leader(timeout=60)

        def ready() -> bool:
            nodes = httpx.get(f"{url}/nodes", timeout=5).json()
            if sum(n["Status"] == "ready" for n in nodes) < workers:
                return False
            if task_id is None:
                return True
            task = httpx.get(f"{url}/tasks/{task_id}", timeout=5).json()
            return bool(task.get("State") == RUNNING)

        wait_for(ready, 60, f"{workers} workers ready and the task Running", interval=0.05)

    def stop(self) -> None:
        for proc in [*(p for p, _ in self.procs), *self.workers]:
            proc.stop()


def health(url: str) -> dict[str, Any] | None:
    try:
        answer = httpx.get(f"{url}/health", timeout=1)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


@dataclass
class Round:
    elected: float = 0.0  # seconds from the kill to a survivor leading in a newer term
    placed: float = 0.0  # ... to the task submitted after the kill Scheduled or Running
    refused: int = 0  # submissions answered 503 (or not at all) before one was accepted


def kill_the_leader(managers: Managers, timeout: float) -> tuple[Round, str, Proc]:
    """One round: SIGKILL the leader, submit, and time the election and the placement."""
    victim, _, term = managers.leader()
    survivors = [url for p, url in managers.procs if p is not victim]
    body = task_event("sim")
    task_id = body["Task"]["ID"]
    measured = Round()
    submitted = False
    assert victim.popen is not None
    with httpx.Client(timeout=2) as http:
        started = time.monotonic()
        victim.popen.kill()

        def placed() -> bool:
            nonlocal submitted
            # Every survivor's health first: placing needs a leader, so one is seen
            # leading no later than the look that sees the task placed.
            for url in survivors if not measured.elected else ():
                seen = health(url)
                if seen and seen.get("Leading") and int(seen["Term"]) > term:
                    measured.elected = time.monotonic() - started
            for url in survivors:
                if not submitted:
                    submitted = _submit(http, url, body)
                    measured.refused += not submitted
                elif _placed(http, url, task_id):
                    measured.placed = time.monotonic() - started
                    return True
            return False

        wait_for(placed, timeout, "the task placed by a new leader", interval=POLL)
        # Elected and placing within one look: the leader was seen placing first.
        measured.elected = measured.elected or measured.placed
    victim.popen.wait(10)
    return measured, task_id, victim


def _submit(http: httpx.Client, url: str, body: dict[str, Any]) -> bool:
    try:
        answer = http.post(f"{url}/tasks", json=body)
    except httpx.HTTPError:
        return False
    if answer.status_code == 201:
        return True
    if answer.status_code != 503:
        raise RuntimeError(f"submission refused ({answer.status_code}): {answer.text}")
    return False


def _placed(http: httpx.Client, url: str, task_id: str) -> bool:
    try:
        answer = http.get(f"{url}/tasks/{task_id}")
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and answer.json().get("State") in (SCHEDULED, RUNNING)


def measure(tmp: Path, etcd: EtcdCluster, ttl: int, rounds: int, workers: int) -> list[Round]:
    """``rounds`` leaders killed, with three managers of lease ``ttl`` of their own."""
    where = tmp / f"ttl-{ttl}"
    where.mkdir()
    managers = Managers(where, etcd.url(f"bench-failover-{uuid.uuid4().hex[:8]}"), ttl)
    try:
        managers.start()
        managers.join(workers)
        managers.steady(workers)
        done: list[Round] = []
        for _ in range(rounds):
            measured, task_id, victim = kill_the_leader(managers, timeout=ttl * 5 + 30)
            done.append(measured)
            victim.start()  # back, on the same port: it follows the new leader
            managers.steady(workers, task_id)
        return done
    finally:
        managers.stop()


def run(args: argparse.Namespace) -> Result:
    ttls = [2] if args.smoke else sorted(set(args.lease_ttl))
    rounds = 2 if args.smoke else args.rounds
    workers = 2 if args.smoke else args.workers
    if min(ttls) < 2 or rounds < 1 or workers < 1:
        raise SystemExit("error: --lease-ttl must be at least 2, --rounds and --workers 1 or more")
    if not ETCD.exists():
        raise SystemExit(f"error: {ETCD} is missing (scripts/setup.sh installs etcd-server)")
    with workdir("failover") as tmp:
        etcd = EtcdCluster.of(tmp / "etcd").start()
        try:
            measured = {ttl: measure(tmp, etcd, ttl, rounds, workers) for ttl in ttls}
        finally:
            etcd.stop()
    return _result(measured, rounds, workers)


def _result(measured: dict[int, list[Round]], rounds: int, workers: int) -> Result:
    columns = [
        "lease TTL (s)",
        "target (s)",
        "placing, median (s)",
        "placing, p90 (s)",
        "placing, max (s)",
        "elected, median (s)",
        "elected, max (s)",
    ]
    rows, targets = [], []
    for ttl, done in measured.items():
        placing = [r.placed for r in done]
        elected = [r.elected for r in done]
        median = statistics.median(placing)
        rows.append(
            {
                "lease TTL (s)": ttl,
                "target (s)": float(ttl + MARGIN),
                "placing, median (s)": median,
                "placing, p90 (s)": percentile(placing, 90),
                "placing, max (s)": max(placing),
                "elected, median (s)": statistics.median(elected),
                "elected, max (s)": max(elected),
            }
        )
        targets.append(
            Target(
                f"failover, TTL {ttl} s",
                f"new leader placing, median of {len(done)}, <= TTL + {MARGIN:g} s "
                f"({ttl + MARGIN:g} s)",
                f"{median:.2f} s",
                median <= ttl + MARGIN,
            )
        )
    each = Table(
        "Each round (s from the SIGKILL)",
        ["lease TTL (s)", "round", "elected", "placing", "submissions refused"],
        [
            {
                "lease TTL (s)": ttl,
                "round": i + 1,
                "elected": r.elected,
                "placing": r.placed,
                "submissions refused": r.refused,
            }
            for ttl, done in measured.items()
            for i, r in enumerate(done)
        ],
    )
    return Result(
        name="failover",
        title=f"Failover: the leader SIGKILLed, {rounds} rounds, 3 managers, 3-member etcd",
        columns=columns,
        rows=rows,
        tables=[each],
        targets=targets,
        settings={
            "managers": 3,
            "etcd_members": 3,
            "workers": workers,
            "runtime": "simulated",
            "rounds": rounds,
            "lease_ttl_s": list(measured),
            "poll_s": POLL,
            "manager_flags": "--lease-ttl TTL, otherwise defaults (poll 1 s)",
        },
        notes=[
            "placing: from the SIGKILL to the task submitted right after it (to the "
            "survivors, retried on 503) seen Scheduled or Running; elected: to a survivor's "
            "GET /health saying it leads in a newer term.",
            "A killed leader's lease runs out between 2/3 of the TTL and the TTL after its "
            "death (it refreshes every TTL/3); the survivors campaign when its key goes.",
        ],
        extra={"rounds": {str(ttl): [vars(r) for r in done] for ttl, done in measured.items()}},
    )


if __name__ == "__main__":
    main("failover", run, configure, __doc__ or "")
