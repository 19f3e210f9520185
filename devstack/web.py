"""A small HTTPS server framework for the stand-ins (stdlib only).

Each stand-in is a `Service`: a name (used by fault injection and request counters) and a
routing table of `(method, path template)` → handler. The server applies injected faults before
routing and counts every request by route template, so tests can assert exactly which calls the
product made.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import FaultTable, RequestCounter

MAX_BODY = 4 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str  # decoded path without the query
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    base_url: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        if not self.body:
            raise HttpError(400, "BadRequest", "A request body is required.")
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, "BadRequest", f"The request body is not valid JSON: {exc}") from exc


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        all_headers = {"Content-Type": "application/json; charset=utf-8"}
        all_headers.update(headers or {})
        return cls(status, json.dumps(payload).encode(), all_headers)

    @classmethod
    def empty(cls, status: int = 204, headers: dict[str, str] | None = None) -> Response:
        return cls(status, b"", dict(headers or {}))


class HttpError(Exception):
    """Raised by handlers; each service renders it in its own error shape."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 inner_code: str | None = None, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.inner_code = inner_code
        self.details = details


Handler = Callable[[Request], Response]


@dataclass
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler


def _compile(template: str) -> re.Pattern[str]:
    # "{name}" matches one path segment; a template may also be a raw regex when it starts with ^.
    if template.startswith("^"):
        return re.compile(template)
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
    return re.compile(f"^{regex}$")


class Service:
    """A stand-in: routes plus how errors look on its wire."""

    name = "service"
    # Whether injected faults apply. The control API opts out: a wildcard fault must not lock out
    # the very routes (DELETE /control/faults, /control/reset) that remove it.
    faultable = True

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.base_url = ""

    def route(self, method: str, template: str, handler: Handler) -> None:
        self.routes.append(Route(method.upper(), template, _compile(template), handler))

    def error_response(self, error: HttpError, request: Request) -> Response:
        body: dict[str, Any] = {"error": {"code": error.code, "message": error.message}}
        return Response.json(error.status, body, error.headers)

    def before(self, request: Request) -> Response | None:
        """Hook run before routing (authentication, for instance); a response short-circuits."""
        return None

    def dispatch(self, request: Request) -> tuple[str, Response]:
        path_matched = False
        for route in self.routes:
            match = route.pattern.match(request.path)
            if not match:
                continue
            path_matched = True
            if route.method != request.method:
                continue
            request.params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                early = self.before(request)
                response = early if early is not None else route.handler(request)
            except HttpError as error:
                response = self.error_response(error, request)
            return route.template, response
        if path_matched:
            err = HttpError(405, "MethodNotAllowed", f"The method {request.method} is not allowed here.")
        else:
            err = HttpError(404, "NotFound", f"No route for {request.method} {request.path}.")
        return "(unrouted)", self.error_response(err, request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInServer

    def setup(self) -> None:
        # Headers and body go out as two writes; with Nagle on, the body waits for the client's
        # delayed ACK (~40 ms) on every kept-alive request. Real services do not add that.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def _handle(self) -> None:
        server = self.server
        service = server.service
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_error(413)
            return
        body = self.rfile.read(length) if length else b""
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request = Request(
            method=self.command,
            path=unquote(split.path),
            raw_path=self.path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            base_url=service.base_url,
        )
        fault = server.faults.take(service.name, request.method, request.path) if service.faultable else None
        if fault is not None:
            if fault.latency:
                time.sleep(fault.latency)
            if fault.drop:
                server.counter.record(service.name, request.method, "(dropped)")
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.status is not None:
                headers = {}
                if fault.retry_after is not None:
                    seconds = float(fault.retry_after)
                    headers["Retry-After"] = str(int(seconds)) if seconds.is_integer() else str(seconds)
                err = HttpError(fault.status, fault.code or _default_code(fault.status),
                                "Injected fault.", headers=headers)
                route, _ = _route_of(service, request)
                server.counter.record(service.name, request.method, route)
                self._send(service.error_response(err, request))
                return
        try:
            route, response = service.dispatch(request)
        except Exception as exc:  # a stand-in bug must show up as a 500, not a hang
            route = "(error)"
            response = Response.json(500, {"error": {"code": "InternalServerError", "message": repr(exc)}})
        server.counter.record(service.name, request.method, route)
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        headers = dict(response.headers)
        headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def _route_of(service: Service, request: Request) -> tuple[str, bool]:
    for route in service.routes:
        if route.pattern.match(request.path) and route.method == request.method:
            return route.template, True
    return "(unrouted)", False


def _default_code(status: int) -> str:
    return {
        400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
        409: "Conflict", 429: "TooManyRequests", 500: "InternalServerError",
        502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout",
    }.get(status, "Error")


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, service: Service, faults: FaultTable, counter: RequestCounter,
                 cert_file: Path, key_file: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.service = service
        self.faults = faults
        self.counter = counter
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        # Handshake in the worker thread, not in accept(): one slow client must not stall the rest.
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self.server_address[1]
        service.base_url = f"https://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshakes aborted by clients and dropped connections are expected noise.
        return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name=f"devstack-{self.service.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
