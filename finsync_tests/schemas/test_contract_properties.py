"""Property tests of the contracts: any valid row passes; each kind of bad row is caught with
the check that names it."""

from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finsync_pipeline.logic.validation import validate_frame
from finsync_pipeline.money import EXPONENTS
from finsync_pipeline.schemas.stripe import StripeInvoiceRecord

LIVE = ["open", "paid", "uncollectible"]


@st.composite
def invoices(draw: st.DrawFn) -> dict[str, Any]:
    """A Stripe invoice that ties out as Stripe guarantees: lines sum to the subtotal (before
    discounts, inclusive tax included), subtotal - discount + exclusive tax = total, and total
    excluding tax + every tax = total."""
    lines = draw(
        st.lists(st.integers(min_value=-(10**6), max_value=10**9), min_size=1, max_size=30)
    )
    subtotal = sum(lines)
    discount = draw(st.integers(min_value=0, max_value=max(0, subtotal)))
    inclusive = draw(st.integers(min_value=0, max_value=max(0, subtotal - discount)))
    exclusive = draw(st.integers(min_value=0, max_value=10**8))
    total = subtotal - discount + exclusive
    # A credit balance (negative), none, or a debt carried over; applied at finalization.
    start = draw(st.integers(min_value=-(10**9), max_value=10**6))
    due = max(0, total + start)
    paid = draw(st.integers(min_value=0, max_value=due))
    return {
        "source_id": "in_" + draw(st.text("abcdefghijkLMNOP0123456789", min_size=8, max_size=24)),
        "customer": "cus_" + draw(st.text("abcdef0123456789", min_size=6, max_size=14)),
        "status": draw(st.sampled_from(LIVE)),
        "currency": draw(st.sampled_from(sorted(EXPONENTS))),
        "subtotal": subtotal,
        "discount": discount,
        "tax": inclusive + exclusive,
        "inclusive_tax": inclusive,
        "exclusive_tax": exclusive,
        "total_excluding_tax": total - inclusive - exclusive,
        "total": total,
        "lines_amount": subtotal,
        "item_discount": 0,
        "line_count": len(lines),
        "amount_paid": paid,
        "amount_remaining": due - paid,
        "starting_balance": start,
        "ending_balance": start + total - due,
        "amount_due": due,
        "pre_payment_credit_notes_amount": 0,
        "created": draw(st.integers(min_value=1, max_value=2**31)),
    }


INTS = [
    "subtotal",
    "discount",
    "tax",
    "inclusive_tax",
    "exclusive_tax",
    "total_excluding_tax",
    "total",
    "lines_amount",
    "item_discount",
    "line_count",
    "amount_paid",
    "amount_remaining",
    "starting_balance",
    "ending_balance",
    "amount_due",
    "pre_payment_credit_notes_amount",
    "created",
]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    return df.astype(
        {c: "Int64" for c in INTS}
        | {"source_id": "str", "customer": "str", "status": "str", "currency": "str"}
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(invoices(), min_size=1, max_size=8, unique_by=lambda r: r["source_id"]))
def test_any_invoice_that_ties_out_passes(rows: list[dict[str, Any]]) -> None:
    outcome = validate_frame(_frame(rows), StripeInvoiceRecord, system="stripe", obj="invoice")
    assert outcome.failures.empty


@pytest.mark.parametrize(
    ("change", "field", "check"),
    [
        ({"currency": "USDX"}, "currency", "iso_currency"),
        ({"status": "settled"}, "status", "isin"),
        ({"total": 1}, "total_ties_out", "total_ties_out"),
        # Inclusive tax counted as if added on top: the total no longer ties out.
        ({"exclusive_tax": 1, "inclusive_tax": -1}, "total_ties_out", "total_ties_out"),
        ({"total_excluding_tax": -5}, "total_excluding_tax_ties_out", "total_excluding_tax"),
        ({"discount": -1}, "discount", "greater_than_or_equal_to"),
        ({"lines_amount": 7}, "lines_tie_out", "lines_tie_out"),
        ({"line_count": -1}, "line_count", "greater_than_or_equal_to"),
        ({"customer": "acct_1"}, "customer", "str_startswith"),
    ],
    ids=[
        "currency",
        "status",
        "total",
        "inclusive-as-exclusive",
        "total-excluding-tax",
        "negative-discount",
        "lines",
        "line-count",
        "customer-id",
    ],
)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(row=invoices())
def test_each_kind_of_bad_invoice_is_caught_with_its_reason(
    row: dict[str, Any], change: dict[str, Any], field: str, check: str
) -> None:
    bad = {**row, **change}
    if "inclusive_tax" in change:
        # Move the inclusive tax onto the exclusive side, keeping the tax total.
        inclusive = int(row["inclusive_tax"])
        exclusive = int(row["exclusive_tax"])
        bad.update(inclusive_tax=0, exclusive_tax=exclusive + inclusive)
        if inclusive == 0:
            return  # nothing was inclusive
    ties = int(bad["subtotal"]) - int(bad["discount"]) + int(bad["exclusive_tax"])
    if (
        ("total" in change and change["total"] == ties)
        or change.get("lines_amount") == bad["subtotal"]
        or ("total_excluding_tax" in change and row["total_excluding_tax"] == -5)
    ):
        return  # the change happened to keep the invoice tied out
    outcome = validate_frame(_frame([bad]), StripeInvoiceRecord, system="stripe", obj="invoice")
    failures = outcome.failures
    hit = failures[failures["field"] == field]
    assert not hit.empty, failures
    assert hit.iloc[0]["check_name"].startswith(check)
    assert hit.iloc[0]["source_id"] == row["source_id"]
    assert f"field {field}" in hit.iloc[0]["reason"]
