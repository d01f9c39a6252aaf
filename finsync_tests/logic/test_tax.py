"""Tax check logic: the SalesOrder built from an invoice, and billed tax against AvaTax's."""

from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from finsync_pipeline.logic.derive import EXCEPTION_COLUMNS, EXCEPTION_KINDS
from finsync_pipeline.logic.tax import (
    CHECK_COLUMNS,
    SAAS_TAX_CODE,
    address_from_account,
    build_sales_order,
    compare_tax,
    jurisdiction_of,
)
from finsync_pipeline.money import MoneyError

ACCOUNT = {
    "Id": "001A",
    "BillingStreet": "1 Main St",
    "BillingCity": "San Francisco",
    "BillingState": "CA",
    "BillingPostalCode": "94105",
    "BillingCountry": "US",
}


def _invoice(**over: Any) -> dict[str, Any]:
    row = {
        "invoice_id": "in_1",
        "partition_date": "2026-10-01",
        "currency": "USD",
        "invoice_date": "2026-10-01",
        "customer_key": "001A",
        "tax_minor": 863,
        "line_count": 2,
        "correlation_id": "fs-abc",
        "legal_entity": "US01",
    }
    row.update(over)
    return row


def _lines(amounts: list[int], currency: str = "USD") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "line_number": list(range(len(amounts), 0, -1)),
            "product_id": ["prod_platform"] * len(amounts),
            "description": ["Platform"] * len(amounts),
            "quantity": [1] * len(amounts),
            "amount_minor": amounts,
            "discount_minor": [0] * len(amounts),
            "inclusive_tax_minor": [0] * len(amounts),
            "currency": currency,
        }
    )


def _result(total_tax: str, country: str = "US", region: str | None = "CA") -> dict[str, Any]:
    return {
        "totalTax": Decimal(total_tax),
        "country": country,
        "region": region,
        "summary": [{"rate": Decimal("0.08625"), "tax": Decimal(total_tax)}],
    }


@pytest.mark.parametrize(
    ("currency", "amounts", "expected"),
    [
        pytest.param("USD", [10000, 5], [Decimal("0.05"), Decimal("100.00")], id="usd-cents"),
        pytest.param("JPY", [75000], [Decimal("75000")], id="jpy-no-minor-unit"),
        pytest.param("KWD", [1234], [Decimal("1.234")], id="kwd-three-places"),
    ],
)
def test_sales_order_carries_exact_decimal_amounts(
    currency: str, amounts: list[int], expected: list[Decimal]
) -> None:
    address, _ = address_from_account(ACCOUNT)
    assert address is not None
    model = build_sales_order(
        _invoice(currency=currency), _lines(amounts, currency), address, "FINSYNC"
    )
    assert [line["amount"] for line in model["lines"]] == expected
    assert all(isinstance(line["amount"], Decimal) for line in model["lines"])
    # Lines go out in invoice order, numbered as on the invoice.
    assert [line["number"] for line in model["lines"]] == [
        str(n) for n in range(1, len(amounts) + 1)
    ]
    assert model["type"] == "SalesOrder" and model["commit"] is False
    assert model["code"] == "in_1" and model["customerCode"] == "001A"
    assert model["companyCode"] == "FINSYNC" and model["currencyCode"] == currency
    assert model["referenceCode"] == "fs-abc"
    assert {line["taxCode"] for line in model["lines"]} == {SAAS_TAX_CODE}
    assert model["addresses"]["singleLocation"] == {
        "line1": "1 Main St",
        "city": "San Francisco",
        "region": "CA",
        "country": "US",
        "postalCode": "94105",
    }


def test_an_invoice_without_lines_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="in_1 has no lines"):
        build_sales_order(_invoice(), _lines([]), {"country": "DE"}, "X")


@pytest.mark.parametrize(
    ("account", "reason"),
    [
        pytest.param(None, "no Salesforce Account record", id="no-account"),
        pytest.param({**ACCOUNT, "BillingCountry": None}, "BillingCountry", id="no-country"),
        pytest.param({**ACCOUNT, "BillingCountry": "  "}, "BillingCountry", id="blank-country"),
        pytest.param({**ACCOUNT, "BillingState": None}, "BillingState", id="us-without-state"),
    ],
)
def test_unusable_addresses_say_which_field(account: Any, reason: str) -> None:
    address, why = address_from_account(account)
    assert address is None
    assert reason in why


def test_a_vat_country_needs_no_region() -> None:
    address, why = address_from_account(
        {"BillingCountry": "de", "BillingCity": "Berlin", "BillingState": None}
    )
    assert address == {"country": "DE", "city": "Berlin"} and why == ""


@pytest.mark.parametrize(
    ("billed", "engine", "line_count", "within"),
    [
        pytest.param(863, "8.63", 2, True, id="exact"),
        pytest.param(865, "8.63", 2, True, id="two-lines-two-cents-over-is-the-edge"),
        pytest.param(861, "8.63", 2, True, id="two-cents-under-is-the-edge"),
        pytest.param(866, "8.63", 2, False, id="three-cents-over-two-lines"),
        pytest.param(864, "8.63", 1, True, id="one-line-one-cent"),
        pytest.param(865, "8.63", 1, False, id="one-line-two-cents"),
        pytest.param(0, "8.63", 2, False, id="not-taxed-at-all"),
    ],
)
def test_tolerance_is_one_minor_unit_per_line(
    billed: int, engine: str, line_count: int, within: bool
) -> None:
    invoices = pd.DataFrame([_invoice(tax_minor=billed, line_count=line_count)])
    checks, found = compare_tax(invoices, {"in_1": _result(engine)}, 1)
    assert list(checks.columns) == CHECK_COLUMNS
    assert list(found.columns) == EXCEPTION_COLUMNS
    (row,) = checks.to_dict("records")
    assert row["billed_tax_minor"] == billed
    assert row["engine_tax_minor"] == 863
    assert row["difference_minor"] == billed - 863
    assert row["within_tolerance"] == int(within)
    assert row["jurisdiction"] == "US-CA 8.625%"
    assert len(found) == (0 if within else 1)


def test_a_mismatch_is_a_high_tax_exception_with_both_values() -> None:
    invoices = pd.DataFrame([_invoice(tax_minor=1900, currency="EUR", line_count=1)])
    result = {
        "totalTax": Decimal("20.00"),
        "country": "FR",
        "region": "FR",
        "summary": [{"rate": Decimal("0.20")}],
    }
    _checks, found = compare_tax(invoices, {"in_1": result}, 1)
    (exc,) = found.to_dict("records")
    assert (exc["kind"], exc["severity"], exc["owner_queue"]) == ("tax_mismatch", "high", "tax")
    assert (exc["source_system"], exc["source_id"]) == ("stripe", "in_1")
    assert exc["correlation_id"] == "fs-abc" and exc["legal_entity"] == "US01"
    assert "19.00 EUR" in exc["detail"] and "20.00 EUR" in exc["detail"]
    assert "FR 20%" in exc["detail"] and "fs-abc" in exc["detail"]
    assert "-1.00 EUR" in exc["detail"]


def test_missing_address_is_an_exception_not_a_check() -> None:
    invoices = pd.DataFrame([_invoice(), _invoice(invoice_id="in_2")])
    checks, found = compare_tax(
        invoices,
        {"in_1": _result("8.63")},
        1,
        address_problems={"in_2": "Account field BillingState is empty"},
    )
    assert list(checks["invoice_id"]) == ["in_1"]
    (exc,) = found.to_dict("records")
    assert exc["kind"] == "tax_address_missing" and exc["source_id"] == "in_2"
    assert (exc["severity"], exc["owner_queue"]) == EXCEPTION_KINDS["tax_address_missing"]
    assert "BillingState" in exc["detail"]


def test_an_invoice_with_no_answer_is_a_bug_not_a_pass() -> None:
    with pytest.raises(ValueError, match="in_1 has no AvaTax result"):
        compare_tax(pd.DataFrame([_invoice()]), {}, 1)


def test_an_engine_tax_finer_than_the_currency_is_refused() -> None:
    with pytest.raises(MoneyError):
        compare_tax(pd.DataFrame([_invoice()]), {"in_1": _result("8.625")}, 1)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(_result("1"), "US-CA 8.625%", id="us-state"),
        pytest.param(
            {"country": "JP", "region": "JP", "summary": [{"rate": Decimal("0.10")}]},
            "JP 10%",
            id="country",
        ),
        pytest.param({"country": "CH", "region": None, "summary": []}, "CH (no tax)", id="none"),
    ],
)
def test_jurisdiction_names_place_and_rate(result: dict[str, Any], expected: str) -> None:
    assert jurisdiction_of(result) == expected


def test_tax_kinds_go_to_the_tax_queue() -> None:
    assert EXCEPTION_KINDS["tax_mismatch"] == ("high", "tax")
    assert EXCEPTION_KINDS["tax_address_missing"][1] == "tax"


FR_ADDRESS = {"city": "Paris", "country": "FR", "postalCode": "75001"}


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        pytest.param(
            {"tax_exempt": "exempt", "tax_exemption_number": "EX-2026-0042"},
            {"exemptionNo": "EX-2026-0042"},
            id="exempt-with-certificate",
        ),
        pytest.param(
            {"tax_exempt": "exempt", "tax_entity_use_code": "E"},
            {"entityUseCode": "E"},
            id="exempt-charity-by-entity-use-code",
        ),
        pytest.param(
            {
                "tax_exempt": "exempt",
                "tax_exemption_number": "EX-1",
                "tax_entity_use_code": "G",
            },
            {"exemptionNo": "EX-1", "entityUseCode": "G"},
            id="exempt-with-both",
        ),
        pytest.param(
            # An exemption on file for a taxable customer is not applied: Stripe billed tax.
            {"tax_exempt": "none", "tax_exemption_number": "EX-1", "tax_entity_use_code": "G"},
            {},
            id="taxable-customer-keeps-no-stale-exemption",
        ),
        pytest.param({"tax_exempt": "none"}, {}, id="normal"),
        pytest.param({}, {}, id="no-profile"),
    ],
)
def test_an_exempt_customer_sends_its_exemption(
    profile: dict[str, Any], expected: dict[str, str]
) -> None:
    address, _ = address_from_account(ACCOUNT)
    assert address is not None
    model = build_sales_order(
        _invoice(**profile), _lines([10000]), address, "FINSYNC", seller_country="US"
    )
    sent = {k: model[k] for k in ("exemptionNo", "entityUseCode") if k in model}
    assert sent == expected
    assert "businessIdentificationNo" not in model
    # A sale with no VAT id is taxed where it is consumed: one location, as before.
    assert set(model["addresses"]) == {"singleLocation"}


def test_a_reverse_charge_customer_sends_its_vat_id_and_both_ends_of_the_sale() -> None:
    model = build_sales_order(
        _invoice(currency="EUR", tax_exempt="reverse", tax_id="FR40303265045"),
        _lines([10000], "EUR"),
        FR_ADDRESS,
        "FINSYNC",
        seller_country="DE",
    )
    assert model["businessIdentificationNo"] == "FR40303265045"
    # Reverse charge is decided by where the sale goes from and to: the seller's country and
    # the buyer's address, never a single location.
    assert model["addresses"] == {"shipFrom": {"country": "DE"}, "shipTo": FR_ADDRESS}
    assert "exemptionNo" not in model and "entityUseCode" not in model


def test_a_vat_id_on_file_goes_to_avatax_whatever_stripe_charged() -> None:
    # Stripe billed VAT, but the buyer gave a VAT id: AvaTax decides, and a difference is a
    # real finding for the tax team.
    model = build_sales_order(
        _invoice(currency="EUR", tax_exempt="none", tax_id="DE811907980"),
        _lines([10000], "EUR"),
        {"country": "DE", "city": "Berlin"},
        "FINSYNC",
        seller_country="DE",
    )
    assert model["businessIdentificationNo"] == "DE811907980"
    assert model["addresses"]["shipFrom"] == {"country": "DE"}


def test_a_reverse_charge_customer_without_a_vat_id_is_sent_as_taxable() -> None:
    model = build_sales_order(
        _invoice(currency="EUR", tax_exempt="reverse", tax_id=None),
        _lines([10000], "EUR"),
        FR_ADDRESS,
        "FINSYNC",
        seller_country="DE",
    )
    assert "businessIdentificationNo" not in model
    assert set(model["addresses"]) == {"singleLocation"}


@pytest.mark.parametrize(
    "blank", [None, float("nan"), "", "  "], ids=["none", "nan", "empty", "spaces"]
)
def test_blank_profile_values_are_not_sent(blank: Any) -> None:
    model = build_sales_order(
        _invoice(
            tax_exempt="exempt",
            tax_exemption_number=blank,
            tax_entity_use_code=blank,
            tax_id=blank,
        ),
        _lines([10000]),
        {"country": "US", "region": "CA"},
        "FINSYNC",
        seller_country="US",
    )
    assert not {"exemptionNo", "entityUseCode", "businessIdentificationNo"} & set(model)
