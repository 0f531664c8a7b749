"""A scripted HTTP server on 127.0.0.1 for testing HTTP clients without the network.

Stable API (other test suites import it; extend, don't change):

``ReplayServer()``
    Threaded server bound to 127.0.0.1 on an ephemeral port. Use it as a context manager
    (``with ReplayServer() as server: ...``) or call ``start()`` / ``close()``; ``start()`` returns
    the server itself. ``server.base_url`` is ``"http://127.0.0.1:<port>"``; ``server.url(path)``
    joins a path onto it.

``server.route(method, path, responder)``
    Registers what ``method`` requests for ``path`` get: the URL path only, no query string, matched
    exactly as sent (still percent-encoded, e.g. ``/v8/finance/chart/GC%3DF``). ``responder`` is one of

    * a ``Reply``: sent for every matching request;
    * a non-empty sequence of ``Reply``: the i-th matching request gets the i-th reply, and once the
      script is used up the *last reply repeats* (so ``[Reply(500)]`` always fails and
      ``[Reply(429), ok]`` fails once, then always succeeds);
    * a callable ``(RecordedRequest) -> Reply``: called for every matching request (from the
      server's request thread), e.g. to build bodies that mention ``server.base_url``.

    Routing again for the same (method, path) replaces the earlier responder and restarts its
    script. Requests without a route get 404 with a JSON body ``{"error": "no route for ..."}``.

``Reply(status=200, body=b"", headers={}, delay_s=0.0, content_type="application/json")``
    ``body`` may be ``bytes`` (sent as is), ``str`` (UTF-8) or any other JSON-serialisable value
    (``json.dumps``-ed). ``delay_s`` sleeps that many seconds before the status line is sent, to
    provoke client read timeouts. ``headers`` are sent as given (they may override Content-Type).
    ``Reply.of_json(value, status=..., **fields)`` JSON-encodes any value, strings included.

``server.requests`` / ``server.requests_for(path, method="GET")``
    Every request received (routed or not), oldest first, as ``RecordedRequest`` with ``method``,
    ``path``, ``query`` (``dict[str, list[str]]``, blank values kept), ``headers`` (keys
    lower-cased), ``body`` (bytes) and ``param(name)`` (the last value of a query parameter, or None).
    A request is recorded when it arrives, before any ``delay_s``.

Responses are HTTP/1.0 with Content-Length, so every request uses a fresh connection. Handler
threads are daemons and closing the server does not wait for delayed replies.

pytest: ``tests/sources/conftest.py`` has the fixtures ``replay_server_factory`` (call it for more
servers, all closed at teardown) and ``replay`` (one started server).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

__all__ = ["RecordedRequest", "ReplayServer", "Reply", "Responder"]


@dataclass(frozen=True)
class Reply:
    """One scripted response; ``delay_s`` (seconds) is waited before anything is sent."""

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str = "application/json"

    @classmethod
    def of_json(cls, value: Any, status: int = 200, **kwargs: Any) -> Reply:
        """A reply whose body is ``json.dumps(value)``, also when ``value`` is itself a str."""
        return cls(status=status, body=json.dumps(value).encode(), **kwargs)

    def encoded_body(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it; header names are lower-cased."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None when absent."""
        values = self.query.get(name)
        return values[-1] if values else None


_HOST = "127.0.0.1"

Handler = Callable[[RecordedRequest], Reply]
Responder = Reply | Sequence[Reply] | Handler


class _Route:
    """A handler callable, or a script of replies plus the position of the next one."""

    def __init__(self, responder: Responder) -> None:
        self.handler: Handler | None = None
        self._replies: list[Reply] = []
        self._next = 0
        if isinstance(responder, Reply):
            self._replies = [responder]
        elif callable(responder):
            self.handler = responder
        else:
            self._replies = list(responder)
            if not self._replies or not all(isinstance(r, Reply) for r in self._replies):
                raise ValueError("a scripted route needs a non-empty sequence of Reply")

    def next_reply(self) -> Reply:
        """The next scripted reply; the last one repeats once the script is used up."""
        reply = self._replies[min(self._next, len(self._replies) - 1)]
        self._next += 1
        return reply


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        reply = self.server.replay.respond(request)
        if reply.delay_s > 0:
            time.sleep(reply.delay_s)
        payload = reply.encoded_body()
        try:
            self.send_response(reply.status)
            if not any(k.lower() == "content-type" for k in reply.headers):
                self.send_header("Content-Type", reply.content_type)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away before the reply to %s %s", self.command, split.path)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("replay server: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, replay: ReplayServer) -> None:
        self.replay = replay
        super().__init__((_HOST, 0), _RequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("replay server: error while handling a request from %s", client_address, exc_info=True)


class ReplayServer:
    """Threaded scripted HTTP server on 127.0.0.1; see the module docstring for the API."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str], _Route] = {}
        self._requests: list[RecordedRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> ReplayServer:
        """Bind an ephemeral port and serve from a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("replay server already started")
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="replay-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port; idempotent. Delayed replies still sleeping are abandoned."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # addresses -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("replay server not started")
        return f"http://{_HOST}:{self._server.server_port}"

    def url(self, path: str) -> str:
        """``base_url`` joined with ``path`` (a leading slash is added when missing)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # routes and records ----------------------------------------------------------------------
    def route(self, method: str, path: str, responder: Responder) -> None:
        """Answer ``method`` requests for URL path ``path`` with ``responder`` (replaces an earlier one)."""
        with self._lock:
            self._routes[(method.upper(), path)] = _Route(responder)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str, method: str = "GET") -> list[RecordedRequest]:
        """The received requests for exactly this method and URL path, oldest first."""
        return [r for r in self.requests if r.path == path and r.method == method.upper()]

    def respond(self, request: RecordedRequest) -> Reply:
        """Record ``request`` and pick its reply (used by the request threads)."""
        with self._lock:
            self._requests.append(request)
            route = self._routes.get((request.method, request.path))
            if route is None:
                return Reply(404, {"error": f"no route for {request.method} {request.path}"})
            if route.handler is None:
                return route.next_reply()
        return route.handler(request)  # outside the lock: handlers may take their time
