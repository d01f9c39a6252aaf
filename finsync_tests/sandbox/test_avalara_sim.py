"""The AvaTax simulator over HTTP: ping, Basic auth, SalesOrder tax by jurisdiction, errors."""

import base64
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from finsync_pipeline.sandbox.avalara_sim import AvalaraSimulator
from finsync_pipeline.sandbox.generator import tax_for
from finsync_pipeline.sandbox.http_base import FaultRule, Faults, SimServer
from finsync_pipeline.sandbox.store import Store

ACCOUNT_ID = "2000123456"
LICENSE_KEY = "0A1B2C3D4E5F6A7B"


@pytest.fixture(scope="module")
def avatax(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AvalaraSimulator, str]]:
    store = Store(Path(tmp_path_factory.mktemp("avalara")) / "sandbox.sqlite3")
    sim = AvalaraSimulator(Faults(), store, account_id=ACCOUNT_ID, license_key=LICENSE_KEY)
    server = SimServer(("127.0.0.1", 0), sim)
    server.start()
    yield sim, f"http://127.0.0.1:{server.port}"
    server.stop()
    store.close()


def _auth(account: str = ACCOUNT_ID, key: str = LICENSE_KEY) -> dict[str, str]:
    token = base64.b64encode(f"{account}:{key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _order(
    *,
    country: str = "US",
    region: str | None = "CA",
    currency: str = "USD",
    amounts: tuple[str, ...] = ("100.00",),
    **extra: Any,
) -> dict[str, Any]:
    address: dict[str, Any] = {"line1": "1 Main St", "city": "X", "country": country}
    if region is not None:
        address["region"] = region
    return {
        "type": "SalesOrder",
        "code": "in_test",
        "companyCode": "DEFAULT",
        "date": "2026-10-01",
        "customerCode": "001AAA",
        "currencyCode": currency,
        "addresses": {"singleLocation": address},
        "lines": [
            {"number": str(i + 1), "quantity": 1, "amount": a, "taxCode": "SW054000"}
            for i, a in enumerate(amounts)
        ],
        **extra,
    }


def _post(url: str, model: Any, headers: dict[str, str] | None = None) -> requests.Response:
    # Amounts are written as bare JSON numbers, exactly as given (never through a float).
    body = json.dumps(model)
    for text in _numbers(model):
        body = body.replace(f'"{text}"', text)
    return requests.post(
        url + "/api/v2/transactions/create",
        data=body,
        headers={"Content-Type": "application/json", **(headers or _auth())},
        timeout=10,
    )


def _numbers(model: Any) -> list[str]:
    lines = model.get("lines") if isinstance(model, dict) else None
    texts = [line.get("amount") for line in lines or []]
    return [t for t in texts if isinstance(t, str) and t.replace(".", "", 1).isdigit()]


def _decimal_json(response: requests.Response) -> Any:
    return json.loads(response.content, parse_float=Decimal)


def test_ping_reports_the_authenticated_account(avatax: tuple[AvalaraSimulator, str]) -> None:
    _sim, url = avatax
    anonymous = requests.get(url + "/api/v2/utilities/ping", timeout=10)
    assert anonymous.status_code == 200 and anonymous.json()["authenticated"] is False
    ok = requests.get(url + "/api/v2/utilities/ping", headers=_auth(), timeout=10).json()
    assert ok["authenticated"] is True
    assert ok["authenticationType"] == "AccountIdLicenseKey"
    assert str(ok["authenticatedAccountId"]) == ACCOUNT_ID
    assert ok["version"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param(_auth(key="WRONG"), id="wrong-license-key"),
        pytest.param(_auth(account="1"), id="wrong-account"),
        pytest.param({"Authorization": "Basic !!!"}, id="not-base64"),
    ],
)
def test_bad_credentials_answer_the_authentication_envelope(
    avatax: tuple[AvalaraSimulator, str], headers: dict[str, str]
) -> None:
    _sim, url = avatax
    response = _post(url, _order(), headers=headers or {"X-None": "1"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "AuthenticationException"
    assert error["target"] == "HttpRequestHeaders"
    assert error["details"][0]["faultCode"] == "Client"
    assert LICENSE_KEY not in response.text


@pytest.mark.parametrize(
    ("country", "region", "currency", "amount", "rate"),
    [
        pytest.param("US", "CA", "USD", "1000.00", "0.08625", id="us-california"),
        pytest.param("US", "NY", "USD", "1000.00", "0.08875", id="us-new-york"),
        pytest.param("US", "OR", "USD", "1000.00", "0", id="us-oregon-no-sales-tax"),
        pytest.param("DE", None, "EUR", "460.00", "0.19", id="de-vat"),
        pytest.param("FR", None, "EUR", "460.00", "0.20", id="fr-vat"),
        pytest.param("NL", None, "EUR", "460.00", "0.21", id="nl-vat"),
        pytest.param("GB", None, "GBP", "400.00", "0.20", id="gb-vat"),
        pytest.param("JP", None, "JPY", "75000", "0.10", id="jp-consumption-tax"),
    ],
)
def test_sales_order_taxes_at_the_jurisdiction_rate(
    avatax: tuple[AvalaraSimulator, str],
    country: str,
    region: str | None,
    currency: str,
    amount: str,
    rate: str,
) -> None:
    sim, url = avatax
    before = sim.sales_orders_computed
    response = _post(
        url, _order(country=country, region=region, currency=currency, amounts=(amount,))
    )
    assert response.status_code == 201, response.text
    body = _decimal_json(response)
    expected_tax = Decimal(amount) * Decimal(rate)
    assert Decimal(body["totalTax"]) == expected_tax.quantize(Decimal(body["totalTax"]))
    assert Decimal(body["totalAmount"]) == Decimal(amount)
    assert body["type"] == "SalesOrder" and body["status"] == "Temporary" and body["id"] == 0
    (line,) = body["lines"]
    assert line["lineNumber"] == "1"
    assert line["tax"] == body["totalTax"]
    (detail,) = line["details"]
    assert Decimal(detail["rate"]) == Decimal(rate)
    assert detail["jurisName"] == (region or country)
    assert detail["jurisType"] == ("State" if country == "US" else "Country")
    assert sum(Decimal(s["tax"]) for s in body["summary"]) == Decimal(body["totalTax"])
    assert sim.sales_orders_computed == before + 1


@pytest.mark.parametrize(
    ("currency", "country", "region", "amounts", "expected"),
    [
        # 0.24 * 6.25% = 0.015 -> 0.02 per line: three lines tax 0.06, where one rounding of
        # the document (0.72 * 6.25% = 0.045) would give 0.05.
        pytest.param(
            "USD", "US", "MA", ("0.24", "0.24", "0.24"), "0.06", id="usd-per-line-half-up"
        ),
        # JPY has no minor unit: 105 * 10% = 10.5 -> 11 per line, 33 for three lines.
        pytest.param("JPY", "JP", None, ("105", "105", "105"), "33", id="jpy-per-line-half-up"),
        pytest.param("JPY", "JP", None, ("104",), "10", id="jpy-rounds-down-below-half"),
    ],
)
def test_tax_rounds_half_up_per_line_at_the_currency_exponent(
    avatax: tuple[AvalaraSimulator, str],
    currency: str,
    country: str,
    region: str | None,
    amounts: tuple[str, ...],
    expected: str,
) -> None:
    _sim, url = avatax
    response = _post(
        url, _order(country=country, region=region, currency=currency, amounts=amounts)
    )
    assert response.status_code == 201, response.text
    body = _decimal_json(response)
    assert Decimal(body["totalTax"]) == Decimal(expected)
    # The same rule as the generator that taxed the Stripe invoices, in minor units.
    exp = 0 if currency == "JPY" else 2
    minor = sum(
        tax_for(int(Decimal(a).scaleb(exp)), Decimal(body["lines"][0]["details"][0]["rate"]))
        for a in amounts
    )
    assert Decimal(body["totalTax"]).scaleb(exp) == minor


@pytest.mark.parametrize(
    ("mutate", "refers_to", "code"),
    [
        pytest.param(
            lambda m: m["lines"][0].pop("amount"),
            "lines[0].amount",
            "ValueRequiredError",
            id="amount",
        ),
        pytest.param(
            lambda m: m["lines"][0].update(amount="abc"),
            "lines[0].amount",
            "RangeError",
            id="amount-text",
        ),
        pytest.param(
            lambda m: m["addresses"]["singleLocation"].pop("country"),
            "addresses.singleLocation.country",
            "ValueRequiredError",
            id="country",
        ),
        pytest.param(
            lambda m: (
                m["addresses"].update(shipTo=m["addresses"].pop("singleLocation"))
                or m["addresses"]["shipTo"].pop("region")
            ),
            "addresses.shipTo.region",
            "ValueRequiredError",
            id="us-region",
        ),
        pytest.param(
            lambda m: m.pop("customerCode"), "customerCode", "ValueRequiredError", id="customer"
        ),
        pytest.param(lambda m: m.update(lines=[]), "lines", "ValueRequiredError", id="no-lines"),
        pytest.param(
            lambda m: m.update(currencyCode="XYZ"), "currencyCode", "RangeError", id="currency"
        ),
        pytest.param(
            lambda m: m.update(type="SalesInvoice"), "type", "RangeError", id="recording-type"
        ),
    ],
)
def test_validation_errors_point_at_the_field(
    avatax: tuple[AvalaraSimulator, str], mutate: Any, refers_to: str, code: str
) -> None:
    _sim, url = avatax
    model = _order()
    mutate(model)
    response = _post(url, model)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    (detail,) = error["details"]
    assert detail["refersTo"] == refers_to
    assert detail["faultCode"] == "Client"
    assert detail["helpLink"].endswith(code)


def test_commit_on_a_sales_order_is_ignored(avatax: tuple[AvalaraSimulator, str]) -> None:
    _sim, url = avatax
    response = _post(url, _order(commit=True))
    assert response.status_code == 201
    assert response.json()["status"] == "Temporary"


def test_a_place_without_nexus_is_untaxed_with_a_warning(
    avatax: tuple[AvalaraSimulator, str],
) -> None:
    _sim, url = avatax
    body = _decimal_json(_post(url, _order(country="CH", region=None, currency="CHF")))
    assert body["totalTax"] == 0
    assert body["messages"][0]["severity"] == "Warning"


def test_rate_limit_answers_429_with_retry_after(avatax: tuple[AvalaraSimulator, str]) -> None:
    sim, url = avatax
    # Faults.add only knows the systems the Sandbox wires (SYSTEMS); the rule itself is generic.
    sim.faults.rules.append(FaultRule("avalara", 429, 1, 7, "/api/v2/transactions"))
    limited = _post(url, _order())
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.json()["error"]["code"] == "TooManyRequests"
    assert _post(url, _order()).status_code == 201


def _cross_border(*, ship_from: str = "DE", ship_to: str = "FR", **extra: Any) -> dict[str, Any]:
    model = _order(country=ship_to, region=None, currency="EUR", amounts=("100.00",), **extra)
    model["addresses"] = {
        "shipFrom": {"country": ship_from},
        "shipTo": {"city": "Paris", "country": ship_to},
    }
    return model


@pytest.mark.parametrize(
    "exemption",
    [
        pytest.param({"exemptionNo": "EX-2026-0042"}, id="exemption-number"),
        pytest.param({"entityUseCode": "E"}, id="entity-use-code-charitable"),
        pytest.param({"customerUsageType": "G"}, id="legacy-customer-usage-type-resale"),
    ],
)
def test_an_exempt_sale_is_untaxed_and_reports_the_exempt_amount(
    avatax: tuple[AvalaraSimulator, str], exemption: dict[str, str]
) -> None:
    _, url = avatax
    response = _post(url, _order(amounts=("100.00", "20.00"), **exemption))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["totalTax"] == 0
    assert body["totalExempt"] == 120
    assert body["totalTaxable"] == 0
    assert all(line["exemptAmount"] == line["lineAmount"] for line in body["lines"])


def test_an_unknown_entity_use_code_is_refused_on_its_field(
    avatax: tuple[AvalaraSimulator, str],
) -> None:
    _, url = avatax
    response = _post(url, _order(entityUseCode="ZZ"))
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["refersTo"] == "entityUseCode"


def test_an_eu_b2b_sale_across_borders_is_reverse_charged(
    avatax: tuple[AvalaraSimulator, str],
) -> None:
    _, url = avatax
    response = _post(url, _cross_border(businessIdentificationNo="FR40303265045"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["totalTax"] == 0
    (summary,) = body["summary"]
    assert Decimal(str(summary["rate"])) == 0 and summary["rateType"] == "ReverseCharge"
    assert any("reverse charge" in m["summary"].lower() for m in body["messages"])


@pytest.mark.parametrize(
    ("model", "tax"),
    [
        pytest.param(_cross_border(), "20.00", id="no-vat-id-is-b2c"),
        pytest.param(
            _cross_border(businessIdentificationNo="not a vat id"), "20.00", id="malformed-vat-id"
        ),
        pytest.param(
            _cross_border(businessIdentificationNo="DE811907980"),
            "20.00",
            id="vat-id-of-another-country",
        ),
        pytest.param(
            _cross_border(ship_from="FR", businessIdentificationNo="FR40303265045"),
            "20.00",
            id="domestic-b2b",
        ),
        pytest.param(
            {
                **_order(country="FR", region=None, currency="EUR", amounts=("100.00",)),
                "businessIdentificationNo": "FR40303265045",
            },
            "20.00",
            id="single-location-is-domestic",
        ),
    ],
)
def test_anything_short_of_cross_border_b2b_is_taxed_in_full(
    avatax: tuple[AvalaraSimulator, str], model: dict[str, Any], tax: str
) -> None:
    _, url = avatax
    response = _post(url, model)
    assert response.status_code == 201, response.text
    assert Decimal(str(response.json()["totalTax"])) == Decimal(tax)
