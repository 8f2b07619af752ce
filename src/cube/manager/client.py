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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import ValidationError

from cube import clientconfig
from cube.events import Event
from cube.job import Deployment, Job
from cube.manager.plan import Plan
from cube.node import Node
from cube.runtime.base import LogLine, parse_docker_time
from cube.task import Task, TaskEvent
from cube.tls import TlsError, client_context, speaks_tls

DEFAULT_MANAGER = "localhost:5555"
# Seconds a log stream may stay silent: three of the manager's heartbeats (cube.logs).
_LOG_SILENCE = 15.0
DEFAULT_PORT = 5555


class ManagerError(Exception):
    """A call to the manager failed; ``str()`` is the one line to show the user."""


class ManagerUnreachable(ManagerError):
    """No answer at all (refused, timed out, name unknown) or the manager broke (5xx)."""


class ManagerRejected(ManagerError):
    """The manager answered with a 4xx: the request itself was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def manager_url(address: str, scheme: str = "http") -> str:
    """Accept what people type: ``host``, ``host:port`` or a URL; give a base URL.

    A bare host gets Cube's port, because "localhost" alone almost certainly means
    the manager on its default port, not a web server on port 80; an address without
    a scheme gets ``scheme``.
    """
    text = address.strip()
    if not text:
        raise ManagerError("the manager address is empty (expected host:port or a URL)")
    explicit = "://" in text
    try:
        parts = urlsplit(text if explicit else f"{scheme}://{text}")
        port = parts.port
    except ValueError as exc:
        raise ManagerError(f"invalid manager address {text!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ManagerError(f"invalid manager address {text!r} (expected host:port or a URL)")
    netloc = parts.netloc if port is not None or explicit else f"{parts.netloc}:{DEFAULT_PORT}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


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


def _reason(exc: httpx.HTTPError) -> str:
    """Say why a connection failed in words, not as an exception class and errno."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "its certificate is not from the CA given (--tls-ca, CUBE_TLS_CA): " + (
            text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip()
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return "it does not answer with TLS: use http://"
    if "]" in text and text.startswith("[Errno"):
        text = text.split("]", 1)[1].strip()  # "[Errno 111] Connection refused"
    return text[:1].lower() + text[1:]


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
    """A small synchronous client: the CLI does one thing at a time."""

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
        scheme is https:// when there is a CA."""
        ca = ca or os.environ.get("CUBE_TLS_CA") or None
        if ca is None:
            config = clientconfig.for_manager(manager_url(address, "https"))
            ca = config.TlsCa if config and config.TlsCa else None
        self.url = manager_url(address, "https" if ca else "http")
        verify = _tls(ca) if self.url.startswith("https://") else True
        if not token and not os.environ.get("CUBE_TOKEN"):
            config = clientconfig.for_manager(self.url)
            token = config.Token if config else None
        token = token or os.environ.get("CUBE_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
            headers=headers,
            verify=verify,
        )

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            if self._speaks_tls(exc):
                raise ManagerUnreachable(
                    f"the manager at {self.url} answered with TLS: use https:// and --tls-ca"
                ) from None
            raise ManagerUnreachable(
                f"cannot reach manager at {self.url}: {_reason(exc)}"
            ) from None
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
        """``GET /events``: each event as it comes (None for a heartbeat)."""
        params: dict[str, Any] = {"index": index, "follow": follow, "topic": list(topics)}
        # A heartbeat comes every 10 s: a minute of silence is a dead connection.
        timeout = httpx.Timeout(60.0, connect=5.0)
        try:
            with self._http.stream("GET", "/events", params=params, timeout=timeout) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise ManagerRejected(answer.status_code, _message(answer))
                for line in answer.iter_lines():
                    if line.strip():
                        data = json.loads(line)
                        yield self._parse(Event.model_validate, data) if data else None
        except httpx.HTTPError as exc:
            raise ManagerUnreachable(f"events from {self.url}: {_reason(exc)}") from None
        except ValueError:
            raise ManagerError(f"{self.url} sent a line that is not JSON") from None

    def _check(self, response: httpx.Response) -> None:
        message = _message(response)
        if response.status_code >= 500:
            raise ManagerUnreachable(
                f"manager at {self.url} failed: HTTP {response.status_code}: {message}"
            )
        if response.status_code >= 400:
            raise ManagerRejected(response.status_code, message)

    def _speaks_tls(self, exc: httpx.HTTPError) -> bool:
        """Whether a plain HTTP request failed for the manager speaking TLS: such a
        server hangs up at once (a refused connection or a timeout is something else)."""
        if isinstance(exc, httpx.ConnectError | httpx.TimeoutException):
            return False
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            return False
        return speaks_tls(parts.hostname, parts.port or 80)

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
        the stream. A follow waits as long as heartbeats keep coming.
        """
        timeout = httpx.Timeout(_LOG_SILENCE, connect=5.0)
        try:
            with self._http.stream(
                "GET", f"/tasks/{task_id}/logs", params=dict(query), timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for raw in response.iter_lines():
                    if raw.strip():
                        yield self._log_line(raw)
        except httpx.HTTPError as exc:
            raise ManagerUnreachable(
                f"lost the log stream from the manager at {self.url}: {_reason(exc)}"
            ) from None

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


def _message(response: httpx.Response) -> str:
    """The API's ``Message`` when there is one, else the body, on one line."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, Mapping) and isinstance(data.get("Message"), str):
        text = data["Message"]
    else:
        text = response.text or response.reason_phrase
    return " ".join(text.split())


def _list(data: Any, url: str) -> list[Any]:
    if not isinstance(data, list):
        raise ManagerError(f"{url} answered something that is not a list: is it a Cube manager?")
    return data
