"""HTTP plumbing of the Serve ingress, plain ASGI (testable without Ray): a request-body size limit,
Prometheus request metrics, and the admin bearer-token check."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit; an HTTPException so that a framework
    reading the body (FastAPI re-raises those) answers 413 itself."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


class BodyLimitMiddleware:
    """413 for request bodies over ``limit()`` bytes: at once when Content-Length says so, and while
    streaming when the body turns out longer than announced (or has no Content-Length)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        for name, value in scope.get("headers") or []:
            if name.lower() == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                    return
                if announced > limit:
                    await _send_json(send, 413, {"detail": f"request body of {announced} bytes exceeds the "
                                                           f"limit of {limit} bytes"})
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _send_json(send, 413, {"detail": f"request body exceeds the limit of {limit} bytes"})


class ServeMetrics:
    """Prometheus metrics of one ingress replica (its own registry): the monitor's request metrics
    (``cryptopredict_requests_total{route,status}``, ``cryptopredict_request_seconds{route}``, by route
    template, 'unmatched' for unknown paths), the served model version, the age of the data, reloads."""

    def __init__(self) -> None:
        from cryptopredict.monitoring.metrics import RequestMetrics

        self.registry = CollectorRegistry()
        self.http = RequestMetrics(self.registry, buckets=LATENCY_BUCKETS)
        self.model = Gauge("cryptopredict_model_info", "1 for the served model version", ["version"],
                           registry=self.registry)
        self.data_age = Gauge("cryptopredict_data_age_seconds", "seconds since the close of the latest bar the "
                              "features use (NaN before the first snapshot)", registry=self.registry)
        self.as_of = Gauge("cryptopredict_data_as_of_timestamp_seconds", "open time of the latest bar (unix s)",
                           registry=self.registry)
        self.reloads = Counter("cryptopredict_model_reloads", "model reloads by outcome", ["outcome"],
                               registry=self.registry)
        self.data_age.set(float("nan"))
        self._version: str | None = None

    def set_version(self, version: str) -> None:
        if self._version is not None:
            self.model.remove(self._version)
        self.model.labels(version=version).set(1)
        self._version = version

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """An ASGI wrapper counting every HTTP request and its latency."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = {"code": 500}
            t0 = time.perf_counter()

            async def capture(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = int(message["status"])
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                route = scope.get("route")
                self.http.observe(getattr(route, "path", None) or "unmatched", status["code"],
                                  time.perf_counter() - t0)

        return wrapped


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def admin_digest_from_env(env_name: str) -> str | None:
    """The SHA-256 of the admin token in ``env_name`` (None when unset or empty)."""
    token = os.environ.get(env_name, "")
    return token_digest(token) if token else None


class AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def check_bearer(authorization: str | None, expected_digest: str | None, env_name: str) -> None:
    """AuthError(401) without a bearer token, AuthError(403) for a wrong one (compared in constant time,
    as SHA-256 digests) or when the server has no token configured."""
    if not authorization or not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
        raise AuthError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    if expected_digest is None:
        raise AuthError(403, f"the admin endpoints are disabled: no token in the server's {env_name}")
    if not hmac.compare_digest(token_digest(authorization[7:].strip()), expected_digest):
        raise AuthError(403, "wrong admin token")
