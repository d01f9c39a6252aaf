"""NetSuite SuiteTalk REST simulator: TBA (OAuth 1.0a HMAC-SHA256), record API, SuiteQL.

Records: ``customer`` and ``invoice`` can be created (POST), upserted by external id
(``PUT .../eid:{x}``) and read; master data (subsidiary, currency, item) can be read. Bodies are
validated as NetSuite would and rejected with its RFC 7807-style ``o:errorDetails`` envelope.
An upsert that updates an existing record replaces the ``item`` sublist it sends, so resending
the same document is idempotent.
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
from finsync_pipeline.sandbox.generator import TAX_ITEM_ID, Company
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
_MASTER_TYPES = ("subsidiary", "currency", "item")
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
        host = (req.header("Host") or "").lower()
        if host.endswith(":80"):
            host = host[:-3]
        base = "&".join((req.method.upper(), pct(f"http://{host}{req.path}"), pct(normalized)))
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
        if rtype not in ("customer", "invoice"):
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
        table = "ns_customer" if rtype == "customer" else "ns_transaction"
        extra = "" if rtype == "customer" else " AND type = 'CustInvc'"
        if ident.startswith("eid:"):
            return self.store.one(
                f"SELECT * FROM {table} WHERE externalid = ?{extra}", (ident[4:],)
            )
        if not ident.isdigit():
            return None
        return self.store.one(f"SELECT * FROM {table} WHERE id = ?{extra}", (int(ident),))

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

    def _validate_invoice(self, body: dict[str, Any]) -> dict[str, Any]:
        for key in body:
            if key not in _INVOICE_FIELDS and not key.startswith("custbody"):
                raise NsError(400, "INVALID_CONTENT", f"Invalid field name {key}.", key)
        entity = self._ref_id(body, "entity", "entity", required=True)
        customer = self._find("customer", str(entity))
        if customer is None:
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {entity} for the following field: entity.",
                "entity",
            )
        sub = self._ref_id(body, "subsidiary", "subsidiary", required=True)
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
                f"The subsidiary {sub} is not valid for customer {entity}.",
                "subsidiary",
            )
        currency_id = self._ref_id(body, "currency", "currency", required=True)
        currency = self._master("currency", currency_id)
        if currency is None:
            raise NsError(
                400,
                "USER_ERROR",
                f"Invalid Field Value {currency_id} for the following field: currency.",
                "currency",
            )
        for date_field, required in (("tranDate", True), ("dueDate", False)):
            value = body.get(date_field)
            if value is None and not required:
                continue
            try:
                if not isinstance(value, str) or len(value) != 10:
                    raise ValueError(value)
                datetime.date.fromisoformat(value)
            except ValueError:
                raise NsError(
                    400,
                    "INVALID_CONTENT",
                    f"Invalid date value {value!r} for {date_field}: use YYYY-MM-DD.",
                    date_field,
                ) from None
        sublist = body.get("item")
        items = sublist.get("items") if isinstance(sublist, dict) else None
        if not isinstance(items, list) or not items:
            raise NsError(400, "USER_ERROR", "You must enter at least one line item.", "item")
        places = int(currency["currencyPrecision"])
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
            for num_field, required in (("amount", True), ("quantity", False), ("rate", False)):
                value = line.get(num_field)
                if value is None:
                    if required:
                        raise NsError(
                            400,
                            "USER_ERROR",
                            f"Please enter value(s) for: {num_field}.",
                            f"{path}.{num_field}",
                        )
                    continue
                if isinstance(value, bool) or not isinstance(value, int | Decimal):
                    raise NsError(
                        400,
                        "INVALID_CONTENT",
                        f"Invalid number {value!r} for {num_field}.",
                        f"{path}.{num_field}",
                    )
            amount = Decimal(line["amount"])
            exponent = amount.normalize().as_tuple().exponent
            if isinstance(exponent, int) and -exponent > places:
                raise NsError(
                    400,
                    "INVALID_CONTENT",
                    f"Amount {amount} has more decimal places than "
                    f"{currency['symbol']} allows ({places}).",
                    f"{path}.amount",
                )
        return body

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
            self._validate_invoice(merged)
            return self._write_invoice(conn, existing, merged, now)

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

    def _write_invoice(
        self,
        conn: sqlite3.Connection,
        existing: sqlite3.Row | None,
        rec: dict[str, Any],
        now: str,
    ) -> int:
        rid = int(existing["id"]) if existing else self._next_id(conn, "ns_transaction", 5000)
        created = existing["datecreated"] if existing else now
        tran_id = existing["tranid"] if existing else f"INV-{rid}"
        total = sum((Decimal(line["amount"]) for line in rec["item"]["items"]), Decimal(0))
        conn.execute(
            "INSERT OR REPLACE INTO ns_transaction (id, externalid, type, tranid, entity, "
            "trandate, currency, subsidiary, foreigntotal, status, memo, otherrefnum, "
            "lastmodifieddate, datecreated, body) "
            "VALUES (?, ?, 'CustInvc', ?, ?, ?, ?, ?, ?, 'A', ?, ?, ?, ?, ?)",
            (
                rid,
                rec.get("externalId"),
                tran_id,
                str(rec["entity"]["id"]),
                rec["tranDate"],
                str(rec["currency"]["id"]),
                str(rec["subsidiary"]["id"]),
                str(total),
                rec.get("memo"),
                rec.get("otherRefNum"),
                now,
                created,
                simplejson.dumps(rec, use_decimal=True),
            ),
        )
        return rid

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
        out: dict[str, Any] = {
            "links": [{"rel": "self", "href": f"{base}{RECORD_ROOT}/{rtype}/{rid}"}],
            "id": rid,
        }
        for key, value in rec.items():
            if key in ("subsidiary", "currency", "terms", "department", "class", "location"):
                out[key] = self._ref(base, key, value["id"]) if value else None
            elif key in ("parent", "entity"):
                out[key] = self._ref(base, "customer", value["id"])
            elif key == "item":
                lines = []
                for n, line in enumerate(value["items"]):
                    rendered = dict(line)
                    rendered["line"] = n + 1
                    rendered["item"] = self._ref(base, "item", line["item"]["id"])
                    rendered.setdefault("quantity", Decimal(1))
                    lines.append(rendered)
                out["item"] = {
                    "links": [{"rel": "self", "href": f"{base}{RECORD_ROOT}/{rtype}/{rid}/item"}],
                    "items": lines,
                }
            else:
                out[key] = value
        out["dateCreated"] = self._iso(row["datecreated"])
        out["lastModifiedDate"] = self._iso(row["lastmodifieddate"])
        if rtype == "customer":
            out.setdefault("isPerson", False)
            out.setdefault("isInactive", False)
        else:
            lines = rec["item"]["items"]
            total = sum((Decimal(x["amount"]) for x in lines), Decimal(0))
            tax = sum(
                (Decimal(x["amount"]) for x in lines if str(x["item"]["id"]) == TAX_ITEM_ID),
                Decimal(0),
            )
            out.update(
                tranId=row["tranid"],
                status="Open",
                total=total,
                subtotal=total - tax,
                taxTotal=tax,
                amountRemaining=total,
                amountPaid=Decimal(0),
            )
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
        elif rtype == "invoice":
            found = self.store.all(
                "SELECT * FROM ns_transaction WHERE type = 'CustInvc' ORDER BY id"
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
