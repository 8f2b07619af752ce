"""A local etcd (one member, or a cluster of three) on loopback ports, a data dir of its own.

The benchmarks (bench/failover.py, bench/store.py) and the tests (tests/support.py
imports it from here) run real etcd processes this way: one starter keeps them running
the same etcd with the same flags. It is tooling, not the control plane (which times
everything by cube.clock): starting polls etcd's /health against a deadline, and
nothing sleeps to synchronise.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

ETCD = Path("/usr/bin/etcd")  # Debian's etcd-server (scripts/setup.sh installs it)
# docs/operations.md: one commit of the manager is one transaction (every task a
# placement pass or a job's submission touches, with its history and events), past
# etcd's default of 128 operations and 1.5 MiB a request.
RAISED_LIMITS = ["--max-txn-ops=100000", "--max-request-bytes=33554432"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdProcess:
    """A single etcd member: loopback ports, a data dir under ``data``.

    Its write limits are raised as docs/operations.md asks for Cube (RAISED_LIMITS);
    ``raised=False`` keeps etcd's defaults, for what must fit in them (cube migrate)."""

    data: Path
    port: int = field(default_factory=free_port)
    peer: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    name: str = "cube-test"
    cluster: str = ""  # --initial-cluster; empty: this member alone
    raised: bool = True

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, prefix: str = "") -> str:
        return f"etcd://{self.endpoint}/{prefix}" if prefix else f"etcd://{self.endpoint}"

    def start(self, wait: bool = True) -> Self:
        self.data.mkdir(parents=True, exist_ok=True)
        client, peer = f"http://{self.endpoint}", self.peer_url
        args = [
            str(ETCD),
            f"--name={self.name}",
            f"--data-dir={self.data / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.cluster or f'{self.name}={peer}'}",
        ]
        if self.raised:
            args += RAISED_LIMITS
        with (self.data / "etcd.log").open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until etcd says it is healthy (a member of a cluster: once there is a quorum)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                if self.healthy():
                    return
            except (httpx.HTTPError, OSError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} not healthy after {timeout}s ({last!r}):\n{self.output()}"
                )
            time.sleep(0.05)

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited ({self.proc.returncode}):\n{self.output()}")
        answer = httpx.get(f"http://{self.endpoint}/health", timeout=3)
        return answer.status_code == 200 and answer.json().get("health") == "true"

    def output(self) -> str:
        log = self.data / "etcd.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 15 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class EtcdCluster:
    """Three etcd members on loopback, as docs/operations.md runs them: any one may
    die and the other two keep a quorum."""

    members: list[EtcdProcess]

    @classmethod
    def of(cls, data: Path, size: int = 3) -> EtcdCluster:
        members = [EtcdProcess(data / f"etcd-{i}", name=f"etcd-{i}") for i in range(size)]
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for member in members:
            member.cluster = cluster
        return cls(members)

    def url(self, prefix: str = "") -> str:
        hosts = ",".join(m.endpoint for m in self.members)
        return f"etcd://{hosts}/{prefix}" if prefix else f"etcd://{hosts}"

    def start(self) -> Self:
        for member in self.members:  # together: the first waits for a quorum
            member.start(wait=False)
        for member in self.members:
            member.wait_healthy()
        return self

    def stop(self) -> None:
        for member in self.members:
            member.stop()
