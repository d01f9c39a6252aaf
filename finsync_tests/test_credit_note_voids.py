"""A credit note voided in Stripe after its credit memo posted is carried to NetSuite by a
compensating invoice, never by editing the credit memo's amounts.

Run as a deployment does, against the sandbox over HTTP: the nightly run posts the credit memo,
finance voids the note in Stripe, and the next night (with the late-changes sensor's catch-up)
carries the void, so both sides say the invoice owes the restored amount again.
"""

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from finsync_pipeline.sandbox.generator import Company, CompanySpec, add_months, generate
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.conftest import TEST_END
from finsync_tests.defs.test_assets import _resources
from finsync_tests.test_balances import TODAY, _catch_up, _recon, use_clearing_account
from finsync_tests.test_daily_runs import (
    _daily,
    _rows,
    instance,  # noqa: F401  (fixture)
)

# The seeded company whose one pre-payment credit note, on an invoice still open, is issued
# when the first runs read it: the generator voids it two days later, before any run, so the
# fixture keeps it issued and the test voids it in Stripe after its credit memo posted.
SPEC = CompanySpec(accounts=30, months=2, seed=9, end=TEST_END)
FIRST_DAY = add_months(TEST_END, -SPEC.months) + dt.timedelta(days=1)


def _issued_pre_payment_note(company: Company) -> tuple[str, str, int]:
    """Make the company's pre-payment credit note issued (as Stripe holds it before a void):
    note id, invoice id, note total."""
    (note,) = [n for n in company.stripe["credit_note"] if n["type"] == "pre_payment"]
    (invoice,) = [i for i in company.stripe["invoice"] if i["id"] == note["invoice"]]
    assert invoice["status"] == "open"
    note.update(status="issued", voided_at=None)
    company.stripe["event"] = [
        e
        for e in company.stripe["event"]
        if not (e["type"] == "credit_note.voided" and e["data"]["object"]["id"] == note["id"])
    ]
    total = int(note["total"])
    invoice["pre_payment_credit_notes_amount"] += total
    invoice["amount_due"] -= total
    invoice["amount_remaining"] -= total
    return str(note["id"]), str(invoice["id"]), total


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Sandbox, tuple[str, str, int]]]:
    company = generate(SPEC)
    note = _issued_pre_payment_note(company)
    box = Sandbox(tmp_path / "sandbox")
    box.seed(company)
    with box:
        yield box, note


def _netsuite(sb: Sandbox, record_type: str, external_id: str) -> dict[str, Any]:
    (found,) = [r for r in sb.netsuite_records(record_type) if r["externalId"] == external_id]
    return found


def test_a_credit_note_voided_after_its_memo_posted_reopens_the_invoice_in_netsuite(
    seeded: tuple[Sandbox, tuple[str, str, int]],
    sqlite_url: str,
    instance: dg.DagsterInstance,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox, (note_id, invoice_id, note_total) = seeded
    # Finance posts wires to a clearing account: the invoice's later payment, at the end.
    use_clearing_account(tmp_path, monkeypatch)
    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=TODAY - dt.timedelta(days=1))
    ((left_before,),) = _rows(
        sqlite_url,
        f"SELECT amount_remaining_minor FROM invoices WHERE invoice_id = '{invoice_id}'",
    )
    assert _rows(
        sqlite_url, f"SELECT state FROM posting_ledger WHERE external_id = 'STRIPE_{note_id}'"
    ) == [("posted",)]
    memo_before = _netsuite(sandbox, "creditmemo", f"STRIPE_{note_id}")
    stripe = _resources(sandbox.env, sqlite_url)["stripe"].get_client()
    stripe.post(f"/v1/credit_notes/{note_id}/void", {}, idempotency_key=f"void-{note_id}")

    _daily(sandbox, sqlite_url, TODAY, instance)
    _catch_up(sandbox, sqlite_url, instance)

    # NetSuite: the invoice owes what Stripe restored; the compensating invoice re-charges
    # exactly what the credit memo credited, and the memo (its amounts unchanged) closes it.
    invoice = _netsuite(sandbox, "invoice", f"STRIPE_{invoice_id}")
    assert (invoice["status"], invoice["amountRemaining"]) == (
        "Open",
        Decimal(left_before + note_total) / 100,
    )
    charge = _netsuite(sandbox, "invoice", f"CNVOID_{note_id}")
    assert charge["status"] == "Paid In Full" and charge["amountRemaining"] == 0
    assert charge["total"] == memo_before["total"] == Decimal(note_total) / 100
    assert [(i["item"]["id"], i["amount"]) for i in charge["item"]["items"]] == [
        (i["item"]["id"], i["amount"]) for i in memo_before["item"]["items"]
    ]
    memo = _netsuite(sandbox, "creditmemo", f"STRIPE_{note_id}")
    assert memo["id"] == memo_before["id"] and memo["total"] == memo_before["total"]
    assert memo["status"] == "Fully Applied"
    assert [line["doc"]["id"] for line in memo["apply"]["items"]] == [charge["id"]]

    # The ledger holds each document once, posted; the exception is not raised.
    assert _rows(
        sqlite_url,
        "SELECT doc_type, external_id, state FROM posting_ledger "
        f"WHERE source_id = '{note_id}' ORDER BY doc_type",
    ) == [
        ("credit_memo", f"STRIPE_{note_id}", "posted"),
        ("invoice", f"CNVOID_{note_id}", "posted"),
    ]
    assert (
        _rows(
            sqlite_url,
            "SELECT kind FROM finance_exceptions WHERE status = 'open' "
            f"AND source_id = '{note_id}'",
        )
        == []
    )
    status, billing_status, billing_left, erp_left, _why = _recon(sqlite_url, invoice_id)
    assert (status, billing_status, billing_left, erp_left) == (
        "matched",
        "open",
        left_before + note_total,
        left_before + note_total,
    )
    assert _rows(
        sqlite_url,
        "SELECT status, billing_total_minor, erp_remaining_minor FROM invoice_reconciliation "
        f"WHERE external_id = 'CNVOID_{note_id}'",
    ) == [("matched", note_total, 0)]

    # Running again posts nothing twice.
    _catch_up(sandbox, sqlite_url, instance)
    _daily(sandbox, sqlite_url, TODAY, instance)
    assert (
        len(
            [
                r
                for r in sandbox.netsuite_records("invoice")
                if r["externalId"] == f"CNVOID_{note_id}"
            ]
        )
        == 1
    )
    assert (
        _netsuite(sandbox, "invoice", f"STRIPE_{invoice_id}")["amountRemaining"]
        == Decimal(left_before + note_total) / 100
    )

    # Later money for the invoice applies to it: the customer wires what Stripe restored.
    stripe.post(
        f"/v1/invoices/{invoice_id}/pay",
        {"paid_out_of_band": "true"},
        idempotency_key=f"wire-{invoice_id}",
    )
    _daily(sandbox, sqlite_url, TODAY + dt.timedelta(days=1), instance)
    _catch_up(sandbox, sqlite_url, instance)
    paid = _netsuite(sandbox, "invoice", f"STRIPE_{invoice_id}")
    assert (paid["status"], paid["amountRemaining"]) == ("Paid In Full", 0)
    wire = _netsuite(sandbox, "customerpayment", f"OOB_{invoice_id}")
    assert wire["payment"] == Decimal(left_before + note_total) / 100
    assert [line["doc"]["id"] for line in wire["apply"]["items"]] == [paid["id"]]
    status, billing_status, billing_left, erp_left, _why = _recon(sqlite_url, invoice_id)
    assert (status, billing_status, billing_left, erp_left) == ("matched", "paid", 0, 0)
