"""`cube manager`: run the control plane."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cube.cli.exposure import insecure_option, refusal
from cube.cli.tls import TlsCa, TlsCert, TlsKey
from cube.cli.worker import DbType

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from cube.manager.backend import Backend
    from cube.manager.etcd_backend import EtcdBackend


def register(app: typer.Typer) -> None:
    app.command("manager")(manager)


def manager(
    host: Annotated[
        str,
        typer.Option(
            "-H",
            "--host",
            envvar="CUBE_MANAGER_HOST",
            help="Address to listen on (beyond loopback only with --token, or --insecure).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("-p", "--port", envvar="CUBE_MANAGER_PORT", help="Port to listen on.")
    ] = 5555,
    workers: Annotated[
        str,
        typer.Option(
            "-w",
            "--workers",
            envvar="CUBE_WORKERS",
            help="Workers as host:port,host:port,... (default: localhost:5556, or none "
            "when workers join with a join token).",
        ),
    ] = "",
    scheduler: Annotated[
        str,
        typer.Option("-s", "--scheduler", envvar="CUBE_SCHEDULER", help="roundrobin or epvm."),
    ] = "epvm",
    dbtype: Annotated[
        DbType,
        typer.Option(
            "-d", "--dbType", "--dbtype", envvar="CUBE_MANAGER_DBTYPE", help="Where tasks are kept."
        ),
    ] = DbType.memory,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="CUBE_MANAGER_STORE",
            help="Where the manager's state is kept: memory, sqlite (DATA_DIR/manager.db, "
            "as -d persistent) or etcd://HOST:PORT,HOST:PORT.../PREFIX (the prefix is "
            "optional: /cube/ by default; see docs/operations.md). Given, it is used "
            "instead of -d. On etcd, several managers elect one leader.",
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            envvar="CUBE_MANAGER_ADVERTISE",
            help="With --store etcd://: the address other managers forward requests to "
            "this one at (default: http(s)://HOST:PORT; needed when HOST is 0.0.0.0).",
        ),
    ] = None,
    lease_ttl: Annotated[
        int,
        typer.Option(
            "--lease-ttl",
            envvar="CUBE_MANAGER_LEASE_TTL",
            min=2,
            help="With --store etcd://: seconds a leader's lease lasts unrefreshed; a dead "
            "leader is replaced within about this long.",
        ),
    ] = 5,
    data_dir: Annotated[
        Path,
        typer.Option("--data-dir", envvar="CUBE_DATA_DIR", help="Directory for persistent state."),
    ] = Path(".cube"),
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            envvar="CUBE_MANAGER_POLL_INTERVAL",
            help="Seconds before asking a worker again after its task stream broke (or, "
            "for a worker that cannot stream, between polls of its tasks).",
        ),
    ] = 1.0,
    watch_heartbeat: Annotated[
        float,
        typer.Option(
            "--watch-heartbeat",
            envvar="CUBE_MANAGER_WATCH_HEARTBEAT",
            help="Seconds a worker's task stream may stay silent (it sends a line at least "
            "this often).",
        ),
    ] = 10.0,
    resync_interval: Annotated[
        float,
        typer.Option(
            "--resync-interval",
            envvar="CUBE_MANAGER_RESYNC_INTERVAL",
            help="Seconds between full task lists from each worker (changes stream between).",
        ),
    ] = 30.0,
    stats_interval: Annotated[
        float,
        typer.Option(
            "--stats-interval",
            envvar="CUBE_MANAGER_STATS_INTERVAL",
            help="Seconds between stats from each worker (in its task stream, or polled).",
        ),
    ] = 2.0,
    health_interval: Annotated[
        float,
        typer.Option(
            "--health-interval",
            envvar="CUBE_MANAGER_HEALTH_INTERVAL",
            help="Seconds between task health checks.",
        ),
    ] = 10.0,
    health_grace: Annotated[
        float,
        typer.Option(
            "--health-grace",
            envvar="CUBE_MANAGER_HEALTH_GRACE",
            help="Seconds after start before health checks.",
        ),
    ] = 5.0,
    health_timeout: Annotated[
        float,
        typer.Option(
            "--health-timeout",
            envvar="CUBE_MANAGER_HEALTH_TIMEOUT",
            help="Seconds a health check's endpoint has to answer.",
        ),
    ] = 2.0,
    health_failures: Annotated[
        int,
        typer.Option(
            "--health-failures",
            envvar="CUBE_MANAGER_HEALTH_FAILURES",
            min=1,
            help="Consecutive failed health checks before a task counts unhealthy.",
        ),
    ] = 3,
    health_concurrency: Annotated[
        int,
        typer.Option(
            "--health-concurrency",
            envvar="CUBE_MANAGER_HEALTH_CONCURRENCY",
            min=1,
            help="Health checks in flight at once, at most.",
        ),
    ] = 100,
    max_restarts: Annotated[
        int,
        typer.Option(
            "--max-restarts",
            envvar="CUBE_MANAGER_MAX_RESTARTS",
            help="Restarts of a failing task, at most.",
        ),
    ] = 3,
    restart_backoff: Annotated[
        float,
        typer.Option(
            "--restart-backoff",
            envvar="CUBE_MANAGER_RESTART_BACKOFF",
            help="Delay before the second restart (the first is at once); doubles each time.",
        ),
    ] = 1.0,
    restart_backoff_max: Annotated[
        float,
        typer.Option(
            "--restart-backoff-max",
            envvar="CUBE_MANAGER_RESTART_BACKOFF_MAX",
            help="Longest restart delay.",
        ),
    ] = 30.0,
    worker_timeout: Annotated[
        float,
        typer.Option(
            "--worker-timeout",
            envvar="CUBE_MANAGER_WORKER_TIMEOUT",
            help="Seconds of silence before a -w worker is down (joined ones heartbeat).",
        ),
    ] = 10.0,
    join_token: Annotated[
        str | None,
        typer.Option(
            "--join-token",
            envvar="CUBE_JOIN_TOKEN",
            help="What a worker must present to join (default: the data directory's "
            "join-token file, if any; without one, workers cannot join).",
        ),
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="CUBE_TOKEN",
            help="The management token: every route but /health then needs a token "
            "(default: the data directory's token file, if any; without one the API is "
            "open).",
        ),
    ] = None,
    worker_token: Annotated[
        str | None,
        typer.Option(
            "--worker-token",
            envvar="CUBE_WORKER_TOKEN",
            help="What -w workers take commands with (their --token; default: the "
            "management token). Joined workers each give their own when they join.",
        ),
    ] = None,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            envvar="CUBE_HEARTBEAT_INTERVAL",
            min=0.05,
            help="Seconds between a joined worker's heartbeats.",
        ),
    ] = 1.0,
    heartbeat_grace: Annotated[
        float,
        typer.Option(
            "--heartbeat-grace",
            envvar="CUBE_HEARTBEAT_GRACE",
            min=0.0,
            help="Seconds past a missed heartbeat before a joined worker is down.",
        ),
    ] = 2.0,
    event_retention_count: Annotated[
        int,
        typer.Option(
            "--event-retention-count",
            envvar="CUBE_EVENT_RETENTION_COUNT",
            min=1,
            help="Events kept for GET /events, at most (the newest).",
        ),
    ] = 50_000,
    event_retention_age: Annotated[
        float,
        typer.Option(
            "--event-retention-age",
            envvar="CUBE_EVENT_RETENTION_AGE",
            min=1.0,
            help="Seconds an event is kept for GET /events, at most.",
        ),
    ] = 24 * 3600.0,
    insecure: Annotated[
        bool,
        insecure_option(
            "Listen beyond loopback without a token: anyone who reaches the manager "
            "may then run any container on every worker."
        ),
    ] = False,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="CUBE_LOG_LEVEL", help="debug, info, warning.")
    ] = "info",
) -> None:
    """Run a manager: accept tasks, place them on workers, keep them running."""
    import dataclasses

    from cube.cli import tls
    from cube.cli.errors import CliError
    from cube.config import serve, setup_logging  # FastAPI and uvicorn: servers only
    from cube.manager.api import create_app
    from cube.manager.manager import Manager
    from cube.manager.settings import Settings
    from cube.node import worker_addresses
    from cube.scheduler import make_scheduler
    from cube.tls import https

    setup_logging(log_level)
    # Served with client certificates optional (the CLI comes with a token), and
    # workers called with this one's certificate, theirs checked against the CA.
    served = tls.server_context(tls_cert, tls_key, tls_ca, require_client_cert=False)
    calls = tls.client_context(tls_cert, tls_key, tls_ca) if served else None
    try:
        chosen = make_scheduler(scheduler)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scheduler") from None

    token = join_token or _token_file(data_dir / "join-token")
    management = api_token or _token_file(data_dir / "token")
    refused = None if insecure else refusal("manager", host, [] if management else ["--token"])
    if refused:
        raise CliError(refused)
    try:
        if workers:  # given: it must name at least one
            addresses = worker_addresses(workers)
        else:
            addresses = [] if token else worker_addresses("localhost:5556")
    except ValueError as exc:
        raise CliError(f"--workers: {exc}") from None
    if calls is not None:
        addresses = [https(a) for a in addresses]  # an explicit http:// too: mutual TLS

    settings = Settings(
        poll_interval=poll_interval,
        watch_heartbeat=watch_heartbeat,
        resync_interval=resync_interval,
        stats_interval=stats_interval,
        health_interval=health_interval,
        health_grace=health_grace,
        health_timeout=health_timeout,
        health_failures=health_failures,
        health_concurrency=health_concurrency,
        max_restarts=max_restarts,
        restart_backoff=restart_backoff,
        restart_backoff_max=restart_backoff_max,
        worker_timeout=worker_timeout,
        heartbeat_interval=heartbeat_interval,
        heartbeat_grace=heartbeat_grace,
        join_token=token,
        token=management,
        worker_token=worker_token,
        tls=calls,
        event_retention_count=event_retention_count,
        event_retention_age=event_retention_age,
    )
    if store is not None and store.startswith("etcd://"):
        if dbtype is DbType.persistent:
            raise CliError(f"-d persistent and --store {store} disagree: give one of them")
        me = _advertised(advertise, host, port, served is not None)
        _check_etcd(store)
        from cube.manager.api import Leadership
        from cube.manager.replica import on_etcd

        def build(backend: Backend, term: int, step_down: Callable[[], None]) -> FastAPI:
            elected = dataclasses.replace(settings, term=term)
            leader = Manager(addresses, chosen, backend, elected, step_down=step_down)
            return create_app(leader, Leadership(me, term))

        def view(backend: EtcdBackend) -> tuple[Manager, FastAPI]:
            passive = Manager(addresses, chosen, backend, settings)
            return passive, create_app(passive, passive=True)

        replica = on_etcd(store, me, build, ttl=lease_ttl, tls=calls, view=view)
        serve(replica, host, port, log_level, tls=served)
        return
    node = Manager(addresses, chosen, _backend(store, dbtype, data_dir), settings)
    serve(create_app(node), host, port, log_level, tls=served)


def _advertised(advertise: str | None, host: str, port: int, tls: bool) -> str:
    """Where other managers reach this one: as given, else as it listens."""
    from cube.cli.errors import CliError

    scheme = "https" if tls else "http"
    if advertise:
        return (advertise if "://" in advertise else f"{scheme}://{advertise}").rstrip("/")
    if host in ("0.0.0.0", "::", ""):
        raise CliError(
            f"--advertise is needed with --host {host or '0.0.0.0'} and --store etcd://: "
            "the address other managers reach this one at"
        )
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _check_etcd(store: str) -> None:
    from cube.cli.errors import CliError
    from cube.manager.etcd_backend import EtcdBackend, StoreUnavailable

    try:
        EtcdBackend.check(store)
    except ValueError as exc:
        raise CliError(f"--store: {exc}") from None
    except StoreUnavailable as exc:
        raise CliError(f"--store {store}: {exc}") from None


def _backend(store: str | None, dbtype: DbType, data_dir: Path) -> Backend:
    """The store named by --store, else by -d (the book's flag, as it always was)."""
    from cube.cli.errors import CliError
    from cube.manager.backend import MemoryBackend, SqliteBackend

    if store is None:
        store = "sqlite" if dbtype is DbType.persistent else "memory"
    elif dbtype is DbType.persistent and store != "sqlite":
        raise CliError(f"-d persistent and --store {store} disagree: give one of them")
    if store == "memory":
        return MemoryBackend()
    if store == "sqlite":
        return SqliteBackend(data_dir / "manager.db")
    raise CliError(f"--store {store}: memory, sqlite or etcd://HOST:PORT[,...][/prefix]")


def _token_file(path: Path) -> str | None:
    """The token in a file, if there is one (its first line, trimmed)."""
    from cube.cli.errors import CliError

    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise CliError(f"{path} is empty: put the token in it, or remove it")
    return token
