"""Prometheus metrics: what the manager and the workers serve alike.

Every server holds a registry of its own (:func:`new_registry`), never the client
library's global one: the simulator and the tests run many managers and workers in one
process, and each must count only what it did. On it go the HTTP metrics
(:class:`HttpMetrics`, counted by an ASGI middleware) and each server's own
(:mod:`cube.manager.metrics`, :mod:`cube.worker.metrics`); :func:`metrics_router`
serves them at ``GET /metrics`` in the Prometheus text format.

Labels are bounded sets, never what users name: a route is its path *template*
(``/tasks/{task_id}``, not the task's ID) and a method one of HTTP's, anything else
``other``. Metrics hold counts and durations only: no task IDs, names, images or
secrets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cube.clock import Clock

__all__ = [
    "CONTENT_TYPE",
    "OTHER",
    "HttpMetrics",
    "MetricsResponse",
    "gauge",
    "metrics_router",
    "new_registry",
]

# No ``*_created`` series: in the text format Prometheus scrapes they are series of
# their own, one more per counter and histogram child, that nobody queries. (A setting
# of the client library, not a registry: no Cube process serves anyone else's metrics.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# The text format Prometheus has read since 2014 (version 2.42 as Debian ships it too).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"  # the label of a path no route matches, or of a method HTTP lacks
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds to an answer's headers: a health check's milliseconds to a long poll's minute.
HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


def new_registry() -> CollectorRegistry:
    """A registry for one server; every name registered twice on it is refused."""
    return CollectorRegistry(auto_describe=True)


def gauge(
    name: str,
    help: str,
    label: str = "",
    counts: Iterable[tuple[str, float]] = (),
    value: float | None = None,
) -> GaugeMetricFamily:
    """A gauge family computed at scrape time: one sample per ``(label value, count)``
    of ``counts``, or (no label) the one ``value``."""
    if not label:
        return GaugeMetricFamily(name, help, value=value or 0)
    family = GaugeMetricFamily(name, help, labels=[label])
    for labelled, count in counts:
        family.add_metric([labelled], count)
    return family


class HttpMetrics:
    """Requests answered, by method, route template and status, and how long each took
    to its headers (a stream's whole life, a followed log, is not a request's latency)."""

    def __init__(self, registry: CollectorRegistry, clock: Clock) -> None:
        self.clock = clock
        self.requests = Counter(
            "cube_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "cube_http_request_duration_seconds",
            "Seconds from a request's arrival to its answer's headers",
            ["method", "route"],
            registry=registry,
            buckets=HTTP_BUCKETS,
        )

    def install(self, app: Any) -> None:
        """Count every request ``app`` (a FastAPI app, before it starts) answers."""
        app.add_middleware(_Counting, metrics=self)

    def answered(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope.get("method", "")
        method = method if method in _METHODS else OTHER
        route = getattr(scope.get("route"), "path", None) or OTHER
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


class _Counting:
    """The ASGI middleware behind :meth:`HttpMetrics.install`. Pure ASGI, so streamed
    answers pass through as they are; the router has put the matched route in the
    scope by the time the answer starts."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = self.metrics.clock
        start = clock.monotonic()
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self.metrics.answered(scope, message["status"], clock.monotonic() - start)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if not started:  # the server answers 500 for it
                self.metrics.answered(scope, 500, clock.monotonic() - start)
            raise


class MetricsResponse(Response):
    media_type = CONTENT_TYPE


# What the served OpenAPI documents say GET /metrics answers.
OPENAPI: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The server's metrics in the Prometheus text format, version "
        "0.0.4; docs/api.md lists them",
    }
}


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    """``GET /metrics``: what ``registry`` holds, for Prometheus to scrape."""
    router = APIRouter()

    @router.get(
        "/metrics",
        response_class=MetricsResponse,
        responses=OPENAPI,
        summary="Metrics",
    )
    async def metrics() -> MetricsResponse:
        """Counts and durations in the Prometheus text format; no task IDs, names,
        images or secrets."""
        return MetricsResponse(generate_latest(registry))

    return router
