"""finsync's error tree.

Every error finsync raises on purpose is a ``FinsyncError``; a user-facing message names the
system, the record and the field, and never carries a secret.

    FinsyncError
    ├── ConfigurationError        a setting is missing or malformed (names the variable to set)
    ├── UpstreamError             an external system answered badly
    │   ├── AuthenticationError   credentials rejected (401/403 on login); names the variable
    │   ├── RetryableUpstreamError  429, 5xx, timeouts: safe to retry with backoff
    │   ├── PermanentUpstreamError  4xx validation: retrying cannot help
    │   │   └── RecordMissingError  404: the record does not exist (any more); the caller
    │   │                           decides whether that is a fact (a deleted draft) or a fault
    │   └── AmbiguousOutcomeError   a write may or may not have happened (timeout after send);
    │                               settle it by looking the document up, never by resending
    ├── ContractViolation         a record breaks its pandera contract (system, record, field)
    └── PostingRejected           the ERP refused a document permanently (with its message)
"""

from collections.abc import Mapping
from typing import Any


class FinsyncError(Exception):
    """Base class of every error finsync raises on purpose."""


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
        self.code = code
        self.detail = message
        self.field = field
        self.retry_after_s = retry_after_s
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
        self.detail = detail
        super().__init__(f"{erp} rejected {external_id}: {detail}")


def redact(text: str, secrets: Mapping[str, Any] | list[str]) -> str:
    """Remove every secret value from ``text`` before it reaches a log, an error or metadata."""
    values = secrets.values() if isinstance(secrets, Mapping) else secrets
    for value in values:
        if isinstance(value, str) and len(value) >= 4:
            text = text.replace(value, "***")
    return text
