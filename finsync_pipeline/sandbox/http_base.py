"""HTTP plumbing shared by the simulators: request/response values, fault injection, the server.

Each simulator is a plain object with ``dispatch(Request) -> Response``; the server turns sockets
into ``Request`` values. The server speaks HTTP/1.1 keep-alive with an exact Content-Length and
sets TCP_NODELAY on every accepted socket: without it, Nagle's algorithm and delayed ACKs cap a
small-response server at a few dozen requests per second.
"""

import contextlib
import logging
import math
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar
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
        base_url: ``http(s)://host:port`` the client addressed (from the Host header).
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
    withhold_s: float | None = None
    """When set, nothing is answered: the connection stalls this long, then closes (a
    commit-then-timeout fault)."""


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
class MaintenanceWindow:
    """A system down for maintenance: every request answers 503 with Retry-After.

    The window ends at ``until`` (on the ``Faults`` clock) or after ``remaining`` requests,
    whichever form it was opened with.
    """

    system: str
    until: float | None
    remaining: int | None
    retry_after_s: int | None


@dataclass
class RepeatedItems:
    """The next ``remaining`` list pages served after a cursor repeat the cursor's item first.

    At-least-once delivery on the wire: a consumer reading a listing sees the item at each such
    page boundary twice and must not count or apply it twice.
    """

    system: str
    remaining: int
    path_prefix: str | None


@dataclass
class CommitThenTimeout:
    """The next ``remaining`` successful writes commit, then the answer never arrives.

    The connection stalls ``stall_s`` seconds (longer than the client's read timeout, so the
    client gives up) and is then closed without a response; ``stall_s == 0`` closes it at once.
    """

    system: str
    remaining: int
    stall_s: float
    path_prefix: str | None


@dataclass
class ConcurrencyLimit:
    """At most ``limit`` requests of a system in flight; one more answers 429."""

    limit: int
    retry_after_s: int | None


@dataclass
class Rejection:
    """What ``Faults.admit`` answers instead of serving a request."""

    status: int
    retry_after_s: int | None


def _check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise ValueError(f"unknown sandbox system {system!r}; expected one of {SYSTEMS}")


class _CountedRule(Protocol):
    system: str
    remaining: int
    path_prefix: str | None


_Rule = TypeVar("_Rule", bound=_CountedRule)


def _consume(rules: list[_Rule], system: str, path: str) -> _Rule | None:
    """Count one use of the first rule matching ``system`` and ``path``, dropping it when used
    up; the rule, or None. The caller holds the lock that guards ``rules``."""
    for rule in rules:
        if rule.system != system:
            continue
        if rule.path_prefix and not path.startswith(rule.path_prefix):
            continue
        rule.remaining -= 1
        if rule.remaining <= 0:
            rules.remove(rule)
        return rule
    return None


def _check_retry_after(retry_after_s: int | None) -> int | None:
    if retry_after_s is None:
        return None
    if int(retry_after_s) < 0:
        raise ValueError("retry_after_s must be >= 0")
    return int(retry_after_s)


@dataclass
class Faults:
    """Deterministic fault injection shared by the simulators.

    Kinds of fault, consulted for each request in this order:

    1. a maintenance window (``maintenance``): 503 with Retry-After, for a time or a number of
       requests;
    2. status rules (``add``): the next ``count`` matching requests answer a status, in the
       order the rules were armed;
    3. a concurrency limit (``set_concurrency_limit``): a request arriving while ``limit``
       others of its system are in flight answers 429;
    4. pacing of admitted requests: a gate (``hold``/``release``) that parks them until
       released, and a fixed latency (``set_latency``); both make overlap deterministic;
    5. commit-then-timeout (``commit_then_timeout``): after a write succeeded, its answer is
       withheld (the connection stalls, then closes) so the client sees an ambiguous outcome;
    6. repeated items (``repeat_items``): list pages after a cursor start with the cursor's
       item again, so a listing delivers some records twice (simulators that page by cursor
       consult it).

    Every kind is per system and cleared by ``clear``. ``clock`` times maintenance windows.
    """

    rules: list[FaultRule] = field(default_factory=list)
    windows: list[MaintenanceWindow] = field(default_factory=list)
    commit_timeouts: list[CommitThenTimeout] = field(default_factory=list)
    repeats: list[RepeatedItems] = field(default_factory=list)
    limits: dict[str, ConcurrencyLimit] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _changed: threading.Condition = field(init=False, repr=False, compare=False)
    _in_flight: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _gates: dict[str, threading.Event] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    # status rules -----------------------------------------------------------------------------
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
        _check_system(system)
        if not 400 <= int(status) <= 599:
            raise ValueError(f"fault status must be an HTTP error (400-599), got {status}")
        if int(count) < 1:
            raise ValueError(f"fault count must be >= 1, got {count}")
        retry_after = _check_retry_after(retry_after_s)
        with self._lock:
            self.rules.append(FaultRule(system, int(status), int(count), retry_after, path_prefix))

    def take(self, system: str, path: str) -> FaultRule | None:
        """Consume and return the first armed fault matching this request, if any."""
        with self._lock:
            rule = _consume(self.rules, system, path)
        if rule is None:
            return None
        return FaultRule(rule.system, rule.status, 0, rule.retry_after_s, rule.path_prefix)

    # maintenance windows ----------------------------------------------------------------------
    def maintenance(
        self,
        system: str,
        *,
        seconds: float | None = None,
        requests: int | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        """Open a maintenance window: every request of ``system`` answers 503 with Retry-After.

        Give exactly one of ``seconds`` (from now on the ``clock``) or ``requests`` (the next
        that many requests). Retry-After is ``retry_after_s`` when given, else the seconds left
        in a timed window (rounded up) or 1 for a counted one.

        Raises:
            ValueError: Unknown system, both or neither of seconds/requests, or a value < 1.
        """
        _check_system(system)
        if (seconds is None) == (requests is None):
            raise ValueError("a maintenance window takes exactly one of seconds or requests")
        if seconds is not None and float(seconds) <= 0:
            raise ValueError(f"maintenance seconds must be > 0, got {seconds}")
        if requests is not None and int(requests) < 1:
            raise ValueError(f"maintenance requests must be >= 1, got {requests}")
        retry_after = _check_retry_after(retry_after_s)
        with self._lock:
            until = None if seconds is None else self.clock() + float(seconds)
            count = None if requests is None else int(requests)
            self.windows.append(MaintenanceWindow(system, until, count, retry_after))

    def _in_maintenance(self, system: str) -> Rejection | None:
        now = self.clock()
        for window in list(self.windows):
            if window.system != system:
                continue
            if window.until is not None:
                left = window.until - now
                if left <= 0:
                    self.windows.remove(window)
                    continue
                retry = window.retry_after_s
                return Rejection(503, math.ceil(left) if retry is None else retry)
            assert window.remaining is not None
            window.remaining -= 1
            if window.remaining <= 0:
                self.windows.remove(window)
            return Rejection(503, 1 if window.retry_after_s is None else window.retry_after_s)
        return None

    # concurrency ------------------------------------------------------------------------------
    def set_concurrency_limit(
        self, system: str, limit: int | None, *, retry_after_s: int | None = None
    ) -> None:
        """Allow at most ``limit`` requests of ``system`` in flight (None: no limit).

        A request arriving while ``limit`` are in flight answers 429 (NetSuite:
        ``CONCURRENCY_LIMIT_EXCEEDED``), with Retry-After only when ``retry_after_s`` is given:
        NetSuite documents none.

        Raises:
            ValueError: Unknown system or a limit < 1.
        """
        _check_system(system)
        retry_after = _check_retry_after(retry_after_s)
        with self._lock:
            if limit is None:
                self.limits.pop(system, None)
                return
            if int(limit) < 1:
                raise ValueError(f"concurrency limit must be >= 1, got {limit}")
            self.limits[system] = ConcurrencyLimit(int(limit), retry_after)

    def in_flight(self, system: str) -> int:
        """Requests of ``system`` admitted and not yet answered."""
        with self._lock:
            return self._in_flight.get(system, 0)

    def wait_in_flight(self, system: str, n: int, timeout_s: float = 10.0) -> bool:
        """Block until at least ``n`` requests of ``system`` are in flight; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._in_flight.get(system, 0) >= n, timeout=timeout_s
            )

    def admit(self, system: str, path: str) -> Rejection | None:
        """Decide a request: the rejection to answer, or None when it is admitted.

        An admitted request counts as in flight until ``leave`` is called for it.
        """
        with self._changed:
            rejection = self._in_maintenance(system)
            if rejection is not None:
                return rejection
        rule = self.take(system, path)
        if rule is not None:
            return Rejection(rule.status, rule.retry_after_s)
        with self._changed:
            limit = self.limits.get(system)
            running = self._in_flight.get(system, 0)
            if limit is not None and running >= limit.limit:
                return Rejection(429, limit.retry_after_s)
            self._in_flight[system] = running + 1
            self._changed.notify_all()
        return None

    def leave(self, system: str) -> None:
        """An admitted request of ``system`` was answered."""
        with self._changed:
            self._in_flight[system] = max(0, self._in_flight.get(system, 0) - 1)
            self._changed.notify_all()

    # pacing -----------------------------------------------------------------------------------
    def hold(self, system: str) -> None:
        """Park every admitted request of ``system`` (it stays in flight) until ``release``."""
        _check_system(system)
        with self._lock:
            self._gates.setdefault(system, threading.Event()).clear()

    def release(self, system: str | None = None) -> None:
        """Let held requests of ``system`` (or of every system) proceed."""
        with self._lock:
            for name, gate in list(self._gates.items()):
                if system is None or name == system:
                    gate.set()
                    del self._gates[name]

    def set_latency(self, system: str, seconds: float) -> None:
        """Delay every admitted request of ``system`` by ``seconds`` (0 removes the delay)."""
        _check_system(system)
        if float(seconds) < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            if float(seconds) == 0:
                self.latency_s.pop(system, None)
            else:
                self.latency_s[system] = float(seconds)

    def pace(self, system: str, stopping: threading.Event | None = None) -> None:
        """Wait as the gate and latency of ``system`` require (called for admitted requests)."""
        with self._lock:
            gate = self._gates.get(system)
            delay = self.latency_s.get(system, 0.0)
        if gate is not None:
            # A held request waits at most a minute: a forgotten hold must not hang a test run.
            gate.wait(timeout=60.0)
        if delay:
            (stopping or threading.Event()).wait(delay)

    # commit-then-timeout ----------------------------------------------------------------------
    def commit_then_timeout(
        self,
        system: str,
        *,
        count: int = 1,
        stall_s: float = 5.0,
        path_prefix: str | None = None,
    ) -> None:
        """Withhold the answer of the next ``count`` successful writes to ``system``.

        Each write commits (the document exists), then its connection stalls ``stall_s``
        seconds and closes without a response. Pick ``stall_s`` above the client's read
        timeout for a read timeout, or 0 for a connection dropped at once. Only writes that
        succeeded (2xx) count; reads never do.

        Raises:
            ValueError: Unknown system, count < 1 or stall_s < 0.
        """
        _check_system(system)
        if int(count) < 1:
            raise ValueError(f"fault count must be >= 1, got {count}")
        if float(stall_s) < 0:
            raise ValueError("stall_s must be >= 0")
        with self._lock:
            self.commit_timeouts.append(
                CommitThenTimeout(system, int(count), float(stall_s), path_prefix)
            )

    def take_commit_timeout(self, system: str, path: str) -> float | None:
        """Consume the first commit-then-timeout matching a committed write: its stall, or None."""
        with self._lock:
            rule = _consume(self.commit_timeouts, system, path)
        return None if rule is None else rule.stall_s

    # repeated items ---------------------------------------------------------------------------
    def repeat_items(self, system: str, *, pages: int = 1, path_prefix: str | None = None) -> None:
        """Make the next ``pages`` cursor pages of ``system`` (under ``path_prefix``) repeat
        the cursor's item first.

        Raises:
            ValueError: Unknown system or pages < 1.
        """
        _check_system(system)
        if int(pages) < 1:
            raise ValueError(f"repeat_items pages must be >= 1, got {pages}")
        with self._lock:
            self.repeats.append(RepeatedItems(system, int(pages), path_prefix))

    def take_repeat(self, system: str, path: str) -> bool:
        """Consume one armed repeat matching a page served after a cursor; True if one was."""
        with self._lock:
            return _consume(self.repeats, system, path) is not None

    # inspection -------------------------------------------------------------------------------
    def clear(self, system: str | None = None) -> None:
        """Disarm every fault (status rules, windows, limits, pacing, commit-then-timeout,
        repeated items), or those of one system; held requests are released."""

        def keep(name: str) -> bool:
            return system is not None and name != system

        with self._lock:
            self.rules = [r for r in self.rules if keep(r.system)]
            self.windows = [w for w in self.windows if keep(w.system)]
            self.commit_timeouts = [c for c in self.commit_timeouts if keep(c.system)]
            self.repeats = [r for r in self.repeats if keep(r.system)]
            self.limits = {k: v for k, v in self.limits.items() if keep(k)}
            self.latency_s = {k: v for k, v in self.latency_s.items() if keep(k)}
        self.release(system)

    def describe(self) -> dict[str, Any]:
        """What is armed, as JSON-ready data (the admin endpoint answers it)."""
        with self._lock:
            now = self.clock()
            return {
                "status": [
                    {
                        "system": r.system,
                        "status": r.status,
                        "remaining": r.remaining,
                        "retry_after_s": r.retry_after_s,
                        "path_prefix": r.path_prefix,
                    }
                    for r in self.rules
                ],
                "maintenance": [
                    {
                        "system": w.system,
                        "seconds_left": None if w.until is None else max(0.0, w.until - now),
                        "requests_left": w.remaining,
                        "retry_after_s": w.retry_after_s,
                    }
                    for w in self.windows
                ],
                "commit_then_timeout": [
                    {
                        "system": c.system,
                        "remaining": c.remaining,
                        "stall_s": c.stall_s,
                        "path_prefix": c.path_prefix,
                    }
                    for c in self.commit_timeouts
                ],
                "repeat_items": [
                    {"system": r.system, "pages_left": r.remaining, "path_prefix": r.path_prefix}
                    for r in self.repeats
                ],
                "concurrency_limit": {
                    k: {"limit": v.limit, "retry_after_s": v.retry_after_s}
                    for k, v in self.limits.items()
                },
                "latency_s": dict(self.latency_s),
                "held": sorted(self._gates),
                "in_flight": {k: v for k, v in self._in_flight.items() if v},
            }


class Simulator:
    """Base of a simulated system: counts requests, applies faults, serves the admin endpoint."""

    system = ""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._count = 0
        self._count_lock = threading.Lock()
        # Set when the server stops, so a stalled or delayed answer ends promptly.
        self.stopping = threading.Event()

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
        rejection = self.faults.admit(self.system, req.path)
        if rejection is not None:
            resp = self.fault_response(rejection.status)
            if rejection.retry_after_s is not None:
                resp.headers["Retry-After"] = str(rejection.retry_after_s)
            return resp
        try:
            self.faults.pace(self.system, self.stopping)
            resp = self.handle(req)
        finally:
            self.faults.leave(self.system)
        if 200 <= resp.status < 300 and self.is_write(req):
            stall = self.faults.take_commit_timeout(self.system, req.path)
            if stall is not None:
                resp.withhold_s = stall
        return resp

    def is_write(self, req: Request) -> bool:
        """Whether a request changes state (what commit-then-timeout applies to)."""
        return req.method in ("POST", "PUT", "PATCH", "DELETE")

    def _admin(self, req: Request) -> Response:
        if req.method != "POST":
            return json_response(405, {"error": "admin endpoints take POST"})
        try:
            args = simplejson.loads(req.body or b"{}")
            if not isinstance(args, dict):
                raise ValueError("body must be a JSON object")
            if req.path == "/__sandbox/faults":
                self._arm(args)
                return json_response(
                    200, {"ok": True, "armed": len(self.faults.rules), **self.faults.describe()}
                )
            return self.admin(req.path, args)
        except (KeyError, ValueError, TypeError) as e:
            return json_response(400, {"error": f"bad admin request: {e}"})

    def _arm(self, args: dict[str, Any]) -> None:
        """``POST /__sandbox/faults``: arm (or clear) one fault described by ``args``.

        ``{"clear": true[, "system"]}``; ``{"kind": "status", "status", "count",
        "retry_after_s", "path_prefix"}`` (the default kind); ``{"kind": "maintenance",
        "seconds" | "requests", "retry_after_s"}``; ``{"kind": "concurrency_limit", "limit"
        (null removes it), "retry_after_s"}``; ``{"kind": "commit_then_timeout", "count",
        "stall_s", "path_prefix"}``; ``{"kind": "repeat_items", "pages", "path_prefix"}``;
        ``{"kind": "latency", "seconds"}``; ``{"kind": "hold"}``
        and ``{"kind": "release"}``. ``system`` defaults to the simulator addressed.
        """
        faults = self.faults
        system = str(args.get("system", self.system))
        if args.get("clear"):
            faults.clear(args.get("system"))
            return
        kind = args.get("kind", "status")
        if kind == "status":
            faults.add(
                system,
                status=int(args["status"]),
                count=int(args.get("count", 1)),
                retry_after_s=args.get("retry_after_s", 1),
                path_prefix=args.get("path_prefix"),
            )
        elif kind == "maintenance":
            seconds, requests = args.get("seconds"), args.get("requests")
            faults.maintenance(
                system,
                seconds=None if seconds is None else float(seconds),
                requests=None if requests is None else int(requests),
                retry_after_s=args.get("retry_after_s"),
            )
        elif kind == "concurrency_limit":
            limit = args.get("limit")
            faults.set_concurrency_limit(
                system,
                None if limit is None else int(limit),
                retry_after_s=args.get("retry_after_s"),
            )
        elif kind == "commit_then_timeout":
            faults.commit_then_timeout(
                system,
                count=int(args.get("count", 1)),
                stall_s=float(args.get("stall_s", 5.0)),
                path_prefix=args.get("path_prefix"),
            )
        elif kind == "repeat_items":
            faults.repeat_items(
                system, pages=int(args.get("pages", 1)), path_prefix=args.get("path_prefix")
            )
        elif kind == "latency":
            faults.set_latency(system, float(args["seconds"]))
        elif kind == "hold":
            faults.hold(system)
        elif kind == "release":
            faults.release(args.get("system"))
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

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
        if isinstance(self.connection, ssl.SSLSocket):
            # The handshake runs here, in the connection's own thread (under the idle timeout
            # set above), so a slow or refusing client never stalls the accepting thread.
            self.connection.do_handshake()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path, _, query = self.path.partition("?")
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        scheme = self.server.scheme
        req = Request(self.command, path, query, self.headers, body, f"{scheme}://{host}")
        app = self.server.app
        try:
            resp = app.dispatch(req)
        except Exception:
            LOG.exception("sandbox %s failed on %s %s", app.system, self.command, path)
            resp = app.internal_error()
        if resp.withhold_s is not None:
            # Commit-then-timeout: the write is committed, its answer never leaves.
            app.stopping.wait(resp.withhold_s)
            self.close_connection = True
            return
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
    """A threading HTTP server for one simulator; tracks sockets so ``stop`` closes keep-alives.

    With ``ssl_context`` it serves HTTPS: each accepted connection is wrapped, and its handshake
    runs in the connection's own thread.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], app: Simulator, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def scheme(self) -> str:
        """``https`` when serving TLS, else ``http``."""
        return "http" if self.ssl_context is None else "https"

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.ssl_context is None:
            return sock, address
        wrapped = self.ssl_context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that does not trust the certificate hangs up in the handshake: that is
        # the client's refusal, not a sandbox failure worth a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError | ConnectionError):
            LOG.debug("sandbox %s: %s hung up: %s", self.app.system, client_address, error)
            return
        super().handle_error(request, client_address)

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
        self.app.stopping.clear()
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{self.app.system}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, on_closed: Callable[[], None] | None = None) -> None:
        """Stop accepting, drop keep-alive connections, close the listening socket."""
        self.app.stopping.set()
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
