"""`cube up` and `cube down`: a whole local cluster in one command, and its end.

`cube up` supervises: it starts the members, waits until the manager sees every
worker ready, then waits for Ctrl-C, SIGTERM or a member dying, and stops everything
in order. With ``--detach`` it returns once the cluster is ready and `cube down` does
the stopping later.

Stopping the cluster stops Cube's processes, not the tasks: workers leave their
containers running, as a Nomad client restart does, and the next `cube up` on the same
data directory adopts them again. `cube stop` stops tasks; `cube down --purge` also
removes the containers and the cluster's state.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from cube.cli.cluster import (
    CLUSTER_FILE,
    LOG_DIR,
    PID_FILE,
    TLS_DIR,
    Cluster,
    load_record,
    members_of,
    running_processes,
    stop_members,
    terminate,
)
from cube.cli.errors import CliError
from cube.clientconfig import FILE
from cube.manager.client import DEFAULT_PORT
from cube.worker.worker import LABEL_WORKER

DEFAULT_DATA_DIR = Path(".cube")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP reached `cube up`: time to stop the cluster."""


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="CUBE_DATA_DIR",
        help="Directory for the cluster's state, logs and pid file.",
    ),
]
StopTimeout = Annotated[
    float,
    typer.Option("--stop-timeout", help="Seconds each process gets to exit before SIGKILL."),
]


def up(
    workers: Annotated[int, typer.Option("-n", "--workers", help="How many workers.")] = 3,
    port: Annotated[
        int, typer.Option("--port", envvar="CUBE_MANAGER_PORT", help="The manager's port.")
    ] = DEFAULT_PORT,
    worker_port: Annotated[
        int,
        typer.Option(
            "--worker-port",
            envvar="CUBE_WORKER_PORT",
            help="The first worker's port; the others follow it.",
        ),
    ] = 5556,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    scheduler: Annotated[
        str, typer.Option("-s", "--scheduler", help="roundrobin or epvm.")
    ] = "epvm",
    detach: Annotated[
        bool,
        typer.Option("-d", "--detach", help="Return once ready; stop later with `cube down`."),
    ] = False,
    host: Annotated[
        str, typer.Option("-H", "--host", help="Address everything listens on.")
    ] = "127.0.0.1",
    name: Annotated[
        str,
        typer.Option(
            "--name",
            envvar="CUBE_CLUSTER_NAME",
            help="Cluster name; workers are <name>-1, <name>-2, ...",
        ),
    ] = "up",
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the cluster to be ready.")
    ] = 60.0,
    stop_timeout: StopTimeout = 20.0,
    log_level: Annotated[
        str, typer.Option("--log-level", help="Log level of the manager and workers.")
    ] = "info",
    ha: Annotated[
        bool,
        typer.Option(
            "--ha",
            help="Three managers (on --port and the two ports below it) on a local "
            "three-member etcd: any one of each may die.",
        ),
    ] = False,
    etcd_port: Annotated[
        int,
        typer.Option(
            "--etcd-port", help="With --ha: the first etcd member's port; the others follow."
        ),
    ] = 2379,
) -> None:
    """Start a local cluster: a manager and N workers, with persistent state in one directory."""
    cluster = Cluster(
        ha=ha,
        etcd_port=etcd_port,
        data_dir=data_dir,
        workers=workers,
        port=port,
        worker_port=worker_port,
        host=host,
        name=name,
        scheduler=scheduler,
        log_level=log_level,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    refuse_if_running(data_dir)
    cluster.check_free()

    procs: list[subprocess.Popen[bytes]] = []
    handed_over = False
    n = len(cluster.worker_members)
    what = "3 managers on a 3-member etcd" if ha else "a manager"
    print(f"Starting {what} and {plural(n, 'worker')} in {data_dir}/ ...", flush=True)
    with stop_signals_raise():
        try:
            procs = cluster.start(detach)
            cluster.save(supervisor=None if detach else os.getpid())
            cluster.wait_ready(procs, timeout)
            print(ready_message(cluster, detach), flush=True)
            if detach:
                handed_over = True
                return
            raise CliError(member_died(cluster))
        except Interrupted:
            print("\nStopping the cluster...", flush=True)
        finally:
            if not handed_over:
                shutdown(cluster, procs, stop_timeout)


def shutdown(cluster: Cluster, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    started = [m for m in cluster.members if m.pid]
    stop_members(started, timeout, say=lambda n: print(f"  stopped {n}", flush=True))
    for proc in procs:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.wait(1)  # reap a child that died on its own
    (cluster.data_dir / PID_FILE).unlink(missing_ok=True)


def member_died(cluster: Cluster) -> str:
    """Block until a member exits (without reaping it) and say which, and how."""
    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
    if info is None:
        return "a cluster process exited"
    member = next((m for m in cluster.members if m.pid == info.si_pid), None)
    what = member.title if member else f"process {info.si_pid}"
    if info.si_code == os.CLD_EXITED:
        how = f"exited with code {info.si_status}"
    else:
        how = f"was killed by {signal.Signals(info.si_status).name}"
    log = f" (log: {member.log})" if member else ""
    return f"{what} {how}; the cluster was stopped{log}"


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Turn Ctrl-C, SIGTERM and SIGHUP into :class:`Interrupted`, wherever `cube up` is."""

    raised = False

    def handler(signum: int, _: FrameType | None) -> None:
        # Only the first signal interrupts: a second Ctrl-C while the cluster is being
        # stopped must not abandon children half-stopped.
        nonlocal raised
        if not raised:
            raised = True
            raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def refuse_if_running(data_dir: Path) -> None:
    record = load_record(data_dir)
    if record is None:
        return
    if running_processes(record):
        hint = "cube down" if data_dir == DEFAULT_DATA_DIR else f"cube down --data-dir {data_dir}"
        raise CliError(
            f"a cluster is already running from {data_dir} (manager at "
            f"{record.get('manager', '?')}); stop it with `{hint}`"
        )
    (data_dir / PID_FILE).unlink(missing_ok=True)  # left by a cluster that was killed


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def ready_message(cluster: Cluster, detach: bool) -> str:
    n = len(cluster.worker_members)
    what = "3 managers on a 3-member etcd" if cluster.ha else "a manager"
    lines = [f"Cube is up: {what} and {plural(n, 'worker')}, state in {cluster.data_dir}/"]
    width = max(len(m.name) for m in cluster.members)
    for member in [*cluster.managers, *cluster.worker_members]:
        url = member.url(cluster.dial_host)
        lines.append(f"  {member.name:<{width}}  {url:<24}  log: {member.log}")
    for member in cluster.etcd_members:
        url = f"http://127.0.0.1:{member.port}"
        lines.append(f"  {member.name:<{width}}  {url:<24}  log: {member.log}")
    m = ""
    if cluster.ha:
        m = " -m " + ",".join(f"{cluster.dial_host}:{x.port}" for x in cluster.managers)
    elif cluster.manager_url != f"https://127.0.0.1:{DEFAULT_PORT}":
        m = f" -m {cluster.dial_host}:{cluster.port}"
    hints = [
        (f"cube run{m} -f examples/hello.json --wait", "run a web server task"),
        (f"cube status{m}", "list tasks"),
        (f"cube node{m}", "list workers"),
        (f"cube stop{m} TASK_ID", "stop a task"),
    ]
    width = max(len(command) for command, _ in hints)
    token, ca = cluster.data_dir / "token", cluster.data_dir / TLS_DIR / "ca.pem"
    lines += ["", "Try:", *(f"  {c:<{width}}   # {what}" for c, what in hints), ""]
    config = cluster.data_dir / FILE
    ui = cluster.manager.url(cluster.dial_host)
    lines.append(f"The web UI: {ui}/ui/ (log in with the token in {token})")
    lines.append(f"  the browser meets the cluster's own CA: trust {ca} or accept its warning once")
    lines.append(f"The API wants a token: the CLI finds it, and the address, in {config}")
    if cluster.data_dir != DEFAULT_DATA_DIR:
        lines.append(f"(from another directory: export CUBE_CONFIG={config.resolve()})")
    down = "cube down"
    if cluster.data_dir != DEFAULT_DATA_DIR:
        down += f" --data-dir {cluster.data_dir}"
    if detach:
        lines.append(f"`{down}` stops the cluster; add --purge to remove task containers too.")
    else:
        lines.append("Ctrl-C stops the cluster. Task containers keep running until `cube stop`.")
    return "\n".join(lines)


def down(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    purge: Annotated[
        bool,
        typer.Option("--purge", help="Also remove the cluster's task containers, state and logs."),
    ] = False,
    stop_timeout: StopTimeout = 20.0,
) -> None:
    """Stop a cluster started by `cube up` (task containers keep running unless --purge)."""
    record = load_record(data_dir)
    if record is None:
        print(f"No cluster is running from {data_dir}.")
    else:
        supervisor = running_processes({"supervisor": record.get("supervisor")})
        # A foreground `cube up` stops its own children in order; give it the time to.
        terminate(supervisor, stop_timeout * 2 + 5)
        for proc in supervisor:
            print(f"  stopped `cube up` (pid {proc.pid}), which stopped its cluster")
        members = members_of(record)
        stop_members(members, stop_timeout, say=lambda n: print(f"  stopped {n}"))
        (data_dir / PID_FILE).unlink(missing_ok=True)
        print(f"Cluster in {data_dir} stopped.")
    if purge:
        purge_cluster(data_dir)


def purge_cluster(data_dir: Path) -> None:
    """Remove what the cluster created: its containers, databases and logs; nothing else."""
    record = load_record(data_dir, CLUSTER_FILE)
    if record is None:
        print(f"Nothing to purge in {data_dir}.")
        return
    members = members_of(record)
    workers = [m.name for m in members if m.role == "worker"]
    removed = remove_containers(workers)
    if any(m.role == "etcd" for m in members):
        from cube.cli import ha

        ha.purge(data_dir)
    patterns = ["manager.db*", "join-token", "token", FILE, *(f"worker-{w}.db*" for w in workers)]
    patterns += [f"worker-{w}.term" for w in workers]  # the newest term each has seen
    patterns += [f"{LOG_DIR}/{m.name}.log" for m in members]
    patterns += [f"{TLS_DIR}/{name}" for name in ("ca*.pem", "manager*.pem", "worker*.pem")]
    for pattern in patterns:
        for path in data_dir.glob(pattern):
            path.unlink(missing_ok=True)
    for directory in (LOG_DIR, TLS_DIR, "etcd"):
        with contextlib.suppress(OSError):
            (data_dir / directory).rmdir()
    (data_dir / CLUSTER_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        data_dir.rmdir()
    print(f"Purged {data_dir}: removed {plural(removed, 'container')} and the cluster's state.")


def remove_containers(workers: list[str]) -> int:
    """Every container labelled with one of these workers' names, running or not."""
    import docker  # only purge needs Docker; the rest of the CLI starts without it

    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        raise CliError(f"cannot reach Docker to remove containers: {exc}") from None
    removed = 0
    try:
        for worker in workers:
            for container in client.containers.list(
                all=True, filters={"label": f"{LABEL_WORKER}={worker}"}
            ):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
                    removed += 1
    except docker.errors.DockerException as exc:
        raise CliError(f"cannot remove containers: {exc}") from None
    finally:
        client.close()
    return removed
