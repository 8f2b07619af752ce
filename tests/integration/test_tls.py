"""Mutual TLS with real processes: certificates from `cube tls init`, a TLS manager, a
worker that joins it and one it was given (-w), all over HTTPS with client
certificates; a task runs in Docker; a certificate from another CA is refused; the CLI
checks the manager against --tls-ca; plain HTTP to a TLS listener is one clear line."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Process,
    containers_of,
    cube,
    free_port,
    one_line_error,
    remove_containers,
    task_event,
    wait_for,
)

pytestmark = pytest.mark.docker

JOIN = "tls-join-4e1d"
RUNNING = 2


@dataclass(frozen=True)
class Certs:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def flags(self, name: str) -> list[str]:
        d = self.dir
        return ["--tls-cert", f"{d}/{name}.pem", "--tls-key", f"{d}/{name}-key.pem"]

    def served(self, name: str) -> list[str]:
        return [*self.flags(name), "--tls-ca", str(self.ca)]

    def client(self, name: str | None = None, ca: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=ca or self.ca)
        if name:
            context.load_cert_chain(self.dir / f"{name}.pem", self.dir / f"{name}-key.pem")
        return context


@dataclass
class Cluster:
    certs: Certs
    foreign: Certs  # from `cube tls init` in another directory: another CA
    manager: Process
    port: int
    joined: tuple[str, int]  # node name, port
    given: tuple[str, int]  # the -w worker's (its node is named by its address)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        answer = httpx.get(f"{self.url}{path}", verify=self.certs.client(), timeout=5)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["Name"]: n for n in self.get("/nodes")}


def _init(directory: Path) -> Certs:
    made = cube("tls", "init", "--dir", str(directory))
    assert made.returncode == 0, made.stderr
    assert str(directory / "ca.pem") in made.stdout
    return Certs(directory)


def _start(args: list[str], log: Path) -> Process:
    return Process(args=args, log=log).start()


def _worker(tmp: Path, certs: Certs, name: str, port: int, *extra: str) -> list[str]:
    return [
        "worker",
        *("-H", "127.0.0.1", "-p", str(port), "-n", name, "--data-dir", str(tmp)),
        *certs.served("worker"),
        *extra,
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A TLS manager, a worker it was given (-w) and one that joined it, all up."""
    tmp = tmp_path_factory.mktemp("tls-cluster")
    certs, foreign = _init(tmp / "tls"), _init(tmp / "other")
    started: list[Process] = []
    names = ("tls-given", "tls-joined")
    given_port, joined_port, port = free_port(), free_port(), free_port()
    try:
        given = _start(_worker(tmp, certs, names[0], given_port), tmp / "given.log")
        started.append(given)
        manager_args = [
            "manager",
            *("-H", "127.0.0.1", "-p", str(port), "--data-dir", str(tmp)),
            *("-w", f"127.0.0.1:{given_port}", "--join-token", JOIN),
            *("--poll-interval", "0.2", "--stats-interval", "0.2"),
            *certs.served("manager"),
        ]
        manager = _start(manager_args, tmp / "manager.log")
        started.append(manager)
        join = ("--join", f"127.0.0.1:{port}", "--join-token", JOIN)
        joined = _start(_worker(tmp, certs, names[1], joined_port, *join), tmp / "joined.log")
        started.append(joined)
        given_node = f"127.0.0.1:{given_port}"
        built = Cluster(
            certs, foreign, manager, port, (names[1], joined_port), (given_node, given_port)
        )

        def ready() -> bool:
            for process in started:
                assert process.proc is not None and process.proc.poll() is None, process.output()
            nodes = built.nodes()
            return all(nodes.get(n, {}).get("Status") == "ready" for n in (given_node, names[1]))

        wait_for(ready, 30, what="both workers ready over mutual TLS", detail=manager.output)
        yield built
    finally:
        for process in reversed(started):
            process.stop()
        for name in names:
            remove_containers(name)


def test_a_joined_and_a_given_worker_run_a_task_over_mutual_tls(cluster: Cluster) -> None:
    nodes = cluster.nodes()
    assert nodes[cluster.joined[0]]["Api"] == f"https://127.0.0.1:{cluster.joined[1]}"
    assert nodes[cluster.given[0]]["Api"] == f"https://127.0.0.1:{cluster.given[1]}"
    assert "Uvicorn running on https://" in cluster.manager.output()

    ids = []
    for _ in range(2):
        answer = httpx.post(
            f"{cluster.url}/tasks",
            json=task_event(),
            verify=cluster.certs.client(),
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["ID"])

    def running() -> list[dict[str, Any]] | None:
        tasks = [cluster.get(f"/tasks/{i}") for i in ids]
        return tasks if all(t["State"] == RUNNING for t in tasks) else None

    tasks = wait_for(running, 60, what="tasks Running over mutual TLS")
    workers = {cluster.given[0]: "tls-given", cluster.joined[0]: "tls-joined"}
    for task in tasks:
        assert containers_of(workers[task["Node"]], all=False), task


def test_a_worker_takes_calls_only_with_a_certificate_from_its_ca(cluster: Cluster) -> None:
    worker = f"https://127.0.0.1:{cluster.joined[1]}"
    certs, foreign = cluster.certs, cluster.foreign
    # The cluster's certificate gets an HTTP answer (/health is open; a command then
    # wants the worker's credential too): the refusals below are the TLS layer's.
    mine = httpx.get(f"{worker}/health", verify=certs.client("manager"), timeout=5)
    assert mine.status_code == 200, mine.text
    # Another CA's certificate, trusting the worker all the same, or no certificate:
    # refused in the handshake, before any HTTP.
    strangers = [foreign.client("manager", ca=certs.ca), certs.client()]
    for context in strangers:
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{worker}/tasks", json=task_event(), verify=context, timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{worker}/health", verify=context, timeout=5)
    # Nor does a worker of another cluster pass for this one's by its server certificate.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{worker}/health", verify=foreign.client("manager"), timeout=5)
    # The manager takes clients without a certificate (they bring tokens), not another CA's.
    assert httpx.get(f"{cluster.url}/nodes", verify=certs.client(), timeout=5).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{cluster.url}/nodes", verify=foreign.client("manager", certs.ca), timeout=5)


def test_the_cli_checks_the_manager_against_its_ca(cluster: Cluster) -> None:
    https = ["-m", cluster.url]
    listed = cube("--tls-ca", str(cluster.certs.ca), "node", *https)
    assert listed.returncode == 0, listed.stderr
    assert cluster.joined[0] in listed.stdout and cluster.given[0] in listed.stdout
    # From the environment, a bare address, a client certificate presented: https too.
    status = cube(
        "status",
        "-m",
        f"127.0.0.1:{cluster.port}",
        CUBE_TLS_CA=str(cluster.certs.ca),
        CUBE_TLS_CERT=str(cluster.certs.dir / "worker.pem"),
        CUBE_TLS_KEY=str(cluster.certs.dir / "worker-key.pem"),
    )
    assert status.returncode == 0, status.stderr
    # Without the cluster's CA the manager is not trusted: said in one line.
    line = one_line_error(cube("--tls-ca", str(cluster.foreign.ca), "status", *https))
    assert f"cannot reach manager at {cluster.url}: its certificate is not from the CA" in line
    # A certificate without its key.
    line = one_line_error(
        cube("--tls-ca", str(cluster.certs.ca), "--tls-cert", "x.pem", "node", *https)
    )
    assert line == "cube: --tls-cert and --tls-key go together (CUBE_TLS_CERT, CUBE_TLS_KEY)"


def test_plain_http_to_a_tls_listener_is_one_clear_line(cluster: Cluster, tmp_path: Path) -> None:
    plain = f"http://127.0.0.1:{cluster.port}"
    expected = f"cube: the manager at {plain} answered with TLS: use https:// and --tls-ca"
    assert one_line_error(cube("status", "-m", plain)) == expected
    assert one_line_error(cube("node", "-m", f"127.0.0.1:{cluster.port}")) == expected

    # A worker joining it over plain HTTP stops at once, saying so.
    port = free_port()
    args = _worker(tmp_path, cluster.certs, "tls-plain", port, "--join", plain)
    worker = _start([*args, "--join-token", JOIN], tmp_path / "plain.log")
    try:
        assert worker.proc is not None and worker.proc.wait(30) == 1
    finally:
        worker.stop()
    assert "Traceback" not in worker.output()
    assert worker.output().strip().splitlines()[-1] == (
        f"cube: the manager at {plain} answered with TLS: join it at https:// "
        "with --tls-cert, --tls-key and --tls-ca"
    )
    assert "tls-plain" not in cluster.nodes()


@pytest.mark.parametrize("command", ["manager", "worker"])
def test_a_server_given_half_its_tls_material_says_what_is_missing(
    command: str, tmp_path: Path
) -> None:
    certs = _init(tmp_path / "tls")
    port = str(free_port())
    base = [command, "-H", "127.0.0.1", "-p", port, "--data-dir", str(tmp_path)]
    cert = ["--tls-cert", str(certs.dir / f"{command}.pem")]
    assert one_line_error(cube(*base, *cert)) == "cube: --tls-cert needs --tls-key"
    ca_only = one_line_error(cube(*base, "--tls-ca", str(certs.ca)))
    assert ca_only == "cube: --tls-ca needs --tls-cert and --tls-key"
    wrong_key = [*cert, "--tls-key", str(certs.dir / "ca-key.pem")]
    assert "are not a PEM certificate and its key" in one_line_error(cube(*base, *wrong_key))


def test_a_worker_with_a_credential_and_tls_may_listen_beyond_loopback(tmp_path: Path) -> None:
    """Secure by default counts TLS as served: the same worker without it is refused."""
    certs = _init(tmp_path / "tls")
    port = free_port()
    args = ["worker", "-H", "0.0.0.0", "-p", str(port), "--data-dir", str(tmp_path)]
    line = one_line_error(cube(*args, "--token", "t-1"))
    assert "refusing to listen on 0.0.0.0 without TLS" in line
    worker = _start([*args, "--token", "t-1", *certs.served("worker")], tmp_path / "w.log")
    try:
        context = certs.client("manager")

        def up() -> bool:
            assert worker.proc is not None and worker.proc.poll() is None, worker.output()
            url = f"https://127.0.0.1:{port}/health"
            return httpx.get(url, verify=context, timeout=2).status_code == 200

        wait_for(up, 20, what="the worker on 0.0.0.0 over TLS")
    finally:
        worker.stop()
