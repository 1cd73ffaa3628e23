"""Per request: a request id bound to every log line (and echoed as `X-Request-ID`), one access
log line, and the Prometheus series `ragstream_gateway_requests_total{route,status}` and
`ragstream_gateway_request_seconds{route}`, labelled by route template, never the raw path."""

import logging
import re
import time
from uuid import uuid4

import structlog
from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import get_logger

UNMATCHED = "unmatched"
QUIET_ROUTES = frozenset({"/livez", "/readyz", "/metrics"})
"""Probes and scrapes are logged at debug level only."""
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

requests_total = Counter(
    "ragstream_gateway_requests", "HTTP requests the gateway answered.", ("route", "status")
)
request_seconds = Histogram(
    "ragstream_gateway_request_seconds",
    "Time to answer an HTTP request (a streamed answer: until its last event).",
    ("route",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
log = get_logger("ragstream.gateway.http")


def route_template(scope: Scope) -> str:
    """The matched route's path template (set in the scope by routing), e.g.
    `/v1/documents/{doc_id}`."""
    route = scope.get("route")
    return route.path_format if isinstance(route, Route) else UNMATCHED


def request_id(scope: Scope) -> str:
    """The client's `X-Request-ID` if it is a short plain token, else a new one."""
    given = Headers(scope=scope).get("x-request-id", "")
    return given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid4().hex


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            await send(message)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = route_template(scope)
                requests_total.labels(route, str(status)).inc()
                request_seconds.labels(route).observe(elapsed)
                level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
                log.log(
                    level, "request", method=scope["method"], route=route, status=status,
                    duration_ms=round(elapsed * 1000, 1),
                )  # fmt: skip
