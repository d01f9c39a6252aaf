"""Salesforce connector: OAuth2 (client credentials or JWT bearer), SOQL queries with safe SOQL
building, the org's API quota, upsert by external id, and updates in sObject Collections."""

import datetime
import decimal
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import dagster as dg
import jwt
import requests
import simplejson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field

from finsync_pipeline.errors import (
    AuthenticationError,
    ConfigurationError,
    PermanentUpstreamError,
    RetryableUpstreamError,
    UpstreamError,
)
from finsync_pipeline.resources.http import (
    ConnectorClient,
    ErrorInfo,
    HttpClient,
    HttpOptions,
    Verdict,
    body_field,
    body_object,
    check_base_url,
    error_json,
    live_mode,
    parse_json,
)

SYSTEM = "salesforce"
AUTH_MESSAGE = (
    "client credentials were rejected (invalid_client); "
    "set SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET"
)
JWT_AUTH_MESSAGE = (
    "the JWT bearer assertion was rejected ({code}: {detail}); set SALESFORCE_CLIENT_ID, "
    "SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY (the key whose certificate the connected "
    "app holds)"
)
JWT_AUDIENCE_MESSAGE = (
    "the JWT bearer assertion's audience {audience!r} was refused (audience is invalid); set "
    "SALESFORCE_JWT_AUDIENCE to https://login.salesforce.com (production orgs) or "
    "https://test.salesforce.com (sandbox orgs)"
)
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The assertion's aud names the login server, not the My Domain URL the token is asked of.
DEFAULT_JWT_AUDIENCE = "https://login.salesforce.com"
# Salesforce refuses an assertion whose exp is more than 3 minutes away.
JWT_LIFETIME_S = 170
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_API_VERSION = re.compile(r"^v\d+\.\d$")
_API_USAGE = re.compile(r"(?:^|[,\s])api-usage=(\d+)/(\d+)")
_NO_SUCH_COLUMN = re.compile(r"No such column '([^']+)'")
_OPERATORS = frozenset(
    {"=", "!=", "<", "<=", ">", ">=", "LIKE", "IN", "NOT IN", "INCLUDES", "EXCLUDES"}
)
_LIST_OPERATORS = frozenset({"IN", "NOT IN", "INCLUDES", "EXCLUDES"})
_ORDER_TERM = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_.]*)(\s+(?:ASC|DESC))?(\s+NULLS\s+(?:FIRST|LAST))?$", re.IGNORECASE
)
# OAuth errors on the token endpoint that mean "these credentials are wrong".
_OAUTH_CREDENTIAL_ERRORS = frozenset(
    {"invalid_client", "invalid_client_id", "unauthorized_client", "invalid_grant"}
)
_SOQL_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}

# sObject Collections take up to 200 records a call (EXCEEDED_ID_LIMIT past that).
COLLECTION_LIMIT = 200
DOMAINS = ("salesforce.com", "force.com")
# Salesforce may change the batch size asked for, but never beyond its maximum.
MAX_BATCH_SIZE = 2000
# A nextRecordsUrl is a path of the query resource on the instance: nothing else is followed.
_NEXT_RECORDS_URL = re.compile(r"^/services/data/v\d+\.\d/query(?:All)?/[A-Za-z0-9_-]+$")

SoqlValue = str | int | bool | None | datetime.date | datetime.datetime | decimal.Decimal


def soql_literal(value: SoqlValue) -> str:
    """A value as a SOQL literal.

    Strings are single-quoted with ``\\ ' " \\n \\r \\t \\b \\f`` backslash-escaped; datetimes
    are rendered in UTC (``2025-01-01T00:00:00Z``, milliseconds when present) and must be
    timezone-aware; dates are ``YYYY-MM-DD``; booleans ``true``/``false``; None ``null``.

    Raises:
        TypeError: The value has no SOQL form (floats included: money is never a float).
        ValueError: A naive datetime, or a non-finite Decimal.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"SOQL cannot express {value}")
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("SOQL datetimes must be timezone-aware (a naive one is ambiguous)")
        utc = value.astimezone(datetime.UTC)
        text = utc.strftime("%Y-%m-%dT%H:%M:%S")
        if utc.microsecond:
            text += f".{utc.microsecond // 1000:03d}"
        return text + "Z"
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + "".join(_SOQL_ESCAPES.get(ch, ch) for ch in value) + "'"
    raise TypeError(f"no SOQL literal for {type(value).__name__}")


def soql_identifier(name: str) -> str:
    """``name`` when it is a plain (optionally dotted) SOQL identifier.

    Raises:
        ValueError: Anything else (spaces, quotes, parentheses, operators).
    """
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a SOQL identifier: {name!r}")
    return name


def soql_select(
    obj: str,
    fields: Sequence[str],
    *,
    where: Sequence[tuple[str, str, object]] = (),
    order_by: str | None = None,
) -> str:
    """Build ``SELECT ... FROM ... [WHERE a AND b] [ORDER BY ...]`` safely.

    Args:
        obj: sObject API name (``Account``, ``SBQQ__Quote__c``).
        fields: Field names, dotted relationship paths allowed.
        where: ``(field, operator, value)`` conditions joined by AND. Operators are
            ``= != < <= > >= LIKE IN NOT IN INCLUDES EXCLUDES``; the list operators take a
            sequence of values.
        order_by: ``Field [ASC|DESC] [NULLS FIRST|LAST]``, comma-separated terms allowed.

    Raises:
        ValueError: An identifier, operator or order term is not allowed.
    """
    if not fields:
        raise ValueError("a SOQL SELECT needs at least one field")
    parts = [
        "SELECT " + ", ".join(soql_identifier(f) for f in fields),
        "FROM " + soql_identifier(obj),
    ]
    conditions = []
    for field_name, operator, value in where:
        op = " ".join(operator.upper().split())
        if op not in _OPERATORS:
            raise ValueError(f"SOQL operator not allowed: {operator!r}")
        if op in _LIST_OPERATORS:
            if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
                raise ValueError(f"SOQL {op} needs a sequence of values")
            if not value:
                raise ValueError(f"SOQL {op} needs at least one value")
            rendered = "(" + ", ".join(soql_literal(_soql_value(v)) for v in value) + ")"
        else:
            rendered = soql_literal(_soql_value(value))
        conditions.append(f"{soql_identifier(field_name)} {op} {rendered}")
    if conditions:
        parts.append("WHERE " + " AND ".join(conditions))
    if order_by is not None:
        terms = [t.strip() for t in order_by.split(",")]
        if not all(_ORDER_TERM.match(t) for t in terms):
            raise ValueError(f"SOQL ORDER BY not allowed: {order_by!r}")
        parts.append("ORDER BY " + ", ".join(" ".join(t.split()) for t in terms))
    return " ".join(parts)


def _soql_value(value: object) -> SoqlValue:
    if value is None or isinstance(
        value, str | int | bool | datetime.date | datetime.datetime | decimal.Decimal
    ):
        return value
    raise TypeError(f"no SOQL literal for {type(value).__name__}")


def parse_salesforce_error(response: requests.Response) -> ErrorInfo:
    """Code, message and field of Salesforce's error array or OAuth error object."""
    body = error_json(response)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        first = body[0]
        fields = first.get("fields") or []
        message = first.get("message")
        field_name = fields[0] if fields else None
        if field_name is None and isinstance(message, str):
            match = _NO_SUCH_COLUMN.search(message)
            field_name = match.group(1) if match else None
        return ErrorInfo(code=first.get("errorCode"), detail=message, field=field_name)
    if isinstance(body, dict) and "error" in body:
        return ErrorInfo(code=body.get("error"), detail=body.get("error_description"))
    return ErrorInfo()


def classify_salesforce(response: requests.Response, info: ErrorInfo) -> Verdict | None:
    """Salesforce's quirks: quota as 403, row locks as 400, bad credentials as 400."""
    if info.code == "REQUEST_LIMIT_EXCEEDED":
        # The org's rolling 24-hour quota: resending within seconds only burns more of it.
        return Verdict.GIVE_UP_RETRYABLE
    if info.code == "UNABLE_TO_LOCK_ROW":
        return Verdict.RETRY
    if info.code in _OAUTH_CREDENTIAL_ERRORS:
        return Verdict.AUTH
    return None


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    """The RSA private key of a PEM text (PKCS#1 or PKCS#8, unencrypted).

    A PEM kept in one environment line with literal ``\\n`` separators is accepted too.

    Raises:
        ConfigurationError: Not an unencrypted RSA private key (the key itself is never shown).
    """
    text = pem.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigurationError(
            "salesforce: SALESFORCE_PRIVATE_KEY is not an unencrypted PEM private key"
        ) from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigurationError(
            "salesforce: SALESFORCE_PRIVATE_KEY must be an RSA key (the JWT bearer flow is RS256)"
        )
    return key


def jwt_assertion(
    key: rsa.RSAPrivateKey, *, client_id: str, username: str, audience: str, now: float
) -> str:
    """The signed RS256 assertion of the JWT bearer flow (header ``{"alg":"RS256"}``)."""
    claims = {"iss": client_id, "sub": username, "aud": audience, "exp": int(now) + JWT_LIFETIME_S}
    return jwt.encode(claims, key, algorithm="RS256", headers={"typ": None})


@dataclass(frozen=True)
class QueryBatch:
    """One batch of a query result.

    Attributes:
        records: The batch's records, ``attributes`` removed.
        done: Whether this is the last batch.
        total_size: ``totalSize`` of the whole result.
    """

    records: list[dict[str, Any]]
    done: bool
    total_size: int


@dataclass(frozen=True)
class SaveResult:
    """Salesforce's answer for one record of an sObject Collections call.

    Attributes:
        record_id: The record the answer is for.
        error: Why Salesforce refused it (``code`` its statusCode, ``field`` the first field it
            named): retryable for row-lock contention, permanent otherwise; None when saved.
    """

    record_id: str
    error: UpstreamError | None


def parse_api_usage(header: str | None) -> tuple[int, int] | None:
    """(used, allowed) from ``Sforce-Limit-Info: api-usage=18/15000``."""
    if not header:
        return None
    match = _API_USAGE.search(header)
    return (int(match.group(1)), int(match.group(2))) if match else None


class SalesforceClient(ConnectorClient):
    """Queries and writes one Salesforce org with an OAuth2 access token.

    With ``username`` and ``private_key`` it uses the JWT bearer flow (an RS256 assertion signed
    with the connected app's certificate key); otherwise client credentials. Neither flow has a
    refresh token: a 401 fetches a new token once.

    Args:
        login_url: The org's My Domain base URL hosting ``/services/oauth2/token``.
        client_id: Connected app consumer key.
        client_secret: Connected app consumer secret (client credentials flow).
        username: The pre-authorized user the JWT bearer flow acts as.
        private_key: PEM of the RSA key whose certificate the connected app holds.
        jwt_audience: The assertion's ``aud``: ``https://login.salesforce.com`` unless set
            (``https://test.salesforce.com`` for a sandbox org, or an Experience Cloud site's
            URL). Never the My Domain URL: Salesforce refuses it as "audience is invalid".
        api_version: REST API version (``v60.0``).
        batch_size: Records per query batch (200 to 2000), sent as ``Sforce-Query-Options``.
        http_options: Timeouts and retry settings.
        clock: Wall clock for the assertion's expiry.

    Raises:
        ConfigurationError: Neither a client secret nor a username and private key, or a key
            that is not an RSA private key.
    """

    def __init__(
        self,
        *,
        login_url: str,
        client_id: str,
        client_secret: str = "",
        username: str | None = None,
        private_key: str | None = None,
        jwt_audience: str | None = None,
        api_version: str = "v60.0",
        batch_size: int = 2000,
        http_options: HttpOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _API_VERSION.match(api_version):
            raise ValueError(f"salesforce api_version must look like v60.0, got {api_version!r}")
        if not 200 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"salesforce batch_size must be 200..2000, got {batch_size}")
        check_base_url(SYSTEM, login_url, variable="SALESFORCE_LOGIN_URL", domains=DOMAINS)
        self._login_url = login_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self._username = username or None
        self._private_key = load_private_key(private_key) if username and private_key else None
        if self._private_key is None and not client_secret:
            raise ConfigurationError(
                "salesforce: no credentials; set SALESFORCE_CLIENT_SECRET (client credentials) "
                "or SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY (JWT bearer)"
            )
        self._jwt_audience = (jwt_audience or DEFAULT_JWT_AUDIENCE).rstrip("/")
        self._clock = clock
        self._api_version = api_version
        self._batch_size = batch_size
        self._access_token: str | None = None
        self._instance_url: str | None = None
        self._api_usage: tuple[int, int] | None = None
        self.http = HttpClient.from_options(
            SYSTEM,
            http_options or HttpOptions.from_env(),
            url_variable="SALESFORCE_LOGIN_URL",
            base_urls=[self._login_url],
            secrets=[client_id, client_secret, *(private_key or "").strip().splitlines()],
            error_parser=parse_salesforce_error,
            classifier=classify_salesforce,
            on_response=self._record_usage,
        )

    def __repr__(self) -> str:
        return f"SalesforceClient(login_url={self._login_url!r}, api_version={self._api_version!r})"

    @property
    def flow(self) -> str:
        """``jwt_bearer`` or ``client_credentials``: how this client obtains its tokens."""
        return "jwt_bearer" if self._private_key is not None else "client_credentials"

    @property
    def api_usage(self) -> tuple[int, int] | None:
        """(used, allowed) API calls of the org's rolling 24 hours, from the last response."""
        return self._api_usage

    def next_call_within(self, share: float) -> bool:
        """Whether one more API call keeps the org's usage within ``share`` of its daily limit.

        True before any response told the usage (the first call finds it out).
        """
        if self._api_usage is None:
            return True
        used, allowed = self._api_usage
        return used + 1 <= share * allowed

    def query(self, soql: str) -> Iterator[dict[str, Any]]:
        """Every record matching ``soql``, following ``nextRecordsUrl`` until done.

        Build ``soql`` with ``soql_select``/``soql_literal``, never from raw untrusted strings.
        ``attributes`` is removed from each record (and from nested relationship records).

        Raises:
            AuthenticationError: The credentials were rejected.
            PermanentUpstreamError: Malformed query or unknown field (``field`` names it).
            RetryableUpstreamError: The org's API quota is spent, or transient failures lasted.
        """
        for batch in self.query_batches(soql):
            yield from batch.records

    def query_batches(self, soql: str) -> Iterator[QueryBatch]:
        """The result of ``soql`` one batch (one API call) at a time.

        A caller that stops iterating makes no further call: this is how an extract stays
        under its share of the org's daily quota (see ``next_call_within``).

        Raises:
            The same errors as ``query``.
        """
        path: str | None = f"/services/data/{self._api_version}/query"
        params: dict[str, str] | None = {"q": soql}
        guard = self.http.page_guard("query", limit=MAX_BATCH_SIZE)
        while path is not None:
            where = "query" if params is not None else f"query batch {path.rsplit('/', 1)[-1]}"
            response = self._call("GET", path, params=params)
            body = body_object(parse_json(response, SYSTEM), SYSTEM, where)
            done = body_field(body, "done", bool, SYSTEM, where, default=True)
            records = body_field(body, "records", list, SYSTEM, where, default=[])
            total = body_field(body, "totalSize", int, SYSTEM, where, default=0)
            guard.page(len(records), more=not done)
            # A record that is not an object is kept as it came: landing gives it an id from
            # its content, and its contract check sends it to quarantine.
            yield QueryBatch(
                [_strip_attributes(r) if isinstance(r, dict) else r for r in records],
                done,
                total,
            )
            if done:
                return
            path = _next_records_path(body.get("nextRecordsUrl"))
            guard.follow(path)
            params = None

    def upsert(
        self, sobject: str, ext_id_field: str, value: str, fields: dict[str, Any]
    ) -> tuple[str, bool]:
        """Create or update the one ``sobject`` record whose ``ext_id_field`` is ``value``.

        ``PATCH /sobjects/{sobject}/{ext_id_field}/{value}`` is idempotent by construction:
        resending after a timeout updates the record the first attempt created, so it is safe
        to retry. From API v46.0 an update answers 200 with the id; before, 204 without a body,
        and the id is then read back by external id.

        Args:
            sobject: sObject API name (``Opportunity``).
            ext_id_field: A field flagged External ID (``Finsync_External_Id__c``).
            value: The external id; percent-encoded into the path.
            fields: Field values to set (Decimal for numbers, never float).

        Returns:
            (Salesforce id, True when the record was created).

        Raises:
            PermanentUpstreamError: A validation error (``code``/``field`` name it), an unknown
                object or field (404), or a value several records share (300,
                ``MULTIPLE_RECORDS``).
        """
        path = self._ext_path(sobject, ext_id_field, value)
        response = self._call(
            "PATCH", path, json_body=fields, expected=(200, 201, 204, 300), idempotent=True
        )
        if response.status_code == 300:
            raise self._ambiguous(sobject, ext_id_field, response)
        if response.status_code in (200, 201) and response.content:
            body = parse_json(response, SYSTEM)
            if isinstance(body, dict) and body.get("id"):
                return str(body["id"]), bool(body.get("created", response.status_code == 201))
        record = self.get_by_external_id(sobject, ext_id_field, value)
        return str(record["Id"]), response.status_code == 201

    def update_collection(
        self, sobject: str, records: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[SaveResult]:
        """Update ``(Id, fields)`` records of ``sobject``, 200 per sObject Collections call.

        ``PATCH /composite/sobjects`` with ``allOrNone`` false: a record Salesforce refuses does
        not hold back the others, and each answer says which. An update carries the fields'
        whole new values, so resending a call whose answer was lost is safe.

        Returns:
            One result per record, in the order given.

        Raises:
            PermanentUpstreamError: The call itself was refused (malformed, unknown object), or
                its answer does not have one result per record.
        """
        self._ext_path(sobject, "Id", "x")  # validates the object's API name
        path = f"/services/data/{self._api_version}/composite/sobjects"
        results: list[SaveResult] = []
        for start in range(0, len(records), COLLECTION_LIMIT):
            chunk = records[start : start + COLLECTION_LIMIT]
            body = {
                "allOrNone": False,
                "records": [
                    {"attributes": {"type": sobject}, **fields, "id": record_id}
                    for record_id, fields in chunk
                ],
            }
            response = self._call("PATCH", path, json_body=body, idempotent=True)
            answers = parse_json(response, SYSTEM)
            if not isinstance(answers, list) or len(answers) != len(chunk):
                raise PermanentUpstreamError(
                    SYSTEM,
                    f"{sobject} collection update: expected {len(chunk)} results",
                    status=response.status_code,
                )
            results += [
                SaveResult(record_id, _save_error(sobject, record_id, answer))
                for (record_id, _fields), answer in zip(chunk, answers, strict=True)
            ]
        return results

    def get_by_external_id(self, sobject: str, ext_id_field: str, value: str) -> dict[str, Any]:
        """The one ``sobject`` record whose ``ext_id_field`` is ``value``.

        Raises:
            PermanentUpstreamError: None (404 NOT_FOUND) or several (300) match.
        """
        path = self._ext_path(sobject, ext_id_field, value)
        response = self._call("GET", path, expected=(200, 300))
        if response.status_code == 300:
            raise self._ambiguous(sobject, ext_id_field, response)
        return _strip_attributes(parse_json(response, SYSTEM))

    def _ext_path(self, sobject: str, ext_id_field: str, value: str) -> str:
        for name in (sobject, ext_id_field):
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"not a Salesforce API name: {name!r}")
        if not value:
            raise ValueError("an external id value is required")
        return f"/services/data/{self._api_version}/sobjects/{sobject}/{ext_id_field}/" + quote(
            value, safe=""
        )

    @staticmethod
    def _ambiguous(sobject: str, ext_id_field: str, response: requests.Response) -> Exception:
        return PermanentUpstreamError(
            SYSTEM,
            f"{sobject}.{ext_id_field}: the external id matches several records",
            status=response.status_code,
            code="MULTIPLE_RECORDS",
            field=ext_id_field,
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        expected: tuple[int, ...] = (200,),
        idempotent: bool = True,
    ) -> requests.Response:
        if self._access_token is None:
            self._authenticate()
        for reauthenticated in (False, True):
            headers = {
                "Authorization": f"Bearer {self._access_token}",
                "Accept": "application/json",
            }
            if method == "GET":
                headers["Sforce-Query-Options"] = f"batchSize={self._batch_size}"
            kwargs: dict[str, Any] = {"params": params, "headers": headers}
            if json_body is not None:
                # simplejson keeps Decimal values exact numbers in the body.
                kwargs["data"] = simplejson.dumps(json_body, use_decimal=True)
                headers["Content-Type"] = "application/json"
            try:
                return self.http.request(
                    method,
                    f"{self._instance_url}{path}",
                    idempotent=idempotent,
                    expected=expected,
                    **kwargs,
                )
            except AuthenticationError:
                # Neither flow has a refresh token and tokens expire by session policy: fetch a
                # new one once, then give up.
                if reauthenticated:
                    raise
                self._authenticate()
        raise AssertionError("unreachable")

    def _authenticate(self) -> None:
        if self._private_key is not None:
            self._authenticate_jwt()
        else:
            self._authenticate_client_credentials()

    def _authenticate_jwt(self) -> None:
        assert self._private_key is not None and self._username is not None
        assertion = jwt_assertion(
            self._private_key,
            client_id=self._client_id,
            username=self._username,
            audience=self._jwt_audience,
            now=self._clock(),
        )
        try:
            response = self.http.request(
                "POST",
                f"{self._login_url}/services/oauth2/token",
                idempotent=True,
                data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion},
                headers={"Accept": "application/json"},
            )
        except AuthenticationError as e:
            if e.detail == "audience is invalid":
                message = JWT_AUDIENCE_MESSAGE.format(audience=self._jwt_audience)
            else:
                message = JWT_AUTH_MESSAGE.format(code=e.code or "rejected", detail=e.detail)
            error = AuthenticationError(SYSTEM, message, code=e.code)
            error.status = e.status
            raise error from e
        self._take_token(response)

    def _authenticate_client_credentials(self) -> None:
        try:
            response = self.http.request(
                "POST",
                f"{self._login_url}/services/oauth2/token",
                # Asking for a token twice only mints two tokens: safe to resend.
                idempotent=True,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._client_secret,
                },
                headers={"Accept": "application/json"},
            )
        except AuthenticationError as e:
            error = AuthenticationError(SYSTEM, AUTH_MESSAGE, code=e.code)
            error.status = e.status
            raise error from e
        self._take_token(response)

    def _take_token(self, response: requests.Response) -> None:
        body = body_object(parse_json(response, SYSTEM), SYSTEM, "the token request")
        token = body.get("access_token")
        instance_url = body.get("instance_url")
        if not token or not instance_url:
            raise PermanentUpstreamError(
                SYSTEM,
                "the token response lacks access_token or instance_url",
                status=response.status_code,
            )
        self.http.add_secret(str(token))
        self._instance_url = _instance(str(instance_url))
        self.http.add_origin(self._instance_url)
        self._access_token = str(token)

    def _record_usage(self, response: requests.Response) -> None:
        usage = parse_api_usage(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self._api_usage = usage


def _next_records_path(value: Any) -> str:
    """A batch's ``nextRecordsUrl``, when it is a query path on the instance.

    Anything else (another host, ``//host``, ``@host``, ``.host``, a different resource) is
    refused: the path is appended to the instance URL, and the bearer token goes with it.
    """
    if not value:
        raise PermanentUpstreamError(SYSTEM, "query not done but no nextRecordsUrl")
    if not isinstance(value, str) or not _NEXT_RECORDS_URL.match(value):
        shown = str(value)[:120]
        raise PermanentUpstreamError(
            SYSTEM,
            f"query answered a nextRecordsUrl that is not a query path on the instance "
            f"({shown!r}); refused, the access token goes to the instance only",
            status=200,
            field="nextRecordsUrl",
        )
    return value


def _instance(url: str) -> str:
    """The token response's ``instance_url``: in live mode, https on Salesforce's domains."""
    try:
        check_base_url(SYSTEM, url, variable="the token response's instance_url", domains=DOMAINS)
    except ConfigurationError as e:
        raise PermanentUpstreamError(SYSTEM, str(e).removeprefix(f"{SYSTEM}: ")) from None
    parts = urlsplit(url)
    if not live_mode() and parts.scheme not in ("http", "https"):
        raise PermanentUpstreamError(SYSTEM, "the token response's instance_url is not a URL")
    return url.rstrip("/")


def _save_error(sobject: str, record_id: str, answer: Any) -> UpstreamError | None:
    """The refusal in one SaveResult (``statusCode``, ``message``, ``fields``), or None."""
    if isinstance(answer, dict) and answer.get("success") is True:
        return None
    errors = answer.get("errors") if isinstance(answer, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = first.get("statusCode")
    fields = first.get("fields") or []
    message = str(first.get("message") or "refused without a message")
    # Another transaction held the row: the same update succeeds a little later.
    kind = RetryableUpstreamError if code == "UNABLE_TO_LOCK_ROW" else PermanentUpstreamError
    return kind(
        SYSTEM,
        f"{code}: {message}" if code else message,
        code=code,
        field=str(fields[0]) if fields else None,
    )


def _strip_attributes(record: dict[str, Any]) -> dict[str, Any]:
    return {key: _strip_value(value) for key, value in record.items() if key != "attributes"}


def _strip_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("records"), list):
        # A parent-to-child subquery is itself a query result.
        return {**value, "records": [_strip_attributes(r) for r in value["records"]]}
    return _strip_attributes(value)


class SalesforceResource(dg.ConfigurableResource):
    """Salesforce CRM and CPQ access through the REST API.

    Authenticates against the org's My Domain with the OAuth2 JWT bearer flow when
    ``username`` and ``private_key`` are set, with client credentials otherwise, and queries
    at the ``instance_url`` the token names.

    Attributes:
        login_url: My Domain base URL (``SALESFORCE_LOGIN_URL``).
        client_id: Connected app consumer key (``SALESFORCE_CLIENT_ID``).
        client_secret: Connected app consumer secret (``SALESFORCE_CLIENT_SECRET``); not
            needed with the JWT bearer flow.
        username: The pre-authorized user of the JWT bearer flow (``SALESFORCE_USERNAME``).
        private_key: PEM of the RSA key whose certificate the connected app holds
            (``SALESFORCE_PRIVATE_KEY``; literal ``\\n`` line separators accepted).
        jwt_audience: The assertion's ``aud`` (``SALESFORCE_JWT_AUDIENCE``); unset,
            ``https://login.salesforce.com``.
        api_version: REST API version.
        batch_size: Records per query batch (200 to 2000).

    Example:
        >>> sf = SalesforceResource(login_url=dg.EnvVar("SALESFORCE_LOGIN_URL"), ...)
        >>> accounts = list(sf.get_client().query(soql_select("Account", ["Id", "Name"])))
    """

    login_url: str = Field(description="My Domain base URL (SALESFORCE_LOGIN_URL).")
    client_id: str = Field(repr=False, description="Consumer key (SALESFORCE_CLIENT_ID).")
    client_secret: str = Field(
        default="", repr=False, description="Consumer secret (SALESFORCE_CLIENT_SECRET)."
    )
    username: str | None = Field(
        default=None, description="JWT bearer flow user (SALESFORCE_USERNAME)."
    )
    private_key: str | None = Field(
        default=None,
        repr=False,
        description="JWT bearer flow RSA key PEM (SALESFORCE_PRIVATE_KEY).",
    )
    jwt_audience: str | None = Field(
        default=None,
        description="JWT bearer assertion audience (SALESFORCE_JWT_AUDIENCE); "
        "https://login.salesforce.com when unset.",
    )
    api_version: str = Field(default="v60.0", description="REST API version, e.g. v60.0.")
    batch_size: int = Field(default=2000, description="Records per query batch (200-2000).")

    def get_client(self, *, http_options: HttpOptions | None = None) -> SalesforceClient:
        """A client with its own keep-alive session; it authenticates on first use."""
        return SalesforceClient(
            login_url=self.login_url,
            client_id=self.client_id,
            client_secret=self.client_secret,
            username=self.username,
            private_key=self.private_key,
            jwt_audience=self.jwt_audience,
            api_version=self.api_version,
            batch_size=self.batch_size,
            http_options=http_options,
        )
