"""Derive: ERP customer upserts and invoice-ready transactions, or the exception that holds them."""

import re
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from finsync_pipeline.logic.canonical import UNKNOWN_PARENT
from finsync_pipeline.logic.derive import (
    EXCEPTION_COLUMNS,
    EXCEPTION_KINDS,
    derive_customer_upserts,
    derive_invoice_ready,
    only_references_changed,
)
from finsync_pipeline.master_data import LegalEntity, MasterData
from finsync_pipeline.po_source import DEFAULT_PO_SOURCE, PoSource
from finsync_tests.golden import assert_golden, frame_to_plain

MASTER = MasterData(
    legal_entities={
        "US01": LegalEntity("US01", "finsync Inc.", "US", "USD", "1"),
        "JP01": LegalEntity("JP01", "finsync KK", "JP", "JPY", "4"),
        "KW01": LegalEntity("KW01", "finsync KSC", "KW", "KWD", "7"),
    },
    netsuite_currency_ids={"USD": "1", "JPY": "4", "KWD": "7"},
    netsuite_items={"prod_platform": "101", "prod_seats": "102"},
    netsuite_tax_item_id="190",
)

# key, parent, depth, legal entity, currency
CUSTOMERS = [
    ("001P", None, 0, "US01", "USD"),
    ("001C", "001P", 1, "US01", None),  # no currency of its own: the entity's
    ("001NOLE", None, 0, "ZZ99", "USD"),  # legal entity nobody mapped
    ("001KID", "001NOLE", 1, "US01", "USD"),  # its parent is held
    ("001ORPH", "001GONE", UNKNOWN_PARENT, "US01", "USD"),
    ("001JP", None, 0, "JP01", "JPY"),
    ("001KW", None, 0, "KW01", "KWD"),
    ("001CHF", None, 0, "US01", "CHF"),  # a currency with no NetSuite currency
]


def customers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": [c[0] for c in CUSTOMERS],
            "name": [f"{c[0]} Corp" for c in CUSTOMERS],
            "parent_customer_key": [c[1] for c in CUSTOMERS],
            "hierarchy_depth": pd.array([c[2] for c in CUSTOMERS], dtype="Int64"),
            "legal_entity": [c[3] for c in CUSTOMERS],
            "currency": [c[4] for c in CUSTOMERS],
            "correlation_id": [f"fs-{c[0].lower()}" for c in CUSTOMERS],
        }
    )


# invoice, customer key, status, currency, tax, lines [(product, quantity, amount)]
INVOICES: list[tuple[str, str | None, str, str, int, list[tuple[Any, int, int]]]] = [
    ("in_p", "001P", "paid", "USD", 12350, [("prod_platform", 1, 150000), ("prod_seats", 5, 2500)]),
    ("in_notax", "001C", "open", "USD", 0, [("prod_seats", 1, 1000)]),
    ("in_uncoll", "001C", "uncollectible", "USD", 7, [("prod_seats", 1, 99)]),
    ("in_jp", "001JP", "open", "JPY", 12000, [("prod_platform", 1, 120000)]),
    ("in_kw", "001KW", "open", "KWD", 5, [("prod_platform", 1, 1234)]),
    ("in_unmatched", None, "open", "USD", 0, [("prod_seats", 1, 100)]),
    ("in_nosf", "001NOTTHERE", "open", "USD", 0, [("prod_seats", 1, 100)]),
    ("in_held", "001NOLE", "open", "USD", 0, [("prod_seats", 1, 100)]),
    ("in_prod", "001P", "open", "USD", 0, [("prod_mystery", 1, 100), ("prod_seats", 1, 5)]),
    ("in_eur", "001P", "open", "EUR", 0, [("prod_seats", 1, 100)]),
    ("in_draft", "001P", "draft", "USD", 0, [("prod_seats", 1, 100)]),
    ("in_void", "001P", "void", "USD", 0, [("prod_seats", 1, 100)]),
]


def invoices() -> tuple[pd.DataFrame, pd.DataFrame]:
    heads, lines = [], []
    for n, (invoice_id, key, status, currency, tax, items) in enumerate(INVOICES):
        subtotal = sum(amount for _, _, amount in items)
        heads.append(
            {
                "invoice_id": invoice_id,
                "partition_date": f"2026-10-{n + 1:02d}",
                "number": f"INV-{n:04d}",
                "stripe_customer_id": f"cus_{n}",
                "customer_key": key,
                "status": status,
                "currency": currency,
                "subtotal_minor": subtotal,
                "discount_minor": 0,
                "tax_minor": tax,
                "inclusive_tax_minor": 0,
                "total_minor": subtotal + tax,
                "invoice_date": f"2026-10-{n + 1:02d}",
                "due_date": None if n % 2 else f"2026-11-{n + 1:02d}",
                "correlation_id": f"fs-{invoice_id}",
            }
        )
        for i, (product, quantity, amount) in enumerate(reversed(items)):
            lines.append(
                {
                    "invoice_id": invoice_id,
                    "line_number": len(items) - 1 - i,  # stored out of order on purpose
                    "product_id": product,
                    "quantity": quantity,
                    "amount_minor": amount,
                    "discount_minor": 0,
                    "inclusive_tax_minor": 0,
                    "description": f"{product} line",
                }
            )
    head = pd.DataFrame(heads).astype({"tax_minor": "Int64", "total_minor": "Int64"})
    body = pd.DataFrame(lines).astype(
        {"quantity": "Int64", "amount_minor": "Int64", "line_number": "Int64"}
    )
    return head, body


def derive_all() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    upserts, customer_problems = derive_customer_upserts(customers(), MASTER)
    head, body = invoices()
    ready, invoice_problems = derive_invoice_ready(head, body, upserts, customers(), MASTER)
    return upserts, customer_problems, ready, invoice_problems


def test_customer_upserts_match_the_golden_file() -> None:
    upserts, problems, _, _ = derive_all()
    assert_golden(
        "derive_customers",
        {"upserts": frame_to_plain(upserts), "exceptions": frame_to_plain(problems)},
    )


def test_invoice_ready_matches_the_golden_file() -> None:
    _, _, ready, problems = derive_all()
    assert_golden(
        "derive_invoices",
        {"ready": frame_to_plain(ready), "exceptions": frame_to_plain(problems)},
    )


def test_customers_are_placed_parents_first() -> None:
    upserts, _, _, _ = derive_all()
    assert list(upserts["customer_key"]) == ["001JP", "001KW", "001P", "001C"]
    child = upserts.set_index("customer_key").loc["001C"]
    assert child["payload"]["parent"] == {"$ref": ["customer", "SF_001P"]}
    assert child["parent_external_id"] == "SF_001P"
    # No currency of its own: the legal entity's currency.
    assert child["payload"]["currency"] == {"id": "1"}
    assert child["payload"]["subsidiary"] == {"id": "1"}


@pytest.mark.parametrize(
    ("kind", "source_id", "detail_mentions"),
    [
        pytest.param("unknown_legal_entity", "001NOLE", "'ZZ99'", id="unknown-legal-entity"),
        pytest.param("unknown_parent", "001ORPH", "001GONE", id="unknown-parent"),
        pytest.param("unknown_parent", "001KID", "001NOLE", id="child-of-a-held-parent"),
        pytest.param("unmapped_currency", "001CHF", "CHF", id="customer-currency"),
        pytest.param("unmatched_customer", "in_unmatched", "cus_5", id="no-salesforce-link"),
        pytest.param("unmatched_customer", "in_nosf", "cus_6", id="link-to-no-account"),
        pytest.param("customer_held", "in_held", "001NOLE", id="customer-held"),
        pytest.param("unmapped_product", "in_prod", "prod_mystery", id="unmapped-product"),
        pytest.param("unmapped_currency", "in_eur", "EUR", id="invoice-currency"),
    ],
)
def test_each_problem_becomes_an_exception_for_its_owner(
    kind: str, source_id: str, detail_mentions: str
) -> None:
    _, customer_problems, ready, invoice_problems = derive_all()
    problems = pd.concat([customer_problems, invoice_problems], ignore_index=True)
    hit = problems[(problems["kind"] == kind) & (problems["source_id"] == source_id)]
    assert len(hit) == 1, problems[["kind", "source_id"]].to_dict("records")
    row = hit.iloc[0]
    severity, owner = EXCEPTION_KINDS[kind]
    assert (row["severity"], row["owner_queue"]) == (severity, owner)
    assert owner in ("revops", "finance_ops")
    assert detail_mentions in row["detail"]
    assert source_id in row["detail"]
    assert row["correlation_id"] is not None
    # A held document is never also derived.
    assert source_id not in set(ready["invoice_id"])


def test_a_line_without_a_product_is_reported_readably() -> None:
    head, body = invoices()
    extra = {
        "invoice_id": "in_notax",
        "line_number": 1,
        "product_id": None,
        "quantity": 1,
        "amount_minor": 5,
        "discount_minor": 0,
        "inclusive_tax_minor": 0,
        "description": "no product",
    }
    body = pd.concat([body, pd.DataFrame([extra]).astype(body.dtypes.to_dict())])
    upserts, _ = derive_customer_upserts(customers(), MASTER)
    ready, problems = derive_invoice_ready(head, body, upserts, customers(), MASTER)
    assert "in_notax" not in set(ready["invoice_id"])
    detail = problems.set_index("source_id").loc["in_notax", "detail"]
    # A missing product reads back from the warehouse as NaN; finance must not be told "nan".
    assert not re.search(r"\bnan\b", detail), detail


def test_every_document_is_either_derived_or_held() -> None:
    upserts, customer_problems, ready, invoice_problems = derive_all()
    assert set(upserts["customer_key"]) | set(customer_problems["source_id"]) == {
        c[0] for c in CUSTOMERS
    }
    assert not set(upserts["customer_key"]) & set(customer_problems["source_id"])
    live = {i[0] for i in INVOICES if i[2] not in ("draft", "void")}
    assert set(ready["invoice_id"]) | set(invoice_problems["source_id"]) == live
    assert list(invoice_problems.columns) == EXCEPTION_COLUMNS


def test_drafts_and_voids_are_never_posted_nor_flagged() -> None:
    _, _, ready, problems = derive_all()
    for invoice_id in ("in_draft", "in_void"):
        assert invoice_id not in set(ready["invoice_id"])
        assert invoice_id not in set(problems["source_id"])


def test_a_tax_line_is_added_only_when_there_is_tax() -> None:
    _, _, ready, _ = derive_all()
    by_id = ready.set_index("invoice_id")
    taxed = by_id.loc["in_p", "payload"]["item"]["items"]
    assert taxed[-1] == {
        "item": {"id": "190"},
        "quantity": 1,
        "amount": Decimal("123.50"),
        "description": "Tax",
    }
    untaxed = by_id.loc["in_notax", "payload"]["item"]["items"]
    assert [line["item"]["id"] for line in untaxed] == ["102"]
    assert by_id.loc["in_notax", "line_count"] == 1


@pytest.mark.parametrize(
    ("invoice_id", "amounts"),
    [
        pytest.param("in_p", ["1500.00", "25.00", "123.50"], id="usd-cents"),
        pytest.param("in_jp", ["120000", "12000"], id="jpy-no-decimals"),
        pytest.param("in_kw", ["1.234", "0.005"], id="kwd-three-places"),
    ],
)
def test_amounts_are_exact_decimals_at_the_currency_exponent(
    invoice_id: str, amounts: list[str]
) -> None:
    _, _, ready, _ = derive_all()
    doc = ready.set_index("invoice_id").loc[invoice_id]
    items = doc["payload"]["item"]["items"]
    assert [str(line["amount"]) for line in items] == amounts
    assert all(isinstance(line["amount"], Decimal) for line in items)
    # Lines plus tax tie out to the billing total, to the minor unit.
    exponent = {"in_p": 2, "in_jp": 0, "in_kw": 3}[invoice_id]
    total = sum(line["amount"] for line in items)
    assert int(total.scaleb(exponent)) == doc["total_minor"]


def test_lines_keep_their_invoice_order() -> None:
    _, _, ready, _ = derive_all()
    items = ready.set_index("invoice_id").loc["in_p", "payload"]["item"]["items"]
    assert [line["item"]["id"] for line in items] == ["101", "102", "190"]
    assert items[1]["quantity"] == 5


def test_external_ids_are_deterministic() -> None:
    first = derive_all()
    second = derive_all()
    for a, b in zip(first, second, strict=True):
        pd.testing.assert_frame_equal(a, b)
    upserts, _, ready, _ = first
    assert set(upserts["external_id"]) == {f"SF_{k}" for k in upserts["customer_key"]}
    assert set(ready["external_id"]) == {f"STRIPE_{i}" for i in ready["invoice_id"]}
    by_id = ready.set_index("invoice_id")
    assert by_id.loc["in_notax", "payload"]["entity"] == {"$ref": ["customer", "SF_001C"]}
    assert "fs-in_p" in by_id.loc["in_p", "payload"]["memo"]


# -- purchase orders ---------------------------------------------------------------------------

# 001C requires a PO (PO_Required__c); the others do not.
PO_NUMBERS = {"in_notax": "PO-4500", "in_p": "PO-P1"}


def derive_with_pos(
    source: PoSource = DEFAULT_PO_SOURCE, in_erp: frozenset[str] = frozenset()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    people = customers().assign(
        po_required=[int(c[0] == "001C") for c in CUSTOMERS],
    )
    head, body = invoices()
    head["po_number"] = head["invoice_id"].map(PO_NUMBERS).astype("str")
    upserts, _ = derive_customer_upserts(people, MASTER)
    return derive_invoice_ready(
        head, body, upserts, people, MASTER, po_source=source, in_erp=in_erp
    )


@pytest.mark.parametrize(
    ("invoice_id", "other_ref"),
    [
        pytest.param("in_notax", "PO-4500", id="po-required-and-present"),
        pytest.param("in_p", "PO-P1", id="po-present-though-not-required"),
        pytest.param("in_jp", None, id="no-po-and-none-required"),
    ],
)
def test_the_purchase_order_lands_in_other_ref_num_and_nothing_else_does(
    invoice_id: str, other_ref: str | None
) -> None:
    ready, _ = derive_with_pos()
    payload = ready.set_index("invoice_id").loc[invoice_id, "payload"]
    assert payload.get("otherRefNum") == other_ref
    # The Stripe invoice number is no PO: it is named in the memo instead.
    number = f"INV-{[i[0] for i in INVOICES].index(invoice_id):04d}"
    assert number in payload["memo"]
    assert number != payload.get("otherRefNum")


@pytest.mark.parametrize(
    ("source", "where"),
    [
        pytest.param(DEFAULT_PO_SOURCE, "custom field 'PO Number' on the Stripe invoice", id="cf"),
        pytest.param(
            PoSource("stripe_metadata", "po_number"),
            "metadata key 'po_number' on the Stripe invoice",
            id="metadata",
        ),
    ],
)
def test_a_po_required_invoice_without_a_po_is_held_as_missing_po_for_finance_ops(
    source: PoSource, where: str
) -> None:
    ready, problems = derive_with_pos(source)
    assert "in_uncoll" not in set(ready["invoice_id"])
    hit = problems[problems["source_id"] == "in_uncoll"]
    assert list(hit["kind"]) == ["missing_po"]
    row = hit.iloc[0]
    assert row["owner_queue"] == "finance_ops"
    assert row["severity"] in ("medium", "high")
    assert (row["severity"], row["owner_queue"]) == EXCEPTION_KINDS["missing_po"]
    assert row["source_system"] == "stripe"
    assert row["legal_entity"] == "US01"
    for mention in ("in_uncoll", "INV-0002", "001C", "PO_Required__c", where):
        assert mention in row["detail"], (mention, row["detail"])
    # Its sibling of the same account carries its PO and is derived.
    assert "in_notax" in set(ready["invoice_id"])
    assert set(problems["kind"]) - {"missing_po"} == {
        "unmatched_customer",
        "customer_held",
        "unmapped_product",
        "unmapped_currency",
    }


def test_a_crm_po_missing_names_the_record_and_field_finance_sets() -> None:
    # The PO of a Salesforce source was resolved per invoice (logic.purchase_orders): the
    # detail says which Opportunity or quote lacks it, not a generic place.
    people = customers().assign(po_required=[int(c[0] == "001C") for c in CUSTOMERS])
    head, body = invoices()
    head["po_number"] = head["invoice_id"].map(PO_NUMBERS).astype("str")
    where = "field PO_Number__c on Salesforce Opportunity 0065g00000AbCdEAAZ"
    head["po_where"] = head["invoice_id"].map({"in_uncoll": where})
    upserts, _ = derive_customer_upserts(people, MASTER)
    source = PoSource("salesforce_opportunity", "PO_Number__c")
    ready, problems = derive_invoice_ready(head, body, upserts, people, MASTER, po_source=source)
    (detail,) = problems.loc[problems["source_id"] == "in_uncoll", "detail"]
    assert f"set the {where} (FINSYNC_PO_SOURCE)" in detail
    assert ready.set_index("invoice_id").loc["in_notax", "payload"]["otherRefNum"] == "PO-4500"


def test_an_invoice_already_in_the_erp_is_past_holding_for_a_po() -> None:
    # Posted before its account required a PO (or before finsync read POs): holding it now
    # would only hold its payments.
    ready, problems = derive_with_pos(in_erp=frozenset({"in_uncoll"}))
    assert "in_uncoll" in set(ready["invoice_id"])
    assert "missing_po" not in set(problems["kind"])
    assert "otherRefNum" not in ready.set_index("invoice_id").loc["in_uncoll", "payload"]


def test_without_a_po_required_column_no_invoice_is_held_for_a_po() -> None:
    # The canonical customers always carry po_required; older frames (fixtures) may not.
    _, _, _, problems = derive_all()
    assert "missing_po" not in set(problems["kind"])


@pytest.mark.parametrize(
    ("change", "references_only"),
    [
        pytest.param({"otherRefNum": None}, True, id="stripe-number-dropped-from-po-field"),
        pytest.param({"otherRefNum": "PO-1", "memo": "finsync fs-x (INV-1)"}, True, id="po-added"),
        pytest.param({"tranDate": "2026-10-02"}, False, id="date"),
        pytest.param({"item": {"items": []}}, False, id="lines"),
    ],
)
def test_only_a_change_of_reference_fields_leaves_a_posted_invoice_alone(
    change: dict[str, Any], references_only: bool
) -> None:
    posted = {
        "externalId": "STRIPE_in_1",
        "tranDate": "2026-10-01",
        "memo": "finsync fs-x stripe invoice in_1",
        "otherRefNum": "INV-1",
        "item": {"items": [{"item": {"id": "101"}, "amount": "1.00"}]},
    }
    new = {k: v for k, v in {**posted, **change}.items() if v is not None}
    assert only_references_changed(posted, new) is references_only
