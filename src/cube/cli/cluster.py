"""A local cluster as `cube up` runs it: a manager and N workers as child processes.

Each member is a real ``cube manager`` or ``cube worker`` process, exactly what a user
would start by hand, so `cube up` exercises the same code as a real deployment. The
cluster is described by two files in the data directory:

- ``cluster.json``: what was created (names, ports), kept until ``cube down --purge``
  so the containers and state of a stopped cluster can still be found;
- ``up.pid``: the processes running now, with their start times, so that ``cube down``
  never signals an unrelated process that happens to have reused a PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cube.cli.errors import CliError
from cube.clientconfig import FILE, ClientConfig
from cube.manager.client import ManagerClient, ManagerError

PID_FILE = "up.pid"
TLS_DIR = "tls"
CLUSTER_FILE = "cluster.json"
LOG_DIR = "logs"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PR_SET_PDEATHSIG = 1


@dataclass
class Member:
    """One process of the cluster: what to run, where it listens, where it logs."""

    role: str
    name: str
    port: int
    args: list[str]
    log: str
    pid: int = 0
    started: float = 0.0
    program: str = ""  # what runs (etcd's binary); empty: `python -m cube`

    def url(self, host: str) -> str:
        return f"https://{host}:{self.port}"  # cube up's members all serve TLS

    @property
    def title(self) -> str:
        """How messages name it: "the manager", "the worker up-2"."""
        return f"the {self.role}" if self.name == self.role else f"the {self.role} {self.name}"


@dataclass
class Cluster:
    """The shape of a local cluster, derived entirely from `cube up`'s flags."""

    data_dir: Path
    workers: int = 3
    port: int = 5555
    worker_port: int = 5556
    host: str = "127.0.0.1"
    name: str = "up"
    scheduler: str = "epvm"
    log_level: str = "info"
    members: list[Member] = field(default_factory=list)
    token: str = ""  # the management token, once start() has made or read it
    ha: bool = False  # 3 managers on a 3-member etcd (cube.cli.ha)
    etcd_port: int = 2379  # --ha: the first etcd member's client port

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise CliError(f"invalid cluster name {self.name!r}: use letters, digits, - _ .")
        if self.workers < 1:
            raise CliError("a cluster needs at least one worker")
        if not self.members:
            self.members = self._plan()

    @property
    def dial_host(self) -> str:
        """Where clients connect: a wildcard listen address is reached on loopback."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def manager(self) -> Member:
        return self.managers[0]

    @property
    def managers(self) -> list[Member]:
        return [m for m in self.members if m.role == "manager"]

    @property
    def worker_members(self) -> list[Member]:
        return [m for m in self.members if m.role == "worker"]

    @property
    def etcd_members(self) -> list[Member]:
        return [m for m in self.members if m.role == "etcd"]

    @property
    def manager_url(self) -> str:
        """The manager's URL; with --ha, every manager's, separated by commas (the CLI
        and workers use whichever answers)."""
        return ",".join(m.url(self.dial_host) for m in self.managers)

    def _plan(self) -> list[Member]:
        data = str(self.data_dir)
        logs = self.data_dir / LOG_DIR
        common = ["-H", self.host, "--data-dir", data, "--log-level", self.log_level]
        # Everything speaks mutual TLS with certificates from the cluster's own CA,
        # made in the data directory by start() (as k3s makes its own).
        tls = self.data_dir / TLS_DIR
        common += ["--tls-ca", str(tls / "ca.pem")]
        # Workers join the manager (its join token: the data directory's join-token
        # file, given to the workers in their environment, not on their command line).
        managers = [self.port - i for i in range(3 if self.ha else 1)]
        join = ["--join", ",".join(f"https://{self.dial_host}:{p}" for p in managers)]
        join += ["--tls-cert", str(tls / "worker.pem"), "--tls-key", str(tls / "worker-key.pem")]
        workers = []
        for i in range(self.workers):
            name, port = f"{self.name}-{i + 1}", self.worker_port + i
            args = ["worker", "-n", name, "-p", str(port), "-d", "persistent", *join, *common]
            workers.append(Member("worker", name, port, args, str(logs / f"{name}.log")))
        manager_args = ["-s", self.scheduler, *common]
        manager_args += ["--tls-cert", str(tls / "manager.pem")]
        manager_args += ["--tls-key", str(tls / "manager-key.pem")]
        if not self.ha:
            args = ["manager", "-p", str(self.port), "-d", "persistent", *manager_args]
            manager = Member("manager", "manager", self.port, args, str(logs / "manager.log"))
            return [manager, *workers]
        from cube.cli import ha

        etcd = ha.etcd_members(self.data_dir, self.etcd_port)
        store = ha.store_url(etcd)
        members = []
        for i, port in enumerate(managers):
            name = f"manager-{i + 1}"
            args = ["manager", "-p", str(port), "--store", store, *manager_args]
            args += ["--advertise", f"https://{self.dial_host}:{port}"]
            members.append(Member("manager", name, port, args, str(logs / f"{name}.log")))
        return [*members, *workers, *etcd]

    # --- files ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "manager": self.manager_url,
            "members": [asdict(m) for m in self.members],
        }

    def save(self, supervisor: int | None) -> None:
        """Record the running processes (and what was created) for `cube down`."""
        (self.data_dir / CLUSTER_FILE).write_text(json.dumps(self.describe(), indent=2) + "\n")
        record = self.describe()
        record["supervisor"] = _identity(supervisor) if supervisor else None
        _write_atomic(self.data_dir / PID_FILE, json.dumps(record, indent=2) + "\n")

    # --- running -------------------------------------------------------------------

    def check_free(self) -> None:
        """Fail early, with a hint, rather than let a child die on 'address in use'."""
        for member in self.members:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.host, member.port))
                except OSError:
                    raise CliError(
                        f"port {member.port} (for {member.title}) is in use: "
                        "is a cluster already up? Stop it with `cube down`, or pick other "
                        "ports with --port and --worker-port"
                    ) from None

    def start(self, detach: bool) -> list[subprocess.Popen[bytes]]:
        """Start every member as ``python -m cube ...``; each logs to its own file.

        Children get their own session, so Ctrl-C reaches only `cube up`, which then
        stops them in order. In the foreground they also get SIGTERM if `cube up`
        dies without cleaning up (even SIGKILL), so nothing is left behind.
        """
        (self.data_dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CUBE_JOIN_TOKEN": join_token(self.data_dir)}  # not on a command line
        # The manager reads its management token from the data directory; the CLI
        # finds it, with the address, in client.json there (cube.clientconfig).
        self.token = secret_file(self.data_dir / "token", "cube_")
        ca = self.tls_material()
        config = ClientConfig(Manager=self.manager_url, Token=self.token, TlsCa=str(ca.resolve()))
        config.save(self.data_dir / FILE)
        for name in ("CUBE_TLS_CERT", "CUBE_TLS_KEY", "CUBE_TLS_CA"):  # the flags say them
            env.pop(name, None)
        env["CUBE_TOKEN"] = self.token  # over any the caller's shell has, for another cluster
        started: list[subprocess.Popen[bytes]] = []
        # etcd first (a manager checks its store as it starts), then the managers
        # (workers join them), then the workers.
        order = [*self.etcd_members, *self.managers, *self.worker_members]
        for member in order:
            if member.role == "manager" and self.etcd_members and member is self.manager:
                from cube.cli import ha

                ha.wait_for_etcd(self.etcd_members, started, timeout=30.0)
            command = [member.program] if member.program else [sys.executable, "-m", "cube"]
            with open(member.log, "ab") as log:
                proc = subprocess.Popen(
                    [*command, *member.args],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=None if detach else _die_with_parent(),
                )
            started.append(proc)
            member.pid = proc.pid
            with contextlib.suppress(psutil.Error):
                member.started = psutil.Process(proc.pid).create_time()
        return started

    def tls_material(self) -> Path:
        """The cluster's CA and a certificate for the manager and one the workers share
        (in ``tls/``), made the first time; returns the CA's certificate."""
        from cube import tls  # cryptography: only where certificates are made

        directory = self.data_dir / TLS_DIR
        ca_cert, ca_key = directory / "ca.pem", directory / "ca-key.pem"
        if ca_cert.exists() and ca_key.exists():
            return ca_cert
        hosts = [h for h in (self.host, self.dial_host) if h not in ("0.0.0.0", "::", "")]
        ca = tls.make_ca()
        tls.write(ca, ca_cert, ca_key)
        for name in ("manager", "worker"):
            issued = tls.issue(ca, name, hosts)
            tls.write(issued, directory / f"{name}.pem", directory / f"{name}-key.pem")
        return ca_cert

    def wait_ready(self, procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> None:
        """Poll until the manager reports every worker ready, or a member dies, or time is up."""
        by_pid = {m.pid: m for m in self.members}
        procs = list(procs)
        deadline = time.monotonic() + timeout
        last = "the manager did not answer yet"
        ca = str(self.data_dir / TLS_DIR / "ca.pem")
        with ManagerClient(self.manager_url, timeout=2.0, token=self.token, ca=ca) as client:
            while True:
                for proc in procs:
                    code = proc.poll()
                    if code is not None:
                        member = by_pid[proc.pid]
                        raise CliError(
                            f"{member.title} exited with code {code} before "
                            f"the cluster was ready: {last_line(member.log)} (log: {member.log})"
                        )
                try:
                    nodes = client.nodes()
                except ManagerError as exc:
                    last = str(exc)
                else:
                    ready = sum(n.is_ready for n in nodes)
                    if ready >= len(self.worker_members):
                        return
                    last = f"{ready} of {len(self.worker_members)} workers ready"
                if time.monotonic() >= deadline:
                    raise CliError(f"the cluster was not ready after {timeout:g}s: {last}")
                time.sleep(0.1)


# --- stopping ------------------------------------------------------------------------


def join_token(data_dir: Path) -> str:
    """The cluster's join token: its data directory's join-token file, made (readable
    by its owner only) the first time, as k3s keeps its node token."""
    return secret_file(data_dir / "join-token")


def secret_file(path: Path, prefix: str = "") -> str:
    """The secret in ``path``'s first line, made (readable by its owner only) if none."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = prefix + secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
    return token


def stop_members(
    members: list[Member],
    timeout: float,
    say: Callable[[str], None] = lambda _: None,
) -> None:
    """SIGTERM the managers first (so they do not reschedule as workers leave), then
    the workers, then etcd (which the managers needed to the end, to hand over).

    Each group gets ``timeout`` seconds to exit before SIGKILL. Only processes whose
    start time matches the record are signalled.
    """
    groups = [[m for m in members if m.role == role] for role in ("manager", "worker", "etcd")]
    for group in groups:
        procs = {m.name: p for m in group if (p := find_process(m.pid, m.started))}
        terminate(list(procs.values()), timeout)
        for name in procs:
            say(name)


def terminate(procs: list[psutil.Process], timeout: float) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def find_process(pid: int, started: float) -> psutil.Process | None:
    """The process with this PID if it is still the one we started, else None."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if started and abs(proc.create_time() - started) > 0.5:
            return None  # the PID was reused by something else
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


# --- records -------------------------------------------------------------------------


def load_record(data_dir: Path, name: str = PID_FILE) -> dict[str, Any] | None:
    path = data_dir / name
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"cannot read {path}: not a Cube cluster record")
    return data


def members_of(record: dict[str, Any]) -> list[Member]:
    try:
        return [Member(**m) for m in record.get("members", [])]
    except TypeError as exc:
        raise CliError(f"not a Cube cluster record: {exc}") from None


def running_processes(record: dict[str, Any]) -> list[psutil.Process]:
    found = [find_process(m.pid, m.started) for m in members_of(record)]
    supervisor = record.get("supervisor") or {}
    found.append(find_process(supervisor.get("pid", 0), supervisor.get("started", 0.0)))
    return [p for p in found if p is not None]


def last_line(path: str) -> str:
    """The last thing a dead child said: usually why it died."""
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "nothing logged"


def _identity(pid: int) -> dict[str, Any]:
    started = 0.0
    with contextlib.suppress(psutil.Error):
        started = psutil.Process(pid).create_time()
    return {"pid": pid, "started": started}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _die_with_parent() -> Callable[[], None] | None:
    """Ask Linux to SIGTERM the child when `cube up` dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def arrange() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return arrange
