"""The shared HTTP client behind every finsync connector.

One ``HttpClient`` per external system owns one ``requests.Session`` (keep-alive), sends every
request with explicit (connect, read) timeouts, checks every response against the statuses the
caller expects, and turns failures into finsync's error tree:

- 429/500/502/503/504, timeouts and connection errors are retried with capped exponential
  backoff and full jitter, honouring ``Retry-After`` (seconds or an HTTP date);
- a non-idempotent request whose outcome is unknown (read timeout after send, a 500/502/504, a
  dropped connection), or a write the system says a resend cannot settle (a system classifier's
  ``Verdict.AMBIGUOUS``), raises ``AmbiguousOutcomeError`` instead of being resent;
- 401 raises ``AuthenticationError``; other 4xx raise ``PermanentUpstreamError`` carrying the
  system's own code, message and field, parsed by a per-system error parser;
- retries exhausted raise ``RetryableUpstreamError``.

Every call is bounded: a (connect, read) timeout per socket operation and a deadline for the
whole answer, so a body that trickles in a byte at a time cannot hold a call for minutes; a
body is read as a stream and refused past ``max_response_bytes`` decompressed (a gzip bomb is
never inflated whole). No request leaves its configured host: redirects are never followed
(a 3xx is an error naming where it pointed), a URL off the client's origins is refused before
anything is sent, and in live mode (``FINSYNC_MODE`` other than ``sandbox``) a base URL must be
https on the vendor's own domains unless ``FINSYNC_ALLOW_HOSTS`` names it. ``PageGuard`` bounds
every paged read: a cursor seen before, a page larger than asked and the page cap stop it.

Every secret the client sends is registered with ``errors.register_secret`` (raw, URL-encoded,
JSON-escaped, and the base64 of a Basic pair); every ``FinsyncError`` scrubs every one of its
fields of all of them when it is made, before anything can store or print it.
"""

import contextlib
import datetime
import decimal
import email.utils
import enum
import heapq
import itertools
import json
import os
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from finsync_pipeline.errors import (
    AmbiguousOutcomeError,
    AuthenticationError,
    ConfigurationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
    UnreachableError,
    UpstreamError,
    redact,
    register_basic_pair,
    register_secret,
)
from finsync_pipeline.resources.concurrency import AdaptiveConcurrency

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# A 429 or 503 is answered before the request is processed, so even a non-idempotent request
# can be resent; a 500/502/504 may come after the write committed.
NOT_PROCESSED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class ErrorInfo:
    """What a system said about a failed request.

    Attributes:
        code: The system's own error code (``resource_missing``, ``INVALID_FIELD``, ...).
        detail: The system's human-readable message.
        field: The field the system blamed, when it named one.
    """

    code: str | None = None
    detail: str | None = None
    field: str | None = None


class Verdict(enum.Enum):
    """How a non-expected response is handled."""

    RETRY = "retry"
    """Transient: back off and resend (when resending is safe)."""
    GIVE_UP_RETRYABLE = "give_up_retryable"
    """Transient but not worth resending now (a daily quota): raise RetryableUpstreamError."""
    PERMANENT = "permanent"
    """Resending cannot help: raise PermanentUpstreamError."""
    AUTH = "auth"
    """Credentials rejected: raise AuthenticationError."""
    AMBIGUOUS = "ambiguous"
    """A write may have been applied and the system says a resend will not tell (Stripe's
    ``Stripe-Should-Retry: false`` on a 500): raise AmbiguousOutcomeError, settled by lookup."""


ErrorParser = Callable[[requests.Response], ErrorInfo]
Classifier = Callable[[requests.Response, ErrorInfo], Verdict | None]


def default_classify(status: int) -> Verdict:
    """The verdict for a status when the system's classifier has no opinion."""
    if status == 401:
        return Verdict.AUTH
    if status in RETRYABLE_STATUSES:
        return Verdict.RETRY
    return Verdict.PERMANENT


# What a NaN or Infinity in a body becomes (Python's json accepts them; finsync keeps no float):
# text that no number field accepts, which the contract check names.
NOT_A_NUMBER = "finsync:not-a-number:"
# The field a shape error names when the whole body is wrong.
BODY = "(body)"


def _not_a_number(constant: str) -> str:
    return NOT_A_NUMBER + constant


def parse_json(response: requests.Response, system: str) -> Any:
    """Decode a JSON body with every non-integer number as ``Decimal`` (never float).

    ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's json accepts) become the text
    ``NOT_A_NUMBER + constant``: the page still reads, and the record's contract check names
    the field.

    Raises:
        PermanentUpstreamError: The body is not JSON, or is nested too deep to read (the
            decoder's recursion limit; ``field`` is ``(body)``).
    """
    where = f"{response.request.method} {_path(response.url)}"
    try:
        return json.loads(
            response.content, parse_float=decimal.Decimal, parse_constant=_not_a_number
        )
    except RecursionError as e:
        raise PermanentUpstreamError(
            system,
            f"{where} answered a body nested too deep to read",
            status=response.status_code,
            field=BODY,
        ) from e
    except ValueError as e:
        raise PermanentUpstreamError(
            system, f"{where} answered a body that is not JSON", status=response.status_code
        ) from e


def error_json(response: requests.Response) -> Any:
    """The JSON of an error body, or None when it is not JSON (or too deep to read)."""
    try:
        return json.loads(response.content, parse_float=decimal.Decimal)
    except (ValueError, RecursionError):
        return None


# What a shape error says was expected, by Python type (bool first: it is an int too).
_EXPECTED: dict[type, str] = {
    bool: "true or false",
    list: "an array",
    dict: "an object",
    str: "text",
    int: "an integer",
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for t, name in _EXPECTED.items() if isinstance(value, t)), "a number")


def shape_error(system: str, where: str, field: str, expected: str, value: Any) -> UpstreamError:
    """The error of a page whose ``field`` is not what the API documents."""
    return PermanentUpstreamError(
        system,
        f"{where} answered {_kind(value)} where {expected} was expected",
        status=200,
        field=field,
    )


def body_object(body: Any, system: str, where: str) -> dict[str, Any]:
    """``body`` when it is a JSON object, else a shape error naming ``(body)``."""
    if not isinstance(body, dict):
        raise shape_error(system, where, BODY, "an object", body)
    return body


def body_field(
    body: Mapping[str, Any],
    key: str,
    kind: type,
    system: str,
    where: str,
    *,
    default: Any = None,
    required: bool = False,
) -> Any:
    """``body[key]`` when it is of ``kind`` (an int is never a bool); absent, ``default``
    unless ``required``. Anything else is a shape error naming ``key``."""
    if key not in body or body[key] is None:
        if required:
            raise shape_error(system, where, key, _EXPECTED[kind], None)
        return default
    value = body[key]
    wrong_bool = kind is int and isinstance(value, bool)
    if wrong_bool or not isinstance(value, kind):
        raise shape_error(system, where, key, _EXPECTED[kind], value)
    return value


def parse_retry_after(value: str | None, *, now: datetime.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    return max(0.0, (when - now).total_seconds())


def _path(url: str | None) -> str:
    # Only the path goes into messages: query strings can carry customer data (SOQL filters).
    return urlsplit(url or "").path or "/"


def _empty_error_info(response: requests.Response) -> ErrorInfo:
    return ErrorInfo()


CONNECT_TIMEOUT_ENV = "FINSYNC_HTTP_CONNECT_TIMEOUT_S"
READ_TIMEOUT_ENV = "FINSYNC_HTTP_READ_TIMEOUT_S"
DEADLINE_ENV = "FINSYNC_HTTP_DEADLINE_S"
MAX_RESPONSE_BYTES_ENV = "FINSYNC_HTTP_MAX_RESPONSE_BYTES"
MAX_PAGES_ENV = "FINSYNC_HTTP_MAX_PAGES"
ALLOW_HOSTS_ENV = "FINSYNC_ALLOW_HOSTS"
MODE_ENV = "FINSYNC_MODE"
DEFAULT_MAX_RESPONSE_BYTES = 64 * 2**20
DEFAULT_MAX_PAGES = 10_000
_CHUNK = 64 * 1024
_DECODED_ENCODINGS = frozenset({"gzip", "x-gzip", "deflate"})
_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class HttpOptions:
    """Transport settings a connector passes to its ``HttpClient``.

    Attributes:
        timeout: (connect, read) timeouts in seconds, each per socket operation.
        deadline_s: Longest one attempt may take, from sending to the answer's last byte.
        max_response_bytes: Largest body accepted, counted after decompression.
        max_pages: Most pages one paged read may fetch.
        max_attempts: Attempts per request, the first included.
        backoff_base_s: Base of the exponential backoff.
        backoff_max_s: Cap of one wait; a longer Retry-After is not waited for here.
        sleep: How to wait (tests record instead of sleeping).
        rng: Source of jitter (seeded in tests).
        limiter: Slots for requests in flight, shared by every client of a run that talks to
            the system (cut on 429, grown back on answers); None sends without one.
    """

    timeout: tuple[float, float] = (5.0, 60.0)
    deadline_s: float = 120.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_pages: int = DEFAULT_MAX_PAGES
    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep)
    rng: random.Random | None = None
    limiter: AdaptiveConcurrency | None = None

    @classmethod
    def from_env(cls) -> "HttpOptions":
        """The defaults, overridden by the ``FINSYNC_HTTP_*`` variables that are set.

        Raises:
            ConfigurationError: A variable is not a positive number (it is named).
        """
        defaults = cls()
        return cls(
            timeout=(
                _positive_env(CONNECT_TIMEOUT_ENV, defaults.timeout[0], float),
                _positive_env(READ_TIMEOUT_ENV, defaults.timeout[1], float),
            ),
            deadline_s=_positive_env(DEADLINE_ENV, defaults.deadline_s, float),
            max_response_bytes=_positive_env(
                MAX_RESPONSE_BYTES_ENV, defaults.max_response_bytes, int
            ),
            max_pages=_positive_env(MAX_PAGES_ENV, defaults.max_pages, int),
        )


def _positive_env(name: str, default: _N, kind: Callable[[str], _N]) -> _N:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = kind("0")
    if not value > 0:
        raise ConfigurationError(
            f"{name} is {text!r}: set it to a positive {'integer' if kind is int else 'number'} "
            f"(default {default})"
        )
    return value


def live_mode() -> bool:
    """Whether finsync talks to the real services (``FINSYNC_MODE`` other than ``sandbox``)."""
    return os.environ.get(MODE_ENV, "sandbox") != "sandbox"


def allowed_hosts() -> frozenset[str]:
    """The extra hosts ``FINSYNC_ALLOW_HOSTS`` lets live-mode base URLs use (comma-separated)."""
    text = os.environ.get(ALLOW_HOSTS_ENV, "")
    return frozenset(h.strip().lower() for h in text.split(",") if h.strip())


def check_base_url(system: str, url: str, *, variable: str, domains: Sequence[str]) -> None:
    """In live mode, refuse a base URL that is not https on one of the vendor's ``domains``.

    A host ``FINSYNC_ALLOW_HOSTS`` names is accepted too (a proxy, a self-hosted service).
    In sandbox mode every URL is accepted (the simulators listen on localhost).

    Raises:
        ConfigurationError: Names ``variable``, the host and what is allowed.
    """
    if not live_mode():
        return
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    extra = allowed_hosts()
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            f"{system}: {variable} must be a plain https:// URL in live mode, got "
            f"{parts.scheme or 'no scheme'}://{host}"
        )
    on_domain = any(host == d or host.endswith("." + d) for d in domains)
    if not on_domain and host not in extra:
        raise ConfigurationError(
            f"{system}: {variable} points at {host}, which is not on {', '.join(domains)}; "
            f"in live mode credentials go only there (name another host in {ALLOW_HOSTS_ENV} "
            "to allow it)"
        )


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


class PageGuard:
    """Bounds one paged read: no cursor twice, no page larger than asked, at most N pages.

    Args:
        system: The system, named in every error.
        what: The read (``GET /v1/invoices``), named in every error.
        limit: The most records a page may hold (what was asked for).
        max_pages: The most pages the read may fetch.
    """

    def __init__(self, system: str, what: str, *, limit: int, max_pages: int) -> None:
        self.system = system
        self.what = what
        self.limit = limit
        self.max_pages = max_pages
        self.pages = 0
        self._seen: set[str] = set()

    def page(self, count: int, *, more: bool) -> None:
        """Check a page of ``count`` records; ``more`` when the system says more follow.

        Raises:
            PermanentUpstreamError: The page is larger than asked, or empty while more follow.
        """
        self.pages += 1
        if count > self.limit:
            raise self._error(f"answered {count} records where at most {self.limit} were asked")
        if more and count == 0:
            raise self._error("said more records follow but sent an empty page")

    def follow(self, cursor: str, *, page_key: str | None = None) -> None:
        """Check the cursor of the next page before it is asked for.

        Args:
            cursor: What names the next page (an id, a URL), or the page just read when
                ``page_key`` is given (``offset 2000``).
            page_key: What identifies the page just read, when the cursor always advances
                (an offset): the same page twice is a loop too.

        Raises:
            PermanentUpstreamError: The cursor (or page) came back, or the page cap is reached.
        """
        key = page_key if page_key is not None else cursor
        shown = repr(cursor if len(cursor) <= 120 else cursor[:117] + "...")
        if key in self._seen:
            if page_key is not None:
                text = f"answered at {shown} a page it had already sent"
            else:
                text = f"repeated the cursor {shown}"
            raise self._error(f"{text}; paging stopped, it would never end")
        if self.pages >= self.max_pages:
            raise self._error(
                f"still had more after {self.pages} pages (cursor {shown}); the cap is "
                f"{self.max_pages} pages a read ({MAX_PAGES_ENV})"
            )
        self._seen.add(key)

    def _error(self, text: str) -> PermanentUpstreamError:
        return PermanentUpstreamError(self.system, f"{self.what} {text}", status=200)


class _BodyTooLarge(Exception):
    pass


class _DeadlinePassed(Exception):
    pass


def _read_body(response: requests.Response, *, limit: int, deadline: float) -> None:
    """Read a streamed body into ``response`` (``.content``), decompressing gzip/deflate.

    Memory stays bounded by ``limit``: compressed data is inflated at most ``limit + 1``
    bytes at a time, so a bomb is refused as soon as it passes the limit.

    Raises:
        _BodyTooLarge: More than ``limit`` bytes after decompression.
        _DeadlinePassed: The body was still arriving at ``deadline`` (a monotonic time).
        requests.exceptions.RequestException: The transport failed mid-body.
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding in _DECODED_ENCODINGS else None
    parts: list[bytes] = []
    size = 0
    raw = response.raw
    try:
        while True:
            chunk = raw.read1(_CHUNK) if hasattr(raw, "read1") else raw.read(_CHUNK)
            if not chunk:
                break
            for piece in _inflate(inflater, chunk, limit - size):
                size += len(piece)
                if size > limit:
                    raise _BodyTooLarge
                parts.append(piece)
            if time.monotonic() > deadline:
                raise _DeadlinePassed
    except urllib3.exceptions.ReadTimeoutError as e:
        if time.monotonic() >= deadline:
            raise _DeadlinePassed from e
        raise requests.exceptions.ReadTimeout(e) from e
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError, zlib.error) as e:
        raise requests.exceptions.ChunkedEncodingError(e) from e
    except (_BodyTooLarge, _DeadlinePassed):
        response.close()
        raise
    response._content = b"".join(parts)  # requests' own cache of the body
    response._content_consumed = True  # type: ignore[attr-defined]


def _inflate(inflater: Any, chunk: bytes, room: int) -> Iterator[bytes]:
    """The decompressed pieces of ``chunk``, each at most ``room + 1`` bytes.

    Raises:
        zlib.error: Data after the end of the compressed stream (one member per answer).
    """
    if inflater is None:
        yield chunk
        return
    data = chunk
    while data:
        piece = inflater.decompress(data, max(room, 0) + 1)
        yield piece
        room -= len(piece)
        data = inflater.unconsumed_tail
        if inflater.eof and inflater.unused_data:
            raise zlib.error("data after the end of the compressed body")


_watch = threading.local()


class _WatchedPool:
    """Lets the deadline watchdog of the request in flight on this thread find its connection."""

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        holder = getattr(_watch, "connections", None)
        if holder is not None:
            holder.append(conn)
        return super()._make_request(conn, *args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPPool(_WatchedPool, urllib3.HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_WatchedPool, urllib3.HTTPSConnectionPool):
    pass


class GuardedAdapter(HTTPAdapter):
    """The transport of every ``HttpClient``: urllib3 never retries behind its back, and the
    deadline watchdog can cut the connection of a request that outlives its deadline (a
    trickle of headers or body that each socket timeout alone would let through)."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def _cut(connections: list[Any], fired: threading.Event) -> None:
    """At the deadline: shut the request's sockets, so a blocked read returns at once."""
    fired.set()
    for conn in connections:
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread for the total deadline of every call in the process: it cuts the sockets of
    a call whose deadline passed. A thread per call would cost more than the call itself
    against a fast ERP."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[list[Any]] = []
        self._cancelled = 0
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, connections: list[Any], fired: threading.Event) -> list[Any]:
        """Cut ``connections`` (and set ``fired``) at ``deadline`` unless cancelled first."""
        entry = [deadline, next(self._order), connections, fired, True]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                # First use, or a forked child, which has no copy of the parent's thread.
                self._thread = threading.Thread(
                    target=self._run, name="http-deadlines", daemon=True
                )
                self._thread.start()
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        with self._cond:
            if not entry[4]:
                return
            entry[4] = False
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled > len(self._heap) // 2:
                # Cancelled calls are dropped lazily; never let them pile up.
                self._heap = [e for e in self._heap if e[4]]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and not self._heap[0][4]:
                    heapq.heappop(self._heap)
                    self._cancelled -= 1
                if not self._heap:
                    self._cond.wait()
                    continue
                wait_s = self._heap[0][0] - time.monotonic()
                if wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                entry = heapq.heappop(self._heap)
                entry[4] = False  # fired: a later cancel has nothing to drop
                _cut(entry[2], entry[3])


_WATCHDOG = _Watchdog()


class HttpClient:
    """One session per system with timeouts, retries and classified errors.

    Args:
        system: The system's name, used in every error (``"stripe"``).
        timeout: (connect, read) timeouts in seconds.
        max_attempts: Attempts per request, the first included.
        backoff_base_s: Base of the exponential backoff (full jitter).
        backoff_max_s: Cap of one wait. A Retry-After longer than this is not slept through:
            the request fails with ``RetryableUpstreamError(retry_after_s=...)`` so the run's
            own retry policy decides.
        secrets: Values redacted from every error text.
        sleep: How to wait between attempts.
        rng: Jitter source.
        error_parser: Extracts the system's code, message and field from an error response.
        classifier: Overrides the status-based verdict for a system's quirks (returns None to
            keep the default).
        auth_message: The one-line message of ``AuthenticationError``; it names the
            variables to set.
        on_response: Called with every response received (for example to read quota headers).
        url_variable: The environment variable holding the base URL, named when a URL is unusable.
        limiter: Slots for requests in flight (see ``AdaptiveConcurrency``): each attempt
            waits for one and reports its answer, so a 429 slows every client sharing it.
        deadline_s: Longest one attempt may take, from sending to the answer's last byte.
        max_response_bytes: Largest body accepted, after decompression.
        max_pages: Most pages one paged read may fetch (``PageGuard``).
        base_urls: The URLs whose (scheme, host, port) requests may go to; empty, any.
    """

    def __init__(
        self,
        system: str,
        *,
        timeout: tuple[float, float] = (5.0, 60.0),
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        secrets: Sequence[str] = (),
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        error_parser: ErrorParser = _empty_error_info,
        classifier: Classifier | None = None,
        auth_message: str | None = None,
        on_response: Callable[[requests.Response], None] | None = None,
        url_variable: str | None = None,
        limiter: AdaptiveConcurrency | None = None,
        deadline_s: float = 120.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_pages: int = DEFAULT_MAX_PAGES,
        base_urls: Sequence[str] = (),
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.system = system
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._secrets: list[str] = []
        for secret in secrets:
            self.add_secret(secret)
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._error_parser = error_parser
        self._classifier = classifier
        self._auth_message = auth_message
        self._on_response = on_response
        self._url_variable = url_variable
        self._limiter = limiter
        self.deadline_s = deadline_s
        self.max_response_bytes = max_response_bytes
        self.max_pages = max_pages
        self._origins = {origin(url) for url in base_urls}
        self.requests_made = 0
        # Whether the system ever answered this client: before it has, a connection that cannot
        # be made is a wrong address or a service that is down, told at once, not retried.
        self.answered = False
        self.session = requests.Session()
        # Only encodings the client inflates itself, within the size limit.
        self.session.headers["Accept-Encoding"] = "gzip, deflate"
        # Retries are ours alone: urllib3 must never resend behind our back.
        adapter = GuardedAdapter()
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    @classmethod
    def from_options(cls, system: str, options: HttpOptions, **kwargs: Any) -> "HttpClient":
        """Build a client from ``HttpOptions`` plus the system's hooks."""
        return cls(
            system,
            timeout=options.timeout,
            max_attempts=options.max_attempts,
            backoff_base_s=options.backoff_base_s,
            backoff_max_s=options.backoff_max_s,
            sleep=options.sleep,
            rng=options.rng,
            limiter=options.limiter,
            deadline_s=options.deadline_s,
            max_response_bytes=options.max_response_bytes,
            max_pages=options.max_pages,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"HttpClient(system={self.system!r}, requests_made={self.requests_made})"

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def add_secret(self, value: str) -> None:
        """Redact ``value`` too from now on (a token obtained at runtime), in every error."""
        if value and value not in self._secrets:
            self._secrets.append(value)
            register_secret(value)

    def add_basic_pair(self, user: str, secret: str) -> None:
        """Redact ``secret`` and the base64 ``user:secret`` of a Basic header it travels in."""
        self.add_secret(secret)
        register_basic_pair(user, secret)

    def add_origin(self, url: str) -> None:
        """Let requests go to ``url``'s scheme, host and port too (an instance URL)."""
        self._origins.add(origin(url))

    def page_guard(self, what: str, *, limit: int) -> PageGuard:
        """A ``PageGuard`` for one paged read of this system, with its page cap."""
        return PageGuard(self.system, what, limit=limit, max_pages=self.max_pages)

    def redact(self, text: str) -> str:
        """``text`` with every secret of this system removed."""
        return redact(text, self._secrets)

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return self._rng.uniform(0.0, ceiling)

    def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        expected: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request, retrying what is safe to retry.

        Args:
            method: HTTP method.
            url: Absolute URL.
            idempotent: Whether resending after an unknown outcome is safe.
            expected: The statuses that count as success; anything else is an error.
            **kwargs: Passed to ``requests.Session.request`` (params, data, headers, auth...).

        Returns:
            The response, whose status is one of ``expected``.

        Raises:
            AuthenticationError: 401 (or the system's equivalent).
            PermanentUpstreamError: A 4xx or an unexpected status that resending cannot fix.
            RetryableUpstreamError: Transient failures outlasted ``max_attempts``.
            AmbiguousOutcomeError: A non-idempotent request may have been applied.
        """
        method = method.upper()
        kwargs.setdefault("timeout", self.timeout)
        # Never follow a redirect: it could take the credentials or the data to another host.
        kwargs["allow_redirects"] = False
        kwargs["stream"] = True
        where = f"{method} {_path(url)}"
        self._check_origin(url, where)
        attempt = 0
        while True:
            attempt += 1
            self.requests_made += 1
            try:
                response = self._send(method, url, kwargs)
            except _BodyTooLarge:
                raise PermanentUpstreamError(
                    self.system,
                    f"{where} answered more than {self.max_response_bytes} bytes "
                    f"(decompressed); refused ({MAX_RESPONSE_BYTES_ENV})",
                ) from None
            except _DeadlinePassed:
                raise self._deadline_error(where, idempotent) from None
            except requests.exceptions.ConnectTimeout as e:
                if not self.answered:
                    raise self._unreachable(
                        url, f"no connection within {self.timeout[0]:g} s"
                    ) from e
                # Nothing was sent: safe to resend whatever the method.
                self._wait_or_raise(attempt, f"{where}: connect timeout", cause=e)
                continue
            except requests.exceptions.Timeout as e:
                if not idempotent:
                    raise AmbiguousOutcomeError(
                        self.system,
                        self.redact(
                            f"{where}: read timed out after the request was sent; "
                            "look the document up before any resend"
                        ),
                    ) from e
                self._wait_or_raise(attempt, f"{where}: read timeout", cause=e)
                continue
            except (
                requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema,
                requests.exceptions.InvalidURL,
            ) as e:
                setting = self._url_variable or f"the {self.system} base URL"
                raise ConfigurationError(
                    self.redact(f"{self.system}: {url!r} is not a usable URL; check {setting}")
                ) from e
            except requests.exceptions.SSLError as e:
                # An untrusted certificate stays untrusted on every attempt: say what to set.
                raise ConfigurationError(
                    self.redact(
                        f"{self.system}: the TLS certificate of {urlsplit(url).netloc} could "
                        f"not be verified ({_tls_reason(e)}); set REQUESTS_CA_BUNDLE to the "
                        "CA bundle that signs it"
                    )
                ) from e
            except requests.exceptions.ChunkedEncodingError as e:
                # The response broke off mid-body: the request was received, its effect unknown.
                if not idempotent:
                    raise AmbiguousOutcomeError(
                        self.system,
                        self.redact(
                            f"{where}: the response broke off after the request was "
                            "sent; look the document up before any resend"
                        ),
                    ) from e
                self._wait_or_raise(attempt, f"{where}: response broke off", cause=e)
                continue
            except requests.exceptions.ConnectionError as e:
                if not self.answered and _never_sent(e):
                    raise self._unreachable(url, _connect_reason(e)) from e
                if not idempotent and not _never_sent(e):
                    raise AmbiguousOutcomeError(
                        self.system,
                        self.redact(
                            f"{where}: connection dropped after the request was sent; "
                            "look the document up before any resend"
                        ),
                    ) from e
                self._wait_or_raise(attempt, f"{where}: connection error", cause=e)
                continue

            self.answered = True
            if self._on_response is not None:
                self._on_response(response)
            if response.status_code in expected:
                return response
            if 300 <= response.status_code < 400 and "Location" in response.headers:
                raise self._redirect_error(where, response)

            info = self._parse_error(response)
            verdict = None
            if self._classifier is not None:
                verdict = self._classifier(response, info)
            if verdict is None:
                verdict = default_classify(response.status_code)
            status = response.status_code
            message = self.redact(f"{where}: {info.detail or response.reason or 'error'}")

            if verdict is Verdict.AUTH:
                raise self.auth_error(status, info.code, info.detail)
            if verdict is Verdict.PERMANENT:
                if status < 400:
                    message = self.redact(
                        f"{where}: unexpected HTTP {status}, expected one of {list(expected)}"
                    )
                raise PermanentUpstreamError(
                    self.system, message, status=status, code=info.code, field=info.field
                )
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if verdict is Verdict.GIVE_UP_RETRYABLE:
                raise RetryableUpstreamError(
                    self.system,
                    message,
                    status=status,
                    code=info.code,
                    field=info.field,
                    retry_after_s=retry_after,
                )
            if verdict is Verdict.AMBIGUOUS or (
                not idempotent and status not in NOT_PROCESSED_STATUSES
            ):
                raise AmbiguousOutcomeError(
                    self.system,
                    self.redact(
                        f"{where}: HTTP {status} after the request was sent; "
                        "look the document up before any resend"
                    ),
                    status=status,
                    code=info.code,
                )
            self._wait_or_raise(attempt, message, status=status, info=info, retry_after=retry_after)

    def _send(self, method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        """One attempt, in a slot of the limiter when there is one."""
        if self._limiter is None:
            return self._attempt(method, url, kwargs)
        taken_in = self._limiter.acquire()
        try:
            response = self._attempt(method, url, kwargs)
        except BaseException:
            self._limiter.release(taken_in, status=None)
            raise
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        self._limiter.release(taken_in, status=response.status_code, retry_after_s=retry_after)
        return response

    def _attempt(self, method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        """Send, then read the whole body within the deadline and size limit."""
        deadline = time.monotonic() + self.deadline_s
        connections: list[Any] = []
        fired = threading.Event()
        watched = _WATCHDOG.watch(deadline, connections, fired)
        _watch.connections = connections
        try:
            response = self.session.request(method, url, **kwargs)
            _read_body(response, limit=self.max_response_bytes, deadline=deadline)
        except Exception as e:
            if fired.is_set():
                raise _DeadlinePassed from e
            raise
        finally:
            _WATCHDOG.cancel(watched)
            _watch.connections = None
        return response

    def _check_origin(self, url: str, where: str) -> None:
        if self._origins and origin(url) not in self._origins:
            raise PermanentUpstreamError(
                self.system,
                f"{where}: refused to send to {urlsplit(url).hostname or url!r}, which is not "
                f"the configured host{f' ({self._url_variable})' if self._url_variable else ''}",
            )

    def _redirect_error(self, where: str, response: requests.Response) -> PermanentUpstreamError:
        target = urlsplit(response.headers.get("Location", ""))
        place = target.netloc or "the same host"
        return PermanentUpstreamError(
            self.system,
            f"{where}: answered a redirect (HTTP {response.status_code}) to {place}{target.path}; "
            "finsync never follows redirects, so nothing was sent there; check "
            f"{self._url_variable or 'the base URL'}",
            status=response.status_code,
        )

    def _deadline_error(self, where: str, idempotent: bool) -> UpstreamError:
        text = (
            f"{where}: the answer was still arriving after the {self.deadline_s:g}s deadline "
            f"({DEADLINE_ENV})"
        )
        if not idempotent:
            return AmbiguousOutcomeError(
                self.system, f"{text}; look the document up before any resend"
            )
        return RetryableUpstreamError(self.system, text)

    def auth_error(
        self, status: int | None, code: str | None, detail: str | None
    ) -> AuthenticationError:
        """The system's one-line AuthenticationError (names the variables to set)."""
        if self._auth_message is not None:
            error = AuthenticationError(self.system, self._auth_message, code=code)
            # The message already states the status; keep it out of the formatted text.
            error.status = status
            return error
        text = self.redact(detail or "credentials were rejected")
        return AuthenticationError(self.system, text, status=status, code=code)

    def _parse_error(self, response: requests.Response) -> ErrorInfo:
        try:
            info = self._error_parser(response)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            info = ErrorInfo()
        return ErrorInfo(
            code=info.code,
            detail=self.redact(info.detail) if info.detail else None,
            field=info.field,
        )

    def _unreachable(self, url: str, reason: str) -> UnreachableError:
        """The error for a system never reached: its address (no path, no query) and the
        variable that sets it."""
        parts = urlsplit(url)
        setting = self._url_variable or f"the {self.system} base URL"
        return UnreachableError(
            self.system,
            self.redact(
                f"cannot connect to {parts.scheme}://{parts.hostname}"
                f"{f':{parts.port}' if parts.port else ''} ({reason}); check {setting} and that "
                f"the service is up ({CONNECT_TIMEOUT_ENV} bounds each connect)"
            ),
        )

    def _wait_or_raise(
        self,
        attempt: int,
        message: str,
        *,
        status: int | None = None,
        info: ErrorInfo | None = None,
        cause: BaseException | None = None,
        retry_after: float | None = None,
    ) -> None:
        code = info.code if info else None
        field_ = info.field if info else None
        if attempt >= self.max_attempts:
            error = RetryableUpstreamError(
                self.system,
                self.redact(f"{message} (gave up after {attempt} attempts)"),
                status=status,
                code=code,
                field=field_,
                retry_after_s=retry_after,
            )
            raise error from cause
        if retry_after is not None:
            if retry_after > self.backoff_max_s:
                raise RetryableUpstreamError(
                    self.system,
                    self.redact(
                        f"{message} (Retry-After {retry_after:.0f}s exceeds the "
                        f"{self.backoff_max_s:.0f}s this client waits)"
                    ),
                    status=status,
                    code=code,
                    field=field_,
                    retry_after_s=retry_after,
                ) from cause
            wait = retry_after
        else:
            wait = self.backoff_s(attempt)
        self._sleep(wait)


def _tls_reason(error: requests.exceptions.SSLError) -> str:
    """OpenSSL's short reason (``certificate verify failed: ...``), without the call chain."""
    text = str(error)
    start = text.find("certificate verify failed")
    if start < 0:
        return "TLS handshake failed"
    return text[start:].split(" (_ssl", 1)[0].rstrip(")\"' ")


def _connect_reason(error: requests.exceptions.ConnectionError) -> str:
    """Why a connection could not be made, in a few words (refused, no such host, ...)."""
    text = str(error)
    for marker, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "no such host"),
        ("nodename nor servname", "no such host"),
        ("Temporary failure in name resolution", "the host name does not resolve"),
        ("Network is unreachable", "network unreachable"),
        ("No route to host", "no route to host"),
    ):
        if marker in text:
            return reason
    return "connection failed"


def _never_sent(error: requests.exceptions.ConnectionError) -> bool:
    """Whether a connection error happened before any byte of the request left."""
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


class ConnectorClient:
    """Base of the per-system clients: one ``HttpClient``, a request counter, ``with`` support."""

    http: HttpClient

    @property
    def requests_made(self) -> int:
        """HTTP requests sent so far, retries (and token requests) included."""
        return self.http.requests_made

    def close(self) -> None:
        """Close the pooled keep-alive connections."""
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
