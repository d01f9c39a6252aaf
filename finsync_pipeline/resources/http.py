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

Every error text passes through ``redact`` with the system's secrets.
"""

import datetime
import decimal
import email.utils
import enum
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
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
    redact,
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


def parse_json(response: requests.Response, system: str) -> Any:
    """Decode a JSON body with every non-integer number as ``Decimal`` (never float).

    Raises:
        PermanentUpstreamError: The body is not JSON.
    """
    try:
        return json.loads(response.content, parse_float=decimal.Decimal)
    except ValueError as e:
        raise PermanentUpstreamError(
            system,
            f"{response.request.method} {_path(response.url)} answered a body that is not JSON",
            status=response.status_code,
        ) from e


def error_json(response: requests.Response) -> Any:
    """The JSON of an error body, or None when it is not JSON."""
    try:
        return json.loads(response.content, parse_float=decimal.Decimal)
    except ValueError:
        return None


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


@dataclass(frozen=True)
class HttpOptions:
    """Transport settings a connector passes to its ``HttpClient``.

    Attributes:
        timeout: (connect, read) timeouts in seconds.
        max_attempts: Attempts per request, the first included.
        backoff_base_s: Base of the exponential backoff.
        backoff_max_s: Cap of one wait; a longer Retry-After is not waited for here.
        sleep: How to wait (tests record instead of sleeping).
        rng: Source of jitter (seeded in tests).
        limiter: Slots for requests in flight, shared by every client of a run that talks to
            the system (cut on 429, grown back on answers); None sends without one.
    """

    timeout: tuple[float, float] = (5.0, 60.0)
    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep)
    rng: random.Random | None = None
    limiter: AdaptiveConcurrency | None = None


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
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.system = system
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._secrets = [s for s in secrets if s]
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._error_parser = error_parser
        self._classifier = classifier
        self._auth_message = auth_message
        self._on_response = on_response
        self._url_variable = url_variable
        self._limiter = limiter
        self.requests_made = 0
        self.session = requests.Session()
        # Retries are ours alone: urllib3 must never resend behind our back.
        adapter = HTTPAdapter(max_retries=0)
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
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"HttpClient(system={self.system!r}, requests_made={self.requests_made})"

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def add_secret(self, value: str) -> None:
        """Redact ``value`` too from now on (a token obtained at runtime)."""
        if value and value not in self._secrets:
            self._secrets.append(value)

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
        where = f"{method} {_path(url)}"
        attempt = 0
        while True:
            attempt += 1
            self.requests_made += 1
            try:
                response = self._send(method, url, kwargs)
            except requests.exceptions.ConnectTimeout as e:
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

            if self._on_response is not None:
                self._on_response(response)
            if response.status_code in expected:
                return response

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
            return self.session.request(method, url, **kwargs)
        taken_in = self._limiter.acquire()
        try:
            response = self.session.request(method, url, **kwargs)
        except BaseException:
            self._limiter.release(taken_in, status=None)
            raise
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        self._limiter.release(taken_in, status=response.status_code, retry_after_s=retry_after)
        return response

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
