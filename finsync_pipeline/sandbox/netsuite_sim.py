"""NetSuite SuiteTalk REST simulator: TBA (OAuth 1.0a HMAC-SHA256), record API, SuiteQL.

Records: ``customer``, ``invoice``, ``creditmemo``, ``customerpayment`` and ``customerrefund``
can be created (POST), upserted by external id (``PUT .../eid:{x}``) and read by internal id or
``eid:``; master data (subsidiary, currency, item) can be read. Bodies are validated as NetSuite
would and rejected with its RFC 7807-style ``o:errorDetails`` envelope, ``o:errorPath`` naming
the field.
An upsert that updates an existing record replaces the sublists it sends (``item``, ``apply``),
so resending the same document is idempotent.

Applications: a credit memo or a customer payment applies to invoices of the same customer and
currency through its ``apply`` sublist (``{"items": [{"doc": {"id"}, "apply": true,
"amount"}]}``), never beyond the invoice's ``amountRemaining``. An invoice's read-only
``amountRemaining``, ``amountPaid`` and ``status`` ("Open", "Paid In Full") follow what is
applied to it. Invoices cannot be voided or deleted through REST here: a compensation is a
credit memo. ``createdFrom`` on a credit memo links it to its invoice but applies nothing.
A customer refund pays credit back out: its ``apply`` sublist takes amounts from credit memos or
payments of the customer (never beyond their unapplied amount), and its total is their sum.
A customer payment can also carry credits to invoices, as NetSuite's Accept Customer Payments
does: its ``credit`` sublist (``{"items": [{"doc": {"id": <credit memo>}, "apply": true,
"amount"}]}``) takes amounts from open credit memos of the customer, and what it applies to
invoices may reach ``payment`` plus those credits (never more credit than it applies). A
payment of 0 that only moves credit onto an invoice is how a credit memo posted earlier is
applied later without editing it.

Sandbox simplifications, to keep in mind against a live account:

- SuiteQL ``paymentapplication (id, payment, paymenttype, invoice, amount)`` is not a NetSuite
  table: a real account exposes applications through ``transactionline`` and
  ``previoustransactionlinelink``. ``payment`` is the applying transaction's id (a CustPymt, a
  CustCred or a CustRfnd, told apart by ``paymenttype``); ``invoice`` is the document applied
  to (a credit memo or payment when ``paymenttype`` is CustRfnd).
- The sandbox keeps no exchange rates: ``amountremaining`` equals ``foreignamountremaining``
  (the transaction currency), and ``foreigntotal`` of a credit memo or payment is positive.
- SuiteQL ``status`` codes: CustInvc A (Open) / B (Paid In Full); CustCred A (Open) / B (Fully
  Applied); CustPymt B (Not Deposited). REST renders ``status`` as its name, a plain string.
  A customer refund (CustRfnd) carries no status.
- ``amountremaining`` of a credit memo or payment is its unapplied amount, less any refund.
"""

import base64
import datetime
import hashlib
import hmac
import re
import sqlite3
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

import simplejson

from finsync_pipeline.sandbox import suiteql
from finsync_pipeline.sandbox.generator import TAX_ITEM_ID, Company, netsuite_master_data
from finsync_pipeline.sandbox.http_base import Faults, Request, Response, Simulator, dumps
from finsync_pipeline.sandbox.store import Store

REST_ROOT = "/services/rest"
RECORD_ROOT = f"{REST_ROOT}/record/v1"
TIMESTAMP_TOLERANCE_S = 300
_EID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MASTER_TYPES = ("subsidiary", "currency", "item", "account")
_CUSTOMER_FIELDS = {
    "externalId",
    "entityId",
    "companyName",
    "isPerson",
    "email",
    "phone",
    "subsidiary",
    "currency",
    "terms",
    "parent",
    "addressBook",
    "comments",
    "isInactive",
    "category",
}
_INVOICE_FIELDS = {
    "externalId",
    "entity",
    "tranDate",
    "dueDate",
    "subsidiary",
    "currency",
    "exchangeRate",
    "terms",
    "memo",
    "otherRefNum",
    "department",
    "class",
    "location",
    "item",
    "email",
    "postingPeriod",
    "tranId",
}
_CREDIT_MEMO_FIELDS = _INVOICE_FIELDS | {"createdFrom", "apply"}
_PAYMENT_FIELDS = {
    "externalId",
    "customer",
    "tranDate",
    "currency",
    "payment",
    "memo",
    "account",
    "paymentMethod",
    "apply",
    "credit",
    "subsidiary",
    "exchangeRate",
    "postingPeriod",
    "checkNum",
    "tranId",
    "department",
    "class",
    "location",
}
# A customer refund pays out credits: its total is what its apply sublist takes from them.
_REFUND_FIELDS = (_PAYMENT_FIELDS - {"payment", "credit"}) | {"toBePrinted"}
_APPLY_FIELDS = {"doc", "apply", "amount", "line"}
# Record type (as the REST path spells it, lower-case) -> SuiteQL transaction type.
_TRAN_TYPES = {
    "invoice": "CustInvc",
    "creditmemo": "CustCred",
    "customerpayment": "CustPymt",
    "customerrefund": "CustRfnd",
}
_TRAN_PREFIX = {
    "invoice": "INV",
    "creditmemo": "CM",
    "customerpayment": "PYMT",
    "customerrefund": "RFND",
}
# What each applying record type may apply to: a payment or credit memo settles invoices; a
# refund pays out the unapplied credit of credit memos and payments.
_APPLY_TARGETS = {
    "creditmemo": ("invoice",),
    "customerpayment": ("invoice",),
    "customerrefund": ("creditmemo", "customerpayment"),
}
_TARGET_NAMES = {"invoice": "Invoice", "creditmemo": "Credit memo", "customerpayment": "Payment"}
# SuiteQL status code while something remains / once nothing remains, and the REST names. A
# customer refund has no status here (SuiteQL omits it, REST leaves it out).
_STATUS = {"CustInvc": ("A", "B"), "CustCred": ("A", "B"), "CustPymt": ("B", "B")}
_STATUS_NAMES = {
    ("CustInvc", "A"): "Open",
    ("CustInvc", "B"): "Paid In Full",
    ("CustCred", "A"): "Open",
    ("CustCred", "B"): "Fully Applied",
    ("CustPymt", "B"): "Not Deposited",
}
# Added to the shared store's schema by the simulator itself; a state file made before these
# existed gains them when the simulator opens it.
_APPLICATION_DDL = (
    "CREATE TABLE IF NOT EXISTS ns_application (id INTEGER PRIMARY KEY, payment INTEGER NOT "
    "NULL, paymenttype TEXT NOT NULL, invoice INTEGER NOT NULL, amount TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ns_application_payment ON ns_application (payment)",
    "CREATE INDEX IF NOT EXISTS ns_application_invoice ON ns_application (invoice)",
    # Credits a customer payment carried to invoices (its ``credit`` sublist): what ``payment``
    # took from credit memo ``credit``.
    "CREATE TABLE IF NOT EXISTS ns_credit_application (id INTEGER PRIMARY KEY, payment INTEGER "
    "NOT NULL, credit INTEGER NOT NULL, amount TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ns_credit_application_payment ON ns_credit_application (payment)",
    "CREATE INDEX IF NOT EXISTS ns_credit_application_credit ON ns_credit_application (credit)",
)
_REMAINING_COLUMNS = ("amountremaining", "foreignamountremaining")


def _account_subsidiaries(account: dict[str, Any]) -> set[str]:
    """The subsidiaries that may use an account: one (``{"id"}``) or a multi-select
    (``{"items": [{"id"}]}``)."""
    sub = account.get("subsidiary") or {}
    if "items" in sub:
        return {str(s["id"]) for s in sub["items"]}
    return {str(sub.get("id"))}


def _status_code(tran_type: str, remaining: Decimal) -> str | None:
    if tran_type not in _STATUS:
        return None
    open_code, closed_code = _STATUS[tran_type]
    return closed_code if remaining == 0 else open_code


def ensure_schema(store: Store) -> None:
    """Add the application table and the amount-remaining columns to the store if missing."""
    with store.tx() as conn:
        for ddl in _APPLICATION_DDL:
            conn.execute(ddl)
        have = {r[1] for r in conn.execute("PRAGMA table_info(ns_transaction)")}
        for column in _REMAINING_COLUMNS:
            if column not in have:
                conn.execute(f"ALTER TABLE ns_transaction ADD COLUMN {column} TEXT")
        # Invoices stored before applications existed have nothing applied to them.
        conn.execute(
            "UPDATE ns_transaction SET amountremaining = foreigntotal, "
            "foreignamountremaining = foreigntotal WHERE amountremaining IS NULL"
        )
        # A store seeded before bank accounts existed gains them (refunds are paid from one).
        if conn.execute("SELECT 1 FROM ns_master WHERE type = 'subsidiary'").fetchone():
            conn.executemany(
                "INSERT OR IGNORE INTO ns_master (type, id, body) VALUES ('account', ?, ?)",
                [
                    (rec["id"], simplejson.dumps(rec, use_decimal=True))
                    for rec in netsuite_master_data()["account"]
                ],
            )


_LINE_FIELDS = {
    "item",
    "quantity",
    "rate",
    "amount",
    "description",
    "taxCode",
    "department",
    "class",
    "location",
}


class NsError(Exception):
    """An error answered in NetSuite's envelope."""

    def __init__(self, status: int, code: str, detail: str, path: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.path = path

    def response(self) -> Response:
        """The error as an HTTP response."""
        return ns_error(self.status, self.code, self.detail, self.path)


def ns_error(status: int, code: str, detail: str, path: str | None = None) -> Response:
    """NetSuite's error body for ``status``."""
    item: dict[str, Any] = {"detail": detail, "o:errorCode": code}
    if path:
        item["o:errorPath"] = path
    body = {
        "type": f"https://www.w3.org/Protocols/rfc9110.html#status.{status}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "o:errorDetails": [item],
    }
    return Response(
        status,
        dumps(body),
        {"Content-Type": "application/vnd.oracle.resource+json; type=error; charset=UTF-8"},
    )


def _json(status: int, obj: Any, kind: str = "singular-resource") -> Response:
    return Response(
        status,
        dumps(obj),
        {"Content-Type": f"application/vnd.oracle.resource+json; type={kind}; charset=UTF-8"},
    )


def pct(text: str) -> str:
    """RFC 3986 percent-encoding (unreserved characters only left as is)."""
    return quote(text, safe="-._~")


def seed_netsuite(conn: sqlite3.Connection, company: Company) -> None:
    """Load NetSuite master data (inside the caller's transaction)."""
    for rtype, records in company.netsuite.items():
        conn.executemany(
            "INSERT INTO ns_master (type, id, body) VALUES (?, ?, ?)",
            [(rtype, rec["id"], simplejson.dumps(rec, use_decimal=True)) for rec in records],
        )


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.datetime.fromtimestamp(clock(), datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


class NetSuiteSimulator(Simulator):
    """``/services/rest/record/v1`` and ``/services/rest/query/v1/suiteql`` behind TBA."""

    system = "netsuite"

    def __init__(
        self,
        faults: Faults,
        store: Store,
        *,
        account_id: str,
        consumer_key: str,
        consumer_secret: str,
        token_id: str,
        token_secret: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(faults)
        self.store = store
        self.account_id = account_id
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.token_id = token_id
        self.token_secret = token_secret
        self.clock = clock
        ensure_schema(store)

    def is_write(self, req: Request) -> bool:
        """Record writes only: a SuiteQL query is a POST that changes nothing."""
        return req.path.startswith(RECORD_ROOT + "/") and req.method in (
            "POST",
            "PUT",
            "PATCH",
            "DELETE",
        )

    def fault_response(self, status: int) -> Response:
        """NetSuite's envelope: 429 is its concurrency limit."""
        if status == 429:
            return ns_error(
                429,
                "CONCURRENCY_LIMIT_EXCEEDED",
                "Concurrent request limit exceeded. Request blocked.",
            )
        if status == 503:
            return ns_error(503, "SERVICE_UNAVAILABLE", "The service is temporarily unavailable.")
        if status >= 500:
            return ns_error(status, "UNEXPECTED_ERROR", "An unexpected error occurred.")
        return ns_error(status, "USER_ERROR", f"Injected error {status}.")

    def handle(self, req: Request) -> Response:
        """Authenticate, then serve a record or SuiteQL request."""
        try:
            self._authenticate(req)
            if req.path.startswith(RECORD_ROOT + "/"):
                return self._record(req)
            if req.path.rstrip("/") == f"{REST_ROOT}/query/v1/suiteql":
                return self._suiteql(req)
            raise NsError(404, "NONEXISTENT_ID", f"Invalid URL path {req.path}.")
        except NsError as e:
            return e.response()

    # TBA --------------------------------------------------------------------------------------
    def _authenticate(self, req: Request) -> None:
        denied = NsError(401, "INVALID_LOGIN", "Invalid login attempt.")
        header = req.header("Authorization") or ""
        if not header.startswith("OAuth "):
            raise denied
        oauth = {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header[6:])}
        required = (
            "oauth_consumer_key",
            "oauth_token",
            "oauth_signature_method",
            "oauth_timestamp",
            "oauth_nonce",
            "oauth_signature",
        )
        if any(not oauth.get(k) for k in required):
            raise denied
        realm = oauth.get("realm")
        if realm is not None and realm.upper() != self.account_id.upper():
            raise denied
        if oauth["oauth_signature_method"] != "HMAC-SHA256":
            raise denied
        if oauth.get("oauth_version", "1.0") != "1.0":
            raise denied
        if not (
            hmac.compare_digest(oauth["oauth_consumer_key"], self.consumer_key)
            and hmac.compare_digest(oauth["oauth_token"], self.token_id)
        ):
            raise denied
        try:
            stamp = int(oauth["oauth_timestamp"])
        except ValueError:
            raise denied from None
        now = int(self.clock())
        if abs(now - stamp) > TIMESTAMP_TOLERANCE_S:
            raise denied
        params = [(k, v) for k, v in oauth.items() if k not in ("realm", "oauth_signature")]
        params += req.params()
        normalized = "&".join(f"{k}={v}" for k, v in sorted((pct(k), pct(v)) for k, v in params))
        # RFC 5849 3.4.1.2: the base string URI is the scheme and host the client addressed,
        # without the scheme's default port.
        scheme = req.base_url.partition("://")[0]
        host = (req.header("Host") or "").lower()
        host = host.removesuffix({"http": ":80", "https": ":443"}[scheme])
        base = "&".join((req.method.upper(), pct(f"{scheme}://{host}{req.path}"), pct(normalized)))
        key = f"{pct(self.consumer_secret)}&{pct(self.token_secret)}"
        expected = base64.b64encode(
            hmac.new(key.encode(), base.encode(), hashlib.sha256).digest()
        ).decode()
        if not hmac.compare_digest(expected, oauth["oauth_signature"]):
            raise denied
        with self.store.tx() as conn:
            # A nonce may be used once within the timestamp window; older ones are forgotten.
            conn.execute("DELETE FROM ns_nonce WHERE ts < ?", (now - 2 * TIMESTAMP_TOLERANCE_S,))
            try:
                conn.execute(
                    "INSERT INTO ns_nonce (nonce, ts) VALUES (?, ?)",
                    (f"{oauth['oauth_token']}:{oauth['oauth_nonce']}", stamp),
                )
            except sqlite3.IntegrityError:
                raise denied from None

    # record API -------------------------------------------------------------------------------
    def _record(self, req: Request) -> Response:
        parts = [unquote(p) for p in req.path[len(RECORD_ROOT) + 1 :].split("/") if p]
        if not parts or len(parts) > 2:
            raise NsError(404, "NONEXISTENT_ID", f"Invalid URL path {req.path}.")
        rtype = parts[0].lower()
        ident = parts[1] if len(parts) == 2 else None
        base = req.base_url
        if rtype in _MASTER_TYPES:
            if req.method != "GET" or ident is None:
                raise NsError(405, "USER_ERROR", f"{req.method} is not supported on {rtype}.")
            return self._get_master(base, rtype, ident)
        if rtype != "customer" and rtype not in _TRAN_TYPES:
            raise NsError(404, "NONEXISTENT_ID", f"Record type '{parts[0]}' is not supported.")
        if req.method == "GET" and ident is not None:
            found = self._find(rtype, ident)
            if found is None:
                raise NsError(
                    404,
                    "NONEXISTENT_ID",
                    "The record instance does not exist. Provide a valid record instance ID.",
                )
            return _json(200, self._render(base, rtype, found))
        if req.method == "POST" and ident is None:
            body = self._body(req)
            eid = body.get("externalId")
            if eid is not None:
                self._check_eid(eid, "externalId")
            new_id = self._write(rtype, body, eid, upsert=False)
            return self._created(base, rtype, new_id)
        if req.method == "PUT" and ident is not None:
            if not ident.startswith("eid:"):
                raise NsError(
                    400, "INVALID_CONTENT", "Upsert requires an external ID in the URL (eid:)."
                )
            eid = ident[4:]
            self._check_eid(eid, "externalId")
            body = self._body(req)
            if body.get("externalId") not in (None, eid):
                raise NsError(
                    400,
                    "USER_ERROR",
                    "The external ID in the body does not match the one in the URL.",
                    "externalId",
                )
            new_id = self._write(rtype, body, eid, upsert=True)
            return self._created(base, rtype, new_id)
        raise NsError(405, "USER_ERROR", f"{req.method} is not supported on this resource.")

    @staticmethod
    def _created(base: str, rtype: str, rid: int) -> Response:
        return Response(204, b"", {"Location": f"{base}{RECORD_ROOT}/{rtype}/{rid}"})

    @staticmethod
    def _check_eid(eid: Any, path: str) -> None:
        if not isinstance(eid, str) or not _EID_RE.match(eid):
            raise NsError(
                400,
                "INVALID_CONTENT",
                f"Invalid external ID {eid!r}: use letters, digits, '_' and '-' only.",
                path,
            )

    @staticmethod
    def _body(req: Request) -> dict[str, Any]:
        ctype = (req.header("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "application/vnd.oracle.resource+json"):
            raise NsError(415, "INVALID_CONTENT", "Content-Type must be application/json.")
        try:
            body = simplejson.loads(req.body or b"", use_decimal=True)
        except ValueError as e:
            raise NsError(400, "INVALID_CONTENT", f"Invalid JSON: {e}.") from e
        if not isinstance(body, dict):
            raise NsError(400, "INVALID_CONTENT", "The request body must be a JSON object.")
        return body

    def _find(self, rtype: str, ident: str) -> sqlite3.Row | None:
        if rtype == "customer":
            table, extra, args = "ns_customer", "", []
        else:
            table, extra, args = "ns_transaction", " AND type = ?", [_TRAN_TYPES[rtype]]
        if ident.startswith("eid:"):
            return self.store.one(
                f"SELECT * FROM {table} WHERE externalid = ?{extra}", [ident[4:], *args]
            )
        if not ident.isdigit():
            return None
        return self.store.one(f"SELECT * FROM {table} WHERE id = ?{extra}", [int(ident), *args])

    def _master(self, rtype: str, rid: Any) -> dict[str, Any] | None:
        if not isinstance(rid, str | int) or isinstance(rid, bool):
            return None
        row = self.store.one(
            "SELECT body FROM ns_master WHERE type = ? AND id = ?", (rtype, str(rid))
        )
        return None if row is None else dict(simplejson.loads(row["body"], use_decimal=True))

    @staticmethod
    def _ref_id(body: dict[str, Any], name: str, path: str, *, required: bool) -> str | None:
        value = body.get(name)
        if value is None:
            if required:
                raise NsError(400, "USER_ERROR", f"Please enter value(s) for: {name}.", path)
            return None
        if not isinstance(value, dict) or "id" not in value:
            raise NsError(
                400,
                "INVALID_CONTENT",
                f"Invalid value for {name}: a reference is an object with an id.",
                path,
            )
        rid = value["id"]
        if isinstance(rid, bool) or not isinstance(rid, str | int):
            raise NsError(400, "INVALID_CONTENT", f"Invalid id for {name}.", path)
        return str(rid)

    def _validate_customer(self, body: dict[str, Any]) -> dict[str, Any]:
        for key in body:
            if key not in _CUSTOMER_FIELDS and not key.startswith("custentity"):
                raise NsError(400, "INVALID_CONTENT", f"Invalid field name {key}.", key)
        name = body.get("companyName")
        if not isinstance(name, str) or not name.strip():
            raise NsError(
                400, "USER_ERROR", "Please enter value(s) for: Company Name.", "companyName"
            )
        sub = self._ref_id(body, "subsidiary", "subsidiary", required=True)
        if self._master("subsidiary", sub) is None:
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {sub} for the following field: subsidiary.",
                "subsidiary",
            )
        currency = self._ref_id(body, "currency", "currency", required=False)
        if currency is not None and self._master("currency", currency) is None:
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {currency} for the following field: currency.",
                "currency",
            )
        parent = self._ref_id(body, "parent", "parent", required=False)
        if parent is not None and self._find("customer", parent) is None:
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {parent} for the following field: parent.",
                "parent",
            )
        return body

    def _check_date(self, body: dict[str, Any], name: str, *, required: bool) -> None:
        value = body.get(name)
        if value is None and not required:
            return
        if value is None:
            raise NsError(400, "USER_ERROR", f"Please enter value(s) for: {name}.", name)
        try:
            if not isinstance(value, str) or len(value) != 10:
                raise ValueError(value)
            datetime.date.fromisoformat(value)
        except ValueError:
            raise NsError(
                400,
                "INVALID_CONTENT",
                f"Invalid date value {value!r} for {name}: use YYYY-MM-DD.",
                name,
            ) from None

    @staticmethod
    def _amount(
        value: Any, path: str, name: str, currency: dict[str, Any], *, required: bool = True
    ) -> Decimal | None:
        """An exact amount: a JSON number within the currency's decimal places."""
        if value is None:
            if required:
                raise NsError(400, "USER_ERROR", f"Please enter value(s) for: {name}.", path)
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise NsError(400, "INVALID_CONTENT", f"Invalid number {value!r} for {name}.", path)
        amount = Decimal(value)
        places = int(currency["currencyPrecision"])
        exponent = amount.normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > places:
            raise NsError(
                400,
                "INVALID_CONTENT",
                f"Amount {amount} has more decimal places than "
                f"{currency['symbol']} allows ({places}).",
                path,
            )
        return amount

    def _customer_ref(self, body: dict[str, Any], name: str) -> sqlite3.Row:
        entity = self._ref_id(body, name, name, required=True)
        customer = self._find("customer", str(entity))
        if customer is None:
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {entity} for the following field: {name}.",
                name,
            )
        return customer

    def _currency_ref(self, body: dict[str, Any], *, default: str | None) -> dict[str, Any]:
        currency_id = self._ref_id(body, "currency", "currency", required=default is None)
        if currency_id is None:
            currency_id = default
            body["currency"] = {"id": default}
        currency = self._master("currency", currency_id)
        if currency is None:
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {currency_id} for the following field: currency.",
                "currency",
            )
        return currency

    def _subsidiary_ref(
        self, body: dict[str, Any], customer: sqlite3.Row, *, required: bool
    ) -> None:
        sub = self._ref_id(body, "subsidiary", "subsidiary", required=required)
        if sub is None:
            body["subsidiary"] = {"id": customer["subsidiary"]}
            return
        if self._master("subsidiary", sub) is None:
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {sub} for the following field: subsidiary.",
                "subsidiary",
            )
        if sub != customer["subsidiary"]:
            raise NsError(
                400,
                "USER_ERROR",
                f"The subsidiary {sub} is not valid for customer {customer['id']}.",
                "subsidiary",
            )

    @staticmethod
    def _check_fields(body: dict[str, Any], allowed: set[str], custom: str) -> None:
        for key in body:
            if key not in allowed and not key.startswith(custom):
                raise NsError(400, "INVALID_CONTENT", f"Invalid field name {key}.", key)

    def _validate_sales(
        self, body: dict[str, Any], allowed: set[str]
    ) -> tuple[sqlite3.Row, dict[str, Any], Decimal]:
        """An invoice or credit memo: its customer, currency and total (the sum of its lines)."""
        self._check_fields(body, allowed, "custbody")
        customer = self._customer_ref(body, "entity")
        self._subsidiary_ref(body, customer, required=True)
        currency = self._currency_ref(body, default=None)
        self._check_date(body, "tranDate", required=True)
        self._check_date(body, "dueDate", required=False)
        sublist = body.get("item")
        items = sublist.get("items") if isinstance(sublist, dict) else None
        if not isinstance(items, list) or not items:
            raise NsError(400, "USER_ERROR", "You must enter at least one line item.", "item")
        total = Decimal(0)
        for n, line in enumerate(items):
            path = f"item.items[{n}]"
            if not isinstance(line, dict):
                raise NsError(400, "INVALID_CONTENT", "A line must be an object.", path)
            for key in line:
                if key not in _LINE_FIELDS and not key.startswith("custcol"):
                    raise NsError(
                        400, "INVALID_CONTENT", f"Invalid field name {key}.", f"{path}.{key}"
                    )
            item_id = self._ref_id(line, "item", f"{path}.item", required=True)
            if self._master("item", item_id) is None:
                raise NsError(
                    400,
                    "USER_ERROR",
                    f"Invalid Field Value {item_id} for the following field: item.",
                    f"{path}.item",
                )
            amount = self._amount(line.get("amount"), f"{path}.amount", "amount", currency)
            for num_field in ("quantity", "rate"):
                value = line.get(num_field)
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int | Decimal)
                ):
                    raise NsError(
                        400,
                        "INVALID_CONTENT",
                        f"Invalid number {value!r} for {num_field}.",
                        f"{path}.{num_field}",
                    )
            assert amount is not None
            total += amount
        if total < 0:
            # Discount lines may be negative; the document may not (NetSuite says so on save).
            raise NsError(400, "USER_ERROR", "The total cannot be negative.", "item")
        return customer, currency, total

    def _validate_invoice(self, body: dict[str, Any]) -> Decimal:
        return self._validate_sales(body, _INVOICE_FIELDS)[2]

    def _validate_credit_memo(
        self, conn: sqlite3.Connection, body: dict[str, Any], own_id: int | None
    ) -> tuple[Decimal, list[tuple[int, Decimal]]]:
        customer, currency, total = self._validate_sales(body, _CREDIT_MEMO_FIELDS)
        source = self._ref_id(body, "createdFrom", "createdFrom", required=False)
        if source is not None:
            invoice = self._find("invoice", source)
            if invoice is None or invoice["entity"] != str(customer["id"]):
                raise NsError(
                    400,
                    "USER_ERROR",
                    f"Invalid Field Value {source} for the following field: createdFrom "
                    "(an invoice of this customer).",
                    "createdFrom",
                )
        applied = self._validate_apply(
            conn, body, "creditmemo", customer=customer, currency=currency, own_id=own_id
        )
        # What a refund already paid out of this credit is spent too.
        spent = sum((a for _, a in applied), Decimal(0)) + self._refunded(conn, own_id)
        if spent > total:
            raise NsError(
                400,
                "USER_ERROR",
                f"The total applied and refunded exceeds the credit memo total {total}.",
                "apply",
            )
        return total, applied

    def _validate_payment(
        self, conn: sqlite3.Connection, body: dict[str, Any], own_id: int | None
    ) -> tuple[Decimal, list[tuple[int, Decimal]], list[tuple[int, Decimal]]]:
        """A customer payment: its amount, the invoices it applies to, and the credits (credit
        memos) it carries to them."""
        self._check_fields(body, _PAYMENT_FIELDS, "custbody")
        customer = self._customer_ref(body, "customer")
        self._subsidiary_ref(body, customer, required=False)
        currency = self._currency_ref(body, default=customer["currency"])
        self._check_date(body, "tranDate", required=True)
        # Deposit To: a bank account, or an asset account money clears through.
        self._deposit_account(
            body, required=False, kinds=("Bank", "OthCurrAsset"), what="a bank or asset account"
        )
        payment = self._amount(body.get("payment"), "payment", "payment", currency)
        assert payment is not None
        applied = self._validate_apply(
            conn, body, "customerpayment", customer=customer, currency=currency, own_id=own_id
        )
        credits = self._validate_apply(
            conn,
            body,
            "customerpayment",
            customer=customer,
            currency=currency,
            own_id=own_id,
            sublist="credit",
            targets=("creditmemo",),
        )
        # A payment of 0 is how credits reach invoices; without credits it moves nothing.
        if payment < 0 or (payment == 0 and not credits):
            raise NsError(400, "USER_ERROR", "The payment amount must be positive.", "payment")
        credited = sum((a for _, a in credits), Decimal(0))
        to_invoices = sum((a for _, a in applied), Decimal(0))
        if credited > to_invoices:
            raise NsError(
                400,
                "USER_ERROR",
                f"The credits applied ({credited}) exceed the amount applied to invoices "
                f"({to_invoices}).",
                "credit",
            )
        spent = to_invoices + self._refunded(conn, own_id)
        if spent > payment + credited:
            raise NsError(
                400,
                "USER_ERROR",
                f"The total applied and refunded exceeds the payment amount {payment} plus "
                f"the credits applied {credited}.",
                "payment",
            )
        return payment, applied, credits

    def _deposit_account(
        self, body: dict[str, Any], *, required: bool, kinds: tuple[str, ...], what: str
    ) -> None:
        """The ``account`` money moves through: an active account of one of ``kinds`` that the
        document's subsidiary may use (an account id that does not exist is refused)."""
        account_id = self._ref_id(body, "account", "account", required=required)
        if account_id is None:
            return
        account = self._master("account", account_id)
        if (
            account is None
            or account.get("isInactive")
            or account.get("acctType") not in kinds
            or str(body["subsidiary"]["id"]) not in _account_subsidiaries(account)
        ):
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {account_id} for the following field: account ({what} "
                "of the transaction's subsidiary).",
                "account",
            )

    def _validate_refund(
        self, conn: sqlite3.Connection, body: dict[str, Any], own_id: int | None
    ) -> tuple[Decimal, list[tuple[int, Decimal]]]:
        """A customer refund: its total is the credit it pays out, at least one line, paid from
        a bank account of the customer's subsidiary."""
        self._check_fields(body, _REFUND_FIELDS, "custbody")
        customer = self._customer_ref(body, "customer")
        self._subsidiary_ref(body, customer, required=False)
        currency = self._currency_ref(body, default=customer["currency"])
        self._check_date(body, "tranDate", required=True)
        self._deposit_account(body, required=True, kinds=("Bank",), what="a bank account")
        applied = self._validate_apply(
            conn, body, "customerrefund", customer=customer, currency=currency, own_id=own_id
        )
        if not applied:
            raise NsError(
                400,
                "USER_ERROR",
                "You must apply the refund to at least one credit memo or payment.",
                "apply",
            )
        return sum((a for _, a in applied), Decimal(0)), applied

    @staticmethod
    def _refunded(conn: sqlite3.Connection, credit_id: int | None) -> Decimal:
        """What customer refunds paid out of a credit memo or payment."""
        if credit_id is None:
            return Decimal(0)
        rows = conn.execute(
            "SELECT amount FROM ns_application WHERE invoice = ? AND paymenttype = 'CustRfnd'",
            (credit_id,),
        ).fetchall()
        return sum((Decimal(r[0]) for r in rows), Decimal(0))

    def _validate_apply(
        self,
        conn: sqlite3.Connection,
        body: dict[str, Any],
        rtype: str,
        *,
        customer: sqlite3.Row,
        currency: dict[str, Any],
        own_id: int | None,
        sublist: str = "apply",
        targets: tuple[str, ...] | None = None,
    ) -> list[tuple[int, Decimal]]:
        """An ``apply`` (or ``credit``) sublist as (document id, amount); each within the
        document's remainder.

        Invoices for a payment or credit memo, credits (credit memos, payments) for a refund,
        credit memos for a payment's ``credit`` sublist. The remainder leaves out what this
        document applied before, so resending it is idempotent.
        """
        lines = body.get(sublist)
        if lines is None:
            return []
        items = lines.get("items") if isinstance(lines, dict) else None
        if not isinstance(items, list):
            raise NsError(
                400, "INVALID_CONTENT", f"{sublist} must be a sublist with items.", sublist
            )
        out: list[tuple[int, Decimal]] = []
        seen: set[int] = set()
        for n, line in enumerate(items):
            path = f"{sublist}.items[{n}]"
            if not isinstance(line, dict):
                raise NsError(400, "INVALID_CONTENT", "A line must be an object.", path)
            for key in line:
                if key not in _APPLY_FIELDS:
                    raise NsError(
                        400, "INVALID_CONTENT", f"Invalid field name {key}.", f"{path}.{key}"
                    )
            flag = line.get("apply", True)
            if not isinstance(flag, bool):
                raise NsError(400, "INVALID_CONTENT", "apply must be true or false.", path)
            if not flag:
                continue
            doc = self._ref_id(line, "doc", f"{path}.doc", required=True)
            kinds = targets or _APPLY_TARGETS[rtype]
            found = [(t, r) for t in kinds if (r := self._find(t, str(doc))) is not None]
            if not found:
                wanted = " or ".join(_TARGET_NAMES[t].lower() for t in kinds)
                raise NsError(
                    400,
                    "USER_ERROR",
                    f"Invalid Field Value {doc} for the following field: doc (an open {wanted}).",
                    f"{path}.doc",
                )
            target_type, target = found[0]
            name = f"{_TARGET_NAMES[target_type]} {target['tranid']}"
            if target["entity"] != str(customer["id"]):
                raise NsError(
                    400, "USER_ERROR", f"{name} belongs to another customer.", f"{path}.doc"
                )
            if target["currency"] != str(body["currency"]["id"]):
                raise NsError(400, "USER_ERROR", f"{name} is in another currency.", f"{path}.doc")
            target_id = int(target["id"])
            if target_id in seen:
                raise NsError(400, "USER_ERROR", f"{name} is applied twice.", f"{path}.doc")
            seen.add(target_id)
            amount = self._amount(line.get("amount"), f"{path}.amount", "amount", currency)
            assert amount is not None
            if amount <= 0:
                raise NsError(
                    400, "USER_ERROR", "An applied amount must be positive.", f"{path}.amount"
                )
            remaining = self._remaining(conn, target_id, excluding=own_id)
            if amount > remaining:
                raise NsError(
                    400,
                    "USER_ERROR",
                    f"The amount applied ({amount}) exceeds the amount remaining on "
                    f"{name[0].lower()}{name[1:]} ({remaining}).",
                    f"{path}.amount",
                )
            out.append((target_id, amount))
        return out

    @staticmethod
    def _remaining(conn: sqlite3.Connection, doc_id: int, *, excluding: int | None) -> Decimal:
        """What is left of a document: its total less what others applied to it (an invoice's
        payments, a credit's refunds, a credit memo's credit carried by payments) and what it
        applied itself (a credit's invoices), plus the credits a payment carried;
        ``excluding`` leaves out one applying document (the one being written)."""
        row = conn.execute("SELECT foreigntotal FROM ns_transaction WHERE id = ?", (doc_id,))
        total = Decimal(row.fetchone()[0])
        applied = conn.execute(
            "SELECT amount FROM ns_application WHERE (invoice = ? AND payment IS NOT ?) "
            "OR payment = ? UNION ALL SELECT amount FROM ns_credit_application "
            "WHERE credit = ? AND payment IS NOT ?",
            (doc_id, excluding, doc_id, doc_id, excluding),
        ).fetchall()
        carried = conn.execute(
            "SELECT amount FROM ns_credit_application WHERE payment = ?", (doc_id,)
        ).fetchall()
        return (
            total
            - sum((Decimal(a[0]) for a in applied), Decimal(0))
            + sum((Decimal(c[0]) for c in carried), Decimal(0))
        )

    def _write(self, rtype: str, body: dict[str, Any], eid: Any, *, upsert: bool) -> int:
        """Validate and store a record; lookup, validation and write share one transaction."""
        with self.store.tx() as conn:
            existing = self._find(rtype, f"eid:{eid}") if eid is not None else None
            if existing is not None and not upsert:
                raise NsError(
                    400,
                    "DUP_RCRD",
                    f"This record already exists: a {rtype} with external ID {eid}.",
                    "externalId",
                )
            merged: dict[str, Any] = {}
            if existing is not None:
                merged = simplejson.loads(existing["body"], use_decimal=True)
            merged.update(body)
            if eid is not None:
                merged["externalId"] = eid
            now = _now_iso(self.clock)
            if rtype == "customer":
                self._validate_customer(merged)
                return self._write_customer(conn, existing, merged, now)
            own_id = int(existing["id"]) if existing else None
            applied: list[tuple[int, Decimal]] = []
            credits: list[tuple[int, Decimal]] = []
            if rtype == "invoice":
                total = self._validate_invoice(merged)
            elif rtype == "creditmemo":
                total, applied = self._validate_credit_memo(conn, merged, own_id)
            elif rtype == "customerrefund":
                total, applied = self._validate_refund(conn, merged, own_id)
            else:
                total, applied, credits = self._validate_payment(conn, merged, own_id)
            return self._write_transaction(
                conn, rtype, existing, merged, now, total=total, applied=applied, credits=credits
            )

    @staticmethod
    def _next_id(conn: sqlite3.Connection, table: str, floor: int) -> int:
        row = conn.execute(f"SELECT MAX(id) FROM {table}").fetchone()
        return max(int(row[0] or 0), floor) + 1

    def _write_customer(
        self,
        conn: sqlite3.Connection,
        existing: sqlite3.Row | None,
        rec: dict[str, Any],
        now: str,
    ) -> int:
        rid = int(existing["id"]) if existing else self._next_id(conn, "ns_customer", 1000)
        created = existing["datecreated"] if existing else now
        rec.setdefault("entityId", f"CUST{rid}")
        sub = str(rec["subsidiary"]["id"])
        currency = rec.get("currency")
        if currency is None:
            master = self._master("subsidiary", sub) or {}
            currency = master.get("currency")
            rec["currency"] = currency
        parent = rec.get("parent")
        conn.execute(
            "INSERT OR REPLACE INTO ns_customer (id, externalid, entityid, companyname, "
            "subsidiary, currency, parent, lastmodifieddate, datecreated, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rid,
                rec.get("externalId"),
                rec["entityId"],
                rec["companyName"],
                sub,
                str(currency["id"]) if currency else None,
                str(parent["id"]) if parent else None,
                now,
                created,
                simplejson.dumps(rec, use_decimal=True),
            ),
        )
        return rid

    def _write_transaction(
        self,
        conn: sqlite3.Connection,
        rtype: str,
        existing: sqlite3.Row | None,
        rec: dict[str, Any],
        now: str,
        *,
        total: Decimal,
        applied: list[tuple[int, Decimal]],
        credits: list[tuple[int, Decimal]] | None = None,
    ) -> int:
        """Store a transaction and keep every document it applies to (or takes credit from)
        in step."""
        rid = int(existing["id"]) if existing else self._next_id(conn, "ns_transaction", 5000)
        created = existing["datecreated"] if existing else now
        tran_type = _TRAN_TYPES[rtype]
        tran_id = existing["tranid"] if existing else f"{_TRAN_PREFIX[rtype]}-{rid}"
        entity = (
            rec["customer"] if rtype in ("customerpayment", "customerrefund") else rec["entity"]
        )
        touched = {
            int(r[0])
            for r in conn.execute("SELECT invoice FROM ns_application WHERE payment = ?", (rid,))
        }
        conn.execute("DELETE FROM ns_application WHERE payment = ?", (rid,))
        conn.executemany(
            "INSERT INTO ns_application (payment, paymenttype, invoice, amount) "
            "VALUES (?, ?, ?, ?)",
            [(rid, tran_type, invoice, str(amount)) for invoice, amount in applied],
        )
        touched |= {invoice for invoice, _ in applied}
        touched |= {
            int(r[0])
            for r in conn.execute(
                "SELECT credit FROM ns_credit_application WHERE payment = ?", (rid,)
            )
        }
        conn.execute("DELETE FROM ns_credit_application WHERE payment = ?", (rid,))
        conn.executemany(
            "INSERT INTO ns_credit_application (payment, credit, amount) VALUES (?, ?, ?)",
            [(rid, credit, str(amount)) for credit, amount in credits or []],
        )
        touched |= {credit for credit, _ in credits or []}
        unapplied = (
            total
            - sum((a for _, a in applied), Decimal(0))
            + sum((a for _, a in credits or []), Decimal(0))
        )
        conn.execute(
            "INSERT OR REPLACE INTO ns_transaction (id, externalid, type, tranid, entity, "
            "trandate, currency, subsidiary, foreigntotal, status, memo, otherrefnum, "
            "lastmodifieddate, datecreated, body, amountremaining, foreignamountremaining) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rid,
                rec.get("externalId"),
                tran_type,
                tran_id,
                str(entity["id"]),
                rec["tranDate"],
                str(rec["currency"]["id"]),
                str(rec["subsidiary"]["id"]),
                str(total),
                _status_code(tran_type, unapplied),
                rec.get("memo"),
                rec.get("otherRefNum"),
                now,
                created,
                simplejson.dumps(rec, use_decimal=True),
                str(unapplied),
                str(unapplied),
            ),
        )
        for doc_id in sorted(touched | {rid}):
            self._refresh(conn, doc_id, now)
        return rid

    def _refresh(self, conn: sqlite3.Connection, doc_id: int, now: str) -> None:
        """Recompute a document's amount remaining and status from its applications."""
        tran_type = conn.execute("SELECT type FROM ns_transaction WHERE id = ?", (doc_id,))
        code = tran_type.fetchone()[0]
        remaining = self._remaining(conn, doc_id, excluding=None)
        if remaining < 0:
            # Only a document edited below what was already applied or refunded gets here.
            raise NsError(
                400,
                "USER_ERROR",
                f"The total is less than the {remaining.copy_negate()} over-applied to this "
                "transaction by payments, credits and refunds.",
                "item" if code == "CustInvc" else "apply",
            )
        conn.execute(
            "UPDATE ns_transaction SET amountremaining = ?, foreignamountremaining = ?, "
            "status = ?, lastmodifieddate = ? WHERE id = ?",
            (str(remaining), str(remaining), _status_code(code, remaining), now, doc_id),
        )

    # rendering --------------------------------------------------------------------------------
    def _ref(self, base: str, rtype: str, rid: Any) -> dict[str, Any]:
        rid = str(rid)
        ref_name: str | None = None
        if rtype in _MASTER_TYPES:
            master = self._master(rtype, rid) or {}
            ref_name = master.get("name") or master.get("itemId")
        elif rtype == "customer":
            row = self._find("customer", rid)
            if row is not None:
                ref_name = f"{row['entityid']} {row['companyname']}"
        elif rtype == "invoice":
            row = self._find("invoice", rid)
            if row is not None:
                ref_name = f"Invoice #{row['tranid']}"
        out: dict[str, Any] = {
            "links": [{"rel": "self", "href": f"{base}{RECORD_ROOT}/{rtype}/{rid}"}],
            "id": rid,
        }
        if ref_name is not None:
            out["refName"] = ref_name
        return out

    @staticmethod
    def _iso(stamp: str) -> str:
        return stamp.replace(" ", "T") + "Z"

    def _render(self, base: str, rtype: str, row: sqlite3.Row) -> dict[str, Any]:
        rec: dict[str, Any] = simplejson.loads(row["body"], use_decimal=True)
        rid = str(row["id"])
        self_href = f"{base}{RECORD_ROOT}/{rtype}/{rid}"
        out: dict[str, Any] = {"links": [{"rel": "self", "href": self_href}], "id": rid}
        for key, value in rec.items():
            if key in ("subsidiary", "currency", "terms", "department", "class", "location"):
                out[key] = self._ref(base, key, value["id"]) if value else None
            elif key in ("parent", "entity", "customer"):
                out[key] = self._ref(base, "customer", value["id"])
            elif key == "createdFrom":
                out[key] = self._ref(base, "invoice", value["id"])
            elif key == "item":
                lines = []
                for n, line in enumerate(value["items"]):
                    rendered = dict(line)
                    rendered["line"] = n + 1
                    rendered["item"] = self._ref(base, "item", line["item"]["id"])
                    rendered.setdefault("quantity", Decimal(1))
                    lines.append(rendered)
                out["item"] = {
                    "links": [{"rel": "self", "href": f"{self_href}/item"}],
                    "items": lines,
                }
            elif key in ("apply", "credit"):
                continue
            else:
                out[key] = value
        out["dateCreated"] = self._iso(row["datecreated"])
        out["lastModifiedDate"] = self._iso(row["lastmodifieddate"])
        if rtype == "customer":
            out.setdefault("isPerson", False)
            out.setdefault("isInactive", False)
            return out
        total = Decimal(row["foreigntotal"])
        remaining = Decimal(row["amountremaining"])
        out["tranId"] = row["tranid"]
        if row["status"] is not None:
            out["status"] = _STATUS_NAMES[(row["type"], row["status"])]
        out["total"] = total
        if rtype in ("invoice", "creditmemo"):
            lines = rec["item"]["items"]
            tax = sum(
                (Decimal(x["amount"]) for x in lines if str(x["item"]["id"]) == TAX_ITEM_ID),
                Decimal(0),
            )
            out.update(subtotal=total - tax, taxTotal=tax)
        if rtype == "invoice":
            out.update(amountRemaining=remaining, amountPaid=total - remaining)
            return out
        applied = self.store.all(
            "SELECT a.invoice, a.amount, t.type FROM ns_application a JOIN ns_transaction t "
            "ON t.id = a.invoice WHERE a.payment = ? ORDER BY a.id",
            (rid,),
        )
        record_of = {code: name for name, code in _TRAN_TYPES.items()}
        out["apply"] = {
            "links": [{"rel": "self", "href": f"{self_href}/apply"}],
            "items": [
                {
                    "doc": self._ref(base, record_of[a["type"]], a["invoice"]),
                    "apply": True,
                    "amount": Decimal(a["amount"]),
                    "line": n,
                }
                for n, a in enumerate(applied)
            ],
        }
        if rtype == "customerrefund":
            return out
        if rtype == "customerpayment":
            carried = self.store.all(
                "SELECT credit, amount FROM ns_credit_application WHERE payment = ? ORDER BY id",
                (rid,),
            )
            out["credit"] = {
                "links": [{"rel": "self", "href": f"{self_href}/credit"}],
                "items": [
                    {
                        "doc": self._ref(base, "creditmemo", c["credit"]),
                        "apply": True,
                        "amount": Decimal(c["amount"]),
                        "line": n,
                    }
                    for n, c in enumerate(carried)
                ],
            }
            credited = sum((Decimal(c["amount"]) for c in carried), Decimal(0))
            out.update(applied=total + credited - remaining, unapplied=remaining)
            return out
        out.update(applied=total - remaining, unapplied=remaining)
        if rtype == "creditmemo":
            out["amountRemaining"] = remaining
        return out

    def _get_master(self, base: str, rtype: str, ident: str) -> Response:
        rec = self._master(rtype, ident)
        if rec is None:
            raise NsError(404, "NONEXISTENT_ID", "The record instance does not exist.")
        out = {"links": [{"rel": "self", "href": f"{base}{RECORD_ROOT}/{rtype}/{ident}"}]}
        out.update(rec)
        return _json(200, out)

    def records(self, base: str, rtype: str) -> list[dict[str, Any]]:
        """Every record of ``rtype`` as the GET API renders it, by internal id."""
        if rtype in _MASTER_TYPES:
            rows = self.store.all("SELECT body FROM ns_master WHERE type = ? ORDER BY id", (rtype,))
            return [simplejson.loads(r["body"], use_decimal=True) for r in rows]
        if rtype == "customer":
            found = self.store.all("SELECT * FROM ns_customer ORDER BY id")
        elif rtype in _TRAN_TYPES:
            found = self.store.all(
                "SELECT * FROM ns_transaction WHERE type = ? ORDER BY id", (_TRAN_TYPES[rtype],)
            )
        else:
            raise ValueError(f"unknown NetSuite record type {rtype!r}")
        return [self._render(base, rtype, row) for row in found]

    # SuiteQL ----------------------------------------------------------------------------------
    def _suiteql(self, req: Request) -> Response:
        if req.method != "POST":
            raise NsError(405, "USER_ERROR", "SuiteQL takes POST.")
        if "transient" not in (req.header("Prefer") or "").lower():
            raise NsError(400, "INVALID_HEADER", "The header Prefer: transient is required.")
        params = dict(req.params())
        try:
            limit = int(params.get("limit", "1000"))
            offset = int(params.get("offset", "0"))
        except ValueError:
            raise NsError(400, "INVALID_PARAMETER", "limit and offset must be integers.") from None
        if not 1 <= limit <= 1000:
            raise NsError(400, "INVALID_PARAMETER", "Invalid limit: it must be between 1 and 1000.")
        if offset < 0:
            raise NsError(400, "INVALID_PARAMETER", "Invalid offset: it must be 0 or more.")
        body = self._body(req)
        query = body.get("q")
        if not isinstance(query, str) or not query.strip():
            raise NsError(400, "INVALID_PARAMETER", "The body must carry the query in 'q'.")
        try:
            translated = suiteql.translate(query)
        except suiteql.SuiteQLError as e:
            raise NsError(400, "INVALID_PARAMETER", str(e)) from e
        total_row = self.store.one(translated.count_sql, translated.params)
        total = int(total_row[0]) if total_row else 0
        rows = self.store.all(
            translated.sql + " LIMIT ? OFFSET ?", [*translated.params, limit, offset]
        )
        items = []
        for row in rows:
            item: dict[str, Any] = {"links": []}
            for col in translated.columns:
                value = row[col]
                # SuiteQL returns every value as a string and omits nulls.
                if value is not None:
                    item[col] = str(value)
            items.append(item)
        has_more = offset + len(items) < total
        url = f"{req.base_url}{REST_ROOT}/query/v1/suiteql"
        links = []
        if offset > 0:
            links.append(
                {"rel": "previous", "href": f"{url}?limit={limit}&offset={max(0, offset - limit)}"}
            )
        links.append({"rel": "first", "href": f"{url}?limit={limit}&offset=0"})
        if has_more:
            links.append({"rel": "next", "href": f"{url}?limit={limit}&offset={offset + limit}"})
        last = max(0, (total - 1) // limit * limit)
        links.append({"rel": "last", "href": f"{url}?limit={limit}&offset={last}"})
        links.append({"rel": "self", "href": f"{url}?limit={limit}&offset={offset}"})
        return _json(
            200,
            {
                "links": links,
                "count": len(items),
                "hasMore": has_more,
                "items": items,
                "offset": offset,
                "totalResults": total,
            },
            kind="collection",
        )
