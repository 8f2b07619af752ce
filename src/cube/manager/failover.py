"""Several managers behind one client: which one to call, and when a request may go on
to the next.

``--manager`` (``CUBE_MANAGER``, the client config's ``Manager``) is a list,
``host:port,host:port,…``. Any manager takes any request (a follower forwards writes to
the leader), so the client calls the first that answers and sticks to it. Which request
may be sent again to the next manager when the one it went to fails:

- a GET (or a dry run, ``POST /plan``, ``POST /jobs/{name}/plan``): always, it changes
  nothing;
- ``POST /tasks`` and ``POST /jobs``: always too, they are idempotent in Cube (a task
  posted again with the same ID is acknowledged, not started twice: Manager.submit_many;
  a job posted again unchanged is not a new version);
- any other POST or DELETE only when its connection was never made (refused, or timed
  out while connecting: httpx.ConnectError, ConnectTimeout, a dead peer's TLS handshake
  included), so nothing was sent. After a timeout waiting for the answer, a broken
  connection or a 503 the request may have been carried out, and doing it twice is not
  ours to decide: the user gets the error (the next call starts at the next manager).

A 503 is a manager without a leader (or without its store): the next one may have one.
When every manager answered and at least one said 503 (an election is under way: a
leader died, and its lease has yet to run out), a request that may be resent goes round
the list again, with a growing pause, for up to ``CUBE_FAILOVER_WAIT`` seconds (default
15: a lease of 5 s, an election, and room to spare) before the user sees the error.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from cube.runtime.base import LogLine
from cube.tls import speaks_tls

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


def addresses(text: str) -> list[str]:
    """The entries of a ``host:port,host:port`` list, as typed (empty ones dropped)."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ManagerError("the manager address is empty (expected host:port or a URL)")
    return entries


def reason(exc: httpx.HTTPError) -> str:
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


# Requests that may be sent again whatever happened to them (see the module's docstring).
_RESENDABLE = re.compile(r"^POST /(tasks|jobs|plan|jobs/[^/?]+/plan)/?(\?.*)?$")


def may_resend(method: str, path: str, exc: httpx.HTTPError | None) -> bool:
    """Whether a request that failed with ``exc`` (None: answered 503) may go to the
    next manager."""
    if method in ("GET", "HEAD") or _RESENDABLE.match(f"{method} {path}"):
        return True
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


@dataclass(frozen=True)
class Failure:
    """A manager that did not serve a request: ``reason`` in words; ``alone`` the
    whole message when it was the only manager given (as a single manager says it)."""

    url: str
    reason: str
    alone: str


def unreachable(failures: Sequence[Failure], given: int, note: str = "") -> ManagerUnreachable:
    """One line naming every manager tried and why each failed."""
    if given == 1 and len(failures) == 1:
        return ManagerUnreachable(failures[0].alone + note)
    tried = ", ".join(f"{f.url} ({f.reason})" for f in failures)
    return ManagerUnreachable(f"no manager answered: {tried}{note}")


class Endpoint:
    """One manager: its base URL and, made on first use, its HTTP client (each manager
    has its own token and CA: the client config's go only to the managers it names)."""

    def __init__(self, url: str, make: Callable[[str], httpx.Client]) -> None:
        self.url = url
        self._make = make
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()  # `cube logs JOB -f` reads from several threads

    @property
    def http(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = self._make(self.url)
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()


DEFAULT_FAILOVER_WAIT = 15.0


def failover_wait() -> float:
    """Seconds to keep trying while managers say none leads (``CUBE_FAILOVER_WAIT``)."""
    try:
        return max(float(os.environ.get("CUBE_FAILOVER_WAIT", DEFAULT_FAILOVER_WAIT)), 0.0)
    except ValueError:
        raise ManagerError("CUBE_FAILOVER_WAIT must be a number of seconds") from None


class _Round(Exception):
    """Every manager failed a request; ``electing``: one of them answered 503."""

    def __init__(self, error: ManagerUnreachable, electing: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.electing = electing


class Endpoints:
    """The managers in the order given, and the one that answered last; the calls that
    go on to the next manager."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        wait: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.all = endpoints
        self._current = 0
        self.wait = failover_wait() if wait is None else wait
        self._sleep = sleep
        self._monotonic = monotonic

    @property
    def current(self) -> Endpoint:
        return self.all[self._current]

    def order(self) -> list[Endpoint]:
        """Each manager once, starting with the one that answered last."""
        return self.all[self._current :] + self.all[: self._current]

    def after(self, endpoint: Endpoint) -> list[Endpoint]:
        """Each manager once, starting with the one after ``endpoint`` (itself last)."""
        at = self.all.index(endpoint) + 1
        return self.all[at:] + self.all[:at]

    def answered(self, endpoint: Endpoint) -> None:
        self._current = self.all.index(endpoint)

    def failed(self, endpoint: Endpoint) -> None:
        """The next call starts at the next manager (unless another answered since)."""
        if self.current is endpoint:
            self._current = (self._current + 1) % len(self.all)

    def close(self) -> None:
        for endpoint in self.all:
            endpoint.close()

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """The answer of the first manager that gives one other than 503, trying the
        next only as far as :func:`may_resend` allows; while an election is under way,
        round the list again (see the module's docstring)."""
        deadline = self._monotonic() + self.wait
        pause = 0.2
        while True:
            try:
                return self._round(method, path, body)
            except _Round as failed:
                if not failed.electing or self._monotonic() + pause > deadline:
                    raise failed.error from None
            self._sleep(pause)  # a client's retry pacing, not synchronisation
            pause = min(pause * 2, 2.0)

    def _round(self, method: str, path: str, body: Any) -> httpx.Response:
        failures: list[Failure] = []
        order = self.order()
        for at, endpoint in enumerate(order, 1):
            exc: httpx.HTTPError | None = None
            try:
                response = endpoint.http.request(method, path, json=body)
            except httpx.HTTPError as error:
                exc = error
                failures.append(_failure(endpoint.url, error))
            else:
                if response.status_code != 503:
                    self.answered(endpoint)
                    return response
                why = f"HTTP 503: {message(response)}"
                failures.append(
                    Failure(endpoint.url, why, f"manager at {endpoint.url} failed: {why}")
                )
            self.failed(endpoint)
            if not may_resend(method, path, exc):
                raise unreachable(failures, len(self.all), _NOT_RESENT if at < len(order) else "")
        electing = any(f.reason.startswith("HTTP 503") for f in failures)
        raise _Round(unreachable(failures, len(self.all)), electing)

    def lines(
        self,
        path: str,
        query: Callable[[], Mapping[str, Any]],
        timeout: httpx.Timeout,
        alone: str,
        endless: bool,
    ) -> Iterator[str]:
        """The non-empty lines of a streamed GET. When its manager goes away (the
        connection fails or breaks, a 503, or an ``endless`` stream ends) the GET goes to
        the next manager with ``query()`` as it is then, which says where the caller is.
        After a loss each manager is tried once, the lost one last; ``alone`` is the
        error (``{url}``, ``{why}``) when there is only one manager."""
        failures: list[Failure] = []
        todo = self.order()
        while todo:
            endpoint = todo.pop(0)
            received = False
            try:
                with endpoint.http.stream(
                    "GET", path, params=dict(query()), timeout=timeout
                ) as answer:
                    if answer.status_code == 503:
                        answer.read()
                        why = f"HTTP 503: {message(answer)}"
                    else:
                        self.answered(endpoint)
                        if answer.status_code >= 400:
                            answer.read()
                            check(answer, endpoint.url)
                        for line in answer.iter_lines():
                            if line.strip():
                                received = True
                                yield line
                        if not endless:
                            return
                        why = "it ended the stream"
            except httpx.HTTPError as exc:
                why = reason(exc)
            self.failed(endpoint)
            if received:  # it was streaming: a new round, the lost manager last
                failures, todo = [], self.after(endpoint)
                continue
            failures.append(Failure(endpoint.url, why, alone.format(url=endpoint.url, why=why)))
        raise unreachable(failures, len(self.all))


_NOT_RESENT = "; not sent to another manager, as it may have been carried out"


def _failure(url: str, exc: httpx.HTTPError) -> Failure:
    if _speaks_tls(url, exc):
        why = "it answered with TLS: use https:// and --tls-ca"
        return Failure(
            url, why, f"the manager at {url} answered with TLS: use https:// and --tls-ca"
        )
    return Failure(url, reason(exc), f"cannot reach manager at {url}: {reason(exc)}")


def _speaks_tls(url: str, exc: httpx.HTTPError) -> bool:
    """Whether a plain HTTP request failed for the manager speaking TLS: such a server
    hangs up at once (a refused connection or a timeout is something else)."""
    if isinstance(exc, httpx.ConnectError | httpx.TimeoutException):
        return False
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    return speaks_tls(parts.hostname, parts.port or 80)


def check(response: httpx.Response, url: str) -> None:
    """A 5xx or 4xx answer as the error to show."""
    text = message(response)
    if response.status_code >= 500:
        raise ManagerUnreachable(f"manager at {url} failed: HTTP {response.status_code}: {text}")
    if response.status_code >= 400:
        raise ManagerRejected(response.status_code, text)


def message(response: httpx.Response) -> str:
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


class LogResume:
    """Where a log stream is, so that the next manager goes on from there: ``since`` the
    last line's time, skipping the lines of that instant already shown (Docker's
    ``since`` includes it). Lines without a time: only new ones (``tail`` 0)."""

    def __init__(self, query: dict[str, Any]) -> None:
        self._query = query
        self._seen = False
        self._last: datetime | None = None
        self._at_last = 0  # lines shown with that time
        self._replay = 0  # of those, still to skip in this stream
        self._resumed = False  # a stream after a lost one: it replays from ``since``

    def query(self) -> dict[str, Any]:
        """The query for the next (re)connection."""
        if not self._seen:
            return dict(self._query)
        self._replay = self._at_last
        self._resumed = True
        again = {k: v for k, v in self._query.items() if k not in ("tail", "since")}
        if self._last is None:
            return {**again, "tail": 0}
        return {**again, "since": self._last.astimezone(UTC).isoformat().replace("+00:00", "Z")}

    def fresh(self, line: LogLine) -> bool:
        """Whether ``line`` is new (to show), and note it. Only a resumed stream skips
        anything: in the first, stdout and stderr interleave out of time order (Docker
        merges two pipes), and every line is new."""
        if self._resumed and line.time is not None and self._last is not None:
            if line.time < self._last:
                return False
            if line.time == self._last and self._replay > 0:
                self._replay -= 1
                return False
        self._seen = True
        if line.time is not None and (self._last is None or line.time > self._last):
            self._last, self._at_last = line.time, 1  # the newest: a resume goes on from it
        elif line.time is not None and line.time == self._last:
            self._at_last += 1
        return True
