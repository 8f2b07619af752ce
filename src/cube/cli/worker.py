"""`cube worker`: run a worker process on this machine."""

from __future__ import annotations

import socket
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from cube.cli.exposure import insecure_option, refusal
from cube.cli.tls import TlsCa, TlsCert, TlsKey

if TYPE_CHECKING:
    import ssl

    from cube.worker.join import Joiner


class DbType(StrEnum):
    memory = "memory"
    persistent = "persistent"


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)


def worker(
    host: Annotated[
        str,
        typer.Option(
            "-H",
            "--host",
            envvar="CUBE_WORKER_HOST",
            help="Address to listen on (beyond loopback only with a credential and TLS, "
            "or --insecure).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("-p", "--port", envvar="CUBE_WORKER_PORT", help="Port to listen on.")
    ] = 5556,
    name: Annotated[
        str | None,
        typer.Option(
            "-n",
            "--name",
            envvar="CUBE_WORKER_NAME",
            help="Worker name; labels its containers (default: <hostname>-<port>).",
        ),
    ] = None,
    dbtype: Annotated[
        DbType,
        typer.Option("-d", "--dbtype", envvar="CUBE_WORKER_DBTYPE", help="Where tasks are kept."),
    ] = DbType.memory,
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", envvar="CUBE_DATA_DIR", help="Directory for persistent state."),
    ] = Path(".cube"),
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            envvar="CUBE_WORKER_CONCURRENCY",
            help="Containers started at once, at most.",
        ),
    ] = 32,
    reconcile_interval: Annotated[
        float,
        typer.Option(
            "--reconcile-interval",
            envvar="CUBE_WORKER_RECONCILE_INTERVAL",
            help="Seconds between full checks against Docker.",
        ),
    ] = 5.0,
    stats_interval: Annotated[
        float,
        typer.Option(
            "--stats-interval",
            envvar="CUBE_WORKER_STATS_INTERVAL",
            help="Seconds between machine stats samples.",
        ),
    ] = 2.0,
    stop_timeout: Annotated[
        float,
        typer.Option(
            "--stop-timeout",
            envvar="CUBE_WORKER_STOP_TIMEOUT",
            help="Seconds a task gets to exit on stop.",
        ),
    ] = 10.0,
    keep_exited: Annotated[
        int,
        typer.Option(
            "--keep-exited",
            envvar="CUBE_WORKER_KEEP_EXITED",
            help="Exited containers kept for `cube logs`; the oldest beyond go (0: none).",
            min=0,
        ),
    ] = 50,
    cpus: Annotated[
        int,
        typer.Option(
            "--cpus",
            envvar="CUBE_WORKER_CPUS",
            help="Whole cores offered to the scheduler (default: all).",
            min=0,
        ),
    ] = 0,
    memory: Annotated[
        str,
        typer.Option(
            "--memory",
            envvar="CUBE_WORKER_MEMORY",
            help="Memory offered, e.g. 2GiB (default: all).",
        ),
    ] = "0",
    disk: Annotated[
        str,
        typer.Option(
            "--disk", envvar="CUBE_WORKER_DISK", help="Disk offered, e.g. 20GiB (default: all)."
        ),
    ] = "0",
    init: Annotated[
        bool,
        typer.Option(
            "--init/--no-init",
            envvar="CUBE_WORKER_INIT",
            help="Run tasks under Docker's init (docker run --init), so a stop's SIGTERM "
            "reaches programs that ignore it as PID 1, and zombies are reaped.",
        ),
    ] = True,
    join: Annotated[
        str | None,
        typer.Option(
            "--join",
            envvar="CUBE_JOIN",
            help="Join the manager at HOST:PORT (register, then heartbeat); several, "
            "comma-separated, for a cluster of managers: whichever answers.",
        ),
    ] = None,
    join_token: Annotated[
        str | None,
        typer.Option("--join-token", envvar="CUBE_JOIN_TOKEN", help="The manager's join token."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="CUBE_WORKER_TOKEN",
            help="Take commands only with this token (the manager's --worker-token, for "
            "the -w flow). A joined worker also takes the credential it gives at join.",
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            envvar="CUBE_ADVERTISE",
            help="HOST:PORT the manager reaches this worker at (default: this machine's "
            "address towards the manager, and --port).",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            envvar="CUBE_LABELS",
            help="A label for placement constraints, KEY=VALUE (repeat for more).",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        insecure_option(
            "Listen beyond loopback without a credential or TLS: anyone who reaches "
            "the worker may then run any container on it."
        ),
    ] = False,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="CUBE_LOG_LEVEL", help="debug, info, warning.")
    ] = "info",
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            hidden=True,
            help="Development only: 'simulated' keeps containers in memory (scale tests).",
        ),
    ] = "docker",
    simulated_latency: Annotated[
        float,
        typer.Option("--simulated-latency", hidden=True, help="Seconds per simulated start."),
    ] = 0.0,
) -> None:
    """Run a worker: accept tasks over HTTP and run them as Docker containers."""
    from cube.cli import tls
    from cube.config import serve, setup_logging  # FastAPI and uvicorn: servers only
    from cube.runtime.base import Runtime
    from cube.stats import StatsSampler
    from cube.store import Database, MemoryStore, Store
    from cube.task import Task, parse_size
    from cube.worker.api import create_app
    from cube.worker.credentials import Credentials, new_secret
    from cube.worker.fencing import Fence
    from cube.worker.worker import Capacity, Worker

    setup_logging(log_level)
    # Only its manager calls a worker: with a CA, a client certificate from it is required.
    served = tls.server_context(tls_cert, tls_key, tls_ca, require_client_cert=True)

    # A joined worker always has a credential (the secret it makes to join).
    missing = [] if token or join else ["a credential (--join or --token)"]
    if served is None:
        missing.append("TLS")  # its traffic, the credential included, would cross in clear
    refused = None if insecure else refusal("worker", host, missing)
    if refused:
        _fail(refused)
    try:
        capacity = Capacity(cores=cpus, memory=parse_size(memory), disk=parse_size(disk))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    name = name or f"{socket.gethostname()}-{port}"
    store: Store[Task]
    fence = Fence()
    if dbtype is DbType.persistent:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        store = Database(data_dir / f"worker-{safe}.db").store("tasks", Task)
        try:  # the newest leadership term seen: a restart must not forget it
            fence = Fence(data_dir / f"worker-{safe}.term")
        except (ValueError, OSError) as exc:
            _fail(str(exc))
    else:
        store = MemoryStore()
    engine: Runtime
    if runtime == "simulated":
        from cube.runtime.simulated import SimulatedRuntime

        engine = SimulatedRuntime(simulated_latency)
    elif runtime == "docker":
        from cube.runtime.docker import DockerRuntime

        engine = DockerRuntime(max_concurrency=concurrency, init=init)
    else:
        raise typer.BadParameter("expected 'docker' or 'simulated'", param_hint="--runtime")
    node = Worker(
        name,
        store,
        engine,
        concurrency=concurrency,
        reconcile_interval=reconcile_interval,
        stop_timeout=stop_timeout,
        keep_exited=keep_exited,
    )
    sampler = StatsSampler(interval=stats_interval, task_count=node.running_count)
    joiner = None
    secret = None
    if join is not None:
        labels = _labels(label or [])
        secret = new_secret()  # this process's: a restarted worker joins with a new one
        address = advertise or _advertise(join, host, port)
        calls = tls.client_context(tls_cert, tls_key, tls_ca) if served else None
        joiner = _join(join, join_token, address, name, labels, secret, calls)
    elif label:
        _fail("--label needs --join: labels are sent when the worker joins")
    app = create_app(node, sampler, capacity, joiner, Credentials(token, secret), fence)
    # The standard event loop: a worker waits on Docker, and uvloop would cost ~1 MB of
    # RSS for no gain (the manager, with its many connections, does use it).
    serve(app, host, port, log_level, loop="asyncio", tls=served)


def _labels(items: list[str]) -> dict[str, str]:
    from cube.constraints import parse_labels

    try:
        return parse_labels(items)
    except ValueError as exc:
        _fail(f"--label: {exc}")


def _join(
    manager: str,
    token: str | None,
    advertise: str,
    name: str,
    labels: dict[str, str],
    secret: str,
    tls: ssl.SSLContext | None,
) -> Joiner:
    """Join once now, so a refused token ends the command with one clear line (an
    unreachable manager is tried again in the background). With ``tls`` the worker
    serves HTTPS: it says so in the address it gives, and calls its manager over it."""
    import asyncio

    from cube.node import worker_addresses
    from cube.tls import https
    from cube.worker.join import Joiner, JoinRefused

    if not token:
        _fail("--join needs --join-token (or CUBE_JOIN_TOKEN)")
    try:
        worker_addresses(manager)
        worker_addresses(advertise)
    except ValueError as exc:
        _fail(str(exc))
    from cube.constraints import builtin_attributes

    registration = {
        "Name": name,
        "Api": https(advertise) if tls else advertise,
        "Labels": labels,
        "Attributes": builtin_attributes(),
        "Secret": secret,  # the manager presents it on every call to this worker
    }
    joiner = Joiner(manager, token, registration, tls=tls)
    try:
        asyncio.run(joiner.register())
    except JoinRefused as exc:
        _fail(str(exc))
    return joiner


def _fail(message: str) -> NoReturn:
    """One line and exit 1, as cube.cli.errors does (not imported: it loads the client
    side, which a worker does not need)."""
    typer.echo(f"cube: {message}", err=True)
    raise typer.Exit(1)


def _advertise(manager: str, host: str, port: int) -> str:
    """The address this machine has on the way to the manager (or the listen one)."""
    from urllib.parse import urlsplit

    if host not in ("0.0.0.0", "::", ""):
        return f"{host}:{port}"
    first = manager.split(",")[0].strip()  # of a list: the route to one of them will do
    target = urlsplit(first if "://" in first else f"http://{first}").hostname or ""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))  # UDP: no packet is sent, a route is chosen
            return f"{probe.getsockname()[0]}:{port}"
    except OSError:
        return f"{socket.gethostname()}:{port}"
