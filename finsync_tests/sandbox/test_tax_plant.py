"""Planted tax mismatches: re-taxed at a wrong rate, still tying out, and deterministic."""

import datetime
from decimal import Decimal

import pytest

from finsync_pipeline.sandbox.avalara_sim import jurisdiction_rate
from finsync_pipeline.sandbox.generator import Company, CompanySpec, generate, tax_for

SPEC = CompanySpec(accounts=300, months=6, seed=7, end=datetime.date(2026, 3, 31))


@pytest.fixture(scope="module")
def company() -> Company:
    return generate(SPEC)


def test_one_mismatch_per_hundred_accounts_and_deterministic(company: Company) -> None:
    planted = company.planted["tax_mismatch"]
    assert len(planted) == 3
    assert {(p["system"], p["object"], p["field"]) for p in planted} == {
        ("stripe", "invoice", "total_taxes")
    }
    assert generate(SPEC).planted["tax_mismatch"] == planted
    small = generate(CompanySpec(accounts=20, months=2, seed=3, end=SPEC.end))
    assert len(small.planted["tax_mismatch"]) == 1


def test_planted_invoices_tie_out_but_not_at_their_jurisdiction_rate(company: Company) -> None:
    invoices = {i["id"]: i for i in company.stripe["invoice"]}
    customers = {c["id"]: c for c in company.stripe["customer"]}
    accounts = {a["Id"]: a for a in company.salesforce["Account"]}
    intents = {p["id"]: p for p in company.stripe["payment_intent"]}
    other_planted = {
        p["id"] for kind, items in company.planted.items() if kind != "tax_mismatch" for p in items
    }
    for p in company.planted["tax_mismatch"]:
        inv = invoices[p["id"]]
        assert inv["status"] in ("open", "paid", "uncollectible")
        assert inv["id"] not in other_planted
        lines = inv["lines"]["data"]
        tax = sum(line["taxes"][0]["amount"] for line in lines)
        assert inv["total_taxes"][0]["amount"] == tax
        assert inv["subtotal"] + tax == inv["total"]
        if inv["status"] == "paid":
            (payment,) = [x for x in inv["payments"]["data"] if x["amount_paid"]]
            assert intents[payment["payment"]["payment_intent"]]["amount"] == inv["total"]
        account = accounts[customers[inv["customer"]]["metadata"]["salesforce_account_id"]]
        juris = jurisdiction_rate(account["BillingCountry"], account["BillingState"])
        assert juris is not None
        right = sum(tax_for(line["amount"], juris[3]) for line in lines)
        # Far beyond the check's tolerance of one minor unit per line.
        assert abs(right - tax) > len(lines)
        assert abs(right - tax) >= inv["subtotal"] * Decimal("0.009")


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        pytest.param("tax_exempt_customer", "exempt", "customer_exempt", id="exempt"),
        pytest.param("reverse_charge_customer", "reverse", "reverse_charge", id="reverse-charge"),
    ],
)
def test_tax_profiles_are_billed_no_tax_and_still_tie_out(
    company: Company, kind: str, status: str, reason: str
) -> None:
    (planted,) = company.planted[kind]
    assert generate(SPEC).planted[kind] == [planted]
    customer = next(c for c in company.stripe["customer"] if c["id"] == planted["id"])
    assert customer["tax_exempt"] == status
    invoices = [i for i in company.stripe["invoice"] if i["customer"] == customer["id"]]
    assert any(i["status"] in ("open", "paid") for i in invoices)
    intents = {p["id"]: p for p in company.stripe["payment_intent"]}
    other_planted = {p["id"] for k, items in company.planted.items() if k != kind for p in items}
    for inv in invoices:
        assert inv["id"] not in other_planted
        taxes = [line["taxes"][0] for line in inv["lines"]["data"]] + inv["total_taxes"]
        assert all(t["amount"] == 0 and t["taxability_reason"] == reason for t in taxes)
        assert inv["total"] == inv["subtotal"]
        if inv["status"] == "paid":
            assert inv["amount_paid"] == inv["total"]
            (payment,) = [x for x in inv["payments"]["data"] if x["amount_paid"]]
            assert intents[payment["payment"]["payment_intent"]]["amount"] == inv["total"]


def test_the_exempt_customer_keeps_its_certificate_in_metadata(company: Company) -> None:
    (planted,) = company.planted["tax_exempt_customer"]
    customer = next(c for c in company.stripe["customer"] if c["id"] == planted["id"])
    assert customer["metadata"]["tax_exemption_number"].startswith("EX-")
    assert customer["metadata"]["legal_entity"] == "US01"
    assert not [t for t in company.stripe["tax_id"] if t["customer"] == customer["id"]]


def test_the_reverse_charge_customer_has_an_eu_vat_id_of_its_country(company: Company) -> None:
    (planted,) = company.planted["reverse_charge_customer"]
    customer = next(c for c in company.stripe["customer"] if c["id"] == planted["id"])
    assert customer["metadata"]["legal_entity"] == "EU01"  # sells from Germany
    country = customer["address"]["country"]
    assert country in ("FR", "NL")
    (tax_id,) = [t for t in company.stripe["tax_id"] if t["customer"] == customer["id"]]
    assert tax_id["type"] == "eu_vat" and tax_id["value"].startswith(country)
    assert tax_id["country"] == country and tax_id["id"].startswith("txi_")
    # The VAT id is no part of the customer: Stripe shows it only when tax_ids is expanded.
    assert "tax_ids" not in customer
