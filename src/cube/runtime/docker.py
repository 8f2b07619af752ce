"""The Docker runtime: Cube's only edge that talks to a real container engine.

The official SDK blocks, so every call runs in this runtime's own thread pool, sized
together with the SDK's HTTP connection pool: the event loop never waits on Docker, and
concurrent starts are limited by the engine rather than by a lock or a small pool here.
The low-level ``APIClient`` is used directly because the high-level models add inspect
calls of their own; a start costs create + start + inspect, like ``docker run -d`` plus
the inspect that tells us the published ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import docker
import docker.utils
import requests
import urllib3
from docker.errors import APIError, DockerException, NotFound

from cube.runtime.base import (
    ContainerError,
    ContainerInfo,
    ContainerSpec,
    EventStream,
    LogOptions,
    LogStream,
    RuntimeUnavailable,
    parse_docker_time,
)
from cube.runtime.docker_streams import (
    EventReader,
    LogReader,
    ThreadStream,
)
from cube.runtime.docker_streams import (
    explain as _explain,
)
from cube.runtime.docker_streams import (
    one_line as _one_line,
)
from cube.runtime.threads import DaemonThreadPool

__all__ = ["DockerRuntime"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_List = list  # ``DockerRuntime.list`` shadows the builtin inside the class body.

# Failures of the transport rather than of the request: the engine is down, restarting,
# or not answering. APIError subclasses requests' HTTPError, so it is checked first.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
    DockerException,
)

# Statuses in which Docker's ExitCode is a placeholder, not a result.
_NOT_FINISHED = frozenset({"created", "running", "paused", "restarting"})


class DockerRuntime:
    """Runs containers on a Docker engine through the official SDK.

    The client is created on first use and dropped after a connection failure, so a
    runtime built while dockerd is down, or that saw dockerd restart, works again as
    soon as the engine answers; until then calls raise :class:`RuntimeUnavailable`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        max_concurrency: int = 32,
        *,
        timeout: float = 60.0,
        init: bool = False,
    ) -> None:
        """``timeout`` bounds each API call (a stop adds its grace period on top).

        ``init`` runs Docker's tiny init as PID 1, so images whose process ignores
        SIGTERM as PID 1 (busybox ``sh``, ``sleep``, ``httpd``) stop at once instead of
        after the whole grace period.
        """
        self._base_url = base_url
        self._concurrency = max(1, max_concurrency)
        self._timeout = max(1, math.ceil(timeout))
        self._init = init
        # Daemon threads: a call in progress (an image pull) must not hold up exit.
        self._executor = DaemonThreadPool(self._concurrency, "cube-docker")
        self._client: docker.APIClient | None = None
        self._client_lock = threading.Lock()
        self._streams: set[ThreadStream[Any]] = set()
        self._closed = False

    # -- the Runtime interface ---------------------------------------------------------

    async def start(self, spec: ContainerSpec) -> ContainerInfo:
        """Create and start a container, replacing any leftover with the same name.

        Creation is tried first and the image pulled only when the engine lacks it, and a
        name conflict is resolved only when it happens: the common case costs no extra
        round trips. A container that was created but would not start is removed, so a
        failed start leaves nothing behind.
        """
        return await self._run(self._start_sync, spec)

    async def stop(self, container_id: str, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, SIGKILL after ``timeout``), then remove."""
        await self._run(self._stop_sync, container_id, timeout)

    async def remove(self, container_id: str) -> None:
        """Remove at once, killing it if needed; a container already gone is fine."""
        await self._run(self._remove_sync, container_id)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """The container's current state, or None when it no longer exists."""
        return await self._run(self._inspect_sync, container_id)

    async def list(self, labels: dict[str, str]) -> _List[ContainerInfo]:
        """Every container, running or not, carrying all of ``labels``.

        The listing lacks exit codes, OOM kills and exact times, so each container is
        inspected, concurrently; containers removed in between are skipped.
        """
        ids = await self._run(self._list_sync, dict(labels))
        infos = await asyncio.gather(*(self.inspect(cid) for cid in ids))
        return [info for info in infos if info is not None]

    def events(self, labels: dict[str, str]) -> EventStream:
        """Container events carrying all of ``labels``, from the moment of this call.

        The stream asks the engine for events since the time of this call, so nothing
        is lost between subscribing and the connection being established. Close the
        iterator (``aclose``) to end the stream and its thread. When the engine goes
        away the iterator raises :class:`RuntimeUnavailable`; subscribe again to resume.
        """
        stream = EventReader(self._engine, self._streams.discard, dict(labels))
        self._streams.add(stream)
        return stream

    async def logs(self, container_id: str, options: LogOptions) -> LogStream:
        """The container's log, read by a thread of its own (a follow lasts as long as
        the container runs, and must not hold a slot that starts need).

        Returns once the engine has answered, so a missing container is
        :class:`NoSuchContainer` here rather than an empty stream.
        """
        if self._closed:
            raise RuntimeUnavailable("the Docker runtime is closed")
        stream = LogReader(self._engine, self._streams.discard, container_id, options)
        self._streams.add(stream)
        try:
            await stream.open()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def ping(self) -> None:
        """Check that the engine answers (and connect if not connected yet)."""
        await self._run(self._ping_sync)

    async def close(self) -> None:
        """End event streams, stop accepting calls and release connections."""
        if self._closed:
            return
        self._closed = True
        for stream in _List(self._streams):
            await stream.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- plumbing ----------------------------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise RuntimeUnavailable("the Docker runtime is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except (ContainerError, RuntimeUnavailable):
            raise
        except APIError as exc:
            # Each operation maps the API errors it expects; anything else means the
            # engine misbehaves, which the caller should treat like an outage.
            raise RuntimeUnavailable(f"Docker engine error: {_explain(exc)}") from exc
        except RuntimeError as exc:
            if self._closed:  # the executor was shut down under us
                raise RuntimeUnavailable("the Docker runtime is closed") from exc
            raise

    def _api(self) -> docker.APIClient:
        client = self._client
        if client is not None:
            return client
        with self._client_lock:
            if self._closed:
                raise RuntimeUnavailable("the Docker runtime is closed")
            if self._client is None:
                kwargs: dict[str, Any] = {"base_url": self._base_url}
                if self._base_url is None:
                    # Honour DOCKER_HOST / DOCKER_TLS_VERIFY like the docker CLI does.
                    kwargs = dict(docker.utils.kwargs_from_env())
                try:
                    # "auto" asks the engine for its API version: this is the first
                    # call that needs the engine, hence the lazy construction.
                    self._client = docker.APIClient(
                        version="auto",
                        timeout=self._timeout,
                        # Room for every worker thread plus a few event streams.
                        max_pool_size=self._concurrency + 4,
                        **kwargs,
                    )
                except _TRANSPORT_ERRORS as exc:
                    raise RuntimeUnavailable(
                        f"cannot reach the Docker engine: {_one_line(exc)}"
                    ) from exc
            return self._client

    @contextlib.contextmanager
    def _engine(self) -> Iterator[docker.APIClient]:
        """Yield the client, turning transport failures into RuntimeUnavailable."""
        api = self._api()
        try:
            yield api
        except APIError:
            raise
        except _TRANSPORT_ERRORS as exc:
            if isinstance(exc, requests.ConnectionError | ConnectionError):
                # Reconnect (and renegotiate the API version) on the next call: the
                # engine may have been restarted or upgraded.
                with self._client_lock:
                    if self._client is api:
                        self._client = None
            raise RuntimeUnavailable(f"cannot reach the Docker engine: {_one_line(exc)}") from exc

    def _ping_sync(self) -> None:
        with self._engine() as api:
            api.ping()

    def _start_sync(self, spec: ContainerSpec) -> ContainerInfo:
        with self._engine() as api:
            container_id = self._create(api, spec)
            try:
                api.start(container_id)
            except APIError as exc:
                self._remove_quietly(api, container_id)
                raise ContainerError(
                    f"container {spec.name!r} could not start: {_explain(exc)}"
                ) from exc
            try:
                data = api.inspect_container(container_id)
            except NotFound as exc:
                raise ContainerError(
                    f"container {spec.name!r} vanished right after it started"
                ) from exc
            return _container_info(data)

    def _create(self, api: docker.APIClient, spec: ContainerSpec) -> str:
        kwargs = self._create_kwargs(api, spec)
        pulled = False
        replaced = 0
        while True:
            try:
                created = api.create_container(**kwargs)
                return str(created["Id"])
            except NotFound as exc:
                # The only thing create can miss is the image (ImageNotFound, though
                # engines word it differently enough that NotFound is the safer test).
                if pulled:
                    raise ContainerError(
                        f"image {_image_ref(spec.image)!r} not found after pulling it: "
                        f"{_explain(exc)}"
                    ) from exc
                self._pull(api, spec.image)
                pulled = True
            except APIError as exc:
                if exc.status_code == 409 and replaced < 3:
                    # The name is taken by a leftover (a previous run of this task):
                    # replace it rather than fail the restart.
                    log.info("replacing leftover container %s", spec.name)
                    if not self._remove_quietly(api, spec.name):
                        time.sleep(0.1 * (replaced + 1))  # removal already in progress
                    replaced += 1
                    continue
                raise ContainerError(
                    f"container {spec.name!r} could not be created: {_explain(exc)}"
                ) from exc

    def _create_kwargs(self, api: docker.APIClient, spec: ContainerSpec) -> dict[str, Any]:
        bindings: dict[int | str, str | tuple[str, str] | None] = {}
        for port in spec.exposed_ports:
            bindings[_port_key(port)] = None  # None: a free host port chosen by Docker
        for port, host in spec.port_bindings.items():
            bindings[_port_key(port)] = _host_binding(host)
        memory = spec.memory if spec.memory > 0 else None
        nano_cpus = round(spec.cpu * 1e9) if spec.cpu > 0 else None
        host_config = api.create_host_config(
            port_bindings=bindings or None,
            mem_limit=memory,
            # Same as the limit: no swap on top, so the limit means what it says (as
            # Nomad does); exceeding it is an OOM kill, not a slow crawl.
            memswap_limit=memory,
            nano_cpus=nano_cpus,
            init=self._init or None,
        )
        return {
            "image": spec.image,
            "command": _List(spec.cmd) if spec.cmd else None,
            "environment": _List(spec.env) if spec.env else None,
            "ports": {port: {} for port in bindings} or None,
            "labels": dict(spec.labels),
            "host_config": host_config,
            "name": spec.name,
            "detach": True,
        }

    def _pull(self, api: docker.APIClient, image: str) -> None:
        ref = _image_ref(image)
        log.info("pulling image %s", ref)
        try:
            # Errors met after the pull began arrive in the stream with status 200.
            for line in api.pull(image, stream=True, decode=True):
                if isinstance(line, Mapping) and line.get("error"):
                    raise ContainerError(
                        f"image {ref!r} not found locally and pull failed: "
                        f"{_one_line(line['error'])}"
                    )
        except APIError as exc:
            raise ContainerError(
                f"image {ref!r} not found locally and pull failed: {_explain(exc)}"
            ) from exc

    def _remove_quietly(self, api: docker.APIClient, container: str) -> bool:
        """Force-remove; True when it is gone, False when a removal is still under way."""
        try:
            api.remove_container(container, v=True, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code == 409:  # "removal of container ... is already in progress"
                return False
            log.warning("could not remove container %s: %s", container, _explain(exc))
        return True

    def _stop_sync(self, container_id: str, timeout: float) -> None:
        with self._engine() as api:
            try:
                api.stop(container_id, timeout=max(0, math.ceil(timeout)))
            except NotFound:
                return
            except APIError as exc:
                raise ContainerError(
                    f"container {container_id[:12]} could not be stopped: {_explain(exc)}"
                ) from exc
            self._remove_sync_with(api, container_id)

    def _remove_sync(self, container_id: str) -> None:
        with self._engine() as api:
            self._remove_sync_with(api, container_id)

    def _remove_sync_with(self, api: docker.APIClient, container_id: str) -> None:
        try:
            api.remove_container(container_id, v=True, force=True)
        except NotFound:
            return
        except APIError as exc:
            if exc.status_code == 409 and "in progress" in _explain(exc):
                return
            raise ContainerError(
                f"container {container_id[:12]} could not be removed: {_explain(exc)}"
            ) from exc

    def _inspect_sync(self, container_id: str) -> ContainerInfo | None:
        with self._engine() as api:
            try:
                data = api.inspect_container(container_id)
            except NotFound:
                return None
            return _container_info(data)

    def _list_sync(self, labels: dict[str, str]) -> _List[str]:
        with self._engine() as api:
            filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
            rows = api.containers(all=True, filters=filters)
            return [str(row["Id"]) for row in rows]


# -- parsing Docker's JSON -------------------------------------------------------------


def _container_info(data: Mapping[str, Any]) -> ContainerInfo:
    state: Mapping[str, Any] = data.get("State") or {}
    config: Mapping[str, Any] = data.get("Config") or {}
    network: Mapping[str, Any] = data.get("NetworkSettings") or {}
    status = str(state.get("Status") or "")
    running = bool(state.get("Running"))
    exit_code: int | None = None
    raw_code = state.get("ExitCode")
    if not running and status not in _NOT_FINISHED and isinstance(raw_code, int):
        exit_code = raw_code
    started_at = parse_docker_time(state.get("StartedAt"))
    finished_at = parse_docker_time(state.get("FinishedAt"))
    if started_at is not None and finished_at is not None and finished_at < started_at:
        # Docker stamps StartedAt after the process runs: a command that exits at once
        # can "finish" a millisecond before it "started". Keep Finish >= Start for users.
        finished_at = started_at
    return ContainerInfo(
        id=str(data.get("Id") or ""),
        name=str(data.get("Name") or "").lstrip("/"),
        image=str(config.get("Image") or data.get("Image") or ""),
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        status=status,
        running=running,
        exit_code=exit_code,
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
        host_ports=_host_ports(network.get("Ports")),
        started_at=started_at,
        finished_at=finished_at,
    )


def _host_ports(ports: Any) -> dict[str, list[dict[str, str]]]:
    """NetworkSettings.Ports without the exposed-but-unpublished (null) entries."""
    result: dict[str, list[dict[str, str]]] = {}
    if not isinstance(ports, Mapping):
        return result
    for port, bindings in ports.items():
        if not bindings:
            continue
        entries = [
            {"HostIp": str(b.get("HostIp") or ""), "HostPort": str(b.get("HostPort") or "")}
            for b in bindings
            if isinstance(b, Mapping) and b.get("HostPort")
        ]
        if entries:
            result[str(port)] = entries
    return result


# -- small helpers ---------------------------------------------------------------------


def _port_key(port: str) -> str:
    port = str(port).strip()
    return port if "/" in port else f"{port}/tcp"


def _host_binding(host: str) -> str | tuple[str, str] | None:
    """Accept "8080" (every address), "127.0.0.1:8080" (one address), "" (Docker picks)."""
    host = str(host).strip()
    if not host:
        return None
    address, sep, port = host.rpartition(":")
    return (address.strip("[]"), port) if sep else host


def _image_ref(image: str) -> str:
    """The reference as Docker resolves it, so messages say ``nope:latest``."""
    if "@" in image:
        return image
    repository, tag = docker.utils.parse_repository_tag(image)
    return f"{repository}:{tag or 'latest'}"
