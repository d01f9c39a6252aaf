"""HTTP plumbing shared by the simulators: request/response values, fault injection, the server.

Each simulator is a plain object with ``dispatch(Request) -> Response``; the server turns sockets
into ``Request`` values. The server speaks HTTP/1.1 keep-alive with an exact Content-Length and
sets TCP_NODELAY on every accepted socket: without it, Nagle's algorithm and delayed ACKs cap a
small-response server at a few dozen requests per second.
"""

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import simplejson

LOG = logging.getLogger("finsync.sandbox")

SYSTEMS = ("stripe", "salesforce", "netsuite", "metering", "avalara")


@dataclass
class Request:
    """One HTTP request as a simulator sees it.

    Attributes:
        method: Upper-case HTTP method.
        path: Path without the query string, still percent-encoded.
        query: Raw query string (without ``?``).
        headers: Request headers (case-insensitive lookup).
        body: Raw body bytes.
        base_url: ``http://host:port`` the client addressed (from the Host header).
    """

    method: str
    path: str
    query: str
    headers: Message
    body: bytes
    base_url: str

    def params(self) -> list[tuple[str, str]]:
        """Decoded query parameters in order, repeated keys kept."""
        return parse_qsl(self.query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        """A header's value, or None."""
        value = self.headers.get(name)
        return str(value) if value is not None else None


@dataclass
class Response:
    """An HTTP response: status, body bytes and extra headers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def dumps(obj: Any) -> bytes:
    """Serialise to JSON bytes; Decimal values become exact JSON numbers."""
    return simplejson.dumps(obj, use_decimal=True, separators=(",", ":")).encode()


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response with the given status and extra headers."""
    merged = {"Content-Type": "application/json;charset=UTF-8"}
    if headers:
        merged.update(headers)
    return Response(status, dumps(obj), merged)


def raw_json_response(status: int, body: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON response whose body was assembled as text already (pre-rendered records)."""
    merged = {"Content-Type": "application/json;charset=UTF-8"}
    if headers:
        merged.update(headers)
    return Response(status, body.encode(), merged)


@dataclass
class FaultRule:
    """One armed fault: the next ``remaining`` matching requests answer ``status``."""

    system: str
    status: int
    remaining: int
    retry_after_s: int | None
    path_prefix: str | None


@dataclass
class Faults:
    """Deterministic fault injection shared by the simulators.

    Rules fire in the order they were armed; each matching request consumes one count. The design
    leaves room for other fault kinds (maintenance windows, commit-then-timeout, concurrency
    limits) as further rule types consulted in ``take``.
    """

    rules: list[FaultRule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(
        self,
        system: str,
        *,
        status: int,
        count: int = 1,
        retry_after_s: int | None = 1,
        path_prefix: str | None = None,
    ) -> None:
        """Arm a fault for ``system``.

        Raises:
            ValueError: Unknown system, a status that is not an HTTP error, or count < 1.
        """
        if system not in SYSTEMS:
            raise ValueError(f"unknown sandbox system {system!r}; expected one of {SYSTEMS}")
        if not 400 <= int(status) <= 599:
            raise ValueError(f"fault status must be an HTTP error (400-599), got {status}")
        if int(count) < 1:
            raise ValueError(f"fault count must be >= 1, got {count}")
        if retry_after_s is not None and int(retry_after_s) < 0:
            raise ValueError("retry_after_s must be >= 0")
        with self._lock:
            self.rules.append(
                FaultRule(
                    system,
                    int(status),
                    int(count),
                    None if retry_after_s is None else int(retry_after_s),
                    path_prefix,
                )
            )

    def take(self, system: str, path: str) -> FaultRule | None:
        """Consume and return the first armed fault matching this request, if any."""
        with self._lock:
            for rule in self.rules:
                if rule.system != system:
                    continue
                if rule.path_prefix and not path.startswith(rule.path_prefix):
                    continue
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.rules.remove(rule)
                return FaultRule(rule.system, rule.status, 0, rule.retry_after_s, rule.path_prefix)
        return None

    def clear(self, system: str | None = None) -> None:
        """Disarm all faults, or those of one system."""
        with self._lock:
            self.rules = [r for r in self.rules if system is not None and r.system != system]


class Simulator:
    """Base of a simulated system: counts requests, applies faults, serves the admin endpoint."""

    system = ""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._count = 0
        self._count_lock = threading.Lock()

    @property
    def request_count(self) -> int:
        """Requests served (admin calls excluded)."""
        return self._count

    def dispatch(self, req: Request) -> Response:
        """Route one request: admin endpoint, then armed faults, then the system's own API."""
        if req.path.startswith("/__sandbox/"):
            return self._admin(req)
        with self._count_lock:
            self._count += 1
        fault = self.faults.take(self.system, req.path)
        if fault is not None:
            headers = {}
            if fault.retry_after_s is not None:
                headers["Retry-After"] = str(fault.retry_after_s)
            resp = self.fault_response(fault.status)
            resp.headers.update(headers)
            return resp
        return self.handle(req)

    def _admin(self, req: Request) -> Response:
        if req.method != "POST":
            return json_response(405, {"error": "admin endpoints take POST"})
        try:
            args = simplejson.loads(req.body or b"{}")
            if not isinstance(args, dict):
                raise ValueError("body must be a JSON object")
            if req.path == "/__sandbox/faults":
                if args.get("clear"):
                    self.faults.clear(args.get("system"))
                else:
                    self.faults.add(
                        str(args.get("system", self.system)),
                        status=int(args["status"]),
                        count=int(args.get("count", 1)),
                        retry_after_s=args.get("retry_after_s", 1),
                        path_prefix=args.get("path_prefix"),
                    )
                return json_response(200, {"ok": True, "armed": len(self.faults.rules)})
            return self.admin(req.path, args)
        except (KeyError, ValueError, TypeError) as e:
            return json_response(400, {"error": f"bad admin request: {e}"})

    def admin(self, path: str, args: dict[str, Any]) -> Response:
        """System-specific admin endpoints; none by default."""
        return json_response(404, {"error": f"no admin endpoint {path}"})

    def handle(self, req: Request) -> Response:
        """Serve one request of the system's API."""
        raise NotImplementedError

    def fault_response(self, status: int) -> Response:
        """The system's own error envelope for an injected status."""
        raise NotImplementedError

    def internal_error(self) -> Response:
        """The system's envelope for an unexpected simulator failure (a 500)."""
        return self.fault_response(500)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "finsync-sandbox/1"
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 120
    server: "SimServer"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path, _, query = self.path.partition("?")
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        req = Request(self.command, path, query, self.headers, body, f"http://{host}")
        app = self.server.app
        try:
            resp = app.dispatch(req)
        except Exception:
            LOG.exception("sandbox %s failed on %s %s", app.system, self.command, path)
            resp = app.internal_error()
        self.send_response(resp.status)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.body and self.command != "HEAD":
            self.wfile.write(resp.body)

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch
    do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s " + format, self.address_string(), *args)


class SimServer(ThreadingHTTPServer):
    """A threading HTTP server for one simulator; tracks sockets so ``stop`` closes keep-alives."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Simulator) -> None:
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    @property
    def port(self) -> int:
        """The bound port (useful when 0 asked for an ephemeral one)."""
        return int(self.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{self.app.system}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, on_closed: Callable[[], None] | None = None) -> None:
        """Stop accepting, drop keep-alive connections, close the listening socket."""
        self.shutdown()
        with self._open_lock:
            open_socks = list(self._open)
        for sock in open_socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if on_closed is not None:
            on_closed()
