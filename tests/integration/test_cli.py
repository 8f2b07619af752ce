"""The `cube` command as users run it: a real process against a real cluster and Docker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import psutil
import pytest

from tests.support import (
    CUBE,
    ETCD,
    ROOT,
    ManagerProcess,
    WorkerProcess,
    containers_of,
    cube,
    free_port,
    ok,
    one_line_error,
    remove_containers,
    task_event,
    wait_for,
)

pytestmark = pytest.mark.docker

StartWorker = Callable[..., WorkerProcess]
StartManager = Callable[..., ManagerProcess]

PENDING, RUNNING, COMPLETED = 0, 2, 3
STATUS_HEADERS = ["ID", "NAME", "CREATED", "STATE", "CONTAINERNAME", "IMAGE", "RESTARTS", "NODE"]
NODE_HEADERS = [
    "NAME",
    "MEMORY (MiB)",
    "DISK (GiB)",
    "ROLE",
    "TASKS",
    "CPU %",
    "STATUS",
    "ELIGIBILITY",
    "LABELS",
]


def columns(output: str) -> list[str]:
    """Header names of a table (they contain single spaces, columns are split by two+)."""
    return [c.strip() for c in output.splitlines()[0].split("  ") if c.strip()]


def row_of(output: str, task_id: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(task_id[:8]))


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


# --- commands against a cluster started by the test ---------------------------------------


def test_run_wait_status_and_json_match_the_api(
    workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([workers(), workers()])
    result = cube("run", "-f", "examples/web.yaml", "--wait", manager=manager)
    out = ok(result)
    task_id = out.split()[1]
    assert "Pending" in out and "Running" in out, out
    task = manager.task(task_id)
    assert task["State"] == RUNNING and task["Name"] == "web"

    table = ok(cube("status", manager=manager))
    assert columns(table) == STATUS_HEADERS
    row = row_of(table, task_id)
    container = docker.from_env().containers.get(task["ContainerID"])
    assert container.name in row.split()  # CONTAINERNAME is Docker's real name
    assert "Running" in row and "cube/http:latest" in row and task["Node"] in row

    def same_as_api() -> bool:
        cli = json.loads(ok(cube("status", "-o", "json", manager=manager)))
        return bool(cli == manager.tasks())

    wait_for(same_as_api, timeout=30, what="`cube status -o json` equal to GET /tasks")
    one = json.loads(ok(cube("status", task_id[:8], "--output", "json", manager=manager)))
    assert one == manager.task(task_id)

    detail = ok(cube("status", task_id[:6], manager=manager))
    assert task_id in detail and "->80/tcp" in detail


def test_run_takes_the_books_task_event_json(workers: StartWorker, managers: StartManager) -> None:
    manager = managers([workers()])
    out = ok(cube("run", "-f", "examples/hello.json", "--wait", manager=manager))
    task = manager.task(out.split()[1])
    assert task["State"] == RUNNING and task["HealthCheck"] == "/health"
    port = task["HostPorts"]["80/tcp"][0]["HostPort"]
    assert f"ports 0.0.0.0:{port}->80/tcp" in out
    page = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2))
    assert "Hello from Cube" in page.text


def test_run_wait_reports_completion_and_failure(
    tmp_path: Path, workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([workers("--memory", "512MiB")])
    ok(cube("run", "-f", "examples/batch.json", "--wait", manager=manager))

    # An image that exists nowhere fails at its start on every engine. (A missing
    # command does not: some engines start the container and it exits 127 a moment
    # later, and --wait has rightly seen it Running by then.)
    broken = write(tmp_path, "broken.yaml", "Image: cube/no-such-image:latest\n")
    failed = one_line_error(cube("run", "-f", broken, "--wait", manager=manager))
    assert "failed:" in failed and "cube/no-such-image:latest" in failed

    big = write(tmp_path, "big.json", '{"Image": "cube/busybox:latest", "Memory": "64GiB"}')
    waited = one_line_error(cube("run", "-f", big, "--wait", "--timeout", "3", manager=manager))
    assert "not running after 3s: still Pending: no feasible node" in waited


def test_plan_shows_where_tasks_would_go_and_why_and_changes_nothing(
    tmp_path: Path, workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([workers("--memory", "512MiB"), workers("--memory", "512MiB")])
    job = write(
        tmp_path,
        "job.yaml",
        "Name: plan\nCount: 5\nTask: {Image: cube/http:latest, Memory: 200MiB}\n",
    )
    result = cube("plan", "-f", job, manager=manager)
    # Two 512 MiB workers hold two 200 MiB tasks each: the fifth would wait (exit 3).
    assert result.returncode == 3, f"{result.stdout}\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert lines[0] == "Job plan: new job, version 1; 5 to place (1 would wait), 0 to stop"
    assert lines[1].split() == ["TASK", "NODE", "WHY"]
    rows = lines[2:]
    placed = [r for r in rows if "evaluated" in r]
    assert len(placed) == 4 and all(r.split()[0] == "plan-v1" for r in rows)
    assert "no feasible node: 2 nodes lack memory (need 200 MiB)" in rows[-1]
    jobs = httpx.get(f"{manager.url}/jobs", timeout=5).json()
    assert manager.tasks() == [] and jobs == []  # nothing submitted

    as_json = json.loads(cube("plan", "-f", job, "-o", "json", manager=manager).stdout)
    assert (as_json["Change"], as_json["Waiting"], len(as_json["Place"])) == ("create", 1, 5)

    task = write(tmp_path, "task.yaml", "Image: cube/http:latest\nMemory: 64MiB\n")
    fits = ok(cube("plan", "-f", task, manager=manager))
    assert fits.splitlines()[0] == "Task: 1 to place"

    # Where a real task went, and why, on `cube status TASK`.
    out = ok(cube("run", "-f", task, "--wait", manager=manager))
    task_id = out.split()[1]
    detail = ok(cube("status", task_id, manager=manager))
    placement = next(line for line in detail.splitlines() if line.startswith("Placement"))
    assert "2 evaluated; epvm: " in placement and manager.task(task_id)["Node"] in placement


def test_the_manager_places_as_cube_plan_said_and_says_what_ran_out(
    tmp_path: Path, workers: StartWorker, managers: StartManager
) -> None:
    """Issue 15's must-show, with real processes: `cube plan` shows the placement the
    manager then makes for the same cluster state, and a task too large for every node
    says which resource ran out on how many nodes, in its plan and as its Reason.

    Round robin makes the check sharp: one task placed first leaves its turn part-way,
    so a plan that decided afresh, or on other state, would name other nodes."""
    nodes = [workers("--runtime", "simulated", "--memory", "1GiB") for _ in range(3)]
    manager = managers(nodes, "-s", "roundrobin")
    manager.wait_ready(workers=3)
    small = write(tmp_path, "small.yaml", "Image: cube/busybox:latest\nMemory: 100MiB\n")
    first = ok(cube("run", "-f", small, "--wait", manager=manager)).split()[1]
    assert manager.task(first)["State"] == RUNNING

    job = write(
        tmp_path,
        "job.yaml",
        "Name: foretold\nCount: 5\nTask: {Image: cube/busybox:latest, Memory: 100MiB}\n",
    )
    plan = json.loads(ok(cube("plan", "-f", job, "-o", "json", manager=manager)))
    said = Counter(p["Node"] for p in plan["Place"])
    assert plan["Waiting"] == 0 and sum(said.values()) == 5 and len(said) == 3
    assert manager.tasks() == [manager.task(first)]  # the plan stored nothing

    ok(cube("job", "run", "-f", job, "--detach", manager=manager))

    def placed() -> Counter[str] | None:
        tasks = httpx.get(f"{manager.url}/tasks", params={"job": "foretold"}, timeout=5).json()
        done = len(tasks) == 5 and all(t["State"] == RUNNING for t in tasks)
        return Counter(t["Node"] for t in tasks) if done else None

    assert wait_for(placed, 60, what="the job's 5 tasks Running") == said

    # Too large for every node: the plan and then the task say what ran out, where.
    big = write(tmp_path, "big.yaml", "Image: cube/busybox:latest\nMemory: 64GiB\n")
    want = "no feasible node: 3 nodes lack memory (need 64 GiB)"
    planned = cube("plan", "-f", big, manager=manager)
    assert planned.returncode == 3 and want in planned.stdout, planned.stdout + planned.stderr
    task_id = ok(cube("run", "-q", "-f", big, manager=manager)).strip()
    waiting = manager.wait_task(task_id, lambda t: t["Reason"] == want, what=want)
    assert (waiting["State"], waiting["Reason"]) == (PENDING, want)
    assert waiting["Placement"]["NodesFiltered"] == {"memory": 3}
    detail = ok(cube("status", task_id, manager=manager))
    assert f"Reason          {want}" in detail
    assert "Placement       3 evaluated; filtered: memory 3" in detail


def test_node_table_and_json_match_the_api(workers: StartWorker, managers: StartManager) -> None:
    nodes = [workers("--memory", "1GiB"), workers("--memory", "2GiB")]
    manager = managers(nodes)
    table = ok(cube("node", manager=manager))
    assert columns(table) == NODE_HEADERS
    for worker, mib in zip(nodes, ("1024", "2048"), strict=True):
        row = next(line for line in table.splitlines() if line.startswith(worker.address))
        assert row.split()[1] == mib and row.split()[3] == "worker" and "ready" in row

    def comparable(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in n.items() if k not in ("Stats", "CpuPercent")} for n in nodes]

    def same_as_api() -> bool:
        cli = json.loads(ok(cube("node", "-o", "json", manager=manager)))
        api = httpx.get(f"{manager.url}/nodes", timeout=5).json()
        return bool(comparable(cli) == comparable(api) and all(n["Stats"] for n in cli))

    wait_for(same_as_api, timeout=30, what="`cube node -o json` equal to GET /nodes")


def test_stop_by_unique_prefix_and_refuse_an_ambiguous_one(
    workers: StartWorker, managers: StartManager
) -> None:
    worker = workers("--stop-timeout", "1")  # sleep ignores SIGTERM: do not wait 10 s for it
    manager = managers([worker])
    stem = uuid.uuid4().hex[:7]
    ids = [f"{stem}0-0000-4000-8000-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    ids[1] = f"{stem}1" + ids[1][8:]
    for task_id in ids:
        body = task_event("cube/busybox:latest", Cmd=["sleep", "300"])
        body["Task"]["ID"] = task_id
        manager.submit(body)
    for task_id in ids:
        manager.wait_task(task_id, lambda t: t["State"] == RUNNING)

    ambiguous = one_line_error(cube("stop", stem, manager=manager))
    assert "ambiguous" in ambiguous and ids[0][:13] in ambiguous and ids[1][:13] in ambiguous

    out = ok(cube("stop", f"{stem}1", manager=manager))
    assert ids[1] in out
    manager.wait_task(ids[1], lambda t: t["State"] == COMPLETED, timeout=60, what="stopped")
    assert manager.task(ids[0])["State"] == RUNNING
    assert [c.labels["cube.task"] for c in containers_of(worker.name, all=False)] == [ids[0]]
    again = ok(cube("stop", ids[1], manager=manager))
    assert "already Completed" in again


# --- errors: one line, exit 1, never a traceback ----------------------------------------


def test_user_errors_without_a_manager_are_one_line(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    for command in (["status"], ["node"], ["stop", "abc"], ["run", "-f", "examples/web.yaml"]):
        line = one_line_error(cube(*command, "-m", nobody))
        assert line == f"cube: cannot reach manager at http://{nobody}: connection refused"
    line = one_line_error(cube("status", manager=nobody))  # from CUBE_MANAGER
    assert nobody in line

    missing = one_line_error(cube("run", "-f", str(tmp_path / "nope.json"), "-m", nobody))
    assert "no such file" in missing
    bad_json = write(tmp_path, "bad.json", '{"Name": "x",\n "Image": }\n')
    assert "invalid JSON" in one_line_error(cube("run", "-f", bad_json, "-m", nobody))
    bad_yaml = write(tmp_path, "bad.yaml", "Name: x\n  Image: [oops\n")
    assert "invalid YAML" in one_line_error(cube("run", "-f", bad_yaml, "-m", nobody))
    listed = write(tmp_path, "list.yaml", "- Image: x\n")
    assert "one object" in one_line_error(cube("run", "-f", listed, "-m", nobody))


def test_user_errors_from_the_manager_are_one_line(
    tmp_path: Path, workers: StartWorker, managers: StartManager
) -> None:
    manager = managers([workers()])
    no_image = write(tmp_path, "no-image.yaml", "Name: lonely\n")
    line = one_line_error(cube("run", "-f", no_image, manager=manager))
    assert "invalid task" in line and "Image" in line
    typo = write(tmp_path, "typo.json", '{"Image": "cube/busybox:latest", "Memroy": 5}')
    assert "unknown field" in one_line_error(cube("run", "-f", typo, manager=manager))

    unknown = str(uuid.uuid4())
    for command in (["stop", unknown], ["status", unknown], ["stop", "fffff"]):
        line = one_line_error(cube(*command, manager=manager))
        assert "not found" in line or "no task" in line, line


def test_manager_refuses_a_malformed_worker_and_keeps_one_of_a_duplicate(tmp_path: Path) -> None:
    for bad in ("host:abc", "127.0.0.1:5556,:5556", "h:99999", " , "):
        line = one_line_error(cube("manager", "-p", str(free_port()), "-w", bad, timeout=30))
        assert line.startswith("cube: --workers: "), line
    line = one_line_error(cube("manager", "-p", str(free_port()), CUBE_WORKERS="w:x"))
    assert "invalid worker address 'w:x'" in line

    worker = f"127.0.0.1:{free_port()}"  # nobody there: the node stays down, and listed
    port = free_port()
    args = ["manager", "-H", "127.0.0.1", "-p", str(port), "--data-dir", str(tmp_path)]
    args += ["-w", f"{worker},{worker}, http://{worker}/"]
    manager = ManagerProcess(args=args, log=tmp_path / "manager.log", port=port).start()
    try:
        nodes = wait_for(lambda: httpx.get(f"{manager.url}/nodes", timeout=2).json())
        assert [node["Name"] for node in nodes] == [worker]
    finally:
        manager.stop()


# --- cube up / down -------------------------------------------------------------------------


def port_block(count: int) -> int:
    """A first port with ``count`` free ports after it, for a cluster's workers."""

    def find() -> int | None:
        base = free_port()
        if base + count >= 65535:
            return None
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return None
        return base

    return wait_for(find, timeout=10, what="a block of free ports")


@pytest.fixture
def cluster_name() -> Iterator[str]:
    """A unique cluster name; its workers' containers are removed afterwards, whatever happens."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    for i in range(1, 4):
        remove_containers(f"{name}-{i}")


def ssl_context(data_dir: Path) -> ssl.SSLContext:
    """What a client of a `cube up` cluster trusts: the CA it made."""
    return ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem"))


def recorded_pids(data_dir: Path) -> list[int]:
    record = json.loads((data_dir / "up.pid").read_text())
    return [m["pid"] for m in record["members"]]


def gone(pids: list[int]) -> bool:
    def dead(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(dead(pid) for pid in pids)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_cube_up_runs_a_cluster_and_stops_it_on_sigterm(tmp_path: Path, cluster_name: str) -> None:
    data_dir = tmp_path / "cluster"
    port, first_worker = free_port(), port_block(2)
    args = ["up", "-n", "2", "--port", str(port), "--worker-port", str(first_worker)]
    args += ["--data-dir", str(data_dir), "--name", cluster_name]
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*CUBE, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        output = tmp_path / "up.log"
        wait_for(lambda: "Ctrl-C" in output.read_text(), timeout=90, what="cube up ready")
        pids = recorded_pids(data_dir)
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
        text = output.read_text()
        assert f"https://127.0.0.1:{port}" in text and f"{cluster_name}-2" in text
        assert f"cube status -m 127.0.0.1:{port}" in text

        # A token was made; the CLI finds it, with the address, where `cube up` wrote them.
        config = data_dir / "client.json"
        assert config.stat().st_mode & 0o777 == 0o600
        manager = f"127.0.0.1:{port}"
        # Mutual TLS with the cluster's own CA, and a token: plain HTTP, or no token, fail.
        plain = one_line_error(cube("node", manager=f"http://{manager}"))
        assert "answered with TLS: use https:// and --tls-ca" in plain
        ca = str(data_dir / "tls" / "ca.pem")
        assert "a token is needed" in one_line_error(cube("node", manager=manager, CUBE_TLS_CA=ca))
        nodes = json.loads(ok(cube("node", "-o", "json", CUBE_CONFIG=str(config))))
        assert sorted(n["Status"] for n in nodes) == ["ready", "ready"]
        out = ok(cube("run", "-f", "examples/hello.json", "--wait", CUBE_DATA_DIR=str(data_dir)))
        assert "Running" in out

        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, output.read_text()
        wait_for(lambda: gone(pids), timeout=10, what="children gone")
        assert not (data_dir / "up.pid").exists()
        assert "stopped manager" in output.read_text()
        # Workers keep their containers when stopped, like a Nomad client restart.
        assert containers_of(f"{cluster_name}-1", all=False) or containers_of(
            f"{cluster_name}-2", all=False
        )
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        kill_all(pids)
        log.close()


def test_quick_start_script_then_cube_down(tmp_path: Path, cluster_name: str) -> None:
    """What README's first command does, on ports and a directory of the test's own."""
    data_dir = tmp_path / "quick"
    port, first_worker = free_port(), port_block(3)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CUBE_")},
        "CUBE_DATA_DIR": str(data_dir),
        "CUBE_MANAGER_PORT": str(port),
        "CUBE_WORKER_PORT": str(first_worker),
        "CUBE_CLUSTER_NAME": cluster_name,
    }
    pids: list[int] = []
    try:
        result = subprocess.run(
            [str(ROOT / "scripts" / "up.sh")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        pids = recorded_pids(data_dir)
        assert "Running" in result.stdout and "curl http://127.0.0.1:" in result.stdout
        token = (data_dir / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        api = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ssl_context(data_dir))
        assert api.get("/tasks", timeout=5).status_code == 401
        tasks = api.get("/tasks", timeout=5, headers=headers).json()
        assert [(t["Name"], t["State"]) for t in tasks] == [("hello", RUNNING)]

        again = one_line_error(cube("up", "-d", "--data-dir", str(data_dir)))
        assert "already running" in again

        down = ok(cube("down", "--purge", "--data-dir", str(data_dir)))
        assert "stopped manager" in down and "removed 1 container" in down
        wait_for(lambda: gone(pids), timeout=10, what="cluster processes gone")
        assert not any(containers_of(f"{cluster_name}-{i}") for i in (1, 2, 3))
        assert not data_dir.exists()
        assert "No cluster is running" in ok(cube("down", "--data-dir", str(data_dir)))
    finally:
        if data_dir.exists():
            cube("down", "--data-dir", str(data_dir))
        kill_all(pids)


def test_cube_up_stops_everything_when_a_member_dies(tmp_path: Path, cluster_name: str) -> None:
    data_dir = tmp_path / "cluster"
    args = ["up", "-n", "1", "--port", str(free_port()), "--worker-port", str(free_port())]
    args += ["--data-dir", str(data_dir), "--name", cluster_name]
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        up = subprocess.Popen([*CUBE, *args], cwd=ROOT, stdout=stdout, stderr=stderr)
    pids: list[int] = []
    try:
        wait_for(lambda: "Ctrl-C" in out.read_text(), timeout=90, what="cube up ready")
        pids = recorded_pids(data_dir)
        os.kill(pids[1], signal.SIGKILL)  # the worker
        assert up.wait(60) == 1
        lines = err.read_text().splitlines()
        assert lines == [
            f"cube: the worker {cluster_name}-1 was killed by SIGKILL; the cluster was stopped"
            f" (log: {data_dir}/logs/{cluster_name}-1.log)"
        ]
        wait_for(lambda: gone(pids), timeout=10, what="children gone")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        kill_all(pids)


def test_cube_up_ha_survives_its_leader_and_down_purges_etcd(
    tmp_path: Path, cluster_name: str
) -> None:
    """`cube up --ha`: three managers on a three-member etcd; the leader SIGKILLed, the
    CLI (given every manager by client.json) carries on once another leads."""
    if not ETCD.exists():
        pytest.skip(f"{ETCD} is missing: scripts/setup.sh installs Debian's etcd-server")
    data_dir = tmp_path / "ha"
    managers, workers, etcd = port_block(3), port_block(2), port_block(6)
    port = managers + 2  # the managers listen on it and the two ports below
    args = ["up", "--ha", "-d", "-n", "2", "--port", str(port), "--worker-port", str(workers)]
    args += ["--etcd-port", str(etcd), "--data-dir", str(data_dir), "--name", cluster_name]
    config = {"CUBE_CONFIG": str(data_dir / "client.json")}
    pids: list[int] = []
    try:
        out = ok(cube(*args, timeout=180))
        pids = recorded_pids(data_dir)
        assert len(pids) == 8 and "3 managers on a 3-member etcd and 2 workers" in out
        for name in ("manager-1", "manager-2", "manager-3", "etcd-1", "etcd-2", "etcd-3"):
            assert name in out
        assert "Running" in ok(cube("run", "-f", "examples/hello.json", "--wait", **config))

        token = (data_dir / "token").read_text().strip()
        ca = ssl_context(data_dir)

        def health(p: int) -> dict[str, Any]:
            answer = httpx.get(f"https://127.0.0.1:{p}/health", verify=ca, timeout=5)
            return answer.json()  # type: ignore[no-any-return]

        views = [health(p) for p in (port, port - 1, port - 2)]
        assert [v["Leading"] for v in views].count(True) == 1
        leader = next(v["Leader"] for v in views if v["Leading"])
        record = json.loads((data_dir / "up.pid").read_text())
        (victim,) = [
            m["pid"]
            for m in record["members"]
            if m["role"] == "manager" and leader.endswith(f":{m['port']}")
        ]
        os.kill(victim, signal.SIGKILL)
        # Within CUBE_FAILOVER_WAIT: the lease (5 s) runs out, another manager leads.
        listed = json.loads(ok(cube("status", "-o", "json", **config, timeout=60)))
        assert [t["Name"] for t in listed] == ["hello"]
        assert "Running" in ok(cube("run", "-f", "examples/hello.json", "--wait", **config))
        headers = {"Authorization": f"Bearer {token}"}
        survivors = [p for p in (port, port - 1, port - 2) if not leader.endswith(f":{p}")]
        now = httpx.get(f"https://127.0.0.1:{survivors[0]}/health", verify=ca, timeout=5).json()
        assert now["Leader"] != leader and now["Term"] > views[0]["Term"]
        tasks = httpx.get(
            f"https://127.0.0.1:{survivors[1]}/tasks", verify=ca, headers=headers, timeout=5
        )
        assert sorted(t["State"] for t in tasks.json()) == [RUNNING, RUNNING]

        down = ok(cube("down", "--purge", "--data-dir", str(data_dir)))
        assert "stopped etcd-3" in down and "removed 2 containers" in down
        wait_for(lambda: gone(pids), timeout=10, what="cluster processes gone")
        assert not data_dir.exists()
    finally:
        if data_dir.exists():
            cube("down", "--data-dir", str(data_dir))
        kill_all(pids)
