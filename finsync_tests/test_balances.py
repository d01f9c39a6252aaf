"""What is left to collect ties out: an invoice settled in Stripe without a payment finsync can
post (paid out of band, marked uncollectible) reaches the ERP as a document or as an exception
for finance, and reconciliation compares balances, not totals.

The scenarios run as a deployment does, against the sandbox over HTTP: the invoices the seeded
company settled before finsync first ran, and an invoice settled after it posted (the change in
Stripe, the nightly run that reads it, and the late-changes sensor's catch-up run).
"""

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from finsync_pipeline.master_data import DEFAULT_DIR
from finsync_pipeline.sandbox.generator import OOB_CLEARING_ACCOUNT_ID
from finsync_pipeline.sandbox.server import Sandbox
from finsync_tests.defs.test_assets import _resources
from finsync_tests.test_daily_runs import (
    FIRST_DAY,
    _daily,
    _late_changes,
    _rows,
    instance,  # noqa: F401  (fixture)
    sandbox,  # noqa: F401  (fixture)
)

TODAY = dt.date(2026, 10, 29)


def _open_posted(url: str) -> list[tuple[str, str, int]]:
    """Open invoices posted to NetSuite with nothing collected or credited: id, day, total."""
    return _rows(
        url,
        "SELECT i.invoice_id, i.partition_date, i.total_minor FROM invoices i "
        "JOIN posting_ledger l ON l.source_id = i.invoice_id AND l.doc_type = 'invoice' "
        "AND l.state = 'posted' WHERE i.status = 'open' AND i.total_minor > 0 "
        "AND i.amount_remaining_minor = i.total_minor "
        "AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = i.invoice_id "
        "AND p.status = 'succeeded') "
        "AND NOT EXISTS (SELECT 1 FROM credit_notes c WHERE c.invoice_id = i.invoice_id) "
        "ORDER BY i.invoice_id",
    )


def _catch_up(sb: Sandbox, url: str, runs: dg.DagsterInstance) -> None:
    """What the late-changes sensor launches: a catch-up run for each day behind."""
    for day in _late_changes(runs, url):
        _daily(sb, url, dt.date.fromisoformat(str(day)), runs, job_name="catch_up_job")


def _recon(url: str, invoice_id: str) -> tuple[Any, ...]:
    (row,) = _rows(
        url,
        "SELECT status, billing_status, billing_remaining_minor, erp_remaining_minor, "
        f"explanation FROM invoice_reconciliation WHERE invoice_id = '{invoice_id}'",
    )
    return row


def _planted(sb: Sandbox, kind: str) -> str:
    (item, *_rest) = sb.planted()[kind]
    return str(item["id"])


def use_clearing_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mappings in which finance named the sandbox NetSuite's clearing account for money
    received outside Stripe (``netsuite_oob_clearing_account_id``)."""
    mappings = tmp_path / "mappings"
    shutil.copytree(DEFAULT_DIR, mappings)
    settings = mappings / "erp_settings.csv"
    settings.write_text(
        settings.read_text().replace(
            "netsuite_oob_clearing_account_id,,",
            f"netsuite_oob_clearing_account_id,{OOB_CLEARING_ACCOUNT_ID},",
        )
    )
    monkeypatch.setenv("FINSYNC_MAPPINGS_DIR", str(mappings))


def test_an_invoice_settled_outside_stripe_payments_is_never_reported_matched(
    sandbox: Sandbox,  # noqa: F811
    sqlite_url: str,
    instance: dg.DagsterInstance,  # noqa: F811
) -> None:
    # The seeded month holds an invoice paid by wire transfer (marked paid out of band in
    # Stripe) and one finance gave up on (marked uncollectible).
    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=TODAY)
    paid_outside = _planted(sandbox, "paid_out_of_band")
    bad_debt = _planted(sandbox, "uncollectible")
    ((paid_total,),) = _rows(
        sqlite_url, f"SELECT total_minor FROM invoices WHERE invoice_id = '{paid_outside}'"
    )
    ((bad_total,),) = _rows(
        sqlite_url, f"SELECT total_minor FROM invoices WHERE invoice_id = '{bad_debt}'"
    )

    # Paid out of band: no Stripe payment exists to post, so NetSuite still shows it open.
    # Finance is told the amount to record, and reconciliation holds it for that exception.
    (detail,) = _rows(
        sqlite_url,
        "SELECT detail FROM finance_exceptions WHERE status = 'open' "
        f"AND kind = 'paid_out_of_band' AND source_id = '{paid_outside}'",
    )
    assert f": {paid_total} " in detail[0] and "received outside Stripe" in detail[0]
    status, billing_status, billing_left, erp_left, why = _recon(sqlite_url, paid_outside)
    assert (status, billing_status, billing_left, erp_left) == (
        "held_by_exception",
        "paid",
        0,
        paid_total,
    )
    assert "paid_out_of_band" in why

    # Uncollectible: written off in NetSuite on the bad-debt item, so both sides owe nothing.
    assert _rows(
        sqlite_url,
        "SELECT l.state, r.total_minor FROM posting_ledger l JOIN erp_document_requests r "
        "ON r.erp = l.erp AND r.doc_type = l.doc_type AND r.external_id = l.external_id "
        f"WHERE l.external_id = 'WRITEOFF_{bad_debt}'",
    ) == [("posted", bad_total)]
    status, billing_status, billing_left, erp_left, _why = _recon(sqlite_url, bad_debt)
    assert (status, billing_status, billing_left, erp_left) == (
        "matched",
        "uncollectible",
        bad_total,
        0,
    )


def test_an_invoice_marked_uncollectible_after_it_posted_is_written_off_once(
    sandbox: Sandbox,  # noqa: F811
    sqlite_url: str,
    instance: dg.DagsterInstance,  # noqa: F811
) -> None:
    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=TODAY - dt.timedelta(days=1))
    (invoice_id, _day, total), *_ = _open_posted(sqlite_url)
    stripe = _resources(sandbox.env, sqlite_url)["stripe"].get_client()
    stripe.post(
        f"/v1/invoices/{invoice_id}/mark_uncollectible", {}, idempotency_key=f"bad-{invoice_id}"
    )
    _daily(sandbox, sqlite_url, TODAY, instance)
    _catch_up(sandbox, sqlite_url, instance)
    status, billing_status, billing_left, erp_left, _why = _recon(sqlite_url, invoice_id)
    assert (status, billing_status, billing_left, erp_left) == (
        "matched",
        "uncollectible",
        total,
        0,
    )
    # Running again posts nothing twice.
    _catch_up(sandbox, sqlite_url, instance)
    _daily(sandbox, sqlite_url, TODAY, instance)
    assert _rows(
        sqlite_url,
        f"SELECT COUNT(*) FROM posting_ledger WHERE external_id = 'WRITEOFF_{invoice_id}'",
    ) == [(1,)]


def test_an_invoice_paid_out_of_band_is_received_into_the_clearing_account_finance_named(
    sandbox: Sandbox,  # noqa: F811
    sqlite_url: str,
    instance: dg.DagsterInstance,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Finance names the account wires clear through (the sandbox NetSuite's clearing account).
    use_clearing_account(tmp_path, monkeypatch)
    _daily(sandbox, sqlite_url, FIRST_DAY, instance, last_day=TODAY)
    paid_outside = _planted(sandbox, "paid_out_of_band")
    ((paid_total,),) = _rows(
        sqlite_url, f"SELECT amount_paid_minor FROM invoices WHERE invoice_id = '{paid_outside}'"
    )

    # One customer payment into the clearing account, applied to the invoice: closed in both.
    (payment,) = [
        p
        for p in sandbox.netsuite_records("customerpayment")
        if p["externalId"] == f"OOB_{paid_outside}"
    ]
    assert payment["account"]["id"] == "1200"
    (invoice,) = [
        i
        for i in sandbox.netsuite_records("invoice")
        if i["externalId"] == f"STRIPE_{paid_outside}"
    ]
    assert (invoice["status"], invoice["amountRemaining"]) == ("Paid In Full", 0)
    assert (
        _rows(
            sqlite_url,
            "SELECT kind FROM finance_exceptions WHERE status = 'open' "
            f"AND source_id = '{paid_outside}'",
        )
        == []
    )
    status, billing_status, billing_left, erp_left, _why = _recon(sqlite_url, paid_outside)
    assert (status, billing_status, billing_left, erp_left) == ("matched", "paid", 0, 0)
    assert _rows(
        sqlite_url,
        "SELECT status, billing_total_minor, erp_total_minor FROM payment_reconciliation "
        f"WHERE external_id = 'OOB_{paid_outside}'",
    ) == [("matched", paid_total, paid_total)]
    # Running again posts nothing twice.
    _daily(sandbox, sqlite_url, TODAY, instance)
    assert _rows(
        sqlite_url,
        f"SELECT state FROM posting_ledger WHERE external_id = 'OOB_{paid_outside}'",
    ) == [("posted",)]
