"""The manager API as the CLI (and any other Python program) calls it.

Every call has a timeout, and every failure becomes a :class:`ManagerError` whose
message is one line a person can act on: the CLI prints it as it is, so nothing a
user can cause here ends in a traceback.
"""

from __future__ import annotations

import json
import os
import ssl
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from cube import clientconfig
from cube.events import Event
from cube.job import Deployment, Job
from cube.manager.failover import (
    DEFAULT_PORT,
    Endpoint,
    Endpoints,
    LogResume,
    ManagerError,
    ManagerRejected,
    ManagerUnreachable,
    addresses,
    check,
    manager_url,
)
from cube.manager.plan import Plan
from cube.node import Node
from cube.runtime.base import LogLine, parse_docker_time
from cube.task import Task, TaskEvent
from cube.tls import TlsError, client_context

DEFAULT_MANAGER = "localhost:5555"
# Seconds a log stream may stay silent: three of the manager's heartbeats (cube.logs).
_LOG_SILENCE = 15.0
# A heartbeat comes every 10 s on GET /events: a minute of silence is a dead connection.
_EVENTS_SILENCE = 60.0

__all__ = [
    "DEFAULT_MANAGER",
    "DEFAULT_PORT",
    "JobView",
    "ManagerClient",
    "ManagerError",
    "ManagerRejected",
    "ManagerUnreachable",
    "manager_url",
]


def _tls(ca: str | None) -> ssl.SSLContext:
    """The CLI's TLS: the manager checked against the CA, a certificate if given."""
    cert = os.environ.get("CUBE_TLS_CERT") or None
    key = os.environ.get("CUBE_TLS_KEY") or None
    if (cert is None) != (key is None):
        raise ManagerError("--tls-cert and --tls-key go together (CUBE_TLS_CERT, CUBE_TLS_KEY)")
    try:
        return client_context(*(Path(p) if p else None for p in (ca, cert, key)))
    except TlsError as exc:
        raise ManagerError(str(exc)) from None


@dataclass(frozen=True)
class JobView:
    """A job as the API answers it: the job, and its deployment."""

    job: Job
    deployment: Deployment | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: Any) -> JobView:
        fields = {k: v for k, v in dict(data).items() if k != "Deployment"}
        deployment = data.get("Deployment")
        return cls(
            Job.model_validate(fields),
            Deployment.model_validate(deployment) if deployment else None,
            dict(data),
        )


class ManagerClient:
    """A small synchronous client: the CLI does one thing at a time.

    ``address`` may name several managers, ``host:port,host:port,…``: each call goes to
    the one that answered last, and on to the next when that one is down or answers
    503, as far as it is safe to send the request again (cube.manager.failover says
    when). Streams (events, logs) resume at the next manager where they were.
    """

    def __init__(
        self,
        address: str = DEFAULT_MANAGER,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
        ca: str | None = None,
    ) -> None:
        """``token``: the API token to send (default: ``CUBE_TOKEN``, if set, or the
        client config's for this manager: cube.clientconfig). Over https://, the
        manager is checked against ``ca`` (default: ``CUBE_TLS_CA``, or the client
        config's for this manager; the system's CAs without one) and
        ``CUBE_TLS_CERT``/``CUBE_TLS_KEY`` are presented when set; an address without a
        scheme is https:// when there is a CA. Each manager of a list on its own: the
        config's token and CA go only to the managers the config names."""
        ca = ca or os.environ.get("CUBE_TLS_CA") or None
        token = token or os.environ.get("CUBE_TOKEN") or None
        self._timeout = httpx.Timeout(timeout, connect=5.0)
        self._transport = transport
        contexts: dict[str | None, ssl.SSLContext] = {}  # one per CA
        endpoints: dict[str, Endpoint] = {}
        for entry in addresses(address):
            own_ca = ca
            if own_ca is None:
                config = clientconfig.for_manager(manager_url(entry, "https"))
                own_ca = config.TlsCa if config and config.TlsCa else None
            url = manager_url(entry, "https" if own_ca else "http")
            verify: ssl.SSLContext | bool = True
            if url.startswith("https://"):
                if own_ca not in contexts:
                    contexts[own_ca] = _tls(own_ca)
                verify = contexts[own_ca]
            own_token = token
            if not own_token:
                config = clientconfig.for_manager(url)
                own_token = config.Token if config and config.Token else None
            headers = {"Authorization": f"Bearer {own_token}"} if own_token else None
            endpoints.setdefault(url, Endpoint(url, self._maker(verify, headers)))
        self._endpoints = Endpoints(list(endpoints.values()))

    def _maker(
        self, verify: ssl.SSLContext | bool, headers: dict[str, str] | None
    ) -> Callable[[str], httpx.Client]:
        def make(url: str) -> httpx.Client:
            return httpx.Client(
                base_url=url,
                timeout=self._timeout,
                transport=self._transport,
                headers=headers,
                verify=verify,
            )

        return make

    @property
    def url(self) -> str:
        """The manager that answered last (the first given, before any call)."""
        return self._endpoints.current.url

    @property
    def urls(self) -> list[str]:
        return [endpoint.url for endpoint in self._endpoints.all]

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._endpoints.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return self._answer(self._endpoints.request(method, path, body))

    def _answer(self, response: httpx.Response) -> Any:
        self._check(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ManagerError(
                f"{self.url} did not answer with JSON: is it a Cube manager?"
            ) from None

    def stream(
        self, index: int = 0, topics: Sequence[str] = (), follow: bool = True
    ) -> Iterator[Event | None]:
        """``GET /events``: each event as it comes (None for a heartbeat); after a lost
        manager, from the next one, after the last event seen."""
        last = index

        def query() -> dict[str, Any]:
            return {"index": last, "follow": follow, "topic": list(topics)}

        timeout = httpx.Timeout(_EVENTS_SILENCE, connect=5.0)
        lines = self._endpoints.lines("/events", query, timeout, "events from {url}: {why}", follow)
        for line in lines:
            try:
                data = json.loads(line)
            except ValueError:
                raise ManagerError(f"{self.url} sent a line that is not JSON") from None
            if not data:
                yield None
                continue
            event: Event = self._parse(Event.model_validate, data)
            last = event.Index
            yield event

    def _check(self, response: httpx.Response) -> None:
        check(response, self.url)

    def _parse(self, parse: Any, data: Any) -> Any:
        try:
            return parse(data)
        except (ValidationError, TypeError, AttributeError) as exc:
            raise ManagerError(
                f"{self.url} answered something that is not a Cube task or node: "
                f"{str(exc).splitlines()[0]}"
            ) from None

    # --- tasks -----------------------------------------------------------------------

    def tasks(self) -> list[Task]:
        data = self._call("GET", "/tasks")
        return [self._parse(Task.model_validate, t) for t in _list(data, self.url)]

    def task(self, task_id: uuid.UUID | str) -> Task:
        task: Task = self._parse(Task.model_validate, self._call("GET", f"/tasks/{task_id}"))
        return task

    def events(self, task_id: uuid.UUID | str) -> list[TaskEvent]:
        data = self._call("GET", f"/tasks/{task_id}/events")
        return [self._parse(TaskEvent.model_validate, e) for e in _list(data, self.url)]

    def submit(self, event: Mapping[str, Any] | TaskEvent) -> Task:
        """Send a TaskEvent as given; the manager validates it, so its 400 says what is wrong."""
        body = event.model_dump(mode="json") if isinstance(event, TaskEvent) else dict(event)
        try:
            data = self._call("POST", "/tasks", body)
        except ManagerRejected as exc:
            raise ManagerRejected(exc.status, f"invalid task: {exc.message}") from None
        task: Task = self._parse(Task.model_validate, data)
        return task

    def stop(self, task_id: uuid.UUID | str) -> None:
        self._call("DELETE", f"/tasks/{task_id}")

    def plan(self, body: Mapping[str, Any], job: str | None = None) -> Plan:
        """A dry run of ``POST /tasks`` (a TaskEvent) or, given ``job``, of ``POST /jobs``."""
        path = "/plan" if job is None else f"/jobs/{quote(job, safe='')}/plan"
        try:
            data = self._call("POST", path, dict(body))
        except ManagerRejected as exc:
            what = "task" if job is None else "job"
            raise ManagerRejected(exc.status, f"invalid {what}: {exc.message}") from None
        plan: Plan = self._parse(Plan.model_validate, data)
        return plan

    def logs(self, task_id: uuid.UUID | str, query: Mapping[str, Any]) -> Iterator[LogLine]:
        """The task's log lines as the manager streams them (``GET /tasks/{id}/logs``).

        A generator: the request goes out on the first ``next``, and closing it closes
        the stream. A follow waits as long as heartbeats keep coming. A lost manager's
        stream goes on at the next one from the last line's time (LogResume).
        """
        timeout = httpx.Timeout(_LOG_SILENCE, connect=5.0)
        resume = LogResume(dict(query))
        alone = "lost the log stream from the manager at {url}: {why}"
        for raw in self._endpoints.lines(
            f"/tasks/{task_id}/logs", resume.query, timeout, alone, False
        ):
            line = self._log_line(raw)
            if resume.fresh(line):
                yield line

    def _log_line(self, raw: str) -> LogLine:
        try:
            data = json.loads(raw)
            if "Error" in data:
                raise ManagerError(str(data["Error"]))
            stream, text, time = data["Stream"], data["Line"], data.get("Time")
        except (ValueError, TypeError, KeyError):
            raise ManagerError(
                f"{self.url} answered something that is not a log line: {raw[:80]!r}"
            ) from None
        return LogLine(str(stream), parse_docker_time(time), str(text))

    # --- jobs ------------------------------------------------------------------------

    def submit_job(self, body: Mapping[str, Any]) -> JobView:
        try:
            data = self._call("POST", "/jobs", dict(body))
        except ManagerRejected as exc:
            raise ManagerRejected(exc.status, f"invalid job: {exc.message}") from None
        view: JobView = self._parse(JobView.parse, data)
        return view

    def jobs(self) -> list[JobView]:
        return [self._parse(JobView.parse, j) for j in _list(self._call("GET", "/jobs"), self.url)]

    def job(self, name: str) -> JobView:
        view: JobView = self._parse(JobView.parse, self._call("GET", f"/jobs/{name}"))
        return view

    def job_versions(self, name: str) -> list[Job]:
        data = self._call("GET", f"/jobs/{name}/versions")
        return [self._parse(Job.model_validate, v) for v in _list(data, self.url)]

    def job_tasks(self, name: str) -> list[Task]:
        data = self._call("GET", f"/tasks?job={name}")
        return [self._parse(Task.model_validate, t) for t in _list(data, self.url)]

    def scale(self, name: str, count: int) -> JobView:
        view: JobView = self._parse(
            JobView.parse, self._call("POST", f"/jobs/{name}/scale", {"Count": count})
        )
        return view

    def revert(self, name: str, version: int) -> JobView:
        view: JobView = self._parse(
            JobView.parse, self._call("POST", f"/jobs/{name}/revert", {"Version": version})
        )
        return view

    def stop_job(self, name: str) -> JobView:
        view: JobView = self._parse(JobView.parse, self._call("DELETE", f"/jobs/{name}"))
        return view

    # --- nodes -----------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        data = self._call("GET", "/nodes")
        return [self._parse(Node.from_wire, n) for n in _list(data, self.url)]

    def node(self, name: str) -> Node:
        node: Node = self._parse(Node.from_wire, self._call("GET", f"/nodes/{_path(name)}"))
        return node

    def drain(self, name: str, deadline: float | None = None) -> Node:
        body = {} if deadline is None else {"Deadline": deadline}
        data = self._call("POST", f"/nodes/{_path(name)}/drain", body)
        node: Node = self._parse(Node.from_wire, data)
        return node

    def set_eligible(self, name: str, eligible: bool) -> Node:
        data = self._call("POST", f"/nodes/{_path(name)}/eligibility", {"Eligible": eligible})
        node: Node = self._parse(Node.from_wire, data)
        return node

    def remove_node(self, name: str) -> None:
        self._call("DELETE", f"/nodes/{_path(name)}")

    # --- tokens ----------------------------------------------------------------------

    def create_token(self, role: str, name: str = "") -> dict[str, Any]:
        data: dict[str, Any] = self._call("POST", "/tokens", {"Role": role, "Name": name})
        return data

    def tokens(self) -> list[dict[str, Any]]:
        return _list(self._call("GET", "/tokens"), self.url)

    def revoke_token(self, token_id: str) -> None:
        self._call("DELETE", f"/tokens/{_path(token_id)}")


def _path(segment: str) -> str:
    return quote(segment, safe=":")


def _list(data: Any, url: str) -> list[Any]:
    if not isinstance(data, list):
        raise ManagerError(f"{url} answered something that is not a list: is it a Cube manager?")
    return data
