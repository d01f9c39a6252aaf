"""Stripe API v1 simulator (read side), speaking the ``2026-07-29.dahlia`` wire format.

Records are stored pre-rendered as JSON text, so a list page is assembled by string joins
rather than parsed and re-serialised: listing stays cheap at any scale. Ordering is newest first
by ``(created, seq)``, where ``seq`` is the insertion order, with indexes backing every filter.
"""

import base64
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import simplejson

from finsync_pipeline.sandbox.generator import STRIPE_API_VERSION, Company, invoice_wire_view
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
    "payment_intents": "payment_intent",
    "charges": "charge",
    "events": "event",
}
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
    "payment_intent": {"customer"},
    "charge": {"customer", "payment_intent"},
    "event": {"type", "types[]", "delivery_success"},
}
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
# Stripe's /v1/events keeps 30 days of events.
EVENT_RETENTION_S = 30 * 86400


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


def seed_stripe(conn: sqlite3.Connection, company: Company) -> None:
    """Load the company's Stripe records into the store (inside the caller's transaction)."""
    for obj, records in company.stripe.items():
        ordered = sorted(enumerate(records), key=lambda pair: (pair[1]["created"], pair[0]))
        rows = []
        for seq, (_, rec) in enumerate(ordered):
            ref = None
            view = rec
            if obj == "invoice":
                ref = rec["parent"]["subscription_details"]["subscription"]
                view = invoice_wire_view(rec)
                conn.executemany(
                    "INSERT INTO stripe_line (invoice, idx, id, body) VALUES (?, ?, ?, ?)",
                    [
                        (rec["id"], idx, line["id"], simplejson.dumps(line, use_decimal=True))
                        for idx, line in enumerate(rec["lines"]["data"])
                    ],
                )
            elif obj == "charge":
                ref = rec["payment_intent"]
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


def mask_key(key: str) -> str:
    """Mask an API key as Stripe does in errors: keep the prefix and the last four characters."""
    prefix = ""
    for candidate in ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_"):
        if key.startswith(candidate):
            prefix = candidate
    tail = key[-4:] if len(key) >= len(prefix) + 8 else ""
    return f"{prefix}{'*' * 20}{tail}"


class StripeSimulator(Simulator):
    """Stripe's ``/v1`` read API: auth, version pinning, list pagination, invoice lines, events."""

    system = "stripe"

    def __init__(
        self, faults: Faults, store: Store, api_key: str, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(faults)
        self.store = store
        self.api_key = api_key
        self.clock = clock

    # envelope ---------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {
            "Request-Id": "req_" + secrets.token_hex(7),
            "Stripe-Version": STRIPE_API_VERSION,
        }

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
        if status >= 500:
            resp.headers["Stripe-Should-Retry"] = "true"
        return resp

    def handle(self, req: Request) -> Response:
        """Serve one ``/v1`` request."""
        try:
            resp = self._route(req)
        except StripeError as e:
            resp = e.response()
        resp.headers.update(self._headers())
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
        if version is not None and version != STRIPE_API_VERSION:
            raise StripeError(
                400,
                f"Invalid Stripe API version: {version}. This sandbox speaks only "
                f"{STRIPE_API_VERSION}.",
                param="Stripe-Version",
            )
        parts = [p for p in req.path.split("/") if p]
        if (
            req.method != "GET"
            or len(parts) < 2
            or parts[0] != "v1"
            or parts[1] not in (_COLLECTIONS)
        ):
            raise StripeError(
                404, f"Unrecognized request URL ({req.method}: {req.path}).", param=None
            )
        obj = _COLLECTIONS[parts[1]]
        if len(parts) == 2:
            return self._list(req, obj)
        if len(parts) == 3:
            return self._retrieve(obj, parts[2])
        if len(parts) == 4 and obj == "invoice" and parts[3] == "lines":
            return self._lines(req, parts[2])
        raise StripeError(404, f"Unrecognized request URL ({req.method}: {req.path}).")

    # reads ------------------------------------------------------------------------------------
    def _retrieve(self, obj: str, rid: str) -> Response:
        row = self.store.one(
            "SELECT body FROM stripe_object WHERE object = ? AND id = ?", (obj, rid)
        )
        if row is None:
            raise StripeError(404, f"No such {obj}: '{rid}'", code="resource_missing", param="id")
        return raw_json_response(200, row["body"])

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
        for key, value in req.params():
            params.setdefault(key, []).append(value)
        allowed = _COMMON_PARAMS | _FILTERS[obj]
        for key in params:
            if key not in allowed:
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
        limit, after, before = self._page_args(params)
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
            status = (params.get("status") or [""])[-1]
            if status:
                if status not in _INVOICE_STATUSES:
                    raise StripeError(400, f"Invalid status: {status}", param="status")
                where.append("status = ?")
                args.append(status)
            if params.get("subscription"):
                where.append("ref = ?")
                args.append(params["subscription"][-1])
        if obj == "charge" and params.get("payment_intent"):
            where.append("ref = ?")
            args.append(params["payment_intent"][-1])
        if obj == "event":
            where.append("created >= ?")
            args.append(int(self.clock()) - EVENT_RETENTION_S)
            types = list(params.get("types[]", []))
            if params.get("type"):
                if types:
                    raise StripeError(
                        400,
                        "You may only specify one of these parameters: type, types.",
                        param="types",
                    )
                types = [params["type"][-1]]
            if types:
                clauses = []
                for etype in types:
                    if etype.endswith("*"):
                        clauses.append("type LIKE ?")
                        args.append(etype[:-1].replace("%", "").replace("_", "\\_") + "%")
                        clauses[-1] += " ESCAPE '\\'"
                    else:
                        clauses.append("type = ?")
                        args.append(etype)
                where.append("(" + " OR ".join(clauses) + ")")
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
            where.append(f"(created {cmp} ? OR (created = ? AND seq {cmp} ?))")
            args += [cursor["created"], cursor["created"], cursor["seq"]]
            if before:
                order = "ASC"
        sql = (
            f"SELECT body FROM stripe_object WHERE {' AND '.join(where)} "
            f"ORDER BY created {order}, seq {order} LIMIT ?"
        )
        rows = self.store.all(sql, [*args, limit + 1])
        has_more = len(rows) > limit
        bodies = [r["body"] for r in rows[:limit]]
        if order == "ASC":
            bodies.reverse()
        return self._envelope(f"/v1/{req.path.split('/')[2]}", bodies, has_more)

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

    def _lines(self, req: Request, invoice_id: str) -> Response:
        if (
            self.store.one(
                "SELECT 1 FROM stripe_object WHERE object = 'invoice' AND id = ?", (invoice_id,)
            )
            is None
        ):
            raise StripeError(
                404, f"No such invoice: '{invoice_id}'", code="resource_missing", param="id"
            )
        params: dict[str, list[str]] = {}
        for key, value in req.params():
            params.setdefault(key, []).append(value)
        for key in params:
            if key not in {"limit", "starting_after", "ending_before", "expand[]"}:
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
        limit, after, before = self._page_args(params)
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
        return self._envelope(f"/v1/invoices/{invoice_id}/lines", bodies, len(rows) > limit)
