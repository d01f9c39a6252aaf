"""Net-negative invoices and customer credit balances: a downgrade that credits more than it
charges reaches NetSuite as a credit memo, and a later invoice Stripe paid from that credit
has the credit memo applied to it, for exactly what Stripe applied."""

from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from finsync_pipeline.logic.derive import (
    balance_applied,
    derive_balance_applications,
    derive_customer_upserts,
    derive_invoice_ready,
)
from finsync_pipeline.logic.normalize import flatten_stripe_invoices
from finsync_pipeline.logic.reconcile import (
    as_erp_documents,
    balance_applications_expected,
    reconcile_invoices,
    reconcile_payments,
)
from finsync_pipeline.logic.validation import validate_frame
from finsync_pipeline.schemas.stripe import StripeInvoiceRecord
from finsync_tests.logic.test_invoice_shapes import (
    CUSTOMERS,
    MASTER,
    _canonical,
    stripe_invoice,
)


def downgrade() -> dict[str, Any]:
    """A downgrade billed at once: 100.00 for the rest of the period on the smaller plan, and
    300.00 back for the unused time on the larger one, both taxed at 8.25%. The total is
    -216.50: nothing is due, and Stripe puts the credit on the customer's balance."""
    record = stripe_invoice(
        "in_down",
        "usd",
        [
            ("prod_platform", 10000, 0, 825, "exclusive"),
            ("prod_seats", -30000, 0, -2475, "exclusive"),
        ],
        subtotal=-20000,
        total=-21650,
        total_excluding_tax=-20000,
        status="paid",
    )
    record.update(starting_balance=0, ending_balance=-21650, amount_due=0, amount_paid=0)
    return record


def test_a_net_negative_invoice_passes_the_contract_as_stripe_bills_it() -> None:
    heads, _ = flatten_stripe_invoices([downgrade()])
    outcome = validate_frame(heads, StripeInvoiceRecord, system="stripe", obj="invoice")
    assert outcome.failures.empty, outcome.failures["reason"].tolist()
    head, _ = _canonical(downgrade())
    row = head.iloc[0]
    assert (row["total_minor"], row["amount_due_minor"]) == (-21650, 0)
    assert (row["starting_balance_minor"], row["ending_balance_minor"]) == (0, -21650)


@pytest.mark.parametrize(
    "change",
    [
        # The credit went to the balance: nothing can be due, let alone a negative amount.
        {"amount_due": -21650},
        # A credit balance of 50.00 applied to a 129.90 invoice leaves 79.90 due, not 129.90.
        {"total": 12990, "starting_balance": -5000, "amount_due": 12990},
    ],
    ids=["negative-amount-due", "balance-not-applied"],
)
def test_the_contract_refuses_an_amount_due_that_ignores_the_balance(
    change: dict[str, int],
) -> None:
    heads, _ = flatten_stripe_invoices([{**downgrade(), **change}])
    outcome = validate_frame(heads, StripeInvoiceRecord, system="stripe", obj="invoice")
    assert set(outcome.failures["check_name"]) & {"amount_due_ties_out", "greater_than_or_equal_to"}


def test_a_net_negative_invoice_derives_a_credit_memo_never_a_negative_invoice() -> None:
    head, body = _canonical(downgrade())
    upserts, _ = derive_customer_upserts(CUSTOMERS, MASTER)
    ready, problems = derive_invoice_ready(head, body, upserts, CUSTOMERS, MASTER)
    assert problems.empty, problems["detail"].tolist()
    (row,) = ready.to_dict("records")
    assert (row["doc_type"], row["external_id"]) == ("credit_memo", "STRIPE_CREDIT_in_down")
    # The credit memo's own total: what it credits.
    assert row["total_minor"] == 21650
    payload = row["payload"]
    assert payload["externalId"] == "STRIPE_CREDIT_in_down"
    # Every line negated, the tax line too: the credit is the unused time, less the new plan.
    amounts = [i["amount"] for i in payload["item"]["items"]]
    assert [str(a) for a in amounts] == ["-100.00", "300.00", "16.50"]
    assert sum(amounts, Decimal(0)) == Decimal("216.50")
    # Credit on account: applied to nothing, and a credit memo has no due date.
    assert "apply" not in payload and "dueDate" not in payload
    assert payload["entity"] == {"$ref": ["customer", "SF_001US"]}
    assert "net negative" in payload["memo"]


def test_an_invoice_that_is_not_net_negative_is_still_an_invoice() -> None:
    head, body = _canonical(
        stripe_invoice(
            "in_up",
            "usd",
            [("prod_platform", 10000, 0, 0, "exclusive")],
            subtotal=10000,
            total=10000,
            total_excluding_tax=10000,
        )
    )
    upserts, _ = derive_customer_upserts(CUSTOMERS, MASTER)
    ready, _ = derive_invoice_ready(head, body, upserts, CUSTOMERS, MASTER)
    assert ready[["doc_type", "external_id"]].values.tolist() == [["invoice", "STRIPE_in_up"]]


@pytest.mark.parametrize(
    ("start", "end", "total", "applied"),
    [
        pytest.param(0, 0, 10000, 0, id="no-balance"),
        pytest.param(-3000, 0, 10000, 3000, id="credit-pays-part"),
        pytest.param(-15000, -5000, 10000, 10000, id="credit-pays-all-and-some-is-left"),
        pytest.param(0, -21650, -21650, 0, id="net-negative-adds-credit"),
        pytest.param(-1000, -22650, -21650, 0, id="net-negative-on-a-credit"),
        pytest.param(2500, 0, 10000, 0, id="debt-carried-forward"),
    ],
)
def test_the_credit_stripe_applied_is_what_the_balance_moved_by(
    start: int, end: int, total: int, applied: int
) -> None:
    invoice = {
        "starting_balance_minor": start,
        "ending_balance_minor": end,
        "total_minor": total,
    }
    assert balance_applied(invoice) == applied


def _later(start: int, end: int, total: int, invoice_id: str = "in_later") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "invoice_id": invoice_id,
                "partition_date": "2026-10-20",
                "currency": "USD",
                "status": "paid",
                "total_minor": total,
                "starting_balance_minor": start,
                "ending_balance_minor": end,
                "amount_due_minor": max(0, total + start),
                "correlation_id": f"fs-{invoice_id}",
            }
        ]
    )


READY = pd.DataFrame(
    [
        {
            "invoice_id": "in_later",
            "external_id": "STRIPE_in_later",
            "customer_external_id": "SF_001US",
            "currency": "USD",
        }
    ]
)
CREDITS = pd.DataFrame(
    [
        # Listed newest first: the oldest is drawn on first all the same.
        ("STRIPE_CREDIT_in_new", "SF_001US", "USD", 20000, "2026-10-12"),
        ("STRIPE_CREDIT_in_old", "SF_001US", "USD", 10000, "2026-10-05"),
        ("STRIPE_CREDIT_in_eur", "SF_001US", "EUR", 90000, "2026-10-01"),
        ("STRIPE_CREDIT_in_other", "SF_001EU", "USD", 90000, "2026-10-01"),
    ],
    columns=["external_id", "customer_external_id", "currency", "total_minor", "partition_date"],
)


def _credits_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["doc"]["$ref"][1], str(c["amount"])) for c in doc["payload"]["credit"]["items"]]


def test_a_later_invoice_paid_from_the_balance_gets_the_credit_memos_applied_oldest_first() -> None:
    # Stripe applied 216.50 of credit to a 300.00 invoice: 83.50 was left to charge.
    docs, problems = derive_balance_applications(
        _later(-21650, 0, 30000), READY, CREDITS, {}, MASTER
    )
    assert problems.empty, problems["detail"].tolist()
    (doc,) = docs.to_dict("records")
    assert (doc["doc_type"], doc["external_id"]) == ("customer_payment", "BALANCE_in_later")
    assert _credits_of(doc) == [
        ("STRIPE_CREDIT_in_old", "100.00"),
        ("STRIPE_CREDIT_in_new", "116.50"),
    ]
    payload = doc["payload"]
    # No money moves: a payment of 0 carries the credit to the invoice, for what Stripe applied.
    assert payload["payment"] == Decimal("0.00")
    assert payload["apply"]["items"] == [
        {
            "doc": {"$ref": ["invoice", "STRIPE_in_later"]},
            "apply": True,
            "amount": Decimal("216.50"),
        }
    ]
    assert payload["customer"] == {"$ref": ["customer", "SF_001US"]}


def test_credit_another_application_already_took_is_not_applied_twice() -> None:
    docs, _ = derive_balance_applications(
        _later(-21650, 0, 30000), READY, CREDITS, {"STRIPE_CREDIT_in_old": 4000}, MASTER
    )
    (doc,) = docs.to_dict("records")
    assert _credits_of(doc) == [
        ("STRIPE_CREDIT_in_old", "60.00"),
        ("STRIPE_CREDIT_in_new", "156.50"),
    ]


def test_a_balance_the_erp_holds_no_credit_for_is_an_exception_with_the_amount() -> None:
    # 400.00 of credit from before finsync's history: NetSuite has only 300.00 for it.
    docs, problems = derive_balance_applications(
        _later(-40000, 0, 50000), READY, CREDITS, {}, MASTER
    )
    assert docs.empty
    (problem,) = problems.to_dict("records")
    assert (problem["kind"], problem["owner_queue"], problem["source_id"]) == (
        "customer_balance_unmatched",
        "finance_ops",
        "in_later",
    )
    assert "40000 USD" in problem["detail"] and "30000" in problem["detail"]


def test_an_application_whose_invoice_is_held_waits_for_it() -> None:
    docs, problems = derive_balance_applications(
        _later(-21650, 0, 30000), READY.iloc[0:0], CREDITS, {}, MASTER
    )
    assert docs.empty
    assert problems["kind"].tolist() == ["payment_held"]


def _erp(*rows: tuple[str, str, int, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "source_id": sid,
                "external_id": eid,
                "tran_date": "2026-10-12",
                "currency": "USD",
                "total_minor": total,
                "memo": memo,
            }
            for sid, eid, total, memo in rows
        ],
        columns=["source_id", "external_id", "tran_date", "currency", "total_minor", "memo"],
    )


def test_a_net_negative_invoice_reconciles_against_its_credit_memo() -> None:
    billing = pd.DataFrame(
        [
            {
                "invoice_id": "in_down",
                "external_id": "STRIPE_in_down",
                "partition_date": "2026-10-12",
                "currency": "USD",
                "total_minor": -21650,
                "correlation_id": "fs-0123456789abcdef0123",
            }
        ]
    )
    erp = _erp(("5001", "STRIPE_CREDIT_in_down", 21650, "finsync fs-0123456789abcdef0123 ..."))
    recon = reconcile_invoices(as_erp_documents(billing), erp, set())
    assert recon[["external_id", "status"]].values.tolist() == [
        ["STRIPE_CREDIT_in_down", "matched"]
    ]
    assert (recon.iloc[0]["billing_total_minor"], recon.iloc[0]["erp_total_minor"]) == (
        21650,
        21650,
    )


def test_the_balance_application_reconciles_as_a_payment_of_zero() -> None:
    expected = balance_applications_expected(_later(-21650, 0, 30000))
    assert expected[["payment_id", "external_id", "total_minor"]].values.tolist() == [
        ["in_later", "BALANCE_in_later", 0]
    ]
    erp = _erp(("5002", "BALANCE_in_later", 0, "finsync fs-in_later stripe invoice in_later"))
    recon = reconcile_payments(expected, erp, set())
    assert recon["status"].tolist() == ["matched"]
    # An invoice that drew nothing on a balance expects no such payment.
    assert balance_applications_expected(_later(0, 0, 30000)).empty
