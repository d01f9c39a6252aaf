"""Canonical customers (with their hierarchy) and invoices from validated source frames."""

import pandas as pd
import pytest

from finsync_pipeline.logic.canonical import (
    UNKNOWN_PARENT,
    build_customers,
    build_invoices,
    build_subscriptions,
    hierarchy_depths,
)
from finsync_pipeline.logic.normalize import correlation_id


@pytest.mark.parametrize(
    ("parents", "expected"),
    [
        pytest.param({"a": None}, {"a": 0}, id="single-top"),
        pytest.param(
            {"c": "b", "b": "a", "a": None}, {"a": 0, "b": 1, "c": 2}, id="chain-listed-bottom-up"
        ),
        pytest.param(
            {"a": None, "b": "a", "c": "a", "d": "c"},
            {"a": 0, "b": 1, "c": 1, "d": 2},
            id="tree",
        ),
        pytest.param({"a": "ghost"}, {"a": UNKNOWN_PARENT}, id="unknown-parent"),
        pytest.param(
            {"a": "ghost", "b": "a", "c": "b"},
            {"a": UNKNOWN_PARENT, "b": UNKNOWN_PARENT, "c": UNKNOWN_PARENT},
            id="below-an-unknown-parent",
        ),
        pytest.param({"a": "a"}, {"a": UNKNOWN_PARENT}, id="own-parent"),
        pytest.param(
            {"a": "b", "b": "a", "c": "a", "top": None},
            {"a": UNKNOWN_PARENT, "b": UNKNOWN_PARENT, "c": UNKNOWN_PARENT, "top": 0},
            id="two-cycle-and-a-hanger-on",
        ),
        pytest.param(
            {"a": "c", "b": "a", "c": "b"},
            {"a": UNKNOWN_PARENT, "b": UNKNOWN_PARENT, "c": UNKNOWN_PARENT},
            id="three-cycle",
        ),
    ],
)
def test_hierarchy_depths(parents: dict[str, str | None], expected: dict[str, int]) -> None:
    assert hierarchy_depths(parents) == expected


def test_hierarchy_depths_does_not_depend_on_order() -> None:
    parents = {"a": "c", "b": "a", "c": "b", "d": None, "e": "d", "f": "e"}
    forward = hierarchy_depths(parents)
    backward = hierarchy_depths(dict(reversed(list(parents.items()))))
    assert forward == backward
    assert (forward["f"], forward["a"]) == (2, UNKNOWN_PARENT)


def accounts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": ["001CHILD", "001PARENT", "001ORPHAN"],
            "name": ["Child", "Parent", "Orphan"],
            "parent_id": ["001PARENT", None, "001GONE"],
            "currency": ["USD", "USD", "EUR"],
            "legal_entity": ["US01", "US01", None],
            "country": ["US", "US", "DE"],
            "po_required": [True, False, False],
        }
    )


def stripe_customers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": ["cus_new", "cus_old", "cus_p"],
            "salesforce_account_id": ["001CHILD", "001CHILD", "001PARENT"],
            "created": pd.array([200, 100, 50], dtype="Int64"),
        }
    )


def test_the_tax_profile_comes_from_the_billing_customer() -> None:
    billing = stripe_customers().assign(
        tax_exempt=["none", "reverse", "exempt"],
        tax_id_count=pd.array([0, 1, 0], dtype="Int64"),
        tax_id=[None, "FR40303265045", None],
        tax_exemption_number=[None, None, "EX-7"],
        tax_entity_use_code=[None, None, "E"],
    )
    out = build_customers(accounts(), billing, "run-1").set_index("customer_key")
    child, parent = out.loc["001CHILD"], out.loc["001PARENT"]
    assert (child["tax_exempt"], child["has_tax_id"], child["tax_id"]) == (
        "reverse",
        1,
        "FR40303265045",
    )
    assert (parent["tax_exemption_number"], parent["tax_entity_use_code"]) == ("EX-7", "E")
    assert pd.isna(parent["tax_id"]) and pd.isna(out.loc["001ORPHAN", "tax_exemption_number"])


def test_build_customers_places_each_account_in_its_hierarchy() -> None:
    out = build_customers(accounts(), stripe_customers(), "run-1").set_index("customer_key")
    assert list(out.index) == ["001CHILD", "001ORPHAN", "001PARENT"]
    assert out["hierarchy_depth"].to_dict() == {
        "001CHILD": 1,
        "001ORPHAN": UNKNOWN_PARENT,
        "001PARENT": 0,
    }
    # Two Stripe customers bill one account: the oldest is the billing customer.
    assert out.loc["001CHILD", "stripe_customer_id"] == "cus_old"
    assert pd.isna(out.loc["001ORPHAN", "stripe_customer_id"])
    assert out["po_required"].to_dict() == {"001CHILD": 1, "001ORPHAN": 0, "001PARENT": 0}
    assert out.loc["001CHILD", "correlation_id"] == correlation_id(
        "salesforce", "Account", "001CHILD"
    )
    assert set(out["source_system"]) == {"salesforce"}
    assert set(out["extraction_run_id"]) == {"run-1"}


def test_build_invoices_links_customers_and_lines() -> None:
    invoices = pd.DataFrame(
        {
            "source_id": ["in_1", "in_2"],
            "number": ["INV-1", None],
            "po_number": ["PO-1", None],
            "opportunity_id": ["006OPP", None],
            "customer": ["cus_p", "cus_unknown"],
            "subscription_id": ["sub_1", None],
            "status": ["open", "paid"],
            "currency": ["USD", "JPY"],
            "subtotal": pd.array([2000, 500], dtype="Int64"),
            "lines_amount": pd.array([2000, 500], dtype="Int64"),
            "discount": pd.array([0, 100], dtype="Int64"),
            "tax": pd.array([160, 0], dtype="Int64"),
            "inclusive_tax": pd.array([0, 0], dtype="Int64"),
            "total_excluding_tax": pd.array([2000, 400], dtype="Int64"),
            "total": pd.array([2160, 400], dtype="Int64"),
            "starting_balance": pd.array([0, 0], dtype="Int64"),
            "ending_balance": pd.array([0, 0], dtype="Int64"),
            "amount_due": pd.array([2160, 400], dtype="Int64"),
            "line_count": pd.array([1, 1], dtype="Int64"),
            "amount_paid": pd.array([0, 400], dtype="Int64"),
            "amount_remaining": pd.array([2160, 0], dtype="Int64"),
            "paid_out_of_band": [False, False],
            "invoice_date": ["2026-10-01", "2026-10-02"],
            "due_date": ["2026-10-31", None],
            "finalized_at": ["2026-10-01", "2026-10-02"],
        }
    )
    lines = pd.DataFrame(
        {
            "source_id": ["in_1", "in_2", "in_quarantined"],
            "line_id": ["il_1", "il_2", "il_3"],
            "line_number": pd.array([0, 0, 0], dtype="Int64"),
            "product_id": ["prod_platform", "prod_seats", "prod_seats"],
            "price_id": ["p1", "p2", "p3"],
            "description": ["Platform", "Seats", "Seats"],
            "quantity": pd.array([1, 5, 1], dtype="Int64"),
            "currency": ["USD", "JPY", "USD"],
            "amount": pd.array([2000, 500, 1], dtype="Int64"),
            "discount": pd.array([0, 100, 0], dtype="Int64"),
            "tax": pd.array([160, 0, 0], dtype="Int64"),
            "inclusive_tax": pd.array([0, 0, 0], dtype="Int64"),
            "period_start": [None, None, None],
            "period_end": [None, None, None],
        }
    )
    head, body = build_invoices(
        invoices,
        lines,
        pd.Series({"cus_p": "001PARENT"}),
        pd.Series({"in_1": "2026-10-01", "in_2": "2026-10-02"}),
        "run-9",
    )
    head = head.set_index("invoice_id")
    assert head.loc["in_1", "customer_key"] == "001PARENT"
    assert head.loc["in_1", "po_number"] == "PO-1"
    assert head.loc["in_1", "opportunity_id"] == "006OPP"
    assert pd.isna(head.loc["in_2", "po_number"])
    assert pd.isna(head.loc["in_2", "customer_key"])
    assert head.loc["in_1", "partition_date"] == "2026-10-01"
    assert (head.loc["in_1", "total_minor"], head.loc["in_1", "tax_minor"]) == (2160, 160)
    assert head.loc["in_1", "correlation_id"] == correlation_id("stripe", "invoice", "in_1")
    # Lines of invoices that did not make it (quarantined) are not carried along.
    assert list(body["line_id"]) == ["il_1", "il_2"]
    assert list(body["correlation_id"]) == list(head["correlation_id"])
    assert list(body["amount_minor"]) == [2000, 500]
    assert head.loc["in_2", "discount_minor"] == list(body["discount_minor"])[1] == 100


def _sub(sub_id: str, items: list[tuple[int, int, str, str]], contract: str | None) -> dict:
    return {
        "id": sub_id,
        "customer": "cus_1",
        "status": "active",
        "currency": "eur",
        "metadata": {"salesforce_contract_id": contract, "salesforce_opportunity_id": "006X"},
        "items": {
            "data": [
                {
                    "price": {
                        "unit_amount": unit,
                        "recurring": {
                            "interval": interval,
                            "interval_count": 1,
                            "usage_type": usage,
                        },
                    },
                    "quantity": qty,
                    "current_period_start": 1767225600 + n,
                    "current_period_end": 1769904000 + n,
                }
                for n, (unit, qty, interval, usage) in enumerate(items)
            ]
        },
    }


@pytest.mark.parametrize(
    ("items", "mrr"),
    [
        ([(50000, 1, "month", "licensed")], 50000),
        ([(120000, 1, "year", "licensed")], 10000),
        # 1000 x 1 / 12 = 83.33 -> 83 per item, rounded per item, half up.
        ([(1000, 1, "year", "licensed"), (1000, 1, "year", "licensed")], 166),
        ([(100, 3, "month", "licensed"), (999, 7, "month", "metered")], 300),
    ],
    ids=["monthly", "annual-divided-by-12", "rounded-per-item", "metered-excluded"],
)
def test_subscription_mrr_is_monthly_licensed_revenue_in_minor_units(
    items: list[tuple[int, int, str, str]], mrr: int
) -> None:
    contracts = pd.DataFrame(
        {
            "source_id": ["800A"],
            "start_date": ["2026-01-01"],
            "end_date": ["2026-12-31"],
            "term_months": pd.array([12], dtype="Int64"),
        }
    )
    out = build_subscriptions(
        [_sub("sub_1", items, "800A")], contracts, pd.Series({"cus_1": "001A"}), "run"
    )
    row = out.iloc[0]
    assert row["mrr_minor"] == mrr
    assert (row["customer_key"], row["currency"]) == ("001A", "EUR")
    assert (row["contract_start"], row["contract_term_months"]) == ("2026-01-01", 12)


def test_a_subscription_without_its_contract_keeps_empty_terms() -> None:
    out = build_subscriptions(
        [_sub("sub_2", [(100, 1, "month", "licensed")], "800missing")],
        pd.DataFrame(columns=["source_id", "start_date", "end_date", "term_months"]),
        pd.Series(dtype=object),
        "run",
    )
    assert out.iloc[0]["contract_start"] is None
    assert pd.isna(out.iloc[0]["customer_key"])


def test_canonical_invoices_validate_before_any_customer_has_landed() -> None:
    # A first run over a narrow window can extract invoices whose customers it has not seen:
    # the unmatched link stays an empty text column, and the contract still holds.
    from finsync_pipeline.logic.normalize import flatten_stripe_invoices
    from finsync_pipeline.schemas.canonical import Invoice

    invoice = {
        "id": "in_1",
        "customer": "cus_1",
        "status": "paid",
        "currency": "usd",
        "subtotal": 100,
        "total_excluding_tax": 100,
        "total": 100,
        "total_taxes": [],
        "created": 1760000000,
        "lines": {
            "data": [
                {
                    "id": "il_1",
                    "amount": 100,
                    "currency": "usd",
                    "quantity": 1,
                    "pricing": {"price_details": {"product": "prod_platform"}},
                }
            ]
        },
    }
    heads, lines = flatten_stripe_invoices([invoice])
    head, _ = build_invoices(
        heads, lines, pd.Series(dtype=object), pd.Series({"in_1": "2025-10-09"}), "run"
    )
    Invoice.validate(head)
    assert head["customer_key"].isna().all()
