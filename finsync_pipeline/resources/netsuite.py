"""NetSuite connector: SuiteTalk REST records (upsert by external id) and SuiteQL.

Records are written with ``PUT /record/v1/{type}/eid:{external id}``: an upsert, so resending
it after a timeout cannot make a duplicate. When every attempt failed and at least one of them
may have reached NetSuite (a read timeout, a connection lost after sending, a 500/502/504),
``upsert`` raises ``AmbiguousOutcomeError`` rather than a plain retryable error: the document
may exist, and the caller settles that by looking it up (``get_by_external_id`` or, for many
documents at once, ``lookup_many``).
"""

import datetime
import decimal
import hashlib
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import requests
import simplejson
import urllib3
from pydantic import Field

from finsync_pipeline.errors import (
    AmbiguousOutcomeError,
    ConfigurationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
)
from finsync_pipeline.resources.http import (
    ConnectorClient,
    ErrorInfo,
    GuardedAdapter,
    HttpClient,
    HttpOptions,
    body_field,
    body_object,
    check_base_url,
    error_json,
    parse_json,
    shape_error,
)
from finsync_pipeline.resources.oauth1 import NetSuiteTBA

SYSTEM = "netsuite"
AUTH_MESSAGE = (
    "token-based authentication was rejected (HTTP 401); check NETSUITE_CONSUMER_KEY, "
    "NETSUITE_CONSUMER_SECRET, NETSUITE_TOKEN_ID and NETSUITE_TOKEN_SECRET"
)
MAX_SUITEQL_PAGE = 1000
DOMAINS = ("netsuite.com",)
_EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_RECORD_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_INTERNAL_ID = re.compile(r"^[0-9]+$")
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# A 404 with these codes means "no such record"; any other 404 (a wrong record type or path)
# is a defect that must not read as "absent".
_NOT_FOUND_CODES = frozenset({None, "NONEXISTENT_ID", "RECORD_NOT_FOUND", "NOT_FOUND"})
# Record type -> (SuiteQL table, transaction type or None, columns lookup_many reads).
LOOKUP_TABLES: Mapping[str, tuple[str, str | None, tuple[str, ...]]] = {
    "customer": ("customer", None, ("id", "externalid", "entityid", "companyname", "currency")),
    "invoice": (
        "transaction",
        "CustInvc",
        ("id", "externalid", "tranid", "entity", "currency", "foreigntotal", "status"),
    ),
    "creditmemo": (
        "transaction",
        "CustCred",
        ("id", "externalid", "tranid", "entity", "currency", "foreigntotal", "status"),
    ),
    "customerpayment": (
        "transaction",
        "CustPymt",
        ("id", "externalid", "tranid", "entity", "currency", "foreigntotal", "status"),
    ),
    "customerrefund": (
        "transaction",
        "CustRfnd",
        ("id", "externalid", "tranid", "entity", "currency", "foreigntotal", "status"),
    ),
}
# External ids per SuiteQL IN list: Oracle allows 1000 expressions; fewer keep the query short.
LOOKUP_CHUNK = 500
# A response with one of these may come after NetSuite committed the write.
_MAYBE_PROCESSED_STATUSES = frozenset({500, 502, 504})


class _SendLog(GuardedAdapter):
    """The transport adapter, noting per thread whether a request may have been processed
    without its answer arriving (the request left, then a read timeout, a dropped connection
    or a 500/502/504). ``HttpClient`` retries an idempotent PUT through such failures; this
    tells the connector whether the give-up that may follow is ambiguous."""

    def __init__(self) -> None:
        # Retries are HttpClient's alone (GuardedAdapter): urllib3 never resends behind its back.
        super().__init__()
        self._local = threading.local()

    def reset(self) -> None:
        self._local.uncertain = False

    @property
    def uncertain(self) -> bool:
        return bool(getattr(self._local, "uncertain", False))

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().send(request, *args, **kwargs)
        except requests.exceptions.ConnectTimeout:
            raise
        except requests.exceptions.ConnectionError as e:
            cause = e.args[0] if e.args else None
            reason = getattr(cause, "reason", cause)
            if not isinstance(reason, urllib3.exceptions.NewConnectionError):
                self._local.uncertain = True
            raise
        except requests.exceptions.RequestException:
            # A read timeout (or a broken answer): the request had been sent.
            self._local.uncertain = True
            raise
        if response.status_code in _MAYBE_PROCESSED_STATUSES:
            self._local.uncertain = True
        return response


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
        check_base_url(SYSTEM, base, variable="NETSUITE_BASE_URL", domains=DOMAINS)
        self._rest = f"{base}/services/rest"
        self.http = HttpClient.from_options(
            SYSTEM,
            http_options or HttpOptions.from_env(),
            url_variable="NETSUITE_BASE_URL",
            base_urls=[base],
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
        self._send_log = _SendLog()
        self.http.session.mount("https://", self._send_log)
        self.http.session.mount("http://", self._send_log)

    def __repr__(self) -> str:
        return f"NetSuiteClient(rest={self._rest!r}, requests_made={self.requests_made})"

    def upsert(self, record_type: str, external_id: str, body: dict[str, Any]) -> str:
        """Create or update the record whose external id is ``external_id``.

        ``PUT /record/v1/{type}/eid:{external_id}`` is idempotent, so it is retried on
        timeouts and transient errors (429 concurrency limits and 503 maintenance included,
        honouring Retry-After) without risk of a duplicate. Record types are NetSuite's
        lower-case REST names: ``customer``, ``invoice``, ``creditmemo``, ``customerpayment``,
        ``customerrefund``.

        Returns:
            The record's internal id, parsed from the ``Location`` header.

        Raises:
            PermanentUpstreamError: NetSuite refused the record (``code`` is ``o:errorCode``,
                ``field`` is ``o:errorPath``), or the external id cannot be sent at all.
            AmbiguousOutcomeError: The retries ran out and an attempt may have committed (a
                read timeout, a connection lost after sending, a 500/502/504): look the
                document up before sending it again.
            RetryableUpstreamError: The retries ran out and no attempt was processed (429,
                503, nothing sent).
        """
        url = self._record_url(record_type, f"eid:{_external_id(external_id)}")
        self._send_log.reset()
        try:
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
        except RetryableUpstreamError as e:
            if not self._send_log.uncertain:
                raise
            raise AmbiguousOutcomeError(
                SYSTEM,
                f"upsert of {record_type} eid:{external_id} may have been applied: {e.detail}; "
                "look the document up before any resend",
                status=e.status,
                code=e.code,
                retry_after_s=e.retry_after_s,
            ) from e
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

    def lookup_many(
        self, record_type: str, external_ids: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        """The records among ``external_ids`` that exist, by external id, in few SuiteQL queries.

        Settles many ambiguous or in-flight documents at once: one query per
        ``LOOKUP_CHUNK`` external ids (``WHERE externalid IN (...)``, every value escaped with
        ``suiteql_literal``). Each value is the SuiteQL row (lower-case columns, values as
        strings: ``id``, ``externalid``, and for transactions ``tranid``, ``entity``,
        ``currency``, ``foreigntotal``, ``status``). External ids that are absent are missing
        from the result.

        Raises:
            ValueError: An unsupported record type.
            PermanentUpstreamError: NetSuite answered two records for one external id.
        """
        if record_type not in LOOKUP_TABLES:
            raise ValueError(f"lookup_many supports {sorted(LOOKUP_TABLES)}, not {record_type!r}")
        table, tran_type, columns = LOOKUP_TABLES[record_type]
        # SuiteQL literals are quoted, so any id can be asked for; one finsync would never
        # send is simply not found.
        wanted = list(dict.fromkeys(external_ids))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start : start + LOOKUP_CHUNK]
            where = f"externalid IN ({', '.join(suiteql_literal(x) for x in chunk)})"
            if tran_type is not None:
                where = f"type = {suiteql_literal(tran_type)} AND {where}"
            query = f"SELECT {', '.join(columns)} FROM {table} WHERE {where} ORDER BY id"
            for row in self.suiteql(query):
                key = str(row.get("externalid"))
                if key in found:
                    raise PermanentUpstreamError(
                        SYSTEM,
                        f"two {record_type} records carry external id {key} "
                        f"({found[key].get('id')} and {row.get('id')})",
                    )
                found[key] = row
        return found

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
        guard = self.http.page_guard("SuiteQL query", limit=page_size)
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
            where = f"SuiteQL page at offset {offset}"
            body = body_object(parse_json(response, SYSTEM), SYSTEM, where)
            items = body_field(body, "items", list, SYSTEM, where, required=True)
            more = body_field(body, "hasMore", bool, SYSTEM, where, default=False)
            body_field(body, "count", int, SYSTEM, where)
            for n, item in enumerate(items):
                if not isinstance(item, dict):
                    raise shape_error(SYSTEM, where, f"items[{n}]", "an object", item)
            guard.page(len(items), more=more)
            for item in items:
                yield {k: v for k, v in item.items() if k != "links"}
            if not more:
                return
            # The offset always advances; a server that ignores it sends the same page again.
            guard.follow(f"offset {offset}", page_key=_page_key(items))
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
        return body_object(parse_json(response, SYSTEM), SYSTEM, f"GET {urlsplit(url).path}")


def _page_key(items: list[dict[str, Any]]) -> str:
    """What identifies a SuiteQL page: its rows (without their links), in order."""
    rows = [{k: v for k, v in item.items() if k != "links"} for item in items]
    digest = hashlib.sha256(simplejson.dumps(rows, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _external_id(value: str) -> str:
    """An external id fit for an ``eid:`` URL path, or a refusal of that one document.

    Nothing is sent: the refusal is permanent (resending cannot help), so the posting engine
    rejects the document with the reason and goes on with the others.
    """
    if not _EXTERNAL_ID.match(value):
        raise PermanentUpstreamError(
            SYSTEM,
            f"external id {value!r} was not sent: finsync sends NetSuite external ids of "
            "letters, digits, '_' and '-' only",
            field="externalId",
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
