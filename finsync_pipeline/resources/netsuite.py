"""NetSuite connector: SuiteTalk REST records (upsert by external id) and SuiteQL."""

import datetime
import decimal
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import requests
import simplejson
from pydantic import Field

from finsync_pipeline.errors import ConfigurationError, PermanentUpstreamError
from finsync_pipeline.resources.http import (
    ConnectorClient,
    ErrorInfo,
    HttpClient,
    HttpOptions,
    error_json,
    parse_json,
)
from finsync_pipeline.resources.oauth1 import NetSuiteTBA

SYSTEM = "netsuite"
AUTH_MESSAGE = (
    "token-based authentication was rejected (HTTP 401); check NETSUITE_CONSUMER_KEY, "
    "NETSUITE_CONSUMER_SECRET, NETSUITE_TOKEN_ID and NETSUITE_TOKEN_SECRET"
)
MAX_SUITEQL_PAGE = 1000
_EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_RECORD_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_INTERNAL_ID = re.compile(r"^[0-9]+$")
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# A 404 with these codes means "no such record"; any other 404 (a wrong record type or path)
# is a defect that must not read as "absent".
_NOT_FOUND_CODES = frozenset({None, "NONEXISTENT_ID", "RECORD_NOT_FOUND", "NOT_FOUND"})


def suiteql_literal(value: str | int | decimal.Decimal | datetime.date) -> str:
    """A value as a SuiteQL (Oracle SQL) literal.

    Strings are single-quoted with quotes doubled; dates are ``TO_DATE('YYYY-MM-DD',
    'YYYY-MM-DD')``; integers and Decimals are bare numbers.

    Raises:
        TypeError: The value has no SuiteQL form (floats, bools, datetimes, None).
        ValueError: A non-finite Decimal, or a string holding a NUL character.
    """
    if isinstance(value, bool):
        raise TypeError("no SuiteQL literal for bool (NetSuite booleans are 'T'/'F' strings)")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"SuiteQL cannot express {value}")
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        raise TypeError("no SuiteQL literal for datetime; pass a date")
    if isinstance(value, datetime.date):
        return f"TO_DATE('{value.isoformat()}','YYYY-MM-DD')"
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("SuiteQL strings cannot hold NUL")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SuiteQL literal for {type(value).__name__}")


def account_host(account_id: str) -> str:
    """The host form of an account id: ``1234567_SB1`` -> ``1234567-sb1``."""
    return account_id.lower().replace("_", "-")


def parse_netsuite_error(response: requests.Response) -> ErrorInfo:
    """Code, detail and path of the first ``o:errorDetails`` entry."""
    body = error_json(response)
    if not isinstance(body, dict):
        return ErrorInfo()
    details = body.get("o:errorDetails") or []
    first = details[0] if details and isinstance(details[0], dict) else {}
    return ErrorInfo(
        code=first.get("o:errorCode"),
        detail=first.get("detail") or body.get("title"),
        field=first.get("o:errorPath"),
    )


class NetSuiteClient(ConnectorClient):
    """Writes and reads NetSuite records with token-based authentication.

    Args:
        account_id: Account id as the realm spells it (``1234567_SB1``).
        base_url: Base URL; empty for ``https://{account host}.suitetalk.api.netsuite.com``.
        consumer_key: Integration record consumer key.
        consumer_secret: Integration record consumer secret.
        token_id: Access token id.
        token_secret: Access token secret.
        http_options: Timeouts and retry settings.
    """

    def __init__(
        self,
        *,
        account_id: str,
        consumer_key: str,
        consumer_secret: str,
        token_id: str,
        token_secret: str,
        base_url: str = "",
        http_options: HttpOptions | None = None,
    ) -> None:
        if not _ACCOUNT_ID.match(account_id):
            raise ConfigurationError(
                f"NETSUITE_ACCOUNT_ID must look like 1234567 or 1234567_SB1, got {account_id!r}"
            )
        base = (
            base_url.rstrip("/") or f"https://{account_host(account_id)}.suitetalk.api.netsuite.com"
        )
        self._rest = f"{base}/services/rest"
        self.http = HttpClient.from_options(
            SYSTEM,
            http_options or HttpOptions(),
            url_variable="NETSUITE_BASE_URL",
            secrets=[consumer_key, consumer_secret, token_id, token_secret],
            error_parser=parse_netsuite_error,
            auth_message=AUTH_MESSAGE,
        )
        self._auth = NetSuiteTBA(
            realm=account_id,
            consumer_key=consumer_key,
            consumer_secret=consumer_secret,
            token_id=token_id,
            token_secret=token_secret,
        )
        self.http.session.headers.update({"Accept": "application/json"})

    def __repr__(self) -> str:
        return f"NetSuiteClient(rest={self._rest!r}, requests_made={self.requests_made})"

    def upsert(self, record_type: str, external_id: str, body: dict[str, Any]) -> str:
        """Create or update the record whose external id is ``external_id``.

        ``PUT /record/v1/{type}/eid:{external_id}`` is idempotent, so it is retried on
        timeouts and transient errors without risk of a duplicate.

        Returns:
            The record's internal id, parsed from the ``Location`` header.

        Raises:
            PermanentUpstreamError: NetSuite refused the record (``code`` is ``o:errorCode``,
                ``field`` is ``o:errorPath``).
        """
        url = self._record_url(record_type, f"eid:{_external_id(external_id)}")
        response = self.http.request(
            "PUT",
            url,
            idempotent=True,
            expected=(200, 204),
            auth=self._auth,
            # simplejson writes Decimal amounts exactly; json would need a float.
            data=simplejson.dumps(body, use_decimal=True).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )
        location = response.headers.get("Location", "")
        internal_id = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]
        if not _INTERNAL_ID.match(internal_id):
            raise PermanentUpstreamError(
                SYSTEM,
                f"upsert of {record_type} eid:{external_id} answered no usable Location "
                f"header ({location!r})",
                status=response.status_code,
            )
        return internal_id

    def get_by_external_id(self, record_type: str, external_id: str) -> dict[str, Any] | None:
        """The record with external id ``external_id``, or None when there is none."""
        return self._get(self._record_url(record_type, f"eid:{_external_id(external_id)}"))

    def get(self, record_type: str, internal_id: str) -> dict[str, Any] | None:
        """The record with internal id ``internal_id``, or None when there is none."""
        if not _INTERNAL_ID.match(internal_id):
            raise ValueError(f"netsuite internal ids are digits, got {internal_id!r}")
        return self._get(self._record_url(record_type, internal_id))

    def suiteql(self, query: str, *, page_size: int = MAX_SUITEQL_PAGE) -> Iterator[dict[str, Any]]:
        """Every row of a SuiteQL query, paged with limit/offset while ``hasMore``.

        Build ``query`` with ``suiteql_literal`` and ORDER BY a unique key: NetSuite pages by
        offset, so an unordered query can skip or repeat rows between pages. Column names come
        back lower-case; each row's ``links`` is removed.
        """
        if not 1 <= page_size <= MAX_SUITEQL_PAGE:
            raise ValueError(f"netsuite SuiteQL page_size must be 1..{MAX_SUITEQL_PAGE}")
        offset = 0
        payload = simplejson.dumps({"q": query}).encode("utf-8")
        while True:
            response = self.http.request(
                "POST",
                f"{self._rest}/query/v1/suiteql",
                # A query changes nothing: safe to resend.
                idempotent=True,
                params={"limit": page_size, "offset": offset},
                auth=self._auth,
                data=payload,
                headers={"Content-Type": "application/json", "Prefer": "transient"},
            )
            body = parse_json(response, SYSTEM)
            items = body.get("items")
            if not isinstance(items, list):
                raise PermanentUpstreamError(
                    SYSTEM, "SuiteQL answered no items list", status=response.status_code
                )
            for item in items:
                yield {k: v for k, v in item.items() if k != "links"}
            if not body.get("hasMore"):
                return
            # NetSuite requires the offset to be a multiple of the limit.
            offset += page_size

    def _record_url(self, record_type: str, key: str) -> str:
        if not _RECORD_TYPE.match(record_type):
            raise ValueError(f"not a NetSuite record type: {record_type!r}")
        return f"{self._rest}/record/v1/{record_type}/{key}"

    def _get(self, url: str) -> dict[str, Any] | None:
        response = self.http.request(
            "GET", url, idempotent=True, expected=(200, 404), auth=self._auth
        )
        if response.status_code == 404:
            info = parse_netsuite_error(response)
            if info.code not in _NOT_FOUND_CODES:
                raise PermanentUpstreamError(
                    SYSTEM,
                    self.http.redact(f"GET {urlsplit(url).path}: {info.detail or 'not found'}"),
                    status=404,
                    code=info.code,
                    field=info.field,
                )
            return None
        record = parse_json(response, SYSTEM)
        if not isinstance(record, dict):
            raise PermanentUpstreamError(
                SYSTEM, "a record GET answered no JSON object", status=response.status_code
            )
        return record


def _external_id(value: str) -> str:
    if not _EXTERNAL_ID.match(value):
        raise ValueError(
            f"netsuite external ids may hold only letters, digits, '_' and '-', got {value!r}"
        )
    return value


class NetSuiteResource(dg.ConfigurableResource):
    """NetSuite ERP access through SuiteTalk REST web services with token-based auth.

    Every request is signed with OAuth 1.0a HMAC-SHA256; the realm is the account id as
    NetSuite spells it (``1234567_SB1``) while the host uses ``1234567-sb1``.

    Attributes:
        account_id: Account id (``NETSUITE_ACCOUNT_ID``).
        base_url: Base URL (``NETSUITE_BASE_URL``); empty for the account's own host.
        consumer_key: Consumer key (``NETSUITE_CONSUMER_KEY``).
        consumer_secret: Consumer secret (``NETSUITE_CONSUMER_SECRET``).
        token_id: Token id (``NETSUITE_TOKEN_ID``).
        token_secret: Token secret (``NETSUITE_TOKEN_SECRET``).

    Example:
        >>> ns = NetSuiteResource(account_id=dg.EnvVar("NETSUITE_ACCOUNT_ID"), ...)
        >>> internal_id = ns.get_client().upsert("customer", "fs-cus-1", {...})
    """

    account_id: str = Field(description="Account id, e.g. 1234567_SB1 (NETSUITE_ACCOUNT_ID).")
    base_url: str = Field(
        default="", description="Base URL (NETSUITE_BASE_URL); empty for the account's host."
    )
    consumer_key: str = Field(repr=False, description="Consumer key (NETSUITE_CONSUMER_KEY).")
    consumer_secret: str = Field(
        repr=False, description="Consumer secret (NETSUITE_CONSUMER_SECRET)."
    )
    token_id: str = Field(repr=False, description="Token id (NETSUITE_TOKEN_ID).")
    token_secret: str = Field(repr=False, description="Token secret (NETSUITE_TOKEN_SECRET).")

    def get_client(self, *, http_options: HttpOptions | None = None) -> NetSuiteClient:
        """A client with its own keep-alive session."""
        return NetSuiteClient(
            account_id=self.account_id,
            base_url=self.base_url,
            consumer_key=self.consumer_key,
            consumer_secret=self.consumer_secret,
            token_id=self.token_id,
            token_secret=self.token_secret,
            http_options=http_options,
        )
