"""Avalara AvaTax connector: tax estimates (``SalesOrder``) through ``transactions/create``.

finsync only asks AvaTax what the tax *should* be; it never records a document there. A
``SalesOrder`` is an estimate AvaTax does not save, so resending one after a timeout is safe and
the request counts as idempotent.
"""

import decimal
import socket
from typing import Any

import dagster as dg
import requests
import simplejson
from pydantic import Field

from finsync_pipeline.errors import PermanentUpstreamError
from finsync_pipeline.money import MAX_SAFE_INTEGER
from finsync_pipeline.resources.http import (
    ConnectorClient,
    ErrorInfo,
    HttpClient,
    HttpOptions,
    body_object,
    check_base_url,
    error_json,
    parse_json,
)

SYSTEM = "avalara"
API_VERSION = "2"
CONNECTOR_NAME = "finsync-avalara"
AUTH_MESSAGE = (
    "the account id and license key were rejected (HTTP 401); "
    "set AVALARA_ACCOUNT_ID and AVALARA_LICENSE_KEY"
)
SALES_ORDER = "SalesOrder"
CORRELATION_HEADER = "X-Correlation-Id"
# AvaTax answers on rest.avatax.com and sandbox-rest.avatax.com.
DOMAINS = ("avatax.com", "avalara.com")


def parse_avalara_error(response: requests.Response) -> ErrorInfo:
    """Code, message and field of AvaTax's ``{"error": {..., "details": [...]}}`` envelope.

    The field is the first ``details[].refersTo`` (``lines[0].amount``,
    ``addresses.singleLocation.country``); the message prefers the detail's own text, which
    names the field, over the summary, and ends with the answer's ``X-Correlation-Id``.
    """
    body = error_json(response)
    error = (body.get("error") or {}) if isinstance(body, dict) else {}
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    refers = next((str(d["refersTo"]) for d in details if d.get("refersTo")), None)
    message = error.get("message")
    if details and details[0].get("description") and details[0]["description"] != message:
        message = f"{message} {details[0]['description']}" if message else details[0]["description"]
    correlation = response.headers.get(CORRELATION_HEADER)
    if correlation:
        # What Avalara support asks for to trace the call; it is AvaTax's, never a secret.
        message = f"{message or 'refused'} (AvaTax correlation id {correlation[:64]})"
    return ErrorInfo(code=error.get("code"), detail=message, field=refers)


def client_header(app_name: str, app_version: str, machine: str | None = None) -> str:
    """The ``X-Avalara-Client`` value: app; version; connector; API version; machine."""
    return "; ".join(
        [app_name, app_version, CONNECTOR_NAME, API_VERSION, machine or socket.gethostname()]
    )


class AvalaraClient(ConnectorClient):
    """Asks AvaTax for tax estimates.

    Args:
        account_id: The AvaTax account id (the user of the Basic credential).
        license_key: The license key (the password of the Basic credential).
        base_url: ``https://rest.avatax.com``, ``https://sandbox-rest.avatax.com`` or a sandbox
            simulator's URL.
        company_code: The AvaTax company whose nexus and settings apply.
        app_name: First field of ``X-Avalara-Client``.
        app_version: Second field of ``X-Avalara-Client``.
        http_options: Timeouts and retry settings.
    """

    def __init__(
        self,
        *,
        account_id: str,
        license_key: str,
        base_url: str = "https://sandbox-rest.avatax.com",
        company_code: str = "DEFAULT",
        app_name: str = "finsync",
        app_version: str = "0.1.0",
        http_options: HttpOptions | None = None,
    ) -> None:
        check_base_url(SYSTEM, base_url, variable="AVALARA_BASE_URL", domains=DOMAINS)
        self._base = base_url.rstrip("/")
        self.company_code = company_code
        self.http = HttpClient.from_options(
            SYSTEM,
            http_options or HttpOptions.from_env(),
            url_variable="AVALARA_BASE_URL",
            base_urls=[self._base],
            error_parser=parse_avalara_error,
            auth_message=AUTH_MESSAGE,
        )
        self.http.add_basic_pair(account_id, license_key)
        self.http.session.auth = (account_id, license_key)
        self.http.session.headers.update(
            {
                "X-Avalara-Client": client_header(app_name, app_version),
                "Accept": "application/json",
            }
        )

    def __repr__(self) -> str:
        return f"AvalaraClient(base_url={self._base!r}, requests_made={self.requests_made})"

    def ping(self) -> dict[str, Any]:
        """``GET /api/v2/utilities/ping``; raises AuthenticationError unless authenticated.

        Raises:
            AuthenticationError: AvaTax did not accept the credentials.
        """
        response = self.http.request("GET", self._base + "/api/v2/utilities/ping", idempotent=True)
        body = body_object(parse_json(response, SYSTEM), SYSTEM, "GET /api/v2/utilities/ping")
        if body.get("authenticated") is not True:
            # Ping answers 200 without credentials; unauthenticated is still a failed login.
            raise self.http.auth_error(401, "AuthenticationException", None)
        return body

    def create_sales_order(self, model: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v2/transactions/create`` of a ``SalesOrder``: the tax AvaTax computes.

        Amounts travel as exact decimals in major units (serialised without a float) and come
        back as ``Decimal``.

        Args:
            model: A CreateTransactionModel whose ``type`` is ``SalesOrder`` (or absent) and
                which does not commit.

        Returns:
            The TransactionModel, numbers as ``Decimal``.

        Raises:
            ValueError: The model would record a document (another type, or ``commit``).
            PermanentUpstreamError: AvaTax refused the model; ``field`` is its ``refersTo``.
        """
        doc_type = model.get("type", SALES_ORDER)
        if doc_type != SALES_ORDER or model.get("commit"):
            # Only an estimate is safe to resend; a recording document needs createoradjust.
            raise ValueError(
                f"avalara: create_sales_order sends SalesOrder estimates only, got type "
                f"{doc_type!r} commit={model.get('commit')!r}"
            )
        body = simplejson.dumps(
            {"type": SALES_ORDER, "companyCode": self.company_code, **model, "commit": False},
            use_decimal=True,
            separators=(",", ":"),
        )
        response = self.http.request(
            "POST",
            self._base + "/api/v2/transactions/create",
            idempotent=True,
            expected=(200, 201),
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        where = "POST /api/v2/transactions/create"
        result = body_object(parse_json(response, SYSTEM), SYSTEM, where)
        if "totalTax" not in result:
            raise PermanentUpstreamError(
                SYSTEM, "POST /api/v2/transactions/create did not answer a transaction", status=201
            )
        total = result["totalTax"]
        exact = isinstance(total, int | decimal.Decimal) and not isinstance(total, bool)
        if not exact or not decimal.Decimal(total).is_finite() or abs(total) > MAX_SAFE_INTEGER:
            # NaN, Infinity, text or 10**30: no tax amount to compare the billed tax with.
            raise PermanentUpstreamError(
                SYSTEM,
                f"{where} for document {model.get('code')} answered totalTax {total!r}, "
                "not a tax amount",
                status=response.status_code,
                field="totalTax",
            )
        return result


class AvalaraResource(dg.ConfigurableResource):
    """Avalara AvaTax access for the tax check of invoices.

    Attributes:
        account_id: AvaTax account id, bound to ``dg.EnvVar("AVALARA_ACCOUNT_ID")``.
        license_key: License key, bound to ``dg.EnvVar("AVALARA_LICENSE_KEY")``.
        base_url: API base URL (``AVALARA_BASE_URL``); the AvaTax sandbox by default.
        company_code: AvaTax company code (``AVALARA_COMPANY_CODE``).
        app_name: Application named in ``X-Avalara-Client``.
        app_version: Its version in ``X-Avalara-Client``.

    Example:
        >>> avalara = AvalaraResource(
        ...     account_id=dg.EnvVar("AVALARA_ACCOUNT_ID"),
        ...     license_key=dg.EnvVar("AVALARA_LICENSE_KEY"),
        ... )
        >>> with avalara.get_client() as client:
        ...     client.ping()
    """

    account_id: str = Field(description="AvaTax account id (AVALARA_ACCOUNT_ID).")
    license_key: str = Field(repr=False, description="AvaTax license key (AVALARA_LICENSE_KEY).")
    base_url: str = Field(
        default="https://sandbox-rest.avatax.com",
        description="AvaTax API base URL (AVALARA_BASE_URL).",
    )
    company_code: str = Field(
        default="DEFAULT", description="AvaTax company code (AVALARA_COMPANY_CODE)."
    )
    app_name: str = Field(default="finsync", description="Application in X-Avalara-Client.")
    app_version: str = Field(default="0.1.0", description="Its version in X-Avalara-Client.")

    def get_client(self, http_options: HttpOptions | None = None) -> AvalaraClient:
        """A client with its own keep-alive session."""
        return AvalaraClient(
            account_id=self.account_id,
            license_key=self.license_key,
            base_url=self.base_url,
            company_code=self.company_code,
            app_name=self.app_name,
            app_version=self.app_version,
            http_options=http_options,
        )
