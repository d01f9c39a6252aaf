"""Property tests of the contracts: any valid row passes; each kind of bad row is caught with
the check that names it."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finsync_pipeline.logic.validation import validate_frame
from finsync_pipeline.money import EXPONENTS
from finsync_pipeline.schemas.stripe import StripeInvoiceRecord

LIVE = ["open", "paid", "uncollectible"]


@st.composite
def invoices(draw: st.DrawFn) -> dict[str, object]:
    """A Stripe invoice that ties out: lines sum to the subtotal, subtotal + tax = total."""
    lines = draw(
        st.lists(st.integers(min_value=-(10**6), max_value=10**9), min_size=1, max_size=30)
    )
    tax = draw(st.integers(min_value=0, max_value=10**8))
    subtotal = sum(lines)
    return {
        "source_id": "in_" + draw(st.text("abcdefghijkLMNOP0123456789", min_size=8, max_size=24)),
        "customer": "cus_" + draw(st.text("abcdef0123456789", min_size=6, max_size=14)),
        "status": draw(st.sampled_from(LIVE)),
        "currency": draw(st.sampled_from(sorted(EXPONENTS))),
        "subtotal": subtotal,
        "tax": tax,
        "total": subtotal + tax,
        "lines_amount": subtotal,
        "line_count": len(lines),
        "created": draw(st.integers(min_value=1, max_value=2**31)),
    }


def _frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    ints = ["subtotal", "tax", "total", "lines_amount", "line_count", "created"]
    return df.astype(
        {c: "Int64" for c in ints}
        | {"source_id": "str", "customer": "str", "status": "str", "currency": "str"}
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(invoices(), min_size=1, max_size=8, unique_by=lambda r: r["source_id"]))
def test_any_invoice_that_ties_out_passes(rows: list[dict[str, object]]) -> None:
    outcome = validate_frame(_frame(rows), StripeInvoiceRecord, system="stripe", obj="invoice")
    assert outcome.failures.empty


@pytest.mark.parametrize(
    ("change", "field", "check"),
    [
        ({"currency": "USDX"}, "currency", "iso_currency"),
        ({"status": "settled"}, "status", "isin"),
        ({"total": 1}, "total_ties_out", "total_ties_out"),
        ({"lines_amount": 7}, "lines_tie_out", "lines_tie_out"),
        ({"line_count": -1}, "line_count", "greater_than_or_equal_to"),
        ({"customer": "acct_1"}, "customer", "str_startswith"),
    ],
    ids=["currency", "status", "total", "lines", "line-count", "customer-id"],
)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(row=invoices())
def test_each_kind_of_bad_invoice_is_caught_with_its_reason(
    row: dict[str, object], change: dict[str, object], field: str, check: str
) -> None:
    bad = {**row, **change}
    if change.get("total") == bad["subtotal"] + bad["tax"] or (
        change.get("lines_amount") == bad["subtotal"]
    ):
        return  # the change happened to keep the invoice tied out
    outcome = validate_frame(_frame([bad]), StripeInvoiceRecord, system="stripe", obj="invoice")
    failures = outcome.failures
    hit = failures[failures["field"] == field]
    assert not hit.empty, failures
    assert hit.iloc[0]["check_name"].startswith(check)
    assert hit.iloc[0]["source_id"] == row["source_id"]
    assert f"field {field}" in hit.iloc[0]["reason"]
