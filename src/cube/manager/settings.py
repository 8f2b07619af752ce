"""The manager's settings: every interval and limit is a flag of `cube manager`
(cube.cli.manager), and these are its defaults. A dataclass of plain values, so the
simulator and the tests make a manager with any of them changed."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass
class Settings:
    """Every interval is a flag; these are the defaults of `cube manager`."""

    poll_interval: float = 1.0
    watch_heartbeat: float = 10.0
    resync_interval: float = 30.0
    stats_interval: float = 2.0
    max_stats_rate: float = 200.0
    health_interval: float = 10.0
    health_grace: float = 5.0
    health_timeout: float = 2.0
    health_failures: int = 3
    health_concurrency: int = 100
    max_restarts: int = 3
    restart_backoff: float = 1.0
    restart_backoff_max: float = 30.0
    worker_timeout: float = 10.0  # for -w workers; joined ones heartbeat
    heartbeat_interval: float = 1.0
    heartbeat_grace: float = 2.0
    join_token: str | None = None
    token: str | None = None  # the management token; None: the API is open
    # What -w workers take commands with (their --token); None: the management token.
    worker_token: str | None = None
    event_retention_count: int = 50_000  # events kept, at most
    event_retention_age: float = 24 * 3600.0  # seconds an event is kept, at most
    request_timeout: float = 5.0
    # Sends in flight at once (each for SLOT_HOLD at most, see manager.dispatch): few
    # enough that a burst's placements queue into one or two requests per worker.
    send_concurrency: int = 16
    # Workers are called over HTTPS with this context (the manager's certificate as
    # the client's, theirs checked against the cluster CA); None: as addressed.
    tls: ssl.SSLContext | None = None
    # The leadership term this manager speaks for (several managers: the etcd revision
    # of its leader key), sent on every call to a worker, which refuses an older one
    # (cube.worker.fencing). None: a single manager, nothing sent.
    term: int | None = None
