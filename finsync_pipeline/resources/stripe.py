"""Stripe connector: list endpoints of the v1 API, pinned to one API version."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import requests
from pydantic import Field

from finsync_pipeline.errors import PermanentUpstreamError
from finsync_pipeline.resources.http import (
    ConnectorClient,
    ErrorInfo,
    HttpClient,
    HttpOptions,
    Verdict,
    default_classify,
    error_json,
    parse_json,
)

STRIPE_API_VERSION = "2026-07-29.dahlia"
SYSTEM = "stripe"
AUTH_MESSAGE = "the API key was rejected (HTTP 401); set STRIPE_API_KEY to a valid secret key"
MAX_PAGE_SIZE = 100

Params = list[tuple[str, str | int]]


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
    """Stripe-Should-Retry overrides the status, as the official SDKs do."""
    should_retry = response.headers.get("Stripe-Should-Retry", "").lower()
    verdict = default_classify(response.status_code)
    if response.status_code == 409:
        # Stripe's SDKs retry 409 (a concurrent request on the same object or idempotency key).
        verdict = Verdict.RETRY
    if should_retry == "true" and verdict is not Verdict.AUTH:
        return Verdict.RETRY
    if should_retry == "false" and verdict is Verdict.RETRY:
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
        self._base = api_base.rstrip("/")
        self._page_size = page_size
        self.http = HttpClient.from_options(
            SYSTEM,
            http_options or HttpOptions(),
            url_variable="STRIPE_API_BASE",
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
        """Every customer, newest first, optionally within a ``created`` window."""
        return self._list("/v1/customers", _created(created_gte, created_lt))

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
        """Every invoice with every line in ``lines.data`` (paged in full, never truncated)."""
        for invoice in self._list("/v1/invoices", _created(created_gte, created_lt)):
            lines = invoice.get("lines")
            if isinstance(lines, dict) and lines.get("has_more"):
                # A listed invoice embeds only its first lines; the rest need their own listing.
                lines["data"] = list(self._list(f"/v1/invoices/{invoice['id']}/lines", []))
                lines["has_more"] = False
            yield invoice

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

    def list_events(
        self, *, created_gte: int | None = None, types: list[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Events (Stripe keeps 30 days of them), optionally of the given types only."""
        params: Params = _created(created_gte, None)
        params += [("types[]", t) for t in types or []]
        return self._list("/v1/events", params)

    def _list(self, path: str, params: Params) -> Iterator[dict[str, Any]]:
        limit = MAX_PAGE_SIZE if path.endswith("/lines") else self._page_size
        starting_after: str | None = None
        while True:
            page_params: Params = [*params, ("limit", limit)]
            if starting_after is not None:
                page_params.append(("starting_after", starting_after))
            response = self.http.request(
                "GET", self._base + path, idempotent=True, params=page_params
            )
            body = parse_json(response, SYSTEM)
            data = body.get("data")
            if body.get("object") != "list" or not isinstance(data, list):
                raise PermanentUpstreamError(
                    SYSTEM, f"GET {path} did not answer a list object", status=200
                )
            yield from data
            if not body.get("has_more"):
                return
            if not data:
                raise PermanentUpstreamError(
                    SYSTEM, f"GET {path} said has_more with an empty page", status=200
                )
            starting_after = data[-1]["id"]


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
