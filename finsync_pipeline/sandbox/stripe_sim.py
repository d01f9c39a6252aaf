"""Stripe API v1 simulator, speaking the ``2026-07-29.dahlia`` wire format.

Records are stored pre-rendered as JSON text, so a list page is assembled by string joins
rather than parsed and re-serialised: listing stays cheap at any scale. Ordering is newest first
by ``(created, seq)``, where ``seq`` is the insertion order, with indexes backing every filter.

Writes (``POST``, form-encoded with bracket notation) cover what finsync and its tests need:
``/v1/customers/{id}`` (update), ``/v1/refunds`` (create), ``/v1/invoices`` (a draft with no
lines), ``/v1/invoices/{id}`` (update its ``metadata`` and ``custom_fields``, which stay
editable after finalization), ``/v1/invoices/{id}/void`` and ``/v1/invoices/{id}/pay`` (out
of band), and
``DELETE /v1/invoices/{id}``, which Stripe allows on drafts only: a finalized invoice must be
voided instead, and a deleted one answers 404 from then on. Each write emits the events Stripe
would, stamped by the simulator's clock. ``Idempotency-Key`` behaves as Stripe documents it: the
first result of a key is kept for 24 hours and replayed (``Idempotent-Replayed: true``); the
same key with other parameters is a 400 ``idempotency_error``; a key whose first request is
still running is a 409. A request rejected by validation stores nothing, so it can be corrected
and retried with the same key.

``expand[]`` is honoured for what finsync reads and refused otherwise, never ignored. Three
includable fields are absent unless asked for (``expand[]=<field>`` on a retrieve,
``expand[]=data.<field>`` on a list): a customer's ``tax_ids`` (its ``tax_id`` objects), an
invoice's ``payments`` (its ``invoice_payment`` objects, also listed by
``GET /v1/invoice_payments``) and a charge's ``refunds``. Each is then a list, empty when
there is nothing, with its first 10 items inline and ``has_more`` beyond. Event snapshots never
carry them. Any other path (one
Stripe cannot expand, one missing its ``data.`` prefix on a list, or one this sandbox does not
expand) is Stripe's 400 ``This property cannot be expanded (<field>).``, on reads and writes
alike (a write so refused changes nothing).

List parameters are read in both of Stripe's forms, ``types[]=a`` and ``types[0]=a`` (how
stripe-python sends them); ids in the path are percent-decoded. Any well-formed
``Stripe-Version`` is accepted and echoed (payloads keep the ``2026-07-29.dahlia`` shape); a
malformed one is Stripe's 400 ``Invalid Stripe API version: <version>``. Error answers carry
``Stripe-Should-Retry`` as stripe-python expects it (see ``should_retry``).
"""

import base64
import datetime
import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import simplejson

from finsync_pipeline.sandbox.generator import (
    STRIPE_API_VERSION,
    Company,
    credit_note_wire_view,
    draft_invoice,
    invoice_wire_view,
)
from finsync_pipeline.sandbox.http_base import (
    Faults,
    Request,
    Response,
    Simulator,
    json_response,
    raw_json_response,
)
from finsync_pipeline.sandbox.store import Store

# path segment -> stored object name
_COLLECTIONS = {
    "customers": "customer",
    "subscriptions": "subscription",
    "invoices": "invoice",
    "credit_notes": "credit_note",
    "payment_intents": "payment_intent",
    "charges": "charge",
    "refunds": "refund",
    "events": "event",
    "invoice_payments": "invoice_payment",
}
# Objects whose lines are paged under /v1/{collection}/{id}/lines.
_WITH_LINES = {"invoice", "credit_note"}
_COMMON_PARAMS = {
    "limit",
    "starting_after",
    "ending_before",
    "created",
    "created[gte]",
    "created[gt]",
    "created[lt]",
    "created[lte]",
    "expand[]",
}
_FILTERS: dict[str, set[str]] = {
    "customer": {"email"},
    "subscription": {"customer", "status", "price"},
    "invoice": {"customer", "status", "subscription"},
    "credit_note": {"customer", "invoice"},
    "payment_intent": {"customer"},
    "charge": {"customer", "payment_intent"},
    "refund": {"charge", "payment_intent"},
    "event": {"type", "types[]", "delivery_success"},
    "invoice_payment": {
        "invoice",
        "status",
        "payment[type]",
        "payment[payment_intent]",
        "payment[payment_record]",
    },
}
# A list parameter's items: ``expand[]=x`` or, as stripe-python sends them, ``expand[0]=x``.
_LIST_ITEM = re.compile(r"(?P<name>[a-z_]+)\[\d+\]")
# ``YYYY-MM-DD``, and from the first named release (2024-09-30.acacia) ``YYYY-MM-DD.name``.
_API_VERSION = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})(?:\.(?P<name>[a-z]+))?")
_FIRST_NAMED_RELEASE = "2024-09-30"
# Expanded lists inside an object show their first 10 items, as Stripe's do.
_EMBEDDED_LIMIT = 10
# The expansions this sandbox makes, per object (see the module docstring).
_EXPANDABLE: dict[str, frozenset[str]] = {
    "customer": frozenset({"tax_ids"}),
    "invoice": frozenset({"payments"}),
    "charge": frozenset({"refunds"}),
}
# Includable fields kept out of stored records: an invoice's payments (API 2025-03-31) and a
# charge's refunds (no longer auto-expanded since API 2022-11-15). A customer's tax ids are
# stored apart already.
_INCLUDABLE = {"invoice": "payments", "charge": "refunds"}
_SUB_STATUSES = {
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
    "ended",
    "all",
}
_INVOICE_STATUSES = {"draft", "open", "paid", "uncollectible", "void"}
_INVOICE_PAYMENT_STATUSES = {"canceled", "open", "paid"}
# ``types`` of GET /v1/events: "An array of up to 20 strings".
_MAX_EVENT_TYPES = 20
# Stripe's /v1/events keeps 30 days of events.
EVENT_RETENTION_S = 30 * 86400
# Stripe prunes idempotency keys after at least 24 hours.
IDEMPOTENCY_TTL_S = 24 * 3600
_REFUND_REASONS = {"duplicate", "fraudulent", "requested_by_customer"}
# A custom_fields entry in bracket notation: custom_fields[0][name], custom_fields[0][value].
_CUSTOM_FIELD = re.compile(r"custom_fields\[(?P<index>\d+)\]\[(?P<part>name|value)\]")
_IDEMPOTENCY_SCHEMA = """
CREATE TABLE IF NOT EXISTS stripe_idempotency (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, created REAL NOT NULL,
    status INTEGER, body TEXT)
"""


class StripeError(Exception):
    """An error answered in Stripe's envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def response(self) -> Response:
        """The error as an HTTP response."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return json_response(self.status, {"error": error})


def _without_includable(record: dict[str, Any]) -> dict[str, Any]:
    """A record (or an event about one) without its includable field (``_INCLUDABLE``),
    served only when a request expands it."""
    field = _INCLUDABLE.get(str(record.get("object")))
    if field is not None:
        return {k: v for k, v in record.items() if k != field}
    data = record.get("data")
    if record.get("object") == "event" and isinstance(data, dict):
        obj = data.get("object")
        if isinstance(obj, dict) and obj.get("object") in _INCLUDABLE:
            return dict(record, data=dict(data, object=_without_includable(obj)))
    return record


def _invoice_payments_of(company: Company) -> list[dict[str, Any]]:
    """Every invoice payment of the company, each stored as its own object."""
    return [
        dict(pay, invoice=inv["id"])
        for inv in company.stripe.get("invoice", [])
        for pay in (inv.get("payments") or {}).get("data") or []
    ]


def seed_stripe(conn: sqlite3.Connection, company: Company) -> None:
    """Load the company's Stripe records into the store (inside the caller's transaction).

    An invoice's payments are stored as ``invoice_payment`` objects of their own, referring to
    the invoice: ``GET /v1/invoice_payments`` lists them, and an invoice shows them only when
    ``payments`` is expanded.
    """
    collections = {**company.stripe, "invoice_payment": _invoice_payments_of(company)}
    for obj, records in collections.items():
        ordered = sorted(enumerate(records), key=lambda pair: (pair[1]["created"], pair[0]))
        rows = []
        for seq, (_, rec) in enumerate(ordered):
            ref = None
            view = _without_includable(rec)
            if obj == "invoice_payment":
                ref = rec["invoice"]
            elif obj in _WITH_LINES:
                if obj == "invoice":
                    ref = rec["parent"]["subscription_details"]["subscription"]
                    view = _without_includable(invoice_wire_view(rec))
                else:
                    ref = rec["invoice"]
                    view = credit_note_wire_view(rec)
                conn.executemany(
                    "INSERT INTO stripe_line (invoice, idx, id, body) VALUES (?, ?, ?, ?)",
                    [
                        (rec["id"], idx, line["id"], simplejson.dumps(line, use_decimal=True))
                        for idx, line in enumerate(rec["lines"]["data"])
                    ],
                )
            elif obj == "charge":
                ref = rec["payment_intent"]
            elif obj == "refund":
                ref = rec["charge"]
            customer = rec["id"] if obj == "customer" else rec.get("customer")
            rows.append(
                (
                    obj,
                    rec["id"],
                    seq,
                    rec["created"],
                    customer,
                    rec.get("status"),
                    rec.get("type") if obj == "event" else None,
                    ref,
                    simplejson.dumps(view, use_decimal=True),
                )
            )
        conn.executemany(
            "INSERT INTO stripe_object "
            "(object, id, seq, created, customer, status, type, ref, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def bracket_lists(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Form or query pairs with indexed list items (``types[0]=a``) written as ``types[]=a``:
    Stripe reads both forms alike."""
    out = []
    for key, value in pairs:
        match = _LIST_ITEM.fullmatch(key)
        out.append((f"{match['name']}[]" if match else key, value))
    return out


def is_api_version(version: str) -> bool:
    """Whether ``version`` is a well-formed Stripe API version: a calendar date, and from
    2024-09-30 on the date of a named release (``2025-03-31.basil``, ``2026-10-28.endive``)."""
    match = _API_VERSION.fullmatch(version)
    if match is None:
        return False
    try:
        datetime.date.fromisoformat(match["date"])
    except ValueError:
        return False
    return (match["date"] >= _FIRST_NAMED_RELEASE) == (match["name"] is not None)


def should_retry(status: int) -> str | None:
    """Stripe's ``Stripe-Should-Retry`` for an error status, as stripe-python reads it.

    A 500 may come after the request began: its result is stored under the Idempotency-Key,
    so a resend replays it (``false``; the outcome is settled by looking the object up). A 503,
    a 429 (rate limit, lock timeout) and a 409 (the same key still in flight) were not
    processed, and the same request can succeed later (``true``). Otherwise no header.
    """
    if status == 500:
        return "false"
    if status in (409, 429, 503):
        return "true"
    return None


def _status_filter(
    params: dict[str, list[str]], allowed: set[str], where: list[str], args: list[Any]
) -> None:
    """A list's ``status`` filter, refused when it is not one of ``allowed``."""
    status = (params.get("status") or [""])[-1]
    if status:
        if status not in allowed:
            raise StripeError(400, f"Invalid status: {status}", param="status")
        where.append("status = ?")
        args.append(status)


def mask_key(key: str) -> str:
    """Mask an API key as Stripe does in errors: keep the prefix and the last four characters."""
    prefix = ""
    for candidate in ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_"):
        if key.startswith(candidate):
            prefix = candidate
    tail = key[-4:] if len(key) >= len(prefix) + 8 else ""
    return f"{prefix}{'*' * 20}{tail}"


class StripeSimulator(Simulator):
    """Stripe's ``/v1`` API: auth, version pinning, list pagination, lines, events, writes.

    Attributes:
        before_write: Called after an idempotency key is claimed and before the write runs;
            tests use it to hold a request in flight (a concurrent same-key request gets 409).
    """

    system = "stripe"

    def __init__(
        self, faults: Faults, store: Store, api_key: str, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(faults)
        self.store = store
        self.api_key = api_key
        self.clock = clock
        self.before_write: Callable[[], None] | None = None
        with store.tx() as conn:
            conn.execute(_IDEMPOTENCY_SCHEMA)

    # envelope ---------------------------------------------------------------------------------
    @staticmethod
    def _headers(version: str = STRIPE_API_VERSION) -> dict[str, str]:
        return {"Request-Id": "req_" + secrets.token_hex(7), "Stripe-Version": version}

    def fault_response(self, status: int) -> Response:
        """Stripe's envelope for an injected status."""
        if status == 429:
            err = StripeError(
                429,
                "Request rate limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
                code="rate_limit",
            )
        elif status >= 500:
            err = StripeError(
                status,
                "An unknown error occurred while processing your request.",
                type_="api_error",
            )
        else:
            err = StripeError(status, f"Injected error {status}.")
        resp = err.response()
        resp.headers.update(self._headers())
        retry = should_retry(status)
        if retry is not None:
            resp.headers["Stripe-Should-Retry"] = retry
        return resp

    def handle(self, req: Request) -> Response:
        """Serve one ``/v1`` request.

        The answer names the API version it was served under: the one asked for (any
        well-formed version; the payloads keep this sandbox's ``2026-07-29.dahlia`` shape), or
        that one when none was asked.
        """
        asked = req.header("Stripe-Version")
        try:
            resp = self._route(req)
        except StripeError as e:
            resp = e.response()
        served = asked if asked is not None and is_api_version(asked) else STRIPE_API_VERSION
        resp.headers.update(self._headers(served))
        return resp

    def _authenticate(self, req: Request) -> None:
        auth = req.header("Authorization") or ""
        key: str | None = None
        if auth.startswith("Bearer "):
            key = auth[len("Bearer ") :].strip()
        elif auth.startswith("Basic "):
            try:
                key = base64.b64decode(auth[len("Basic ") :]).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                key = ""
        if not key:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth "
                "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            raise StripeError(401, f"Invalid API Key provided: {mask_key(key)}")

    def _route(self, req: Request) -> Response:
        self._authenticate(req)
        version = req.header("Stripe-Version")
        if version is not None and not is_api_version(version):
            # Stripe's own words, without a param.
            raise StripeError(400, f"Invalid Stripe API version: {version}")
        # Ids arrive percent-encoded in the path (``/v1/customers/cus%2F1``).
        parts = [unquote(p) for p in req.path.split("/") if p]
        unknown = StripeError(404, f"Unrecognized request URL ({req.method}: {req.path}).")
        if len(parts) < 2 or parts[0] != "v1" or parts[1] not in _COLLECTIONS:
            raise unknown
        obj = _COLLECTIONS[parts[1]]
        if req.method == "POST":
            write = self._writer(obj, parts[2:])
            if write is None:
                raise unknown
            return self._idempotent(req, self._expanding(obj, write))
        if req.method == "DELETE":
            # Stripe ignores Idempotency-Key on DELETE: it is idempotent by definition (a
            # second DELETE of the same invoice answers 404).
            if obj == "invoice" and len(parts) == 3:
                return self._delete_invoice(req, parts[2])
            raise unknown
        if req.method != "GET":
            raise unknown
        if len(parts) == 2:
            return self._list(req, obj)
        if len(parts) == 3:
            return self._retrieve(req, obj, parts[2])
        if len(parts) == 4 and obj in _WITH_LINES and parts[3] == "lines":
            return self._lines(req, obj, parts[1], parts[2])
        raise unknown

    # reads ------------------------------------------------------------------------------------
    @staticmethod
    def _params(req: Request) -> list[tuple[str, str]]:
        return bracket_lists(req.params())

    def _retrieve(self, req: Request, obj: str, rid: str) -> Response:
        params = self._params(req)
        for key, _value in params:
            # A retrieve takes ``expand`` only.
            if key != "expand[]":
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
        expand = self._expansions(obj, [v for k, v in params if k == "expand[]"])
        row = self.store.one(
            "SELECT body FROM stripe_object WHERE object = ? AND id = ?", (obj, rid)
        )
        if row is None:
            raise StripeError(404, f"No such {obj}: '{rid}'", code="resource_missing", param="id")
        (body,) = self._expanded(obj, [row["body"]], expand)
        return raw_json_response(200, body)

    @staticmethod
    def _expansions(obj: str, paths: list[str], *, listed: bool = False) -> set[str]:
        """The fields of ``obj`` to expand, or Stripe's 400 for a path it cannot expand."""
        fields: set[str] = set()
        for path in paths:
            parts = path.split(".")
            if listed:
                # A list's objects are under ``data``: ``data.tax_ids``, not ``tax_ids``.
                if parts[0] != "data" or len(parts) == 1:
                    raise StripeError(400, f"This property cannot be expanded ({parts[0]}).")
                parts = parts[1:]
            if parts[0] not in _EXPANDABLE.get(obj, frozenset()):
                raise StripeError(400, f"This property cannot be expanded ({parts[0]}).")
            if len(parts) > 1:
                # Nothing inside an expanded tax id or invoice payment is expanded here.
                raise StripeError(400, f"This property cannot be expanded ({parts[1]}).")
            fields.add(parts[0])
        return fields

    def _expanded(self, obj: str, bodies: list[str], fields: set[str]) -> list[str]:
        """The stored bodies with the requested includable fields filled in."""
        if obj == "customer" and "tax_ids" in fields:
            return self._embedded(
                bodies, "tax_ids", "tax_id", "customer", lambda i: f"/v1/customers/{i}/tax_ids"
            )
        if obj == "charge" and "refunds" in fields:
            return self._embedded(
                bodies, "refunds", "refund", "ref", lambda i: f"/v1/charges/{i}/refunds"
            )
        if obj == "invoice" and "payments" in fields:
            return self._embedded(
                bodies,
                "payments",
                "invoice_payment",
                "ref",
                lambda i: f"/v1/invoice_payments?invoice={i}",
            )
        return bodies

    def _embedded(
        self,
        bodies: list[str],
        field: str,
        child: str,
        owner_column: str,
        url_of: Callable[[str], str],
    ) -> list[str]:
        """``bodies`` with ``field`` set to a list of the ``child`` objects each one owns
        (``owner_column`` names the owner), newest first: the first 10 inline and ``has_more``
        when there are more, to be paged at the list's ``url``."""
        records = [simplejson.loads(b, use_decimal=True) for b in bodies]
        owned: dict[str, list[str]] = {str(r["id"]): [] for r in records}
        if owned:
            marks = ",".join("?" * len(owned))
            rows = self.store.all(
                f"SELECT {owner_column} AS owner, body FROM stripe_object WHERE object = ? "
                f"AND {owner_column} IN ({marks}) ORDER BY created DESC, seq DESC",
                [child, *owned],
            )
            for row in rows:
                owned[row["owner"]].append(row["body"])
        for record in records:
            items = owned[str(record["id"])]
            record[field] = {
                "object": "list",
                "data": [simplejson.loads(b, use_decimal=True) for b in items[:_EMBEDDED_LIMIT]],
                "has_more": len(items) > _EMBEDDED_LIMIT,
                "url": url_of(str(record["id"])),
            }
        return [simplejson.dumps(r, use_decimal=True) for r in records]

    @staticmethod
    def _int(params: dict[str, list[str]], name: str) -> int | None:
        values = params.get(name)
        if not values:
            return None
        try:
            return int(values[-1])
        except ValueError:
            raise StripeError(400, f"Invalid integer: {values[-1]}", param=name) from None

    def _page_args(self, params: dict[str, list[str]]) -> tuple[int, str | None, str | None]:
        limit = self._int(params, "limit")
        if limit is None:
            limit = 10
        if not 1 <= limit <= 100:
            raise StripeError(
                400,
                "Invalid limit: must be an integer between 1 and 100.",
                param="limit",
            )
        after = (params.get("starting_after") or [""])[-1]
        before = (params.get("ending_before") or [""])[-1]
        if after and before:
            raise StripeError(
                400,
                "You may only specify one of these parameters: ending_before, starting_after.",
                param="ending_before",
            )
        return limit, after or None, before or None

    def _list(self, req: Request, obj: str) -> Response:
        params: dict[str, list[str]] = {}
        for key, value in self._params(req):
            params.setdefault(key, []).append(value)
        allowed = _COMMON_PARAMS | _FILTERS[obj]
        for key in params:
            if key not in allowed:
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
        limit, after, before = self._page_args(params)
        expand = self._expansions(obj, params.get("expand[]", []), listed=True)
        where = ["object = ?"]
        args: list[Any] = [obj]
        for op, sql in (("gte", ">="), ("gt", ">"), ("lt", "<"), ("lte", "<=")):
            bound = self._int(params, f"created[{op}]")
            if bound is not None:
                where.append(f"created {sql} ?")
                args.append(bound)
        exact = self._int(params, "created")
        if exact is not None:
            where.append("created = ?")
            args.append(exact)
        if params.get("customer"):
            where.append("customer = ?")
            args.append(params["customer"][-1])
        if obj == "subscription":
            status = (params.get("status") or [""])[-1]
            if status and status not in _SUB_STATUSES:
                raise StripeError(400, f"Invalid status: {status}", param="status")
            if not status:
                # Like Stripe: canceled subscriptions are listed only with status=all.
                where.append("status != 'canceled'")
            elif status == "ended":
                where.append("status IN ('canceled', 'incomplete_expired')")
            elif status != "all":
                where.append("status = ?")
                args.append(status)
        if obj == "invoice":
            _status_filter(params, _INVOICE_STATUSES, where, args)
            if params.get("subscription"):
                where.append("ref = ?")
                args.append(params["subscription"][-1])
        if obj == "charge" and params.get("payment_intent"):
            where.append("ref = ?")
            args.append(params["payment_intent"][-1])
        if obj == "credit_note" and params.get("invoice"):
            where.append("ref = ?")
            args.append(params["invoice"][-1])
        if obj == "refund" and params.get("charge"):
            where.append("ref = ?")
            args.append(params["charge"][-1])
        if obj == "refund" and params.get("payment_intent"):
            where.append("json_extract(body, '$.payment_intent') = ?")
            args.append(params["payment_intent"][-1])
        if obj == "invoice_payment":
            self._invoice_payment_filters(params, where, args)
        if obj == "event":
            self._event_filters(params, where, args)
        order = "DESC"
        if after or before:
            cursor_id = after or before
            cursor = self.store.one(
                "SELECT created, seq FROM stripe_object WHERE object = ? AND id = ?",
                (obj, cursor_id),
            )
            if cursor is None:
                raise StripeError(
                    400,
                    f"No such {obj}: '{cursor_id}'",
                    code="resource_missing",
                    param="starting_after" if after else "ending_before",
                )
            cmp = "<" if after else ">"
            # An armed repeat serves the cursor's item again first (at-least-once delivery).
            tie = "<=" if after and self.faults.take_repeat(self.system, req.path) else cmp
            where.append(f"(created {cmp} ? OR (created = ? AND seq {tie} ?))")
            args += [cursor["created"], cursor["created"], cursor["seq"]]
            if before:
                order = "ASC"
        sql = (
            f"SELECT body FROM stripe_object WHERE {' AND '.join(where)} "
            f"ORDER BY created {order}, seq {order} LIMIT ?"
        )
        rows = self.store.all(sql, [*args, limit + 1])
        has_more = len(rows) > limit
        bodies = self._expanded(obj, [r["body"] for r in rows[:limit]], expand)
        if order == "ASC":
            bodies.reverse()
        return self._envelope(f"/v1/{req.path.split('/')[2]}", bodies, has_more)

    def _event_filters(
        self, params: dict[str, list[str]], where: list[str], args: list[Any]
    ) -> None:
        """``GET /v1/events`` filters: the 30 days Stripe keeps, ``type`` (``*`` a wildcard) or
        up to 20 ``types``, and ``delivery_success``. No webhook endpoint is configured here,
        so no event is pending or failed: ``false`` finds none."""
        where.append("created >= ?")
        args.append(int(self.clock()) - EVENT_RETENTION_S)
        types = list(params.get("types[]", []))
        if len(types) > _MAX_EVENT_TYPES:
            raise StripeError(
                400,
                f"Invalid array: types can have at most {_MAX_EVENT_TYPES} items.",
                param="types",
            )
        if params.get("type"):
            if types:
                raise StripeError(
                    400,
                    "You may only specify one of these parameters: type, types.",
                    param="types",
                )
            types = [params["type"][-1]]
        delivered = (params.get("delivery_success") or [""])[-1]
        if delivered not in ("", "true", "false"):
            raise StripeError(400, f"Invalid boolean: {delivered}", param="delivery_success")
        if delivered == "false":
            where.append("0")
        if types:
            clauses = []
            for etype in types:
                if etype.endswith("*"):
                    clauses.append("type LIKE ? ESCAPE '\\'")
                    args.append(etype[:-1].replace("%", "").replace("_", "\\_") + "%")
                else:
                    clauses.append("type = ?")
                    args.append(etype)
            where.append("(" + " OR ".join(clauses) + ")")

    @staticmethod
    def _invoice_payment_filters(
        params: dict[str, list[str]], where: list[str], args: list[Any]
    ) -> None:
        """``GET /v1/invoice_payments`` filters: ``invoice``, ``status``, and the payment by
        ``payment[type]`` with its id (Stripe requires the type with the id)."""
        if params.get("invoice"):
            where.append("ref = ?")
            args.append(params["invoice"][-1])
        _status_filter(params, _INVOICE_PAYMENT_STATUSES, where, args)
        kind = (params.get("payment[type]") or [""])[-1]
        intent = (params.get("payment[payment_intent]") or [""])[-1]
        if intent and kind != "payment_intent":
            raise StripeError(400, "Missing required param: payment[type].", param="payment[type]")
        if kind:
            if kind not in ("payment_intent", "payment_record"):
                raise StripeError(400, f"Invalid payment[type]: {kind}", param="payment[type]")
            where.append("json_extract(body, '$.payment.type') = ?")
            args.append(kind)
        if intent:
            where.append("json_extract(body, '$.payment.payment_intent') = ?")
            args.append(intent)

    @staticmethod
    def _envelope(url: str, bodies: list[str], has_more: bool) -> Response:
        text = (
            '{"object":"list","data":['
            + ",".join(bodies)
            + '],"has_more":'
            + ("true" if has_more else "false")
            + ',"url":'
            + simplejson.dumps(url)
            + "}"
        )
        return raw_json_response(200, text)

    def _lines(self, req: Request, obj: str, collection: str, invoice_id: str) -> Response:
        # Invoice and credit note lines share one table, keyed by the parent's id.
        if (
            self.store.one(
                "SELECT 1 FROM stripe_object WHERE object = ? AND id = ?", (obj, invoice_id)
            )
            is None
        ):
            raise StripeError(
                404, f"No such {obj}: '{invoice_id}'", code="resource_missing", param="id"
            )
        params: dict[str, list[str]] = {}
        for key, value in self._params(req):
            params.setdefault(key, []).append(value)
        for key in params:
            if key not in {"limit", "starting_after", "ending_before", "expand[]"}:
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
        limit, after, before = self._page_args(params)
        # Nothing on a line is expanded here: an expansion is refused rather than ignored.
        self._expansions("line_item", params.get("expand[]", []), listed=True)
        where = "invoice = ?"
        args: list[Any] = [invoice_id]
        order = "ASC"
        if after or before:
            cursor = self.store.one(
                "SELECT idx FROM stripe_line WHERE invoice = ? AND id = ?",
                (invoice_id, after or before),
            )
            if cursor is None:
                raise StripeError(
                    400,
                    f"No such line item: '{after or before}'",
                    code="resource_missing",
                    param="starting_after" if after else "ending_before",
                )
            where += " AND idx > ?" if after else " AND idx < ?"
            args.append(cursor["idx"])
            if before:
                order = "DESC"
        rows = self.store.all(
            f"SELECT body FROM stripe_line WHERE {where} ORDER BY idx {order} LIMIT ?",
            [*args, limit + 1],
        )
        bodies = [r["body"] for r in rows[:limit]]
        if order == "DESC":
            bodies.reverse()
        return self._envelope(f"/v1/{collection}/{invoice_id}/lines", bodies, len(rows) > limit)

    # writes -----------------------------------------------------------------------------------
    def _writer(
        self, obj: str, rest: list[str]
    ) -> Callable[[Request, list[tuple[str, str]]], Response] | None:
        if obj == "customer" and len(rest) == 1:
            return lambda req, form: self._update_customer(req, rest[0], form)
        if obj == "refund" and not rest:
            return self._create_refund
        if obj == "invoice" and not rest:
            return self._create_invoice
        if obj == "invoice" and len(rest) == 1:
            return lambda req, form: self._update_invoice(req, rest[0], form)
        if obj == "invoice" and len(rest) == 2 and rest[1] in ("void", "pay"):
            return lambda req, form: self._settle_invoice(req, rest[0], rest[1], form)
        if obj == "invoice" and len(rest) == 2 and rest[1] == "mark_uncollectible":
            return lambda req, form: self._mark_uncollectible(req, rest[0], form)
        if obj == "credit_note" and len(rest) == 2 and rest[1] == "void":
            return lambda req, form: self._void_credit_note(req, rest[0], form)
        return None

    def _expanding(
        self, obj: str, write: Callable[[Request, list[tuple[str, str]]], Response]
    ) -> Callable[[Request, list[tuple[str, str]]], Response]:
        """``write`` answering the ``obj`` it wrote with the ``expand[]`` asked for filled in;
        an expansion this sandbox cannot make is refused before anything is written."""

        def run(req: Request, form: list[tuple[str, str]]) -> Response:
            fields = self._expansions(obj, [v for k, v in form if k == "expand[]"])
            resp = write(req, form)
            if not fields or resp.status != 200:
                return resp
            (body,) = self._expanded(obj, [resp.body.decode()], fields)
            return raw_json_response(200, body, {**resp.headers})

        return run

    def _idempotent(
        self, req: Request, write: Callable[[Request, list[tuple[str, str]]], Response]
    ) -> Response:
        """Run a write once per Idempotency-Key; replay its stored result afterwards."""
        try:
            form = bracket_lists(
                parse_qsl((req.body or b"").decode(), keep_blank_values=True, strict_parsing=False)
            )
        except UnicodeDecodeError:
            raise StripeError(400, "The request body is not valid form data.") from None
        key = req.header("Idempotency-Key")
        if key is None:
            return write(req, form)
        if not key or len(key) > 255:
            raise StripeError(
                400,
                "Idempotency keys must be 1 to 255 characters long.",
                param="Idempotency-Key",
            )
        fingerprint = hashlib.sha256(
            simplejson.dumps([req.method, req.path, sorted(form)]).encode()
        ).hexdigest()
        now = self.clock()
        with self.store.tx() as conn:
            conn.execute(
                "DELETE FROM stripe_idempotency WHERE created < ?", (now - IDEMPOTENCY_TTL_S,)
            )
            row = conn.execute(
                "SELECT fingerprint, status, body FROM stripe_idempotency WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO stripe_idempotency (key, fingerprint, created) VALUES (?, ?, ?)",
                    (key, fingerprint, now),
                )
        if row is not None:
            if row["fingerprint"] != fingerprint:
                raise StripeError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    "they were first used with. Try using a key other than "
                    f"'{key}' if you meant to execute a different request.",
                    type_="idempotency_error",
                )
            if row["status"] is None:
                busy = StripeError(
                    409,
                    "There is currently another in-progress request using this Stripe "
                    "Idempotency-Key. Please try again later.",
                    code="idempotency_key_in_use",
                    type_="idempotency_error",
                ).response()
                busy.headers["Stripe-Should-Retry"] = "true"
                return busy
            return raw_json_response(
                int(row["status"]),
                str(row["body"]),
                {"Idempotent-Replayed": "true", "Idempotency-Key": key},
            )
        try:
            if self.before_write is not None:
                self.before_write()
            resp = write(req, form)
        except StripeError:
            # Rejected before anything ran: nothing is stored, the key can be used again.
            self._release(key)
            raise
        except Exception:
            # Stripe keeps even a 500 once the request began executing.
            resp = self.fault_response(500)
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE stripe_idempotency SET status = ?, body = ? WHERE key = ?",
                (resp.status, resp.body.decode(), key),
            )
        resp.headers["Idempotency-Key"] = key
        return resp

    def _release(self, key: str) -> None:
        with self.store.tx() as conn:
            conn.execute("DELETE FROM stripe_idempotency WHERE key = ? AND status IS NULL", (key,))

    def _load(self, obj: str, rid: str) -> dict[str, Any]:
        row = self.store.one(
            "SELECT body FROM stripe_object WHERE object = ? AND id = ?", (obj, rid)
        )
        if row is None:
            raise StripeError(404, f"No such {obj}: '{rid}'", code="resource_missing", param="id")
        loaded: dict[str, Any] = simplejson.loads(row["body"], use_decimal=True)
        return loaded

    @staticmethod
    def _save(conn: sqlite3.Connection, record: dict[str, Any]) -> None:
        conn.execute(
            "UPDATE stripe_object SET status = ?, body = ? WHERE object = ? AND id = ?",
            (
                record.get("status"),
                simplejson.dumps(record, use_decimal=True),
                record["object"],
                record["id"],
            ),
        )

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, record: dict[str, Any], *, ref: str | None, type_: str | None
    ) -> None:
        obj = record["object"]
        seq = conn.execute(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM stripe_object WHERE object = ?", (obj,)
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO stripe_object "
            "(object, id, seq, created, customer, status, type, ref, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                obj,
                record["id"],
                seq,
                record["created"],
                record.get("customer"),
                record.get("status"),
                type_,
                ref,
                simplejson.dumps(record, use_decimal=True),
            ),
        )

    def _emit(
        self,
        conn: sqlite3.Connection,
        req: Request,
        etype: str,
        obj: dict[str, Any],
        previous: dict[str, Any] | None = None,
    ) -> None:
        self.announce(
            conn,
            etype,
            obj,
            previous,
            request={
                "id": "req_" + secrets.token_hex(7),
                "idempotency_key": req.header("Idempotency-Key"),
            },
        )

    def announce(
        self,
        conn: sqlite3.Connection,
        etype: str,
        obj: dict[str, Any],
        previous: dict[str, Any] | None = None,
        *,
        request: dict[str, str | None] | None = None,
    ) -> None:
        """Record the event Stripe emits for a change to ``obj``, stamped by the clock. A change
        Stripe's own billing engine made (a cycle invoice finalized, an automatic charge) has
        no request behind it: ``request`` holds nulls, as Stripe sends it."""
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": STRIPE_API_VERSION,
            "created": int(self.clock()),
            "data": data,
            "livemode": False,
            "pending_webhooks": 0,
            "request": request or {"id": None, "idempotency_key": None},
            "type": etype,
        }
        self._insert(conn, event, ref=None, type_=etype)

    @staticmethod
    def _check_form(form: list[tuple[str, str]], allowed: set[str]) -> dict[str, str]:
        flat: dict[str, str] = {}
        for key, value in form:
            if key not in allowed and not (key.startswith("metadata[") and key.endswith("]")):
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
            flat[key] = value
        return flat

    def _update_customer(
        self, req: Request, customer_id: str, form: list[tuple[str, str]]
    ) -> Response:
        fields = {"name", "email", "description", "phone", "metadata"}
        flat = self._check_form(form, fields | {"expand[]"})
        customer = self._load("customer", customer_id)
        previous: dict[str, Any] = {}
        metadata = dict(customer.get("metadata") or {})
        if flat.get("metadata") == "":
            metadata = {}
        for key, value in flat.items():
            if key.startswith("metadata["):
                name = key[len("metadata[") : -1]
                if len(name) > 40 or len(value) > 500:
                    raise StripeError(
                        400, "Metadata keys are at most 40 characters, values 500.", param=key
                    )
                if value == "":
                    metadata.pop(name, None)  # an empty value unsets the key, as in Stripe
                else:
                    metadata[name] = value
            elif key in fields and key != "metadata":
                previous[key] = customer.get(key)
                customer[key] = value or None
        if len(metadata) > 50:
            raise StripeError(400, "Metadata can have at most 50 keys.", param="metadata")
        if metadata != customer.get("metadata"):
            previous["metadata"] = customer.get("metadata")
            customer["metadata"] = metadata
        with self.store.tx() as conn:
            self._save(conn, customer)
            if previous:
                self._emit(conn, req, "customer.updated", customer, previous)
        return json_response(200, customer)

    def _create_refund(self, req: Request, form: list[tuple[str, str]]) -> Response:
        flat = self._check_form(
            form, {"charge", "payment_intent", "amount", "reason", "metadata", "expand[]"}
        )
        charge_id = flat.get("charge")
        pi_id = flat.get("payment_intent")
        if not charge_id and not pi_id:
            raise StripeError(
                400,
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                param="charge",
            )
        if pi_id:
            intent = self._load("payment_intent", pi_id)
            latest = intent.get("latest_charge")
            if charge_id and charge_id != latest:
                raise StripeError(
                    400, f"Charge {charge_id} does not belong to {pi_id}.", param="charge"
                )
            if intent.get("status") != "succeeded" or not latest:
                raise StripeError(
                    400,
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    code="charge_not_refundable",
                    param="payment_intent",
                )
            charge_id = latest
        assert charge_id is not None
        charge = self._load("charge", charge_id)
        remaining = int(charge["amount"]) - int(charge["amount_refunded"])
        if charge.get("status") != "succeeded":
            raise StripeError(
                400,
                f"Charge {charge_id} has not succeeded; it cannot be refunded.",
                code="charge_not_refundable",
                param="charge",
            )
        if remaining <= 0:
            raise StripeError(
                400,
                f"Charge {charge_id} has already been refunded.",
                code="charge_already_refunded",
                param="charge",
            )
        amount = remaining
        if "amount" in flat:
            try:
                amount = int(flat["amount"])
            except ValueError:
                raise StripeError(
                    400, f"Invalid integer: {flat['amount']}", param="amount"
                ) from None
            if amount < 1:
                raise StripeError(400, "Refund amount must be positive.", param="amount")
            if amount > remaining:
                raise StripeError(
                    400,
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                    f"({remaining})",
                    code="amount_too_large",
                    param="amount",
                )
        reason = flat.get("reason") or None
        if reason is not None and reason not in _REFUND_REASONS:
            raise StripeError(400, f"Invalid reason: {reason}", param="reason")
        metadata = {
            k[len("metadata[") : -1]: v for k, v in flat.items() if k.startswith("metadata[") and v
        }
        refund = {
            "id": "re_" + secrets.token_hex(12),
            "object": "refund",
            "amount": amount,
            "balance_transaction": "txn_" + secrets.token_hex(12),
            "charge": charge_id,
            "created": int(self.clock()),
            "currency": charge["currency"],
            "destination_details": {"card": {"type": "refund"}, "type": "card"},
            "failure_reason": None,
            "metadata": metadata,
            "payment_intent": charge.get("payment_intent"),
            "reason": reason,
            "receipt_number": None,
            "status": "succeeded",
        }
        charge["amount_refunded"] = int(charge["amount_refunded"]) + amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        with self.store.tx() as conn:
            self._insert(conn, refund, ref=charge_id, type_=None)
            self._save(conn, charge)
            self._emit(conn, req, "refund.created", refund)
            self._emit(conn, req, "charge.refunded", charge)
        return json_response(200, refund)

    def _update_invoice(
        self, req: Request, invoice_id: str, form: list[tuple[str, str]]
    ) -> Response:
        """``POST /v1/invoices/{id}`` for what stays editable once an invoice is finalized and
        finsync reads: ``metadata`` (merged; an empty value unsets a key) and
        ``custom_fields`` (the list given replaces the invoice's, at most 4, names up to 40
        characters and values up to 140; an empty string removes them all). A voided invoice
        keeps its custom fields."""
        flat: dict[str, str] = {}
        fields: dict[int, dict[str, str]] = {}
        clear_fields = False
        for key, value in form:
            match = _CUSTOM_FIELD.fullmatch(key)
            if match is not None:
                fields.setdefault(int(match["index"]), {})[match["part"]] = value
            elif key == "custom_fields" and value == "":
                clear_fields = True
            elif key == "expand[]" or (key.startswith("metadata[") and key.endswith("]")):
                flat[key] = value
            else:
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
        invoice = self._load("invoice", invoice_id)
        previous: dict[str, Any] = {}
        metadata = dict(invoice.get("metadata") or {})
        for key, value in flat.items():
            if not key.startswith("metadata["):
                continue
            name = key[len("metadata[") : -1]
            if len(name) > 40 or len(value) > 500:
                raise StripeError(
                    400, "Metadata keys are at most 40 characters, values 500.", param=key
                )
            if value == "":
                metadata.pop(name, None)
            else:
                metadata[name] = value
        if len(metadata) > 50:
            raise StripeError(400, "Metadata can have at most 50 keys.", param="metadata")
        if fields or clear_fields:
            if invoice.get("status") == "void":
                raise StripeError(
                    400,
                    f"Invoice {invoice_id} is void; its custom_fields can no longer be edited.",
                    code="invoice_not_editable",
                    param="custom_fields",
                )
            if sorted(fields) != list(range(len(fields))) or len(fields) > 4:
                raise StripeError(
                    400,
                    "custom_fields must be a list of at most 4 items, indexed from 0.",
                    param="custom_fields",
                )
            listed: list[dict[str, str]] = []
            for index in sorted(fields):
                item = fields[index]
                name, value = item.get("name", ""), item.get("value", "")
                if not name or not value:
                    missing = "name" if not name else "value"
                    raise StripeError(
                        400,
                        f"Missing required param: custom_fields[{index}][{missing}].",
                        param=f"custom_fields[{index}][{missing}]",
                    )
                if len(name) > 40 or len(value) > 140:
                    raise StripeError(
                        400,
                        "A custom field's name may be up to 40 characters, its value 140.",
                        param=f"custom_fields[{index}]",
                    )
                listed.append({"name": name, "value": value})
            custom = listed or None
            if custom != invoice.get("custom_fields"):
                previous["custom_fields"] = invoice.get("custom_fields")
                invoice["custom_fields"] = custom
        if metadata != (invoice.get("metadata") or {}):
            previous["metadata"] = invoice.get("metadata")
            invoice["metadata"] = metadata
        # Stored as the API shows it (the first 10 lines inline), so it is served as loaded.
        with self.store.tx() as conn:
            self._save(conn, invoice)
            if previous:
                self._emit(conn, req, "invoice.updated", invoice, previous)
        return json_response(200, invoice)

    def _settle_invoice(
        self, req: Request, invoice_id: str, action: str, form: list[tuple[str, str]]
    ) -> Response:
        """``void`` an open invoice, or ``pay`` it out of band (no card is charged here)."""
        self._check_form(form, {"expand[]", "paid_out_of_band"})
        invoice = self._load("invoice", invoice_id)
        status = invoice.get("status")
        if status not in ("open", "uncollectible"):
            verb = "voided" if action == "void" else "paid"
            raise StripeError(
                400,
                f"Invoice {invoice_id} is {status} and can no longer be {verb}.",
                code="invoice_not_editable" if action == "void" else "invoice_unexpected_state",
            )
        now = int(self.clock())
        transitions = dict(invoice.get("status_transitions") or {})
        previous = {"status": status, "status_transitions": dict(transitions)}
        if action == "void":
            transitions["voided_at"] = now
            invoice.update(status="void", amount_remaining=0, auto_advance=False)
            etype = "invoice.voided"
        else:
            transitions["paid_at"] = now
            # What was left is paid now, outside Stripe; what was paid before stays paid.
            invoice.update(
                status="paid",
                amount_paid=int(invoice.get("amount_paid") or 0)
                + int(invoice.get("amount_remaining", invoice.get("total")) or 0),
                amount_remaining=0,
                attempted=True,
                auto_advance=False,
                paid_out_of_band=True,
            )
            etype = "invoice.paid"
        invoice["status_transitions"] = transitions
        with self.store.tx() as conn:
            self._save(conn, invoice)
            self._emit(conn, req, etype, invoice, previous)
        return json_response(200, invoice)

    def _mark_uncollectible(
        self, req: Request, invoice_id: str, form: list[tuple[str, str]]
    ) -> Response:
        """``POST /v1/invoices/{id}/mark_uncollectible``: an open invoice becomes uncollectible;
        what it leaves to collect stays on it (it can still be paid)."""
        self._check_form(form, {"expand[]"})
        invoice = self._load("invoice", invoice_id)
        if invoice.get("status") != "open":
            raise StripeError(
                400,
                f"Invoice {invoice_id} is {invoice.get('status')}; only open invoices can be "
                "marked uncollectible.",
                code="invoice_unexpected_state",
            )
        transitions = dict(invoice.get("status_transitions") or {})
        previous = {"status": "open", "status_transitions": dict(transitions)}
        transitions["marked_uncollectible_at"] = int(self.clock())
        invoice.update(status="uncollectible", status_transitions=transitions)
        with self.store.tx() as conn:
            self._save(conn, invoice)
            self._emit(conn, req, "invoice.marked_uncollectible", invoice, previous)
        return json_response(200, invoice)

    def _void_credit_note(
        self, req: Request, note_id: str, form: list[tuple[str, str]]
    ) -> Response:
        """``POST /v1/credit_notes/{id}/void``: an issued note is voided; what it took off an
        open invoice is owed again. A note that refunded money cannot be voided."""
        self._check_form(form, {"expand[]"})
        note = self._load("credit_note", note_id)
        if note.get("status") != "issued":
            raise StripeError(
                400, f"Credit note {note_id} is already void.", code="credit_note_invalid_state"
            )
        if note.get("refunds") or int(note.get("out_of_band_amount") or 0):
            raise StripeError(
                400,
                f"Credit note {note_id} refunded money and cannot be voided.",
                code="credit_note_invalid_state",
            )
        invoice = self._load("invoice", str(note.get("invoice")))
        previous_note = {"status": "issued", "voided_at": None}
        note.update(status="void", voided_at=int(self.clock()))
        restored = int(note.get("pre_payment_amount") or 0)
        with self.store.tx() as conn:
            self._save(conn, note)
            self._emit(conn, req, "credit_note.voided", note, previous_note)
            if restored and invoice.get("status") in ("open", "uncollectible"):
                before = int(invoice.get("amount_remaining") or 0)
                invoice["amount_remaining"] = before + restored
                self._save(conn, invoice)
                self._emit(conn, req, "invoice.updated", invoice, {"amount_remaining": before})
        return json_response(200, credit_note_wire_view(note))

    def _create_invoice(self, req: Request, form: list[tuple[str, str]]) -> Response:
        """A one-off draft for a customer, as ``POST /v1/invoices`` makes it.

        Since 2022-08-01 Stripe leaves pending invoice items out unless asked, so the draft has
        no lines; this sandbox keeps no invoice items, so it accepts no
        ``pending_invoice_items_behavior`` either.
        """
        flat = self._check_form(
            form,
            {
                "customer",
                "auto_advance",
                "collection_method",
                "days_until_due",
                "description",
                "currency",
                "metadata",
                "expand[]",
            },
        )
        customer_id = flat.get("customer")
        if not customer_id:
            raise StripeError(400, "Missing required param: customer.", param="customer")
        row = self.store.one(
            "SELECT body FROM stripe_object WHERE object = 'customer' AND id = ?", (customer_id,)
        )
        if row is None:
            # A missing object named by a parameter is a 400 in Stripe, not a 404.
            raise StripeError(
                400,
                f"No such customer: '{customer_id}'",
                code="resource_missing",
                param="customer",
            )
        customer = simplejson.loads(row["body"], use_decimal=True)
        method = flat.get("collection_method") or "charge_automatically"
        if method not in ("charge_automatically", "send_invoice"):
            raise StripeError(
                400, f"Invalid collection_method: {method}", param="collection_method"
            )
        due_days: int | None = None
        if "days_until_due" in flat:
            try:
                due_days = int(flat["days_until_due"])
            except ValueError:
                raise StripeError(
                    400, f"Invalid integer: {flat['days_until_due']}", param="days_until_due"
                ) from None
        if method == "send_invoice" and due_days is None:
            raise StripeError(
                400,
                "Missing required param: days_until_due (required when collection_method is "
                "send_invoice).",
                param="days_until_due",
            )
        if method == "charge_automatically" and due_days is not None:
            raise StripeError(
                400,
                "days_until_due can only be set when collection_method is send_invoice.",
                param="days_until_due",
            )
        currency = (flat.get("currency") or customer.get("currency") or "").lower()
        if not currency:
            raise StripeError(400, "Missing required param: currency.", param="currency")
        auto_advance = flat.get("auto_advance", "false")
        if auto_advance not in ("true", "false"):
            raise StripeError(400, f"Invalid boolean: {auto_advance}", param="auto_advance")
        now = int(self.clock())
        invoice_id = "in_" + secrets.token_hex(12)
        invoice = _without_includable(
            draft_invoice(
                invoice_id,
                created=now,
                currency=currency,
                customer=customer_id,
                customer_name=customer.get("name"),
                country=(customer.get("address") or {}).get("country"),
            )
        )
        invoice.update(
            auto_advance=auto_advance == "true",
            collection_method=method,
            customer_email=customer.get("email"),
            description=flat.get("description") or None,
            due_date=now + due_days * 86400 if due_days is not None else None,
            metadata={
                k[len("metadata[") : -1]: v
                for k, v in flat.items()
                if k.startswith("metadata[") and v
            },
        )
        with self.store.tx() as conn:
            self._insert(conn, invoice, ref=None, type_=None)
            self._emit(conn, req, "invoice.created", invoice)
        return json_response(200, invoice)

    def _delete_invoice(self, req: Request, invoice_id: str) -> Response:
        """``DELETE /v1/invoices/{id}``: drafts only; the invoice is gone afterwards.

        The ``invoice.deleted`` event carries the invoice as it was. Its earlier events stay in
        the events list (for the 30 days Stripe keeps events) and still name it.
        """
        body = (req.body or b"").decode(errors="replace")
        unknown = [key for key, _value in [*self._params(req), *parse_qsl(body)]]
        if unknown:
            raise StripeError(400, f"Received unknown parameter: {unknown[0]}", param=unknown[0])
        invoice = self._load("invoice", invoice_id)
        status = invoice.get("status")
        if status != "draft":
            raise StripeError(
                400,
                f"You can only delete draft invoices. Invoice {invoice_id} is {status}; a "
                "finalized invoice can be voided instead.",
            )
        with self.store.tx() as conn:
            conn.execute(
                "DELETE FROM stripe_object WHERE object = 'invoice' AND id = ?", (invoice_id,)
            )
            conn.execute("DELETE FROM stripe_line WHERE invoice = ?", (invoice_id,))
            self._emit(conn, req, "invoice.deleted", invoice)
        return json_response(200, {"id": invoice_id, "object": "invoice", "deleted": True})
