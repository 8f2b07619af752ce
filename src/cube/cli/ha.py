"""`cube up --ha`: three managers on a three-member etcd, all on this machine.

The etcd members are Debian's ``etcd`` binary (package ``etcd-server``; `scripts/setup.sh`
installs it), run as children of `cube up` like the managers and workers, each with a
data directory under ``DATA_DIR/etcd/`` and a log in ``DATA_DIR/logs/``. They listen on
loopback only, without TLS: the machine's own processes are their only clients. Any one
member may die and the others keep a quorum; any one manager may die and another leads
(docs/operations.md, "Several managers").
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from cube.cli.cluster import LOG_DIR, Member
from cube.cli.errors import CliError

MEMBERS = 3
ETCD_DIR = "etcd"


def etcd_binary() -> str:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if found is None:
        raise CliError(
            "cube up --ha needs etcd: install Debian's etcd-server (scripts/setup.sh does), "
            "or put an etcd binary on PATH"
        )
    return found


def etcd_members(data_dir: Path, first_port: int) -> list[Member]:
    """Three members: client ports ``first_port``, +2, +4; each peer port one above."""
    program = etcd_binary()
    ports = [(first_port + 2 * i, first_port + 2 * i + 1) for i in range(MEMBERS)]
    names = [f"etcd-{i + 1}" for i in range(MEMBERS)]
    pairs = zip(names, ports, strict=True)
    cluster = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, (_, peer) in pairs)
    members = []
    for name, (client, peer) in zip(names, ports, strict=True):
        args = [
            f"--name={name}",
            f"--data-dir={data_dir / ETCD_DIR / name}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-state=new",
            # A manager's largest commit is one transaction (docs/operations.md).
            "--max-txn-ops=100000",
            "--max-request-bytes=33554432",
        ]
        log = str(data_dir / LOG_DIR / f"{name}.log")
        members.append(Member("etcd", name, client, args, log, program=program))
    return members


def store_url(members: Sequence[Member]) -> str:
    return "etcd://" + ",".join(f"127.0.0.1:{m.port}" for m in members)


def wait_for_etcd(
    members: Sequence[Member], procs: Sequence[subprocess.Popen[bytes]], timeout: float
) -> None:
    """Until every member says it is healthy (they have a quorum and a leader)."""
    deadline = time.monotonic() + timeout
    waiting = list(members)
    last = "no answer yet"
    while waiting:
        for proc in procs:
            if proc.poll() is not None:
                dead = next((m for m in members if m.pid == proc.pid), None)
                where = f" (log: {dead.log})" if dead else ""
                raise CliError(f"etcd exited with code {proc.returncode} as it started{where}")
        member = waiting[0]
        try:
            answer = httpx.get(f"http://127.0.0.1:{member.port}/health", timeout=2)
            if answer.status_code == 200 and answer.json().get("health") == "true":
                waiting.pop(0)
                continue
            last = answer.text.strip()
        except (httpx.HTTPError, ValueError) as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise CliError(f"etcd was not ready after {timeout:g}s: {member.name}: {last}")
        time.sleep(0.1)


def purge(data_dir: Path) -> None:
    """Remove the etcd members' data (cube down --purge)."""
    shutil.rmtree(data_dir / ETCD_DIR, ignore_errors=True)
