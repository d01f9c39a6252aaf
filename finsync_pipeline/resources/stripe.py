"""Stripe connector: lists, retrievals and idempotent writes of the v1 API, one version pinned."""

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
import requests
from pydantic import Field

from finsync_pipeline.errors import PermanentUpstreamError, RecordMissingError
from finsync_pipeline.resources.http import (
    NOT_PROCESSED_STATUSES,
    ConnectorClient,
    ErrorInfo,
    HttpClient,
    HttpOptions,
    Verdict,
    body_field,
    body_object,
    check_base_url,
    default_classify,
    error_json,
    parse_json,
    shape_error,
)

STRIPE_API_VERSION = "2026-07-29.dahlia"
SYSTEM = "stripe"
AUTH_MESSAGE = "the API key was rejected (HTTP 401); set STRIPE_API_KEY to a valid secret key"
MAX_PAGE_SIZE = 100
DOMAINS = ("stripe.com",)
# Objects whose lines Stripe embeds only partly (10) and pages under /v1/{path}/{id}/lines.
_PAGED_LINES = ("invoices", "credit_notes")
# Includable fields Stripe leaves out unless expanded, asked for on every read of the object:
# a customer's tax ids (its VAT id decides a reverse charge in the tax check) and an invoice's
# payments (since API 2025-03-31 the only link from a charge or refund to its invoice).
_INCLUDED: dict[str, tuple[str, ...]] = {"customers": ("tax_ids",), "invoices": ("payments",)}

Params = list[tuple[str, str | int]]


def encode_form(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Form fields in Stripe's bracket notation, in order.

    ``{"metadata": {"crm_id": "001"}, "items": [{"price": "p", "quantity": 3}]}`` becomes
    ``metadata[crm_id]=001&items[0][price]=p&items[0][quantity]=3``. Booleans are ``true`` and
    ``false``; None becomes an empty value, which Stripe reads as "unset".

    Raises:
        TypeError: A float (amounts are integer minor units) or another unsupported value.
    """
    fields: list[tuple[str, str]] = []

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for sub, item in value.items():
                walk(f"{key}[{sub}]", item)
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            for n, item in enumerate(value):
                walk(f"{key}[{n}]", item)
        elif isinstance(value, bool):
            fields.append((key, "true" if value else "false"))
        elif value is None:
            fields.append((key, ""))
        elif isinstance(value, int | str):
            fields.append((key, str(value)))
        else:
            raise TypeError(f"stripe: cannot form-encode {key}={type(value).__name__}")

    for name, value in params.items():
        walk(str(name), value)
    return fields


def parse_stripe_error(response: requests.Response) -> ErrorInfo:
    """Code, message and param of Stripe's ``{"error": {...}}`` envelope."""
    body = error_json(response)
    error = (body.get("error") or {}) if isinstance(body, dict) else {}
    return ErrorInfo(
        code=error.get("code") or error.get("type"),
        detail=error.get("message"),
        field=error.get("param"),
    )


def classify_stripe(response: requests.Response, info: ErrorInfo) -> Verdict | None:
    """Stripe-Should-Retry overrides the status, as the official SDKs do.

    ``false`` on a transient status means a resend would not help: a read gives up (the run's
    own retry decides); a write answered 500 may have run, and Stripe stored that answer
    under its Idempotency-Key, so a resend would only replay it. Its outcome is ambiguous and
    is settled by looking the object up (a later resend with the same key stays safe).
    """
    should_retry = response.headers.get("Stripe-Should-Retry", "").lower()
    status = response.status_code
    verdict = default_classify(status)
    if status == 409:
        # Stripe's SDKs retry 409 (a concurrent request on the same object or idempotency key).
        verdict = Verdict.RETRY
    if should_retry == "true" and verdict is not Verdict.AUTH:
        return Verdict.RETRY
    if should_retry == "false" and verdict is Verdict.RETRY:
        write = response.request is not None and response.request.method == "POST"
        if write and status not in NOT_PROCESSED_STATUSES:
            return Verdict.AMBIGUOUS
        return Verdict.GIVE_UP_RETRYABLE
    return verdict


class StripeClient(ConnectorClient):
    """Reads Stripe objects page by page.

    Args:
        api_key: Secret or restricted key (``sk_...``/``rk_...``).
        api_base: ``https://api.stripe.com`` or a sandbox base URL.
        page_size: ``limit`` of each list call (1 to 100).
        http_options: Timeouts and retry settings.
    """

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str = "https://api.stripe.com",
        page_size: int = MAX_PAGE_SIZE,
        http_options: HttpOptions | None = None,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"stripe page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
        check_base_url(SYSTEM, api_base, variable="STRIPE_API_BASE", domains=DOMAINS)
        self._base = api_base.rstrip("/")
        self._page_size = page_size
        self.http = HttpClient.from_options(
            SYSTEM,
            http_options or HttpOptions.from_env(),
            url_variable="STRIPE_API_BASE",
            base_urls=[self._base],
            secrets=[api_key],
            error_parser=parse_stripe_error,
            classifier=classify_stripe,
            auth_message=AUTH_MESSAGE,
        )
        self.http.session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Stripe-Version": STRIPE_API_VERSION,
                "Accept": "application/json",
            }
        )

    def __repr__(self) -> str:
        return f"StripeClient(api_base={self._base!r}, requests_made={self.requests_made})"

    def list_customers(
        self, *, created_gte: int | None = None, created_lt: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every customer with its tax ids, newest first, optionally within a ``created``
        window."""
        return self._list(
            "/v1/customers", [*_created(created_gte, created_lt), *_expand("customers", "data.")]
        )

    def list_subscriptions(
        self, *, created_gte: int | None = None, created_lt: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every subscription, canceled ones included (``status=all``)."""
        return self._list(
            "/v1/subscriptions", [("status", "all"), *_created(created_gte, created_lt)]
        )

    def list_invoices(
        self, *, created_gte: int | None = None, created_lt: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every invoice with every line in ``lines.data`` and every payment in
        ``payments.data`` (each paged in full, never truncated)."""
        params = [*_created(created_gte, created_lt), *_expand("invoices", "data.")]
        for invoice in self._list("/v1/invoices", params):
            # A listed invoice embeds only its first lines; the rest need their own listing.
            yield self._complete("invoices", invoice)

    def list_payment_intents(
        self, *, created_gte: int | None = None, created_lt: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every payment intent, optionally within a ``created`` window."""
        return self._list("/v1/payment_intents", _created(created_gte, created_lt))

    def list_charges(
        self, *, created_gte: int | None = None, created_lt: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every charge, optionally within a ``created`` window."""
        return self._list("/v1/charges", _created(created_gte, created_lt))

    def list_credit_notes(
        self,
        *,
        created_gte: int | None = None,
        created_lt: int | None = None,
        invoice: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every credit note with every line, optionally of one invoice or a ``created`` window."""
        params = _created(created_gte, created_lt)
        if invoice is not None:
            params.append(("invoice", invoice))
        for note in self._list("/v1/credit_notes", params):
            yield self._complete("credit_notes", note)

    def list_refunds(
        self,
        *,
        created_gte: int | None = None,
        created_lt: int | None = None,
        charge: str | None = None,
        payment_intent: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every refund, optionally of one charge or payment intent or a ``created`` window."""
        params = _created(created_gte, created_lt)
        if charge is not None:
            params.append(("charge", charge))
        if payment_intent is not None:
            params.append(("payment_intent", payment_intent))
        return self._list("/v1/refunds", params)

    def invoice_payments_of_intent(self, payment_intent: str) -> list[dict[str, Any]]:
        """The invoice payments a payment intent made (``GET /v1/invoice_payments``): how a
        charge is traced to its invoice since API 2025-03-31, when charges and intents lost
        their ``invoice`` field."""
        return list(
            self._list(
                "/v1/invoice_payments",
                [("payment[type]", "payment_intent"), ("payment[payment_intent]", payment_intent)],
            )
        )

    def retrieve(self, object_path: str, object_id: str) -> dict[str, Any]:
        """One object by id, e.g. ``retrieve("invoices", "in_...")``.

        An invoice or credit note comes back with every line (pages past the first 10 are
        fetched), so a refetch after an event never keeps the event's truncated snapshot; an
        invoice with every payment and a customer with its tax ids (expanded, as on a
        listing).

        Raises:
            RecordMissingError: No such object (404 ``resource_missing``): it never existed or
                was deleted (Stripe deletes draft invoices for good).
            PermanentUpstreamError: Any other refusal, or an answer that is not the object.
        """
        if not object_path.isidentifier() or "/" in object_id or not object_id:
            raise ValueError(f"stripe: bad object path or id: {object_path!r}, {object_id!r}")
        try:
            response = self.http.request(
                "GET",
                f"{self._base}/v1/{object_path}/{object_id}",
                idempotent=True,
                params=_expand(object_path, ""),
            )
        except PermanentUpstreamError as e:
            if e.status == 404 and e.code == "resource_missing":
                raise RecordMissingError(
                    SYSTEM, e.detail, status=404, code=e.code, field=e.field
                ) from e
            raise
        body = body_object(parse_json(response, SYSTEM), SYSTEM, f"GET /v1/{object_path}")
        if body.get("id") != object_id:
            raise PermanentUpstreamError(
                SYSTEM, f"GET /v1/{object_path}/{object_id} did not answer that object", status=200
            )
        return self._complete(object_path, body)

    def post(
        self, path: str, params: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Send a write (``POST /v1/...``) once, whatever the retries.

        Every POST carries an ``Idempotency-Key``: the caller's (derive it from the source
        document, e.g. ``refund:cn_123``, so a rerun of the pipeline cannot write twice) or a
        random one for this call. Retries after a 429, 409, 5xx or a lost connection resend
        the same key, so Stripe replays the first outcome instead of writing again.

        Args:
            path: ``/v1/refunds``, ``/v1/customers/cus_123``, ...
            params: Nested parameters, form-encoded in bracket notation (``encode_form``).
            idempotency_key: At most 255 characters; deterministic when given.

        Returns:
            The object Stripe answered.

        Raises:
            PermanentUpstreamError: Stripe rejected the request (400 ``idempotency_error``
                when the key was used with other parameters).
        """
        key = idempotency_key or f"finsync-{uuid.uuid4()}"
        if len(key) > 255:
            raise ValueError("stripe: an Idempotency-Key is at most 255 characters")
        response = self.http.request(
            "POST",
            self._base + path,
            # Safe to resend: the same key makes Stripe replay instead of executing again.
            idempotent=True,
            data=encode_form(params),
            headers={"Idempotency-Key": key},
        )
        body = parse_json(response, SYSTEM)
        if not isinstance(body, dict):
            raise PermanentUpstreamError(
                SYSTEM, f"POST {path} did not answer an object", status=200
            )
        return body

    def _complete(self, object_path: str, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with the lists Stripe truncates at 10 paged in full."""
        lines = obj.get("lines")
        if object_path in _PAGED_LINES and isinstance(lines, dict) and lines.get("has_more"):
            lines["data"] = list(self._list(f"/v1/{object_path}/{obj['id']}/lines", []))
            lines["has_more"] = False
        if object_path == "invoices":
            self._with_all_payments(obj)
        return obj

    def _with_all_payments(self, invoice: dict[str, Any]) -> None:
        payments = invoice.get("payments")
        if not isinstance(payments, dict) or not isinstance(payments.get("data"), list):
            raise PermanentUpstreamError(
                SYSTEM,
                f"invoice {invoice.get('id')}: payments missing although expanded",
                status=200,
                field="payments",
            )
        if payments.get("has_more"):
            # An expanded list shows its first 10 items; the invoice payments list of this
            # invoice holds them all.
            payments["data"] = list(
                self._list("/v1/invoice_payments", [("invoice", str(invoice["id"]))])
            )
            payments["has_more"] = False

    def list_events(
        self, *, created_gte: int | None = None, types: list[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Events (Stripe keeps 30 days of them), optionally of the given types only."""
        params: Params = _created(created_gte, None)
        params += [("types[]", t) for t in types or []]
        return self._list("/v1/events", params)

    def events_after(
        self, event_id: str, *, types: list[str], limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """The first ``limit`` events of ``types`` after ``event_id``, oldest first, and whether
        more follow.

        Stripe lists newest first; ``ending_before`` pages toward newer events and answers the
        ones nearest the cursor, so one request reads the next bounded batch in order.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"stripe events limit must be 1..{MAX_PAGE_SIZE}, got {limit}")
        params: Params = [("ending_before", event_id), ("limit", limit)]
        params += [("types[]", t) for t in types]
        response = self.http.request(
            "GET", self._base + "/v1/events", idempotent=True, params=params
        )
        _page, data, more = _list_page(parse_json(response, SYSTEM), "GET /v1/events")
        return list(reversed(data)), more

    def _list(self, path: str, params: Params) -> Iterator[dict[str, Any]]:
        limit = MAX_PAGE_SIZE if path.endswith("/lines") else self._page_size
        guard = self.http.page_guard(f"GET {path}", limit=limit)
        starting_after: str | None = None
        while True:
            page_params: Params = [*params, ("limit", limit)]
            if starting_after is not None:
                page_params.append(("starting_after", starting_after))
            response = self.http.request(
                "GET", self._base + path, idempotent=True, params=page_params
            )
            _page, data, more = _list_page(parse_json(response, SYSTEM), f"GET {path}")
            guard.page(len(data), more=more)
            yield from data
            if not more:
                return
            starting_after = _last_id(path, data)
            guard.follow(starting_after)


def _list_page(body: Any, where: str) -> tuple[dict[str, Any], list[Any], bool]:
    """A list object's body, its ``data`` and its ``has_more``, or a shape error naming the
    field that is wrong."""
    page = body_object(body, SYSTEM, where)
    data = body_field(page, "data", list, SYSTEM, where, required=True)
    more = body_field(page, "has_more", bool, SYSTEM, where, default=False)
    if page.get("object") != "list":
        raise shape_error(SYSTEM, where, "object", "a list object", page.get("object"))
    return page, data, bool(more)


def _last_id(path: str, data: list[Any]) -> str:
    """The id of a page's last object: the cursor of the next page."""
    last = data[-1]
    if not isinstance(last, dict) or not isinstance(last.get("id"), str) or not last["id"]:
        raise PermanentUpstreamError(
            SYSTEM, f"GET {path}: the last object of a page has no id", status=200, field="id"
        )
    return str(last["id"])


def _expand(object_path: str, prefix: str) -> Params:
    # A list's objects sit under ``data``: ``expand[]=data.tax_ids`` there, ``tax_ids`` on one.
    return [("expand[]", prefix + name) for name in _INCLUDED.get(object_path, ())]


def _created(gte: int | None, lt: int | None) -> Params:
    params: Params = []
    if gte is not None:
        params.append(("created[gte]", int(gte)))
    if lt is not None:
        params.append(("created[lt]", int(lt)))
    return params


class StripeResource(dg.ConfigurableResource):
    """Stripe API access for the billing and payments extracts.

    Every request carries ``Stripe-Version: 2026-07-29.dahlia`` so payloads keep one shape
    whatever the account's default version is.

    Attributes:
        api_key: Secret key, bound to ``dg.EnvVar("STRIPE_API_KEY")``.
        api_base: API base URL; ``dg.EnvVar("STRIPE_API_BASE")`` in sandbox mode.
        page_size: Objects per list call (1 to 100).

    Example:
        >>> stripe = StripeResource(api_key=dg.EnvVar("STRIPE_API_KEY"))
        >>> client = stripe.get_client()
        >>> invoices = list(client.list_invoices(created_gte=1767225600))
    """

    api_key: str = Field(repr=False, description="Stripe secret key (STRIPE_API_KEY).")
    api_base: str = Field(
        default="https://api.stripe.com", description="Stripe API base URL (STRIPE_API_BASE)."
    )
    page_size: int = Field(default=MAX_PAGE_SIZE, description="Objects per list call (1-100).")

    def get_client(self, *, http_options: HttpOptions | None = None) -> StripeClient:
        """A client with its own keep-alive session."""
        return StripeClient(
            api_key=self.api_key,
            api_base=self.api_base,
            page_size=self.page_size,
            http_options=http_options,
        )
