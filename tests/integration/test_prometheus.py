"""A real Prometheus server scrapes a real cluster: a TLS manager with tokens and a
worker that joined it, both on loopback. Prometheus presents a read token to the
manager and a client certificate from the cluster CA (`cube tls cert`) to the worker,
as docs/operations.md tells an operator to; every target is up, and Cube's metrics are
queryable through Prometheus' own HTTP API with the values the cluster has.

Debian's ``prometheus`` package (scripts/setup.sh installs it) gives the binary; it
runs here with a config and storage of its own, never as the package's service."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    CUBE,
    ROOT,
    Process,
    containers_of,
    free_port,
    remove_containers,
    task_event,
    wait_for,
)

pytestmark = pytest.mark.docker

TOKEN, JOIN = "prom-mgmt-6b2d", "prom-join-19ce"
WORKER = "prom-worker"
RUNNING = 2


def cube(*args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CUBE_TLS", "CUBE_TOKEN"))}
    done = subprocess.run(
        [*CUBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=clean
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def served(tls: Path, name: str) -> list[str]:
    """A server's flags for the certificate ``cube tls init`` made it."""
    return [
        *("--tls-cert", str(tls / f"{name}.pem"), "--tls-key", str(tls / f"{name}-key.pem")),
        *("--tls-ca", str(tls / "ca.pem")),
    ]


@dataclass
class Scraped:
    manager: str  # host:port
    worker: str
    prometheus: str  # its API's base URL
    log: Path

    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.prometheus}/api/v1/{path}", params=params, timeout=5)
        answer.raise_for_status()
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: each series' value, by its job."""
        found = self.api("query", query=expr)
        assert found["resultType"] == "vector", found
        return {r["metric"].get("job", ""): float(r["value"][1]) for r in found["result"]}


def config(tmp: Path, tls: Path, manager: str, worker: str, token: str) -> Path:
    """A scrape config as docs/operations.md gives it, at a 1 s interval."""
    path = tmp / "prometheus.yml"
    path.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: cube-manager
    scheme: https
    authorization:
      credentials: {token}
    tls_config:
      ca_file: {tls}/ca.pem
    static_configs:
      - targets: ["{manager}"]
  - job_name: cube-workers
    scheme: https
    tls_config:
      ca_file: {tls}/ca.pem
      cert_file: {tls}/prometheus.pem
      key_file: {tls}/prometheus-key.pem
    static_configs:
      - targets: ["{worker}"]
"""
    )
    return path


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    binary = shutil.which("prometheus")
    assert binary, "no prometheus binary: scripts/setup.sh installs Debian's package"
    tmp = tmp_path_factory.mktemp("prometheus")
    tls = tmp / "tls"
    cube("tls", "init", "--dir", str(tls))
    cube("tls", "cert", "--dir", str(tls), "--name", "prometheus")  # its client certificate
    port, worker_port, prometheus_port = free_port(), free_port(), free_port()
    started: list[Process] = []
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        manager = Process(
            [
                "manager",
                *("-H", "127.0.0.1", "-p", str(port), "--data-dir", str(tmp)),
                *("--token", TOKEN, "--join-token", JOIN, "--poll-interval", "0.2"),
                *served(tls, "manager"),
            ],
            tmp / "manager.log",
        ).start()
        started.append(manager)
        url = f"https://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        ca = ssl.create_default_context(cafile=tls / "ca.pem")
        worker = Process(
            [
                "worker",
                *("-H", "127.0.0.1", "-p", str(worker_port), "-n", WORKER),
                *("--data-dir", str(tmp), "--join", f"127.0.0.1:{port}", "--join-token", JOIN),
                *served(tls, "worker"),
            ],
            tmp / "worker.log",
        ).start()
        started.append(worker)

        def ready() -> bool:
            for process in started:
                assert process.proc is not None and process.proc.poll() is None, process.output()
            nodes = httpx.get(f"{url}/nodes", headers=auth, verify=ca, timeout=5).json()
            return [n["Status"] for n in nodes] == ["ready"]

        wait_for(ready, 30, what="the worker ready over mutual TLS", detail=manager.output)
        # Prometheus gets a read token of its own, as an operator would give it.
        made = httpx.post(
            f"{url}/tokens", json={"Role": "read", "Name": "prometheus"}, headers=auth, verify=ca
        )
        assert made.status_code == 201, made.text
        path = config(
            tmp, tls, f"127.0.0.1:{port}", f"127.0.0.1:{worker_port}", made.json()["Secret"]
        )
        log = tmp / "prometheus.log"
        with log.open("wb") as out:
            prometheus = subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        yield Scraped(
            f"127.0.0.1:{port}",
            f"127.0.0.1:{worker_port}",
            f"http://127.0.0.1:{prometheus_port}",
            log,
        )
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(15)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(10)
        for process in reversed(started):
            process.stop()
        remove_containers(WORKER)


def test_prometheus_scrapes_the_manager_and_a_worker(scraped: Scraped) -> None:
    def detail() -> str:
        active = scraped.api("targets")["activeTargets"]
        seen = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in active]
        return f"{seen}\n{scraped.log.read_text(errors='replace')[-3_000:]}"

    def targets_up() -> list[dict[str, Any]] | None:
        active = scraped.api("targets")["activeTargets"]
        up = [t for t in active if t["health"] == "up"]
        return active if len(active) == 2 and len(up) == 2 else None

    # Every target up: the token passed the manager's guard, the certificate the
    # worker's handshake, and what each served parsed as Prometheus' text format.
    targets = wait_for(targets_up, 30, interval=0.2, what="both targets up", detail=detail)
    assert {t["scrapeUrl"] for t in targets} == {
        f"https://{scraped.manager}/metrics",
        f"https://{scraped.worker}/metrics",
    }
    assert scraped.query("up") == {"cube-manager": 1.0, "cube-workers": 1.0}
    # Nothing runs yet.
    wait_for(
        lambda: scraped.query('cube_tasks{state="Running"}') == {"cube-manager": 0.0},
        30,
        interval=0.2,
        what="cube_tasks scraped",
    )


def test_a_running_task_shows_in_prometheus(scraped: Scraped) -> None:
    url = f"https://{scraped.manager}"
    ca = ssl.create_default_context(cafile=scraped.log.parent / "tls" / "ca.pem")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = task_event("cube/busybox:latest", Cmd=["sleep", "300"])
    made = httpx.post(f"{url}/tasks", json=body, headers=auth, verify=ca, timeout=10)
    assert made.status_code == 201, made.text
    task_id = made.json()["ID"]

    def running() -> bool:
        task = httpx.get(f"{url}/tasks/{task_id}", headers=auth, verify=ca, timeout=5).json()
        return bool(task["State"] == RUNNING)

    wait_for(running, 60, what="the task Running")
    assert containers_of(WORKER, all=False)
    expected = {
        'cube_tasks{state="Running"}': {"cube-manager": 1.0},
        "cube_placements_total": {"cube-manager": 1.0},
        "cube_placement_latency_seconds_count": {"cube-manager": 1.0},
        'cube_nodes{status="ready"}': {"cube-manager": 1.0},
        "cube_nodes_streaming": {"cube-manager": 1.0},
        # docs/operations.md's query: ready workers polled rather than followed.
        'cube_nodes{status="ready"} - ignoring(status) cube_nodes_streaming': {"cube-manager": 0.0},
        'cube_worker_tasks{state="Running"}': {"cube-workers": 1.0},
        "cube_worker_container_starts_total": {"cube-workers": 1.0},
        # Ours to the manager; the manager's to the worker.
        'cube_http_requests_total{route="/tasks",method="POST",status="201"}': {
            "cube-manager": 1.0,
            "cube-workers": 1.0,
        },
    }

    def queried() -> dict[str, dict[str, float]] | None:
        seen = {expr: scraped.query(expr) for expr in expected}
        return seen if seen == expected else None

    try:
        wait_for(queried, 30, interval=0.2, what="the running task's figures in Prometheus")
    except AssertionError:
        raise AssertionError({expr: scraped.query(expr) for expr in expected}) from None
    # Worker's engine calls, by call name, in a histogram Prometheus reads as one.
    calls = scraped.query('cube_worker_docker_call_duration_seconds_count{call="start"}')
    assert calls == {"cube-workers": 1.0}
