"""Avalara AvaTax REST v2 simulator: ``utilities/ping`` and ``transactions/create`` (estimates).

What it does, and where it departs from AvaTax on purpose:

- Auth is ``Authorization: Basic base64(accountId:licenseKey)``. A missing or wrong header
  answers 401 with AvaTax's envelope (``AuthenticationException``, target
  ``HttpRequestHeaders``). ``ping`` answers without credentials, as AvaTax does, with
  ``authenticated: false``; wrong credentials are a 401 there too.
- ``transactions/create`` computes a ``SalesOrder``: an estimate that AvaTax never records,
  so nothing is stored (the request counter of ``Simulator`` still counts it). A ``SalesOrder``
  with ``commit: true`` is **ignored, not refused**, as AvaTax does: the answer is the same
  estimate with status ``Temporary``. Recording types (``SalesInvoice`` and the rest) are
  refused with a 400 on ``type``: this sandbox keeps no documents, so it cannot pretend to.
- Tax rule: per line, ``amount * rate`` rounded half up at the currency's exponent; the
  document's tax is the sum of its lines. The rates are the generator's own tables (US by
  state, EU VAT by country, GB, JP), imported, not copied, because the Stripe invoices were
  taxed with them: a correctly taxed invoice agrees with this engine to the minor unit. A
  jurisdiction outside the tables is a place without nexus: zero tax and a warning in
  ``messages[]``, as AvaTax answers for a state where the company does not collect.
- Exemption: a request with an ``exemptionNo`` or an ``entityUseCode`` (also read as its older
  name ``customerUsageType``, on the document or a line) is exempt: zero tax, the amount in
  ``exemptAmount``/``totalExempt``. Only AvaTax's standard entity use codes (A to R) are known;
  another code is a 400 on the field (a company's custom codes are not modelled).
- Reverse charge: a sale whose ``shipTo`` is in the EU, whose ``shipFrom`` is in another
  country, and whose ``businessIdentificationNo`` looks like a VAT id of the ``shipTo`` country
  (its two-letter prefix, then 8 to 12 letters or digits) is a B2B cross-border supply: the
  origin's zero rate with rate type ``ReverseCharge`` and a message saying so. Without a VAT
  id, with a malformed one, within one country, or with a ``singleLocation`` it is taxed at the
  destination in full. VIES is not consulted: a well-formed number is taken as registered.
- Validation errors are 400s whose ``details[].refersTo`` points at the field
  (``lines[0].amount``, ``addresses.singleLocation.country``) with ``faultCode: "Client"``.
- Amounts are parsed from the JSON as ``Decimal`` and written back as exact JSON numbers.
- Every answer, an error or an injected fault too, carries ``X-Correlation-Id`` (a UUID), as
  AvaTax's do: Avalara's own SDK reads it on every call. ``$include=SummaryOnly`` omits the
  lines, ``LinesOnly`` the lines' details; without ``$include`` everything is sent.
"""

import base64
import binascii
import datetime
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import simplejson

from finsync_pipeline.money import EXPONENTS
from finsync_pipeline.sandbox.generator import _US_STATES, _VAT
from finsync_pipeline.sandbox.http_base import Faults, Request, Response, Simulator, json_response
from finsync_pipeline.sandbox.store import Store

API_VERSION = "26.3.0"
# AvaTax names every answer with a correlation id (a UUID) for its support to trace the call.
CORRELATION_HEADER = "X-Correlation-Id"
ESTIMATE_TYPE = "SalesOrder"
# Document types AvaTax records; this sandbox computes estimates only.
RECORDING_TYPES = {
    "SalesInvoice",
    "ReturnOrder",
    "ReturnInvoice",
    "PurchaseOrder",
    "PurchaseInvoice",
    "InventoryTransferOrder",
    "InventoryTransferInvoice",
    "ReverseChargeOrder",
    "ReverseChargeInvoice",
}
US_STATE_RATES: dict[str, Decimal] = {state: rate for state, _city, _zip, rate in _US_STATES}
COUNTRY_RATES: dict[str, Decimal] = dict(_VAT)
_HELP = "https://developer.avalara.com/avatax/errors/"
# AvaTax's standard entity use codes (A federal government ... E charitable, G resale ... R
# non-resident); each one exempts the sale in this sandbox.
ENTITY_USE_CODES = frozenset("ABCDEFGHIJKLMNPQR")
# EU member states (Greece's VAT ids start with EL).
EU_COUNTRIES = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "CY",
        "CZ",
        "DE",
        "DK",
        "EE",
        "ES",
        "FI",
        "FR",
        "GR",
        "HR",
        "HU",
        "IE",
        "IT",
        "LT",
        "LU",
        "LV",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SE",
        "SI",
        "SK",
    ]
)
_VAT_ID = re.compile(r"^(?P<prefix>[A-Z]{2})[0-9A-Z]{8,12}$")
# ErrorCodeId numbers for the codes this sandbox answers with.
_ERROR_NUMBERS = {"ValueRequiredError": 5, "RangeError": 6, "AuthenticationException": 34}


class AvaTaxError(Exception):
    """An error answered in AvaTax's ``{"error": {...}}`` envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        target: str = "IncorrectData",
        refers_to: str | None = None,
        fault_code: str = "Client",
        description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.refers_to = refers_to
        self.fault_code = fault_code
        self.description = description

    def response(self) -> Response:
        """The error as an HTTP response."""
        detail: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "description": self.description or self.message,
            "faultCode": self.fault_code,
            "helpLink": _HELP + self.code,
            "severity": "Error",
        }
        if self.code in _ERROR_NUMBERS:
            detail["number"] = _ERROR_NUMBERS[self.code]
        if self.refers_to is not None:
            detail["refersTo"] = self.refers_to
        body = {
            "error": {
                "code": self.code,
                "message": self.message,
                "target": self.target,
                "details": [detail],
            }
        }
        return json_response(self.status, body)


def _required(field: str, where: str) -> AvaTaxError:
    return AvaTaxError(
        400,
        "ValueRequiredError",
        f"Field '{field}' is required.",
        refers_to=where,
        description=f"Please provide a value for the field '{where}'.",
    )


def _range(where: str, message: str) -> AvaTaxError:
    return AvaTaxError(400, "RangeError", message, refers_to=where)


def _included(body: dict[str, Any], req: Request) -> dict[str, Any]:
    """The transaction as ``$include`` asked: ``SummaryOnly`` omits the lines (and their
    details), ``LinesOnly`` the lines' details; without it, AvaTax assumes
    ``Summary,Addresses``, which implies the lines and details, all of which this sandbox sends.
    """
    asked = {
        part.strip().casefold()
        for key, value in req.params()
        if key.casefold() == "$include"
        for part in value.split(",")
    }
    if "summaryonly" in asked:
        return {k: v for k, v in body.items() if k != "lines"}
    if "linesonly" in asked:
        lines = [{k: v for k, v in line.items() if k != "details"} for line in body["lines"]]
        return {**body, "lines": lines}
    return body


def jurisdiction_rate(country: str, region: str | None) -> tuple[str, str, str, Decimal] | None:
    """The (jurisCode, jurisName, jurisType, rate) that taxes a sale there, or None (no nexus).

    US sales tax follows the state; VAT and consumption tax follow the country.
    """
    if country == "US":
        if region and region in US_STATE_RATES:
            return region, region, "State", US_STATE_RATES[region]
        return None
    if country in COUNTRY_RATES:
        return country, country, "Country", COUNTRY_RATES[country]
    return None


def line_tax(amount: Decimal, rate: Decimal, currency: str) -> Decimal:
    """``amount * rate`` rounded half up at the currency's exponent (the per-line rule)."""
    quantum = Decimal(1).scaleb(-EXPONENTS[currency])
    return (amount * rate).quantize(quantum, rounding=ROUND_HALF_UP)


def _decimal(value: Any, where: str) -> Decimal:
    # bool is an int in Python but not a number on the wire.
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _range(where, f"Field '{where}' must be a number, got {value!r}.")
    amount = Decimal(value)
    if not amount.is_finite():
        raise _range(where, f"Field '{where}' must be a finite number.")
    return amount


class AvalaraSimulator(Simulator):
    """AvaTax's ping and create-transaction endpoints, computing SalesOrder estimates.

    Args:
        faults: The shared fault-injection rules (system ``"avalara"``).
        store: The sandbox store. Unused for documents (estimates are never recorded); kept so
            every simulator is built the same way.
        account_id: The AvaTax account id of the Basic credential.
        license_key: The license key of the Basic credential.
        clock: Wall clock of ``modifiedDate``.

    Attributes:
        sales_orders_computed: SalesOrder estimates answered with a 201.
    """

    system = "avalara"

    def __init__(
        self,
        faults: Faults,
        store: Store,
        *,
        account_id: str,
        license_key: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(faults)
        self.store = store
        self.account_id = account_id
        self.license_key = license_key
        self.clock = clock
        self.sales_orders_computed = 0
        self._orders_lock = threading.Lock()

    # envelope ---------------------------------------------------------------------------------
    def fault_response(self, status: int) -> Response:
        """AvaTax's envelope for an injected status."""
        if status == 429:
            err = AvaTaxError(
                429,
                "TooManyRequests",
                "Rate limit exceeded: too many requests for this account.",
                target="HttpRequest",
                fault_code="Client",
            )
        elif status >= 500:
            err = AvaTaxError(
                status,
                "ServerError",
                "An unexpected error occurred on the AvaTax server.",
                target="AvaTaxApiServer",
                fault_code="Server",
            )
        else:
            err = AvaTaxError(status, "InjectedError", f"Injected error {status}.")
        return err.response()

    def dispatch(self, req: Request) -> Response:
        """Every answer, an error or an injected fault too, carries AvaTax's correlation id."""
        resp = super().dispatch(req)
        resp.headers.setdefault(CORRELATION_HEADER, str(uuid.uuid4()))
        return resp

    def handle(self, req: Request) -> Response:
        """Serve one ``/api/v2`` request."""
        try:
            return self._route(req)
        except AvaTaxError as e:
            return e.response()

    def _route(self, req: Request) -> Response:
        path = req.path.rstrip("/").lower()
        if path == "/api/v2/utilities/ping" and req.method == "GET":
            return self._ping(req)
        if path == "/api/v2/transactions/create" and req.method == "POST":
            self._authenticate(req)
            return self._create(req)
        raise AvaTaxError(
            404,
            "EntityNotFoundError",
            f"No API at {req.method} {req.path}.",
            target="HttpRequest",
        )

    # auth -------------------------------------------------------------------------------------
    def _credentials(self, req: Request) -> tuple[str, str] | None:
        auth = req.header("Authorization") or ""
        if not auth.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(auth[len("Basic ") :], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")
        user, _, secret = decoded.partition(":")
        return user, secret

    def _authenticate(self, req: Request) -> None:
        creds = self._credentials(req)
        if creds is None:
            raise AvaTaxError(
                401,
                "AuthenticationException",
                "Authentication failed.",
                target="HttpRequestHeaders",
                description="Missing authentication header: use Basic accountId:licenseKey.",
            )
        user, secret = creds
        if not (
            secrets.compare_digest(user.encode(), self.account_id.encode())
            and secrets.compare_digest(secret.encode(), self.license_key.encode())
        ):
            raise AvaTaxError(
                401,
                "AuthenticationException",
                "Authentication failed.",
                target="HttpRequestHeaders",
                description="The account id and license key do not match an active account.",
            )

    def _ping(self, req: Request) -> Response:
        body: dict[str, Any] = {"version": API_VERSION, "authenticated": False}
        if self._credentials(req) is not None:
            self._authenticate(req)
            body.update(
                authenticated=True,
                authenticationType="AccountIdLicenseKey",
                authenticatedAccountId=int(self.account_id)
                if self.account_id.isdigit()
                else self.account_id,
            )
        return json_response(200, body)

    # transactions/create ----------------------------------------------------------------------
    def _create(self, req: Request) -> Response:
        if not req.body.strip():
            raise AvaTaxError(400, "ModelRequiredError", "Your request must include a body.")
        try:
            model = simplejson.loads(req.body, use_decimal=True)
        except ValueError as e:
            raise AvaTaxError(400, "JsonFormatError", f"The body is not valid JSON: {e}") from e
        if not isinstance(model, dict):
            raise AvaTaxError(400, "JsonFormatError", "The body must be a JSON object.")
        doc_type = model.get("type", ESTIMATE_TYPE) or ESTIMATE_TYPE
        if doc_type in RECORDING_TYPES:
            raise _range(
                "type",
                f"This sandbox computes estimates only (type {ESTIMATE_TYPE}); "
                f"{doc_type} would record a document.",
            )
        if doc_type != ESTIMATE_TYPE:
            raise _range("type", f"Unknown document type {doc_type!r}.")
        customer_code = model.get("customerCode")
        if not isinstance(customer_code, str) or not customer_code.strip():
            raise _required("customerCode", "customerCode")
        date = model.get("date")
        if not isinstance(date, str) or not date:
            raise _required("date", "date")
        try:
            datetime.date.fromisoformat(date[:10])
        except ValueError:
            raise _range("date", f"Field 'date' is not a date: {date!r}.") from None
        currency = model.get("currencyCode") or "USD"
        if not isinstance(currency, str) or currency.upper() not in EXPONENTS:
            raise _range("currencyCode", f"Unknown currency code {currency!r}.")
        currency = currency.upper()
        country, region, address, where = self._address(model)
        lines = model.get("lines")
        if not isinstance(lines, list) or not lines:
            raise _required("lines", "lines")
        juris = jurisdiction_rate(country, region)
        messages: list[dict[str, Any]] = []
        exempt = self._exempt(model, "")
        rate_type = "General"
        origin = self._origin(model) if where == "addresses.shipTo" else None
        if not exempt and self._reverse_charged(model, origin, country):
            assert origin is not None
            # The origin's zero rate: the buyer accounts for the VAT in its own country.
            juris = (origin, origin, "Country", Decimal(0))
            rate_type = "ReverseCharge"
            messages.append(
                {
                    "summary": f"Reverse charge: B2B supply from {origin} to {country}",
                    "details": "The buyer's VAT registration number was given in "
                    "businessIdentificationNo; the buyer accounts for the VAT.",
                    "refersTo": "businessIdentificationNo",
                    "severity": "Information",
                    "source": "Avalara.AvaTax.Services.Tax",
                }
            )
        elif juris is None:
            messages.append(
                {
                    "summary": f"No tax is collected in {country}"
                    + (f"-{region}" if region else ""),
                    "details": "The company has no nexus in this jurisdiction.",
                    "refersTo": where,
                    "severity": "Warning",
                    "source": "Avalara.AvaTax.Services.Tax",
                }
            )
        out_lines = [
            self._line(
                i,
                line,
                currency=currency,
                juris=juris,
                country=country,
                region=region,
                date=date[:10],
                exempt=exempt or self._exempt(line, f"lines[{i}]"),
                rate_type=rate_type,
            )
            for i, line in enumerate(lines)
        ]
        summary = self._summary(out_lines, country, region)
        total_amount = sum((ln["lineAmount"] for ln in out_lines), Decimal(0))
        total_tax = sum((ln["tax"] for ln in out_lines), Decimal(0))
        total_taxable = sum((ln["taxableAmount"] for ln in out_lines), Decimal(0))
        total_exempt = sum((ln["exemptAmount"] for ln in out_lines), Decimal(0))
        with self._orders_lock:
            self.sales_orders_computed += 1
        modified = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)
        body = {
            # AvaTax answers id 0 for a SalesOrder: nothing was saved.
            "id": 0,
            "code": model.get("code") or str(uuid.uuid4()),
            "companyId": 0,
            "date": date[:10],
            "taxDate": date[:10],
            "status": "Temporary",
            "type": ESTIMATE_TYPE,
            "currencyCode": currency,
            "customerCode": customer_code,
            "referenceCode": model.get("referenceCode"),
            "exemptNo": model.get("exemptionNo"),
            "entityUseCode": model.get("entityUseCode") or model.get("customerUsageType"),
            "businessIdentificationNo": model.get("businessIdentificationNo"),
            "totalAmount": total_amount,
            "totalExempt": total_exempt,
            "totalDiscount": Decimal(0),
            "totalTax": total_tax,
            "totalTaxable": total_taxable,
            "totalTaxCalculated": total_tax,
            "locked": False,
            "region": region,
            "country": country,
            "version": 1,
            "modifiedDate": modified.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "lines": out_lines,
            "addresses": [dict(address, boundaryLevel="Zip5" if country == "US" else "Country")],
            "summary": summary,
            "messages": messages,
        }
        return json_response(201, _included(body, req))

    @staticmethod
    def _exempt(part: Any, where: str) -> bool:
        """Whether a document (``where`` "") or a line names an exemption AvaTax honours."""
        if not isinstance(part, dict):
            return False
        prefix = f"{where}." if where else ""
        number = part.get("exemptionNo") if not where else None
        code = part.get("entityUseCode") or part.get("customerUsageType")
        if code is not None:
            if not isinstance(code, str) or code.strip().upper() not in ENTITY_USE_CODES:
                field = "entityUseCode" if part.get("entityUseCode") else "customerUsageType"
                raise _range(
                    prefix + field, f"Entity use code {code!r} is not defined for this company."
                )
            return True
        return isinstance(number, str) and bool(number.strip())

    @staticmethod
    def _origin(model: dict[str, Any]) -> str | None:
        origin = (model.get("addresses") or {}).get("shipFrom")
        country = origin.get("country") if isinstance(origin, dict) else None
        return country.strip().upper() if isinstance(country, str) and country.strip() else None

    @staticmethod
    def _reverse_charged(model: dict[str, Any], origin: str | None, destination: str) -> bool:
        """A B2B supply into an EU country from another country, to a VAT-registered buyer."""
        number = model.get("businessIdentificationNo")
        if origin is None or origin == destination or destination not in EU_COUNTRIES:
            return False
        if not isinstance(number, str):
            return False
        match = _VAT_ID.match(number.replace(" ", "").upper())
        expected = "EL" if destination == "GR" else destination
        return match is not None and match["prefix"] == expected

    @staticmethod
    def _address(model: dict[str, Any]) -> tuple[str, str | None, dict[str, Any], str]:
        addresses = model.get("addresses")
        if not isinstance(addresses, dict):
            raise _required("addresses", "addresses")
        for key in ("singleLocation", "shipTo"):
            address = addresses.get(key)
            if isinstance(address, dict):
                break
        else:
            raise _required("shipTo", "addresses.shipTo")
        where = f"addresses.{key}"
        country = address.get("country")
        if not isinstance(country, str) or not country.strip():
            raise _required("country", f"{where}.country")
        country = country.strip().upper()
        if len(country) != 2 or not country.isalpha():
            raise _range(f"{where}.country", f"Country {country!r} is not an ISO 3166 code.")
        region = address.get("region")
        region = region.strip().upper() if isinstance(region, str) and region.strip() else None
        if country == "US" and region is None:
            raise _required("region", f"{where}.region")
        return country, region, address, where

    @staticmethod
    def _line(
        index: int,
        line: Any,
        *,
        currency: str,
        juris: tuple[str, str, str, Decimal] | None,
        country: str,
        region: str | None,
        date: str,
        exempt: bool = False,
        rate_type: str = "General",
    ) -> dict[str, Any]:
        where = f"lines[{index}]"
        if not isinstance(line, dict):
            raise _range(where, f"Line {index} must be an object.")
        if line.get("amount") is None:
            raise _required("amount", f"{where}.amount")
        amount = _decimal(line["amount"], f"{where}.amount")
        quantity = _decimal(line.get("quantity", 1), f"{where}.quantity")
        if quantity < 0:
            raise _range(f"{where}.quantity", "Quantity must not be negative.")
        rate = juris[3] if juris else Decimal(0)
        tax = line_tax(amount, Decimal(0) if exempt else rate, currency)
        exempt_amount = amount if exempt else Decimal(0)
        taxable = Decimal(0) if exempt else amount
        details = []
        if juris is not None:
            code, name, juris_type, _ = juris
            details.append(
                {
                    "jurisCode": code,
                    "jurisName": name,
                    "jurisType": juris_type,
                    "jurisdictionType": juris_type,
                    "country": country,
                    "region": region or country,
                    "taxType": "Sales" if country == "US" else "Output",
                    "taxName": f"{name} STATE TAX" if country == "US" else f"{name} VAT",
                    "rate": rate,
                    "rateType": rate_type,
                    "tax": tax,
                    "taxCalculated": tax,
                    "taxableAmount": taxable,
                    "nonTaxableAmount": Decimal(0),
                    "exemptAmount": exempt_amount,
                    "sourcing": "Origin" if rate_type == "ReverseCharge" else "Destination",
                }
            )
        number = line.get("number")
        return {
            "lineNumber": str(number) if number is not None else str(index + 1),
            "itemCode": line.get("itemCode") or "",
            "description": line.get("description") or "",
            "quantity": quantity,
            "lineAmount": amount,
            "discountAmount": Decimal(0),
            "exemptAmount": exempt_amount,
            "taxableAmount": taxable,
            "tax": tax,
            "taxCalculated": tax,
            "taxCode": line.get("taxCode") or "P0000000",
            "taxIncluded": False,
            "isItemTaxable": juris is not None,
            "taxDate": date,
            "details": details,
        }

    @staticmethod
    def _summary(lines: list[dict[str, Any]], country: str, region: str | None) -> list[Any]:
        groups: dict[tuple[str, str, str, Decimal, str], dict[str, Any]] = {}
        for line in lines:
            for d in line["details"]:
                key = (d["jurisCode"], d["jurisType"], d["taxName"], d["rate"], d["rateType"])
                entry = groups.setdefault(
                    key,
                    {
                        "country": country,
                        "region": region or country,
                        "jurisType": d["jurisType"],
                        "jurisCode": d["jurisCode"],
                        "jurisName": d["jurisName"],
                        "taxType": d["taxType"],
                        "taxName": d["taxName"],
                        "rateType": d["rateType"],
                        "rate": d["rate"],
                        "taxable": Decimal(0),
                        "tax": Decimal(0),
                        "taxCalculated": Decimal(0),
                        "nonTaxable": Decimal(0),
                        "exemption": Decimal(0),
                    },
                )
                entry["exemption"] += d["exemptAmount"]
                entry["taxable"] += d["taxableAmount"]
                entry["tax"] += d["tax"]
                entry["taxCalculated"] += d["taxCalculated"]
        return list(groups.values())
