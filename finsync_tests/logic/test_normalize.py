"""Flattening native records: malformed values stay visible, nothing crashes or disappears."""

from typing import Any

import pandas as pd
import pytest

from finsync_pipeline.logic import normalize as n
from finsync_pipeline.logic.validation import validate_frame
from finsync_pipeline.po_source import PoSource
from finsync_pipeline.schemas.stripe import (
    StripeChargeRecord,
    StripeCreditNoteRecord,
    StripeInvoiceRecord,
    StripeRefundRecord,
)

INVOICE: dict[str, Any] = {
    "id": "in_1",
    "number": "INV-0001",
    "customer": "cus_1",
    "status": "open",
    "currency": "usd",
    "subtotal": 2000,
    "total_excluding_tax": 2000,
    "total": 2160,
    "amount_paid": 0,
    "amount_remaining": 2160,
    # Stripe applies the customer's balance at finalization; this customer has none.
    "starting_balance": 0,
    "ending_balance": 0,
    "amount_due": 2160,
    "pre_payment_credit_notes_amount": 0,
    "total_discount_amounts": [],
    "total_taxes": [
        {"amount": 100, "tax_behavior": "exclusive"},
        {"amount": 60, "tax_behavior": "exclusive"},
    ],
    "created": 1790812800,  # 2026-10-01 00:00:00 UTC
    "due_date": 1793404800,
    "status_transitions": {"finalized_at": 1790816400},
    "parent": {"subscription_details": {"subscription": "sub_1"}},
    "lines": {
        "data": [
            {
                "id": "il_1",
                "amount": 1500,
                "currency": "usd",
                "quantity": 1,
                "description": "Platform",
                "taxes": [{"amount": 120, "tax_behavior": "exclusive"}],
                "pricing": {"price_details": {"product": "prod_platform", "price": "price_1"}},
                "period": {"start": 1790812800, "end": 1793404800},
            },
            {"id": "il_2", "amount": 500, "currency": "usd", "quantity": 2},
        ]
    },
}


def with_line(**changes: Any) -> dict[str, Any]:
    line = {**INVOICE["lines"]["data"][1], **changes}
    return {**INVOICE, "lines": {"data": [INVOICE["lines"]["data"][0], line]}}


def test_a_well_formed_invoice_flattens_with_every_line() -> None:
    heads, lines = n.flatten_stripe_invoices([INVOICE])
    head = heads.iloc[0]
    assert (head["source_id"], head["currency"], head["subscription_id"]) == (
        "in_1",
        "USD",
        "sub_1",
    )
    assert (head["subtotal"], head["tax"], head["total"]) == (2000, 160, 2160)
    assert (head["lines_amount"], head["line_count"]) == (2000, 2)
    assert (head["invoice_date"], head["finalized_at"]) == ("2026-10-01", "2026-10-01")
    assert head["due_date"] == "2026-10-31"
    assert list(lines["line_id"]) == ["il_1", "il_2"]
    assert list(lines["line_number"]) == [0, 1]
    assert list(lines["tax"]) == [120, 0]
    assert lines.iloc[0]["product_id"] == "prod_platform"
    assert pd.isna(lines.iloc[1]["product_id"])
    assert str(heads["total"].dtype) == "Int64"


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        pytest.param(None, "null", id="null-amount"),
        pytest.param("500", "text", id="string-amount"),
        pytest.param(5.0, "float", id="float-amount"),
        pytest.param(True, "bool", id="bool-amount"),
    ],
)
def test_a_malformed_line_amount_stays_visible_as_na(amount: Any, why: str) -> None:
    heads, lines = n.flatten_stripe_invoices([with_line(amount=amount)])
    # The row is kept (so quarantine can name it) with the bad value as NA, never as 0.
    assert len(lines) == 2
    assert pd.isna(lines.iloc[1]["amount"]), why
    assert pd.isna(heads.iloc[0]["lines_amount"])
    assert heads.iloc[0]["subtotal"] == 2000


def test_the_opportunity_an_invoice_bills_is_read_from_the_subscription_metadata() -> None:
    linked = {
        "parent": {
            "type": "subscription_details",
            "subscription_details": {
                "metadata": {"salesforce_opportunity_id": "0065g00000AbCdEAAZ"},
                "subscription": "sub_1",
            },
        }
    }
    records = [{**INVOICE, "id": "in_linked", **linked}, {**INVOICE, "id": "in_bare"}]
    source = PoSource("salesforce_opportunity", "PO_Number__c")
    heads, _ = n.flatten_stripe_invoices(records, source)
    opp = dict(zip(heads["source_id"], heads["opportunity_id"], strict=True))
    assert opp["in_linked"] == "0065g00000AbCdEAAZ"
    assert pd.isna(opp["in_bare"])
    # The PO of a Salesforce source is on the Opportunity, never read off the invoice.
    assert heads["po_number"].isna().all()
    outcome = validate_frame(heads, StripeInvoiceRecord, system="stripe", obj="invoice")
    assert outcome.failures.empty


def test_the_po_is_read_from_the_configured_place_and_null_custom_fields_are_no_po() -> None:
    po_field = {"custom_fields": [{"name": "PO Number", "value": "PO-4500012345"}]}
    records = [
        {**INVOICE, "id": "in_cf", **po_field},
        {**INVOICE, "id": "in_null", "custom_fields": None, "metadata": {"po": "M-1"}},
        {**INVOICE, "id": "in_absent"},
    ]
    heads, _ = n.flatten_stripe_invoices(records)
    po = dict(zip(heads["source_id"], heads["po_number"], strict=True))
    assert po["in_cf"] == "PO-4500012345"
    assert pd.isna(po["in_null"]) and pd.isna(po["in_absent"])
    heads, _ = n.flatten_stripe_invoices(records, PoSource("stripe_metadata", "po"))
    po = dict(zip(heads["source_id"], heads["po_number"], strict=True))
    assert po["in_null"] == "M-1"
    assert pd.isna(po["in_cf"])
    # The contract takes the invoices as Stripe ships them, with or without a PO.
    outcome = validate_frame(heads, StripeInvoiceRecord, system="stripe", obj="invoice")
    assert outcome.failures.empty


def test_malformed_taxes_are_na_not_zero() -> None:
    _, lines = n.flatten_stripe_invoices([with_line(taxes="lots")])
    assert pd.isna(lines.iloc[1]["tax"])
    heads, _ = n.flatten_stripe_invoices([{**INVOICE, "total_taxes": [{"amount": "1"}]}])
    assert pd.isna(heads.iloc[0]["tax"])


def test_discounts_and_inclusive_tax_flatten_apart_from_exclusive_tax() -> None:
    # A coupon of 200 spread over both lines, and a 19% VAT inside the first line's price.
    record = {
        **INVOICE,
        "subtotal": 2000,
        "total_discount_amounts": [{"amount": 200, "discount": "di_1"}],
        "total_taxes": [
            {"amount": 215, "tax_behavior": "inclusive", "taxable_amount": 1135},
            {"amount": 32, "tax_behavior": "exclusive", "taxable_amount": 450},
        ],
        "total_excluding_tax": 1585,
        "total": 1832,
        "amount_due": 1832,
        "lines": {
            "data": [
                {
                    **INVOICE["lines"]["data"][0],
                    "discount_amounts": [{"amount": 150, "discount": "di_1"}],
                    "taxes": [{"amount": 215, "tax_behavior": "inclusive"}],
                },
                {
                    **INVOICE["lines"]["data"][1],
                    "discount_amounts": [{"amount": 50, "discount": "di_1"}],
                    "taxes": [{"amount": 32, "tax_behavior": "exclusive"}],
                },
            ]
        },
    }
    heads, lines = n.flatten_stripe_invoices([record])
    head = heads.iloc[0]
    assert (head["discount"], head["tax"], head["inclusive_tax"], head["exclusive_tax"]) == (
        200,
        247,
        215,
        32,
    )
    assert head["total_excluding_tax"] == 1585
    assert list(lines["discount"]) == [150, 50]
    assert list(lines["inclusive_tax"]) == [215, 0]


def test_a_tax_without_a_known_behaviour_is_na() -> None:
    # Which side of the price the tax is on decides the total: never guessed.
    heads, _ = n.flatten_stripe_invoices([{**INVOICE, "total_taxes": [{"amount": 160}]}])
    assert pd.isna(heads.iloc[0]["inclusive_tax"])
    assert pd.isna(heads.iloc[0]["exclusive_tax"])
    assert heads.iloc[0]["tax"] == 160


def test_a_record_without_ids_does_not_crash_and_is_kept() -> None:
    line = {k: v for k, v in INVOICE["lines"]["data"][1].items() if k != "id"}
    record = {**{k: v for k, v in INVOICE.items() if k != "id"}, "lines": {"data": [line]}}
    heads, lines = n.flatten_stripe_invoices([record, {}])
    assert len(heads) == 2
    assert heads["source_id"].isna().all()
    # A line without an id gets a positional one, so it can still be named.
    assert list(lines["line_id"]) == ["None:0"]
    assert heads.iloc[1]["line_count"] == 0


def test_stripe_customers_keep_their_salesforce_link() -> None:
    frame = n.flatten_stripe_customers(
        [
            {
                "id": "cus_1",
                "name": "Acme",
                "currency": "eur",
                "created": 1,
                "metadata": {
                    "salesforce_account_id": "001A",
                    "legal_entity": "EU01",
                    "tax_exemption_number": "EX-1",
                    "tax_entity_use_code": "E",
                },
                "tax_exempt": "reverse",
                "tax_ids": {
                    "data": [
                        # An OSS registration is the seller's scheme, not the buyer's VAT id.
                        {"type": "eu_oss_vat", "value": "EU372000041"},
                        {"type": "us_ein", "value": "12-3456789"},
                        {"type": "eu_vat", "value": "DE123456789"},
                    ]
                },
            },
            {"id": "cus_2", "created": "yesterday", "metadata": None},
        ]
    )
    assert frame.iloc[0].to_dict() == {
        "source_id": "cus_1",
        "name": "Acme",
        "currency": "EUR",
        "salesforce_account_id": "001A",
        "legal_entity": "EU01",
        "tax_exempt": "reverse",
        "tax_id_count": 3,
        "tax_id": "DE123456789",
        "tax_exemption_number": "EX-1",
        "tax_entity_use_code": "E",
        "created": 1,
    }
    assert pd.isna(frame.iloc[1]["salesforce_account_id"])
    assert pd.isna(frame.iloc[1]["tax_id"]) and frame.iloc[1]["tax_id_count"] == 0
    assert pd.isna(frame.iloc[1]["created"])


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        pytest.param(1234.5, "USD", 123450, id="usd-json-number"),
        pytest.param("1234.56", "USD", 123456, id="usd-text"),
        pytest.param(1000, "JPY", 1000, id="jpy"),
        pytest.param("1.5", "JPY", None, id="jpy-fraction-refused"),
        pytest.param("1.2345", "KWD", None, id="kwd-four-places-refused"),
        pytest.param("1.234", "KWD", 1234, id="kwd"),
        pytest.param("100", "XXX", None, id="unknown-currency"),
        pytest.param(None, "USD", None, id="null"),
        pytest.param("lots", "USD", None, id="text"),
    ],
)
def test_opportunity_amounts_become_exact_minor_units(
    amount: Any, currency: str, minor: int | None
) -> None:
    frame = n.flatten_salesforce_opportunities(
        [{"Id": "006A", "Amount": amount, "CurrencyIsoCode": currency, "IsWon": "true"}]
    )
    value = frame.iloc[0]["amount_minor"]
    assert pd.isna(value) if minor is None else value == minor
    assert bool(frame.iloc[0]["is_won"]) is True


def test_accounts_keep_the_hierarchy_and_flags() -> None:
    frame = n.flatten_salesforce_accounts(
        [
            {"Id": "001P", "Name": "Parent", "CurrencyIsoCode": "usd", "PO_Required__c": True},
            {"Id": "001C", "Name": "Child", "ParentId": "001P", "PO_Required__c": "false"},
        ]
    )
    assert list(frame["parent_id"].isna()) == [True, False]
    assert list(frame["po_required"]) == [True, False]
    assert frame.iloc[0]["currency"] == "USD"
    assert pd.isna(frame.iloc[1]["currency"])


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        pytest.param("10/31/2026", "2026-10-31", id="us-format"),
        pytest.param("2026-10-31", "2026-10-31", id="iso"),
        pytest.param("31/10/2026", "2026-10-31", id="day-first"),
        pytest.param("not a date", "not a date", id="kept-for-the-contract"),
        pytest.param(None, None, id="null"),
    ],
)
def test_netsuite_dates(text: str | None, iso: str | None) -> None:
    assert n.netsuite_date(text) == iso


def test_erp_invoices_map_currency_ids_back_to_codes() -> None:
    frame = n.flatten_erp_invoices(
        [
            {
                "id": "5001",
                "externalid": "STRIPE_in_1",
                "currency": "1",
                "foreigntotal": "21.60",
                "trandate": "10/1/2026",
                "memo": "finsync fs-x",
            },
            {"id": "5002", "currency": "4", "foreigntotal": "1500"},
            {"id": "5003", "currency": "77", "foreigntotal": "1.00"},
        ],
        {"1": "USD", "4": "JPY"},
    )
    assert list(frame["currency"].fillna("?")) == ["USD", "JPY", "?"]
    assert frame.iloc[0]["total_minor"] == 2160
    assert frame.iloc[1]["total_minor"] == 1500
    # An unknown currency id leaves the amount unreadable rather than guessed at 2 places.
    assert pd.isna(frame.iloc[2]["total_minor"])
    assert frame.iloc[0]["tran_date"] == "2026-10-01"


def test_correlation_ids_are_deterministic_and_distinct() -> None:
    a = n.correlation_id("stripe", "invoice", "in_1")
    assert a == n.correlation_id("stripe", "invoice", "in_1")
    assert a.startswith("fs-") and len(a) == 23
    assert a != n.correlation_id("stripe", "invoice", "in_2")
    assert a != n.correlation_id("salesforce", "invoice", "in_1")


CREDIT_NOTE: dict[str, Any] = {
    "id": "cn_1",
    "number": "INV-0001-CN-01",
    "invoice": "in_1",
    "customer": "cus_1",
    "status": "issued",
    "type": "post_payment",
    "reason": "order_change",
    "currency": "usd",
    "subtotal": 500,
    "total": 540,
    "total_taxes": [{"amount": 40}],
    "refunds": [{"refund": "re_1", "amount_refunded": 540}],
    "created": 1790812800,
    "effective_at": 1790812800,
    "lines": {
        "data": [
            {"id": "cnli_1", "amount": 300, "taxes": [{"amount": 24}]},
            {"id": "cnli_2", "amount": 200, "taxes": [{"amount": 16}]},
        ]
    },
}


def test_a_credit_note_flattens_with_line_tax_and_refund_totals() -> None:
    row = n.flatten_stripe_credit_notes([CREDIT_NOTE]).iloc[0]
    assert (row["source_id"], row["invoice"], row["currency"]) == ("cn_1", "in_1", "USD")
    assert (row["subtotal"], row["tax"], row["total"]) == (500, 40, 540)
    assert (row["lines_amount"], row["line_count"], row["refunded"]) == (500, 2, 540)
    assert row["effective_date"] == "2026-10-01"


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        pytest.param({}, None, id="well-formed"),
        pytest.param({"total": 541}, "total_ties_out", id="total-off-by-one"),
        pytest.param(
            {"lines": {"data": [{"id": "cnli_1", "amount": 300}]}}, "lines_tie_out", id="line-lost"
        ),
        pytest.param(
            {"refunds": [{"amount_refunded": 600}]}, "refund_within_total", id="over-refunded"
        ),
        pytest.param({"status": "draft"}, "isin", id="unknown-status"),
        pytest.param({"subtotal": 5.0}, "not_nullable", id="float-subtotal"),
    ],
)
def test_the_credit_note_contract_names_what_broke(
    changes: dict[str, Any], check: str | None
) -> None:
    frame = n.flatten_stripe_credit_notes([{**CREDIT_NOTE, **changes}])
    outcome = validate_frame(frame, StripeCreditNoteRecord, system="stripe", obj="credit_note")
    found = set(outcome.failures["check_name"].astype(str))
    if check is None:
        assert found == set()
    else:
        assert any(check in name for name in found), found


def test_refunds_and_charges_flatten_and_keep_bad_amounts_visible() -> None:
    refund = {
        "id": "re_1",
        "charge": "ch_1",
        "payment_intent": "pi_1",
        "status": "succeeded",
        "reason": None,
        "currency": "eur",
        "amount": "1000",
        "created": 1790812800,
    }
    row = n.flatten_stripe_refunds([refund]).iloc[0]
    assert row["currency"] == "EUR" and pd.isna(row["amount"])
    outcome = validate_frame(
        n.flatten_stripe_refunds([refund]), StripeRefundRecord, system="stripe", obj="refund"
    )
    assert set(outcome.failures["field"]) == {"amount"}
    charge = {
        "id": "ch_1",
        "status": "succeeded",
        "currency": "usd",
        "amount": 1000,
        "amount_captured": 1000,
        "amount_refunded": 1200,
        "refunded": False,
        "created": 1790812800,
    }
    frame = n.flatten_stripe_charges([charge])
    assert frame.iloc[0]["amount_refunded"] == 1200 and not frame.iloc[0]["refunded"]
    charged = validate_frame(frame, StripeChargeRecord, system="stripe", obj="charge")
    assert "refund_within_amount" in set(charged.failures["check_name"])
