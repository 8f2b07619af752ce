"""A worker joining its manager (``cube worker --join``), then heartbeating.

The worker registers itself — name, the address the manager reaches it at, labels and
built-in attributes — with the join token as ``Authorization: Bearer``, and then sends
a heartbeat every interval the manager named in its answer (as a Nomad client takes
its heartbeat TTL from the servers). A manager that forgot the node (``cube node rm``,
or a fresh manager without a store) answers a heartbeat with 404: the worker joins
again. A refused token is final: nothing a retry can mend.

``--join`` may name several managers (``host:port,host:port``; any of them takes every
request): joins and heartbeats go to the one that answered last, and to the next when
it does not answer or answers 503 (no leader). Both may be sent twice: joining again is
the same node, and a heartbeat is one. The heartbeat interval, on the injected clock,
paces the retries: nothing else waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx

from cube.clock import Clock, SystemClock
from cube.tls import speaks_tls

log = logging.getLogger(__name__)


class JoinRefused(Exception):
    """The manager refused the join token (or takes no joins)."""


class Joiner:
    def __init__(
        self,
        manager: str,
        token: str,
        registration: dict[str, Any],
        *,
        clock: Clock | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``manager``: one address or several, comma-separated. ``tls``: call the
        managers over HTTPS with this context (the worker's certificate, the manager's
        checked against the cluster CA)."""
        scheme = "https" if tls else "http"
        self.bases = [
            (entry if "://" in entry else f"{scheme}://{entry}").rstrip("/")
            for entry in (raw.strip() for raw in manager.split(","))
            if entry
        ]
        if not self.bases:
            raise ValueError("name at least one manager to join, as host:port")
        self._at = 0
        self.registration = registration
        self.clock = clock or SystemClock()
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"}
        self._transport = transport
        self._tls = tls
        self.interval = 1.0
        self.joined = False

    @property
    def base(self) -> str:
        """The manager that answered last."""
        return self.bases[self._at]

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=self._headers,
            timeout=self.timeout,
            transport=self._transport,
            verify=self._tls or True,
        )

    async def _post(
        self, client: httpx.AsyncClient, path: str, body: Any = None, joining: bool = False
    ) -> httpx.Response | None:
        """The answer of the manager that answered last or, when it does not answer or
        answers 503, of the next that does; None when none does (each failure logged)."""
        first = self.base
        for _ in self.bases:
            base = self.base
            try:
                answer = await client.post(f"{base}{path}", json=body)
            except httpx.HTTPError as exc:
                if joining and await self._speaks_tls(base, exc):
                    raise JoinRefused(
                        f"the manager at {base} answered with TLS: join it at https:// "
                        "with --tls-cert, --tls-key and --tls-ca"
                    ) from None
                why = str(exc) or type(exc).__name__
            else:
                if answer.status_code != 503:
                    if base != first:
                        log.info("the manager at %s did not answer: now using %s", first, base)
                    return answer
                why = f"HTTP 503: {_message(answer)}"
            what = "joining" if joining else "heartbeat to"
            log.log(logging.WARNING if joining else logging.DEBUG, "%s %s: %s", what, base, why)
            self._at = (self._at + 1) % len(self.bases)
        return None

    async def register(self, client: httpx.AsyncClient | None = None) -> bool:
        """Join once: True when joined, False when no manager answers (or it fails);
        JoinRefused when the one that answers refuses the token."""
        if client is None:
            async with self._client() as own:
                return await self.register(own)
        answer = await self._post(client, "/nodes/register", self.registration, joining=True)
        if answer is None:
            return False
        if answer.status_code in (401, 403):
            raise JoinRefused(f"the manager at {self.base} refused to join: {_message(answer)}")
        if answer.status_code != 201:
            log.warning("joining %s: HTTP %d: %s", self.base, answer.status_code, _message(answer))
            return False
        self._took(answer)
        if not self.joined:
            log.info("joined the manager at %s as %s", self.base, self.registration["Name"])
        self.joined = True
        return True

    async def _speaks_tls(self, base: str, exc: httpx.HTTPError) -> bool:
        """Whether a plain HTTP request failed for the manager speaking TLS (it hangs
        up at once: asking it for a TLS handshake tells)."""
        if isinstance(exc, httpx.ConnectError | httpx.TimeoutException) or self._transport:
            return False
        parts = urlsplit(base)
        if parts.scheme != "http" or not parts.hostname:
            return False
        port = parts.port or 80
        return await asyncio.to_thread(speaks_tls, parts.hostname, port, self.timeout)

    async def run(self) -> None:
        """Heartbeat until cancelled, joining (again) whenever needed."""
        name = self.registration["Name"]
        async with self._client() as client:
            while True:
                if not self.joined:
                    with contextlib.suppress(JoinRefused):
                        await self.register(client)
                else:
                    await self._beat(client, name)
                await self.clock.sleep(self.interval)

    async def _beat(self, client: httpx.AsyncClient, name: str) -> None:
        answer = await self._post(client, f"/nodes/{name}/heartbeat")
        if answer is None:
            return
        if answer.status_code == 404:
            log.info("the manager at %s does not know this worker: joining again", self.base)
            self.joined = False
            await self.register(client)  # at the manager that answered
        elif answer.status_code == 200:
            self._took(answer)
        else:
            log.warning("heartbeat to %s: HTTP %d", self.base, answer.status_code)

    def _took(self, answer: httpx.Response) -> None:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            interval = float(answer.json()["HeartbeatInterval"])
            if 0.05 <= interval <= 3600:
                self.interval = interval


def _message(answer: httpx.Response) -> str:
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return str(answer.json()["Message"])
    return answer.text[:200]


async def wait_and_run(joiner: Joiner) -> None:
    """For the worker's lifespan: heartbeats in the background, never raising."""
    try:
        await joiner.run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("heartbeats to %s stopped", joiner.base)
