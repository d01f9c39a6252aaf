"""Discounted, tax-inclusive and 100%-off invoices: Stripe's identities hold in the contracts,
and the ERP invoice states the discount so that lines + discount + tax equal the total."""

from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from finsync_pipeline.logic.canonical import build_invoices
from finsync_pipeline.logic.derive import derive_customer_upserts, derive_invoice_ready
from finsync_pipeline.logic.normalize import flatten_stripe_invoices
from finsync_pipeline.logic.validation import validate_frame
from finsync_pipeline.master_data import LegalEntity, MasterData
from finsync_pipeline.money import to_decimal
from finsync_pipeline.schemas.canonical import Invoice, InvoiceLine
from finsync_pipeline.schemas.stripe import StripeInvoiceLineRecord, StripeInvoiceRecord

MASTER = MasterData(
    legal_entities={
        "US01": LegalEntity("US01", "finsync Inc.", "US", "USD", "1"),
        "EU01": LegalEntity("EU01", "finsync GmbH", "DE", "EUR", "2"),
    },
    netsuite_currency_ids={"USD": "1", "EUR": "2"},
    netsuite_items={"prod_platform": "101", "prod_seats": "102"},
    netsuite_tax_item_id="190",
    netsuite_discount_item_id="191",
)
CUSTOMERS = pd.DataFrame(
    {
        "customer_key": ["001US", "001EU"],
        "name": ["US Corp", "EU GmbH"],
        "parent_customer_key": [None, None],
        "hierarchy_depth": pd.array([0, 0], dtype="Int64"),
        "legal_entity": ["US01", "EU01"],
        "currency": ["USD", "EUR"],
        "correlation_id": ["fs-us", "fs-eu"],
    }
)
CUSTOMER_OF = {"usd": ("cus_us", "001US"), "eur": ("cus_eu", "001EU")}

# line: (product, amount before discounts, discount, tax, tax behaviour)
Line = tuple[str, int, int, int, str]


def stripe_invoice(
    invoice_id: str,
    currency: str,
    lines: list[Line],
    *,
    subtotal: int,
    total: int,
    total_excluding_tax: int,
    status: str = "open",
    coupon: bool = False,
) -> dict[str, Any]:
    """A Stripe (2026-07-29.dahlia) invoice; the header amounts are written out by hand."""
    discount_id = f"di_{invoice_id}"
    data = [
        {
            "id": f"il_{invoice_id}_{n}",
            "amount": amount,
            "currency": currency,
            "quantity": 1,
            "description": product,
            "pricing": {"price_details": {"product": product, "price": f"price_{product}"}},
            "discount_amounts": [{"amount": discount, "discount": discount_id}] if discount else [],
            "discounts": [discount_id] if discount and not coupon else [],
            "taxes": [{"amount": tax, "tax_behavior": behavior, "type": "tax_rate_details"}],
        }
        for n, (product, amount, discount, tax, behavior) in enumerate(lines)
    ]
    discount_total = sum(line[2] for line in lines)
    by_behavior: dict[str, int] = {}
    for _product, _amount, _discount, tax, behavior in lines:
        by_behavior[behavior] = by_behavior.get(behavior, 0) + tax
    return {
        "id": invoice_id,
        "number": f"N-{invoice_id}",
        "customer": CUSTOMER_OF[currency][0],
        "status": status,
        "currency": currency,
        "created": 1790812800,
        "discounts": [discount_id] if coupon else [],
        "subtotal": subtotal,
        "total_discount_amounts": [{"amount": discount_total, "discount": discount_id}]
        if discount_total
        else [],
        "total_taxes": [{"amount": t, "tax_behavior": b} for b, t in sorted(by_behavior.items())],
        "total_excluding_tax": total_excluding_tax,
        "total": total,
        "starting_balance": 0,
        "ending_balance": 0,
        "amount_due": total,
        "amount_paid": total if status == "paid" else 0,
        "amount_remaining": total if status == "open" else 0,
        "pre_payment_credit_notes_amount": 0,
        "lines": {"data": data},
    }


SHAPES = [
    pytest.param(
        # A 20% coupon on the invoice, spread over both lines; 8.25% sales tax on the rest.
        stripe_invoice(
            "in_coupon",
            "usd",
            [
                ("prod_platform", 10000, 2000, 660, "exclusive"),
                ("prod_seats", 5000, 1000, 330, "exclusive"),
            ],
            subtotal=15000,
            total=12990,
            total_excluding_tax=12000,
            coupon=True,
        ),
        3000,
        ["100.00", "50.00", "-30.00", "9.90"],
        id="coupon",
    ),
    pytest.param(
        # 10% off the platform line only; 10% tax.
        stripe_invoice(
            "in_linediscount",
            "usd",
            [
                ("prod_platform", 10000, 1000, 900, "exclusive"),
                ("prod_seats", 5000, 0, 500, "exclusive"),
            ],
            # Stripe's subtotal has the line's own discount taken off already.
            subtotal=14000,
            total=15400,
            total_excluding_tax=14000,
        ),
        1000,
        ["100.00", "50.00", "-10.00", "14.00"],
        id="line-discount",
    ),
    pytest.param(
        # Prices include 19% VAT: 119.00 is 100.00 plus 19.00 of tax.
        stripe_invoice(
            "in_inclusive",
            "eur",
            [
                ("prod_platform", 11900, 0, 1900, "inclusive"),
                ("prod_seats", 5950, 0, 950, "inclusive"),
            ],
            subtotal=17850,
            total=17850,
            total_excluding_tax=15000,
        ),
        0,
        ["100.00", "50.00", "28.50"],
        id="tax-inclusive",
    ),
    pytest.param(
        # Inclusive VAT after a 10% coupon: the tax is on 107.10, so 17.10, and 90.00 is left.
        stripe_invoice(
            "in_inclusivecoupon",
            "eur",
            [("prod_platform", 11900, 1190, 1710, "inclusive")],
            subtotal=11900,
            total=10710,
            total_excluding_tax=9000,
            coupon=True,
        ),
        1190,
        ["101.90", "-11.90", "17.10"],
        id="tax-inclusive-with-coupon",
    ),
    pytest.param(
        # 100% off: nothing is taxed and nothing is due; Stripe marks it paid.
        stripe_invoice(
            "in_free",
            "usd",
            [("prod_platform", 10000, 10000, 0, "exclusive")],
            subtotal=10000,
            total=0,
            total_excluding_tax=0,
            status="paid",
            coupon=True,
        ),
        10000,
        ["100.00", "-100.00"],
        id="full-discount",
    ),
]


def _canonical(record: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    heads, lines = flatten_stripe_invoices([record])
    for frame, model, obj in [
        (heads, StripeInvoiceRecord, "invoice"),
        (lines, StripeInvoiceLineRecord, "invoice_line"),
    ]:
        outcome = validate_frame(frame, model, system="stripe", obj=obj)
        assert outcome.failures.empty, outcome.failures["reason"].tolist()
    keys = pd.Series({cus: key for cus, key in CUSTOMER_OF.values()})
    head, body = build_invoices(
        heads, lines, keys, pd.Series({record["id"]: "2026-10-01"}), "run-1"
    )
    for frame, canonical_model in [(head, Invoice), (body, InvoiceLine)]:
        outcome = validate_frame(frame, canonical_model, system="finsync", obj="canonical")
        assert outcome.failures.empty, outcome.failures["reason"].tolist()
    return head, body


@pytest.mark.parametrize(("record", "discount", "amounts"), SHAPES)
def test_every_invoice_shape_passes_the_contracts_and_ties_out_in_the_erp(
    record: dict[str, Any], discount: int, amounts: list[str]
) -> None:
    head, body = _canonical(record)
    assert int(head.iloc[0]["discount_minor"]) == discount
    upserts, _ = derive_customer_upserts(CUSTOMERS, MASTER)
    ready, problems = derive_invoice_ready(head, body, upserts, CUSTOMERS, MASTER)
    assert problems.empty, problems["detail"].tolist()
    (row,) = ready.to_dict("records")
    items = row["payload"]["item"]["items"]
    assert [str(i["amount"]) for i in items] == amounts
    assert all(isinstance(i["amount"], Decimal) for i in items)
    # Lines + discount + tax == the Stripe total, to the minor unit.
    currency = str(head.iloc[0]["currency"])
    assert sum((i["amount"] for i in items), Decimal(0)) == to_decimal(record["total"], currency)
    assert row["total_minor"] == record["total"]
    discount_lines = [i for i in items if i["item"]["id"] == "191"]
    assert [i["amount"] for i in discount_lines] == (
        [to_decimal(-discount, currency)] if discount else []
    )


@pytest.mark.parametrize(
    ("change", "check"),
    [
        # Inclusive tax added on top of a subtotal that already holds it.
        ({"total": 17850 + 2850}, "total_ties_out"),
        # total_excluding_tax that kept the inclusive tax.
        ({"total_excluding_tax": 17850}, "total_excluding_tax_ties_out"),
    ],
    ids=["inclusive-tax-counted-twice", "total-excluding-tax-with-tax"],
)
def test_the_contract_refuses_an_invoice_that_breaks_stripes_identities(
    change: dict[str, int], check: str
) -> None:
    record = {**SHAPES[2].values[0], **change}  # type: ignore[dict-item]
    heads, _ = flatten_stripe_invoices([record])
    outcome = validate_frame(heads, StripeInvoiceRecord, system="stripe", obj="invoice")
    assert check in set(outcome.failures["check_name"])


def test_a_discount_without_a_discount_item_is_an_exception_for_finance_ops() -> None:
    head, body = _canonical(SHAPES[0].values[0])  # type: ignore[arg-type]
    master = MasterData(**{**MASTER.__dict__, "netsuite_discount_item_id": None})
    upserts, _ = derive_customer_upserts(CUSTOMERS, master)
    ready, problems = derive_invoice_ready(head, body, upserts, CUSTOMERS, master)
    assert ready.empty
    (problem,) = problems.to_dict("records")
    assert (problem["kind"], problem["owner_queue"]) == ("unmapped_discount", "finance_ops")
    assert "netsuite_discount_item_id" in problem["detail"]
    assert "total_discount_amounts" in problem["detail"]
