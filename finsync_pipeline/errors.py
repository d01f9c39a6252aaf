"""finsync's error tree.

Every error finsync raises on purpose is a ``FinsyncError``; a user-facing message names the
system, the record and the field, and never carries a secret.

    FinsyncError
    ├── ConfigurationError        a setting is missing or malformed (names the variable to set)
    ├── UpstreamError             an external system answered badly
    │   ├── AuthenticationError   credentials rejected (401/403 on login); names the variable
    │   ├── RetryableUpstreamError  429, 5xx, timeouts: safe to retry with backoff
    │   │   └── UnreachableError    never reached (refused, no such host, connect timeout):
    │   │                           names the URL and its variable; not worth retrying now
    │   ├── PermanentUpstreamError  4xx validation: retrying cannot help
    │   │   └── RecordMissingError  404: the record does not exist (any more); the caller
    │   │                           decides whether that is a fact (a deleted draft) or a fault
    │   └── AmbiguousOutcomeError   a write may or may not have happened (timeout after send);
    │                               settle it by looking the document up, never by resending
    ├── ContractViolation         a record breaks its pandera contract (system, record, field)
    ├── PostingRejected           the ERP refused a document permanently (with its message)
    └── HomeBusyError             another command is writing the home or the warehouse (named)
"""

import base64
import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

# A value passed explicitly is scrubbed from 4 characters; one registered for every error
# from 8, so a short test value can never blank ordinary words in other messages.
MIN_SECRET_LENGTH = 4
MIN_REGISTERED_LENGTH = 8
_MASK = "***"


class _Registry:
    """Every form of every secret registered, and one pattern matching them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.forms: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, forms: Iterable[str]) -> None:
        with self.lock:
            new = set(forms) - self.forms
            if new:
                self.forms.update(new)
                # Longest first, so a form inside a longer one never leaves the rest behind.
                ordered = sorted(self.forms, key=len, reverse=True)
                self.pattern = re.compile("|".join(re.escape(f) for f in ordered))


_REGISTRY = _Registry()


class FinsyncError(Exception):
    """Base class of every error finsync raises on purpose.

    Every text argument is scrubbed of every registered secret when the error is made.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigurationError(FinsyncError):
    """A setting is missing or malformed; the message names the environment variable to set."""


class UpstreamError(FinsyncError):
    """An external system answered with an error.

    Attributes:
        system: The external system ("stripe", "salesforce", "netsuite", ...).
        status: The HTTP status, or None when no response arrived.
        code: The system's own error code, when it sent one.
        detail: The system's human-readable message (never contains our secrets).
        field: The field the system blamed, when it named one.
    """

    retryable: bool = False

    def __init__(
        self,
        system: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.system = system
        self.status = status
        # The system's own words can echo what we sent: scrub every field, not the message only.
        self.code = redact(code) if code is not None else None
        self.detail = redact(message)
        self.field = redact(field) if field is not None else None
        self.retry_after_s = retry_after_s
        code, message, field = self.code, self.detail, self.field
        parts = [f"{system}: {message}"]
        if status is not None:
            parts.append(f"(HTTP {status}{', ' + code if code else ''})")
        if field:
            parts.append(f"[field {field}]")
        super().__init__(" ".join(parts))


class AuthenticationError(UpstreamError):
    """The system rejected our credentials. The message says which variable to set."""


class RetryableUpstreamError(UpstreamError):
    """A transient failure (429, 5xx, timeout): retry with backoff, honouring Retry-After."""

    retryable = True


class UnreachableError(RetryableUpstreamError):
    """The system was never reached: a wrong address, or a service that is down.

    Told at once with its URL and the variable that sets it, rather than retried for minutes;
    a document it holds back is still safe to send again later.
    """


class PermanentUpstreamError(UpstreamError):
    """A permanent failure (4xx validation): resending the same request cannot succeed."""


class RecordMissingError(PermanentUpstreamError):
    """The system answered that the record does not exist (404), e.g. a deleted draft.

    Only the caller knows whether that is expected: a record whose deletion it saw is gone, a
    record it was told about but cannot find is a fault it must report.
    """


class AmbiguousOutcomeError(UpstreamError):
    """The request was sent but its outcome is unknown (timeout after send, dropped connection).

    The document may exist. Settle by looking it up by external id before any resend.
    """

    retryable = True


class ContractViolation(FinsyncError):
    """A record breaks its contract.

    Attributes:
        system: The source system of the record.
        record_id: The record's id in that system.
        field: The offending field.
        check: The contract check that failed.
    """

    def __init__(self, system: str, record_id: str, field: str, check: str) -> None:
        self.system = system
        self.record_id = record_id
        self.field = field
        self.check = check
        super().__init__(f"{system} record {record_id}: field {field} fails {check}")


class PostingRejected(FinsyncError):
    """The ERP permanently refused a document.

    Attributes:
        erp: The ERP ("netsuite", ...).
        external_id: finsync's deterministic external id of the document.
        detail: The ERP's own message, kept for the finance exception.
    """

    def __init__(self, erp: str, external_id: str, detail: str) -> None:
        self.erp = erp
        self.external_id = external_id
        self.detail = redact(detail)
        super().__init__(f"{erp} rejected {external_id}: {self.detail}")


class HomeBusyError(FinsyncError):
    """Another finsync command holds the home's lock (or the warehouse's); it is named."""


def secret_forms(value: str) -> set[str]:
    """The encodings a secret travels in or comes back in: raw, URL-encoded (``%20`` and
    ``+``), JSON-escaped (``/`` escaped or not) and base64."""
    escaped = json.dumps(value)[1:-1]
    encoded = {quote(value, safe=""), quote(value, safe="/"), quote_plus(value)}
    lower_hex = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), e) for e in encoded}
    return {
        value,
        *encoded,
        *lower_hex,
        escaped,
        escaped.replace("/", "\\/"),
        base64.b64encode(value.encode()).decode(),
    }


def register_secret(value: str) -> None:
    """Scrub ``value`` in every encoding (``secret_forms``) from every finsync error from now on.

    The HTTP client registers each secret it sends; nothing a system echoes back can then
    reach an error's message, code, field or detail, a log line or a stored row.
    """
    if isinstance(value, str) and len(value) >= MIN_REGISTERED_LENGTH:
        _REGISTRY.add(secret_forms(value))


def register_basic_pair(user: str, secret: str) -> None:
    """Scrub ``secret`` and the base64 of ``user:secret`` (an HTTP Basic credential)."""
    register_secret(secret)
    if len(secret) < MIN_REGISTERED_LENGTH:
        return
    pair = f"{user}:{secret}".encode()
    _REGISTRY.add({base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode()})


def redact(text: str, secrets: Mapping[str, Any] | Iterable[str] = ()) -> str:
    """``text`` without any registered secret, nor any of ``secrets``, in any encoding."""
    values = secrets.values() if isinstance(secrets, Mapping) else secrets
    for value in values:
        if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
            for form in sorted(secret_forms(value), key=len, reverse=True):
                text = text.replace(form, _MASK)
    pattern = _REGISTRY.pattern
    return pattern.sub(_MASK, text) if pattern is not None else text
