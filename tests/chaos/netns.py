"""Workers behind network links a test can break: namespaces, veth pairs, engines.

Each worker runs in a network namespace of its own, joined to the host by a veth pair
(a /30 from 10.231.0.0/16: the host end is .1, the worker .2). Inside the namespace
runs a Docker engine of its own (own data root, exec root, socket and pidfile), so the
ports its tasks publish live at the worker's address as on a separate machine, and the
manager, in the host namespace, health-checks them through the same link it reaches
the worker by. Faults act on that link: down and up, random loss (iptables'
``statistic`` match) and added latency (a delaying proxy, ``delayproxy.py``: these
kernels have no ``netem`` qdisc).

Processes enter the namespace with ``nsenter --net`` and not ``ip netns exec``: the
latter remounts /sys, which hides the cgroup mounts that dockerd needs.

Names carry a random tag, so a leftover from a crashed run cannot collide with a new
one; everything made is registered for clean-up the moment it exists.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Self

import docker

from tests.support import CUBE, ROOT, WorkerProcess, wait_for

TOOLS = {"ip": "iproute2", "iptables": "iptables", "nsenter": "util-linux", "dockerd": "docker.io"}
IMAGES = ("cube/busybox:latest", "cube/http:latest")
DELAY_PROXY = Path(__file__).with_name("delayproxy.py")


def run(*args: str, timeout: float = 30) -> str:
    """Run a command; fail with its stderr (a bare CalledProcessError says nothing)."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@cache
def unavailable() -> str | None:
    """Why namespaces with engines of their own cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add, iptables, dockerd)"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package {package}; scripts/setup.sh installs it)"
    probe = f"cube-probe-{uuid.uuid4().hex[:6]}"
    try:
        run("ip", "netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot make a network namespace here: {exc}"
    run("ip", "netns", "del", probe)
    return None


def _used_blocks() -> set[int]:
    """The /30 blocks of 10.231.0.0/16 some interface on the host already has."""
    used = set()
    for line in run("ip", "-4", "-o", "addr", "show").splitlines():
        for word in line.split():
            if word.startswith("10.231."):
                third, fourth = word.split("/")[0].split(".")[2:]
                used.add((int(third) * 256 + int(fourth)) // 4)
    return used


@dataclass
class Link:
    """A network namespace and the veth pair that joins it to the host."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    block: int = -1  # which /30 of 10.231.0.0/16

    @property
    def name(self) -> str:
        return f"cube-{self.tag}"

    @property
    def host_if(self) -> str:
        return f"cbh{self.tag}"

    @property
    def ns_if(self) -> str:
        return f"cbn{self.tag}"

    def _address(self, host: int) -> str:
        base = self.block * 4 + host
        return f"10.231.{base // 256}.{base % 256}"

    @property
    def host_ip(self) -> str:
        return self._address(1)

    @property
    def ip(self) -> str:
        """The worker's address: what the manager dials."""
        return self._address(2)

    def enter(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def create(self) -> Self:
        if self.block < 0:
            free = sorted(set(range(1, 16384)) - _used_blocks())
            self.block = random.choice(free)
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "-n", self.name)
        run(*inside, "addr", "add", f"{self.ip}/30", "dev", self.ns_if)
        run(*inside, "link", "set", "lo", "up")
        run(*inside, "link", "set", self.ns_if, "up")
        run(*inside, "route", "add", "default", "via", self.host_ip)
        return self

    def destroy(self) -> None:
        """Delete the pair (both ends go at once) and the namespace; kill what is left
        inside (only what these tests started runs there)."""
        with contextlib.suppress(RuntimeError):
            run("ip", "link", "del", self.host_if)
        with contextlib.suppress(RuntimeError):
            for pid in run("ip", "netns", "pids", self.name).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(RuntimeError):
            run("ip", "netns", "del", self.name)

    # --- faults -------------------------------------------------------------------------

    def down(self) -> None:
        """Cut the link at the worker's end, as a pulled cable: the host keeps its route,
        so what the manager sends vanishes (no reset) until ARP gives up."""
        run("ip", "-n", self.name, "link", "set", self.ns_if, "down")

    def up(self) -> None:
        run("ip", "-n", self.name, "link", "set", self.ns_if, "up")
        # Going down took the routes through the link with it.
        run("ip", "-n", self.name, "route", "replace", "default", "via", self.host_ip)

    def iptables(self, *args: str) -> None:
        run(*self.enter(), "iptables", "-w", *args)

    def _loss_rules(self, probability: float) -> list[tuple[str, ...]]:
        drop = ("-m", "statistic", "--mode", "random", "--probability", str(probability))
        # raw/PREROUTING sees every packet arriving over the link before anything else
        # (Docker's DNAT, our proxy's REDIRECT); mangle/POSTROUTING every packet leaving,
        # whether the worker, a proxy or a forwarded container reply sent it.
        return [
            ("-t", "raw", "PREROUTING", "-i", self.ns_if, *drop, "-j", "DROP"),
            ("-t", "mangle", "POSTROUTING", "-o", self.ns_if, *drop, "-j", "DROP"),
        ]

    def lose(self, probability: float) -> None:
        """Drop each packet crossing the link, either way, with ``probability``."""
        for table, flag, chain, *rule in self._loss_rules(probability):
            self.iptables(table, flag, "-A", chain, *rule)

    def stop_losing(self, probability: float) -> None:
        for table, flag, chain, *rule in self._loss_rules(probability):
            self.iptables(table, flag, "-D", chain, *rule)

    def dropped(self) -> int:
        """Packets the loss rules have dropped so far (both ways)."""
        total = 0
        for table, chain in (("raw", "PREROUTING"), ("mangle", "POSTROUTING")):
            listing = run(*self.enter(), "iptables", "-w", "-t", table, "-nvxL", chain)
            for line in listing.splitlines():
                words = line.split()
                if "statistic" in words and words[2] == "DROP":
                    total += int(words[0])
        return total

    def redirect_tcp(self, port: int) -> None:
        """Send every TCP connection that arrives over the link to ``port`` inside.

        Inserted first in nat/PREROUTING, ahead of Docker's DNAT of published ports: the
        proxy listening there learns each connection's original destination and dials
        it from inside, where Docker's OUTPUT rules take it to the container.
        """
        self.iptables(
            "-t", "nat", "-I", "PREROUTING", "1", "-i", self.ns_if, "-p", "tcp",
            "-j", "REDIRECT", "--to-ports", str(port),
        )  # fmt: skip
        # A segment conntrack cannot place (out of window after losses) skips NAT, reaches
        # the original port and is answered with a reset that no real link would cause:
        # drop it instead, as kube-proxy does.
        self.iptables(
            "-t", "mangle", "-I", "PREROUTING", "1", "-i", self.ns_if,
            "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP",
        )  # fmt: skip


@dataclass
class Engine:
    """A dockerd of the namespace's own, holding copies of the offline images."""

    link: Link
    log: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cube-engine-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    def start(self) -> Self:
        tag = self.link.tag
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                *self.link.enter(), "dockerd",
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "docker.pid"),
                "-H", self.host,
                "--containerd-namespace", f"cube-{tag}",
                "--containerd-plugins-namespace", f"cube-{tag}-plugins",
            ],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        out.close()
        return self

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=30)

    def answers(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"dockerd in {self.link.name} exited:\n{self.log.read_text()}")
        done = subprocess.run(["docker", "-H", self.host, "info"], capture_output=True)
        return done.returncode == 0

    def wait_ready(self) -> Self:
        wait_for(self.answers, 60, interval=0.2, what=f"dockerd in {self.link.name}")
        saved = subprocess.Popen(["docker", "save", *IMAGES], stdout=subprocess.PIPE)
        loaded = subprocess.run(
            ["docker", "-H", self.host, "load", "-q"], stdin=saved.stdout, capture_output=True
        )
        if saved.stdout:
            saved.stdout.close()
        if saved.wait() != 0 or loaded.returncode != 0:
            raise RuntimeError(f"copying {IMAGES} into {self.link.name}: {loaded.stderr!r}")
        return self

    def stop(self) -> None:
        """Remove every container (only these tests use this engine), stop the engine,
        and remove its directories."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                client = self.client()
                try:
                    for container in client.containers.list(all=True):
                        container.remove(force=True)
                finally:
                    client.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # A killed engine can leave its mounts (overlays, the netns of a container) behind.
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts]
        for point in sorted(points, reverse=True):
            if point.startswith(f"{self.root}/"):
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class DelayProxy:
    """delayproxy.py inside a namespace: every TCP connection over the link, delayed."""

    link: Link
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.port = self.port or free_port_in(self.link)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*self.link.enter(), sys.executable, str(DELAY_PROXY), "--port", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        wait_for(self._listening, 10, what=f"delay proxy in {self.link.name}")
        self.link.redirect_tcp(self.port)
        return self

    def _listening(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"delay proxy exited:\n{self.log.read_text()}")
        return "listening" in self.log.read_text()

    def delay(self, on: bool) -> None:
        """Add (SIGUSR1) or remove (SIGUSR2) the delay, on connections already open too."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def free_port_in(link: Link) -> int:
    """A port nothing listens on inside the namespace (ports there are its own)."""
    script = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
    return int(run(*link.enter(), sys.executable, "-c", script).strip())


@dataclass
class NetnsWorker(WorkerProcess):
    """`cube worker` inside a namespace, on its engine, listening on the link's address."""

    link: Link = field(default_factory=Link)
    engine: Engine | None = None
    frozen: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.link.ip}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.link.ip}:{self.port}"

    def start(self) -> Self:
        assert self.engine is not None
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*self.link.enter(), *CUBE, *self.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **self.env, "DOCKER_HOST": self.engine.host},
            start_new_session=True,
        )  # nsenter execs the program: self.proc.pid is the worker itself
        out.close()
        return self

    def freeze(self) -> None:
        """SIGSTOP: the worker stops answering; its containers keep running."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.frozen:
            self.thaw()  # a stopped process cannot act on SIGTERM
        super().stop()

    def running_copies(self) -> Counter[str]:
        """How many running containers of this worker each task has, by cube.task label."""
        assert self.engine is not None
        client = self.engine.client()
        try:
            found = client.containers.list(filters={"label": f"cube.worker={self.name}"})
            return Counter(c.labels["cube.task"] for c in found if "cube.task" in c.labels)
        finally:
            client.close()


class Fleet:
    """Workers in namespaces of their own, each torn down whatever happens to the test."""

    def __init__(self, tmp: Path, cleanup: contextlib.ExitStack) -> None:
        self.tmp = tmp
        self.cleanup = cleanup
        self.workers: list[NetnsWorker] = []
        self.proxies: dict[str, DelayProxy] = {}

    def start(self, count: int, *extra: str, proxy: bool = False) -> list[NetnsWorker]:
        """Start ``count`` workers (engines started side by side, they take a while).

        With ``proxy``, every connection over each link goes through a delay proxy from
        the first one on (set no delay until :meth:`DelayProxy.delay`), so that the
        connections the manager keeps open are delayed too once it is switched on.
        """
        links = []
        for _ in range(count):
            link = Link()
            self.cleanup.callback(link.destroy)
            links.append(link.create())
        engines: list[Engine] = []
        self.cleanup.callback(stop_all, engines)
        for link in links:
            engines.append(Engine(link, log=self.tmp / f"dockerd-{link.tag}.log").start())
        started = []
        for link, engine in zip(links, engines, strict=True):
            engine.wait_ready()
            if proxy:
                delay = DelayProxy(link, log=self.tmp / f"proxy-{link.tag}.log")
                self.cleanup.callback(delay.stop)
                self.proxies[link.tag] = delay.start()
            worker = self._worker(link, engine, *extra)
            self.cleanup.callback(worker.stop)
            started.append(worker.start())
        for worker in started:
            worker.wait_ready()
        self.workers += started
        return started

    def _worker(self, link: Link, engine: Engine, *extra: str) -> NetnsWorker:
        name = f"ns-{link.tag}"
        port = free_port_in(link)
        args = [
            "worker", "-H", link.ip, "-p", str(port), "-n", name,
            "--data-dir", str(self.tmp), "--reconcile-interval", "1",
            "--insecure",  # on a test link: partitions are under test here, not tokens
            *extra,
        ]  # fmt: skip
        log = self.tmp / f"{name}.log"
        return NetnsWorker(args=args, log=log, name=name, port=port, link=link, engine=engine)

    def running_copies(self) -> Counter[str]:
        """Running containers per task across every worker's engine."""
        total: Counter[str] = Counter()
        for worker in self.workers:
            total.update(worker.running_copies())
        return total


def stop_all(engines: list[Engine]) -> None:
    """Stop engines side by side: each takes seconds to shut down."""
    with ThreadPoolExecutor(max(len(engines), 1)) as pool:
        for stopped in [pool.submit(engine.stop) for engine in engines]:
            stopped.result()


@contextlib.contextmanager
def fleet(tmp: Path) -> Iterator[Fleet]:
    with contextlib.ExitStack() as cleanup:
        yield Fleet(tmp, cleanup)


def engine_containers(worker: NetnsWorker) -> list[dict[str, Any]]:
    """Every container in a worker's engine, for failure messages."""
    assert worker.engine is not None
    client = worker.engine.client()
    try:
        return [
            {"task": c.labels.get("cube.task"), "status": c.status, "name": c.name}
            for c in client.containers.list(all=True)
        ]
    finally:
        client.close()
