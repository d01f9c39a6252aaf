"""Credit memos, void compensations, customer payments and refunds derived for the ERP."""

from dataclasses import replace
from decimal import Decimal

import pandas as pd
import pytest

from finsync_pipeline.logic.derive import (
    derive_credit_memos,
    derive_credit_note_voids,
    derive_customer_refunds,
    derive_payment_applications,
    derive_settlements,
    derive_void_compensations,
)
from finsync_pipeline.master_data import LegalEntity
from finsync_tests.logic.test_derive import MASTER

READY = pd.DataFrame(
    [
        {
            "invoice_id": "in_1",
            "external_id": "STRIPE_in_1",
            "customer_external_id": "SF_001A",
            "subsidiary_id": "1",
            "currency": "USD",
            "payload": {
                "entity": {"$ref": ["customer", "SF_001A"]},
                "subsidiary": {"id": "1"},
                "currency": {"id": "1"},
                "item": {
                    "items": [{"item": {"id": "101"}, "quantity": 1, "amount": Decimal("100.00")}]
                },
            },
        }
    ]
)


def _note(note_type: str, status: str = "issued", invoice: str = "in_1") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "credit_note_id": "cn_1",
                "invoice_id": invoice,
                "partition_date": "2026-10-05",
                "correlation_id": "fs-cn1",
                "currency": "USD",
                "type": note_type,
                "status": status,
                "reason": "order_change",
                "tax_minor": 800,
                "total_minor": 10800,
            }
        ]
    )


NOTE_LINES = pd.DataFrame(
    [{"credit_note_id": "cn_1", "invoice_line_item": "il_1", "amount_minor": 10000}]
)
INVOICE_LINES = pd.DataFrame([{"line_id": "il_1", "product_id": "prod_platform"}])


@pytest.mark.parametrize(
    ("note_type", "applied"),
    [("pre_payment", True), ("post_payment", False)],
    ids=["pre-payment-applied", "post-payment-not-applied"],
)
def test_a_credit_note_becomes_a_credit_memo_against_its_invoice(
    note_type: str, applied: bool
) -> None:
    docs, problems = derive_credit_memos(_note(note_type), NOTE_LINES, INVOICE_LINES, READY, MASTER)
    assert problems.empty
    memo = docs.iloc[0]
    assert (memo["doc_type"], memo["external_id"], memo["total_minor"]) == (
        "credit_memo",
        "STRIPE_cn_1",
        10800,
    )
    items = memo["payload"]["item"]["items"]
    assert [i["amount"] for i in items] == [Decimal("100.00"), Decimal("8.00")]
    assert memo["payload"]["entity"] == {"$ref": ["customer", "SF_001A"]}
    assert ("apply" in memo["payload"]) is applied
    if applied:
        assert memo["payload"]["apply"]["items"][0]["doc"] == {"$ref": ["invoice", "STRIPE_in_1"]}


def test_a_void_credit_note_or_one_on_an_unready_invoice_is_not_posted() -> None:
    docs, problems = derive_credit_memos(
        _note("pre_payment", status="void"), NOTE_LINES, INVOICE_LINES, READY, MASTER
    )
    assert docs.empty and problems.empty
    docs, problems = derive_credit_memos(
        _note("pre_payment", invoice="in_held"), NOTE_LINES, INVOICE_LINES, READY, MASTER
    )
    assert docs.empty
    assert list(problems["kind"]) == ["credit_note_held"]
    assert problems.iloc[0]["owner_queue"] == "finance_ops"


def _posted_memo(note_type: str) -> pd.DataFrame:
    """The ledger's posted credit memo of cn_1, as derive_credit_memos made it."""
    docs, _ = derive_credit_memos(_note(note_type), NOTE_LINES, INVOICE_LINES, READY, MASTER)
    return pd.DataFrame(
        {
            "credit_note_id": ["cn_1"],
            "erp_internal_id": ["7001"],
            "payload": [docs.iloc[0]["payload"]],
        }
    )


def test_a_credit_note_voided_after_its_memo_posted_is_carried_by_a_compensating_invoice() -> None:
    posted = _posted_memo("pre_payment")
    docs, problems = derive_credit_note_voids(_note("pre_payment", status="void"), posted)
    assert problems.empty
    by_type = {d["doc_type"]: d for d in docs.to_dict("records")}
    assert sorted(by_type) == ["credit_memo", "invoice"]
    # The compensating invoice re-charges exactly what the credit memo credited.
    charge = by_type["invoice"]
    memo = posted.iloc[0]["payload"]
    assert (charge["external_id"], charge["source_id"], charge["total_minor"]) == (
        "CNVOID_cn_1",
        "cn_1",
        10800,
    )
    body = charge["payload"]
    assert body["externalId"] == "CNVOID_cn_1"
    assert body["item"] == memo["item"]
    for field in ("entity", "subsidiary", "currency"):
        assert body[field] == memo[field]
    assert "fs-cn1" in body["memo"] and "void of stripe credit note cn_1" in body["memo"]
    assert "apply" not in body
    # The posted credit memo moves from the original invoice to the compensating one; nothing
    # else of it changes.
    again = by_type["credit_memo"]
    assert (again["external_id"], again["total_minor"]) == ("STRIPE_cn_1", 10800)
    assert {k: v for k, v in again["payload"].items() if k != "apply"} == {
        k: v for k, v in memo.items() if k != "apply"
    }
    assert again["payload"]["apply"]["items"] == [
        {"doc": {"$ref": ["invoice", "STRIPE_in_1"]}, "apply": False},
        {"doc": {"$ref": ["invoice", "CNVOID_cn_1"]}, "apply": True, "amount": Decimal("108.00")},
    ]


def test_a_voided_credit_note_whose_memo_credits_no_invoice_is_left_to_finance() -> None:
    # A post-payment credit memo is the customer's credit, applied to no invoice: there is no
    # application to move, so finance decides (never a guess).
    docs, problems = derive_credit_note_voids(
        _note("post_payment", status="void"), _posted_memo("post_payment")
    )
    assert docs.empty
    (problem,) = problems.to_dict("records")
    assert (problem["kind"], problem["source_id"], problem["owner_queue"]) == (
        "credit_note_voided",
        "cn_1",
        "finance_ops",
    )
    assert "10800 USD (minor units) on invoice in_1" in problem["detail"]
    assert "STRIPE_cn_1 (NetSuite id 7001)" in problem["detail"]
    assert "applied to no invoice" in problem["detail"]
    # An issued note, or a void one whose memo never posted, has nothing to carry.
    assert derive_credit_note_voids(_note("pre_payment"), _posted_memo("pre_payment"))[0].empty
    nothing = _posted_memo("pre_payment").iloc[0:0]
    assert derive_credit_note_voids(_note("pre_payment", status="void"), nothing)[0].empty


def _settled(status: str, *, remaining: int, paid: int, out_of_band: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "invoice_id": "in_1",
                "partition_date": "2026-10-01",
                "correlation_id": "fs-in1",
                "currency": "USD",
                "status": status,
                "total_minor": 10000,
                "amount_paid_minor": paid,
                "amount_remaining_minor": remaining,
                "paid_out_of_band": out_of_band,
            }
        ]
    )


def test_an_uncollectible_invoice_is_written_off_on_the_bad_debt_item() -> None:
    master = replace(MASTER, netsuite_bad_debt_item_id="192")
    # 2500 was collected before finance gave up; the rest is written off, applied to it.
    invoice = _settled("uncollectible", remaining=7500, paid=2500, out_of_band=0)
    docs, problems = derive_settlements(invoice, READY, {"in_1": 2500}, master)
    assert problems.empty
    (doc,) = docs.to_dict("records")
    assert (doc["doc_type"], doc["external_id"], doc["total_minor"]) == (
        "credit_memo",
        "WRITEOFF_in_1",
        7500,
    )
    assert doc["payload"]["item"]["items"] == [
        {
            "item": {"id": "192"},
            "quantity": 1,
            "amount": Decimal("75.00"),
            "description": "Bad debt write-off",
        }
    ]
    assert doc["payload"]["apply"]["items"] == [
        {"doc": {"$ref": ["invoice", "STRIPE_in_1"]}, "apply": True, "amount": Decimal("75.00")}
    ]
    # Without a bad-debt item finance writes it off by hand.
    docs, problems = derive_settlements(invoice, READY, {"in_1": 2500}, MASTER)
    assert docs.empty
    assert list(problems["kind"]) == ["uncollectible_invoice"]
    assert "7500 USD (minor units) unpaid" in problems.iloc[0]["detail"]
    assert "netsuite_bad_debt_item_id" in problems.iloc[0]["detail"]


def test_an_invoice_paid_out_of_band_tells_finance_the_amount_received_outside_stripe() -> None:
    invoice = _settled("paid", remaining=0, paid=10000, out_of_band=1)
    docs, problems = derive_settlements(invoice, READY, {"in_1": 4000}, MASTER)
    assert docs.empty
    (problem,) = problems.to_dict("records")
    assert (problem["kind"], problem["owner_queue"]) == ("paid_out_of_band", "finance_ops")
    assert "6000 USD (minor units) was received outside Stripe" in problem["detail"]
    assert "STRIPE_in_1" in problem["detail"]
    assert "netsuite_oob_clearing_account_id" in problem["detail"]
    # Paid by card, or settled on an invoice not ready for the ERP: nothing to do here.
    paid = _settled("paid", remaining=0, paid=10000, out_of_band=0)
    assert derive_settlements(paid, READY, {"in_1": 10000}, MASTER)[1].empty
    held = invoice.assign(invoice_id="in_held")
    assert derive_settlements(held, READY, {}, MASTER)[1].empty


def test_an_invoice_paid_out_of_band_is_a_payment_to_the_clearing_account_when_set() -> None:
    # Finance named the account out-of-band receipts clear through: finsync posts the receipt.
    master = replace(MASTER, netsuite_oob_clearing_account_id="1190")
    invoice = _settled("paid", remaining=0, paid=10000, out_of_band=1)
    docs, problems = derive_settlements(invoice, READY, {"in_1": 4000}, master)
    assert problems.empty
    (doc,) = docs.to_dict("records")
    assert (doc["doc_type"], doc["external_id"], doc["source_id"], doc["total_minor"]) == (
        "customer_payment",
        "OOB_in_1",
        "in_1",
        6000,
    )
    body = doc["payload"]
    assert body["customer"] == {"$ref": ["customer", "SF_001A"]}
    assert (body["payment"], body["account"], body["currency"]) == (
        Decimal("60.00"),
        {"id": "1190"},
        {"id": "1"},
    )
    assert body["apply"]["items"] == [
        {"doc": {"$ref": ["invoice", "STRIPE_in_1"]}, "apply": True, "amount": Decimal("60.00")}
    ]
    assert "fs-in1" in body["memo"] and "out of band" in body["memo"]
    # Everything was collected through Stripe after all: nothing outside it to post.
    assert derive_settlements(invoice, READY, {"in_1": 10000}, master)[0].empty


def test_a_credit_note_for_an_unmapped_product_is_an_exception() -> None:
    lines = pd.DataFrame([{"line_id": "il_1", "product_id": "prod_legacy"}])
    docs, problems = derive_credit_memos(_note("pre_payment"), NOTE_LINES, lines, READY, MASTER)
    assert docs.empty
    assert list(problems["kind"]) == ["unmapped_product"]
    assert "prod_legacy" in problems.iloc[0]["detail"]


def test_a_voided_posted_invoice_is_reversed_by_a_full_credit_memo() -> None:
    voided = pd.DataFrame(
        [
            {
                "invoice_id": "in_1",
                "partition_date": "2026-10-01",
                "currency": "USD",
                "total_minor": 10000,
                "correlation_id": "fs-in1",
            }
        ]
    )
    docs = derive_void_compensations(voided, READY)
    memo = docs.iloc[0]
    assert (memo["external_id"], memo["total_minor"]) == ("VOID_in_1", 10000)
    assert memo["payload"]["item"] == READY.iloc[0]["payload"]["item"]
    assert memo["payload"]["apply"]["items"][0]["amount"] == Decimal("100.00")


def _payments(**over: object) -> pd.DataFrame:
    row = {
        "payment_id": "ch_1",
        "partition_date": "2026-10-02",
        "correlation_id": "fs-ch1",
        "invoice_id": "in_1",
        "status": "succeeded",
        "currency": "USD",
        "amount_minor": 5000,
    }
    row.update(over)
    return pd.DataFrame([row])


@pytest.mark.parametrize(
    ("over", "kind"),
    [({"invoice_id": None}, "unmatched_payment"), ({"invoice_id": "in_held"}, "payment_held")],
    ids=["no-invoice", "invoice-held"],
)
def test_a_payment_that_cannot_be_applied_is_an_exception(over: dict, kind: str) -> None:
    docs, problems = derive_payment_applications(_payments(**over), READY, MASTER)
    assert docs.empty
    assert list(problems["kind"]) == [kind]
    assert problems.iloc[0]["owner_queue"] == "finance_ops"


def test_a_partial_payment_is_applied_for_what_was_collected_and_failures_are_skipped() -> None:
    payments = pd.concat([_payments(), _payments(payment_id="ch_2", status="failed")])
    docs, problems = derive_payment_applications(payments, READY, MASTER)
    assert problems.empty
    assert list(docs["external_id"]) == ["STRIPE_ch_1"]
    body = docs.iloc[0]["payload"]
    assert body["payment"] == Decimal("50.00")
    assert body["apply"]["items"] == [
        {"doc": {"$ref": ["invoice", "STRIPE_in_1"]}, "apply": True, "amount": Decimal("50.00")}
    ]


def test_a_service_credit_line_posts_to_the_service_credit_item() -> None:
    master = MASTER.__class__(**{**MASTER.__dict__, "netsuite_service_credit_item_id": "105"})
    lines = pd.DataFrame(
        [{"credit_note_id": "cn_1", "invoice_line_item": None, "amount_minor": 10000}]
    )
    docs, problems = derive_credit_memos(_note("pre_payment"), lines, INVOICE_LINES, READY, master)
    assert problems.empty
    assert docs.iloc[0]["payload"]["item"]["items"][0]["item"] == {"id": "105"}
    # Without that item in erp_settings.csv the credit waits as an exception.
    docs, problems = derive_credit_memos(_note("pre_payment"), lines, INVOICE_LINES, READY, MASTER)
    assert docs.empty and "(service credit)" in problems.iloc[0]["detail"]


def _refunds(**over: object) -> pd.DataFrame:
    row = {
        "refund_id": "re_1",
        "partition_date": "2026-10-09",
        "correlation_id": "fs-re1",
        "payment_id": "ch_1",
        "credit_note_id": "cn_1",
        "status": "succeeded",
        "reason": "requested_by_customer",
        "currency": "JPY",
        "amount_minor": 1200,
    }
    row.update(over)
    return pd.DataFrame([row])


MEMOS = pd.DataFrame(
    [
        {
            "credit_note_id": "cn_1",
            "external_id": "STRIPE_cn_1",
            "payload": {
                "entity": {"$ref": ["customer", "SF_001A"]},
                "subsidiary": {"id": "3"},
                "currency": {"id": "4"},
            },
        }
    ]
)
NOT_POSTED = pd.DataFrame(columns=["refund_id", "erp_internal_id"])
REFUND_MASTER = MASTER.__class__(
    **{
        **MASTER.__dict__,
        "legal_entities": {
            "UK01": LegalEntity("UK01", "finsync Ltd", "GB", "GBP", "3", "113"),
            "US01": LegalEntity("US01", "finsync Inc.", "US", "USD", "1"),  # refunds nothing
        },
    }
)


def test_a_refund_pays_out_the_credit_memo_of_its_credit_note() -> None:
    docs, problems = derive_customer_refunds(_refunds(), MEMOS, NOT_POSTED, REFUND_MASTER)
    assert problems.empty
    (doc,) = docs.to_dict("records")
    assert (doc["doc_type"], doc["external_id"], doc["total_minor"]) == (
        "customer_refund",
        "STRIPE_re_1",
        1200,
    )
    body = doc["payload"]
    assert body["customer"] == {"$ref": ["customer", "SF_001A"]}
    assert (body["subsidiary"], body["currency"]) == ({"id": "3"}, {"id": "4"})
    # Paid from the subsidiary's bank account, as legal_entities.csv maps it.
    assert body["account"] == {"id": "113"}
    assert body["tranDate"] == "2026-10-09"
    # JPY has no minor unit: 1200 minor units are 1200 yen, not 12.00.
    assert body["apply"]["items"] == [
        {"doc": {"$ref": ["credit_memo", "STRIPE_cn_1"]}, "apply": True, "amount": Decimal(1200)}
    ]
    assert "fs-re1" in body["memo"]


@pytest.mark.parametrize(
    ("over", "kind", "wanted"),
    [
        ({"credit_note_id": None}, "unmatched_refund", "no credit note"),
        ({"credit_note_id": "cn_held"}, "refund_held", "not ready for the ERP"),
    ],
    ids=["no-credit-note", "credit-note-held"],
)
def test_a_refund_with_no_credit_to_pay_out_is_an_exception(
    over: dict, kind: str, wanted: str
) -> None:
    docs, problems = derive_customer_refunds(_refunds(**over), MEMOS, NOT_POSTED, REFUND_MASTER)
    assert docs.empty
    (problem,) = problems.to_dict("records")
    assert (problem["kind"], problem["owner_queue"], problem["source_id"]) == (
        kind,
        "finance_ops",
        "re_1",
    )
    assert wanted in problem["detail"] and problem["correlation_id"] == "fs-re1"


@pytest.mark.parametrize("status", ["pending", "requires_action", "failed", "canceled"])
def test_an_unsettled_or_undone_refund_is_not_posted(status: str) -> None:
    docs, problems = derive_customer_refunds(
        _refunds(status=status), MEMOS, NOT_POSTED, REFUND_MASTER
    )
    assert docs.empty and problems.empty


def test_a_refund_undone_after_it_posted_asks_finance_to_void_it() -> None:
    posted = pd.DataFrame([{"refund_id": "re_1", "erp_internal_id": "7007"}])
    docs, problems = derive_customer_refunds(
        _refunds(status="failed"), MEMOS, posted, REFUND_MASTER
    )
    assert docs.empty
    (problem,) = problems.to_dict("records")
    assert problem["kind"] == "refund_reversed" and problem["severity"] == "high"
    assert "7007" in problem["detail"] and "void" in problem["detail"]


def test_a_refund_from_a_subsidiary_with_no_refund_account_is_an_exception() -> None:
    memos = MEMOS.assign(payload=[{**MEMOS.iloc[0]["payload"], "subsidiary": {"id": "1"}}])
    docs, problems = derive_customer_refunds(_refunds(), memos, NOT_POSTED, REFUND_MASTER)
    assert docs.empty
    (problem,) = problems.to_dict("records")
    assert problem["kind"] == "refund_account_unmapped"
    assert "subsidiary 1" in problem["detail"] and "legal_entities.csv" in problem["detail"]
