"""A small hostile HTTP server for the connector tests: each test scripts how it misbehaves.

Unlike the sandbox, it impersonates a system badly on purpose: cursors that cycle, pages
larger than asked, redirects to another host, gzip bombs, bodies that trickle, and error
bodies that echo the request's credentials back. A test gives it one function that turns
each request into a ``Reply``; every request it receives is kept in ``seen``.
"""

import gzip
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass(frozen=True)
class Request:
    """One request the server received.

    Attributes:
        method: HTTP method.
        path: The request target as sent: the path and its query.
        query: The query's parameters (every value of each).
        headers: Request headers.
        body: The raw body.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Reply:
    """How the server answers one request.

    Attributes:
        status: HTTP status.
        body: A JSON value (encoded), or raw bytes sent as they are.
        headers: Extra headers.
        gzipped: Send ``body`` gzip-compressed with ``Content-Encoding: gzip``.
        trickle_s: Send the body one byte at a time, this many seconds apart.
        header_trickle_s: Send the headers too one byte at a time, this many seconds apart.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    gzipped: bool = False
    trickle_s: float = 0.0
    header_trickle_s: float = 0.0

    def payload(self) -> bytes:
        """The body's bytes as sent on the wire."""
        raw = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return gzip.compress(raw) if self.gzipped else raw


Script = Callable[[Request], Reply]


class _QuietServer(ThreadingHTTPServer):
    """A client that drops the connection (as finsync does past a limit) is no error here."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class HostileServer:
    """A threading HTTP server whose every answer comes from ``script``."""

    def __init__(self) -> None:
        self.script: Script = lambda request: Reply(404, {"error": "no script"})
        self.seen: list[Request] = []
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    self.command, self.path, parse_qs(parts.query), dict(self.headers), body
                )
                outer.seen.append(request)
                outer._send(self, outer.script(request))

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _send(self, handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        payload = reply.payload()
        headers = {"Content-Type": "application/json", **reply.headers}
        if reply.gzipped:
            headers["Content-Encoding"] = "gzip"
        headers["Content-Length"] = str(len(payload))
        head = f"HTTP/1.1 {reply.status} Hostile\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        try:
            self._write(handler, (head + "\r\n").encode(), reply.header_trickle_s)
            self._write(handler, payload, reply.trickle_s)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _write(self, handler: BaseHTTPRequestHandler, data: bytes, trickle_s: float) -> None:
        if not trickle_s:
            handler.wfile.write(data)
            return
        for byte in data:
            if self._stop.wait(trickle_s):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    def close(self) -> None:
        """Stop serving (a trickling answer stops at once)."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()
