"""The statuses written back to Salesforce: what a sales rep reads on an Account or a renewal."""

from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from finsync_pipeline.crm_writeback import (
    MAX_STATUS_TEXT,
    OPPORTUNITY_INPUT_COLUMNS,
    account_statuses,
    hold_reasons,
    opportunity_statuses,
)
from finsync_pipeline.logic.reconcile import RENEWAL_STATUSES

OPP = "006Ab00000RenewAAA"
ACCOUNT = "001Ab00000AcmeAAA"
INVOICE = "in_1RenewalAcme"


def _renewal(**overrides: Any) -> dict[str, Any]:
    """A matched renewal whose invoice is paid in billing and posted to the ERP."""
    row: dict[str, Any] = {
        "opportunity_id": OPP,
        "account_id": ACCOUNT,
        "status": "matched",
        "explanation": "CRM, billing and the ERP agree on 120000 USD (minor units)",
        "term_start": "2026-10-01",
        "crm_currency": "USD",
        "crm_amount_minor": 120000,
        "invoice_id": INVOICE,
        "billing_currency": "USD",
        "billing_subtotal_minor": 120000,
        "invoice_number": "ACME-0004",
        "billing_status": "paid",
        "due_date": "2026-10-31",
        "ledger_state": "posted",
        "erp_internal_id": "5012",
    }
    row.update(overrides)
    return row


def _frame(*rows: dict[str, Any]) -> pd.DataFrame:
    # As the asset reads it: object dtype, so amounts stay integers next to a NULL.
    return pd.DataFrame(list(rows), columns=OPPORTUNITY_INPUT_COLUMNS, dtype=object)


HOLDS = {
    INVOICE: "tax mismatch, with the tax team: AvaTax computes 99.00 USD",
    "001QuarantinedAAA": "data check failed: salesforce Account 001QuarantinedAAA: field "
    "currency fails iso_currency (value 'XXX')",
}


@pytest.mark.parametrize(
    ("overrides", "text", "paid", "erp_id"),
    [
        pytest.param({}, "Invoiced in ERP (invoice ACME-0004), paid", True, "5012", id="paid"),
        pytest.param(
            {"billing_status": "open"},
            "Invoiced in ERP (invoice ACME-0004), awaiting payment (due 2026-10-31)",
            False,
            "5012",
            id="open-in-erp",
        ),
        pytest.param(
            {"billing_status": "uncollectible"},
            "Invoiced in ERP (invoice ACME-0004), marked uncollectible",
            False,
            "5012",
            id="uncollectible",
        ),
        pytest.param(
            {"status": "missing_in_erp", "ledger_state": "pending", "erp_internal_id": None},
            "Invoiced (invoice ACME-0004), paid; not yet in the ERP",
            False,
            None,
            id="paid-in-billing-not-yet-posted",
        ),
        pytest.param(
            {"status": "missing_in_erp", "ledger_state": "rejected", "erp_internal_id": None},
            "Invoiced (invoice ACME-0004), paid; the ERP refused it, finance ops is on it",
            False,
            None,
            id="refused-by-the-erp",
        ),
        pytest.param(
            {"status": "awaiting_window", "ledger_state": "pending", "erp_internal_id": None},
            "Invoiced (invoice ACME-0004), paid; waits for the ERP's batch posting window",
            False,
            None,
            id="waits-for-a-batch-window",
        ),
        pytest.param(
            {
                "status": "missing_in_billing",
                "invoice_id": None,
                "invoice_number": None,
                "billing_status": None,
                "billing_currency": None,
                "billing_subtotal_minor": None,
                "ledger_state": None,
                "erp_internal_id": None,
            },
            "Not yet invoiced (the renewal term starts 2026-10-01)",
            False,
            None,
            id="not-invoiced",
        ),
        pytest.param(
            {"status": "held_by_exception", "ledger_state": None, "erp_internal_id": None},
            "Held: tax mismatch, with the tax team: AvaTax computes 99.00 USD",
            False,
            None,
            id="held-by-an-exception-on-its-invoice",
        ),
        pytest.param(
            {
                "status": "held_by_exception",
                "account_id": "001QuarantinedAAA",
                "invoice_id": None,
                "billing_status": None,
                "ledger_state": None,
                "erp_internal_id": None,
            },
            "Held: data check failed: salesforce Account 001QuarantinedAAA: field currency "
            "fails iso_currency (value 'XXX')",
            False,
            None,
            id="held-its-account-in-quarantine",
        ),
        pytest.param(
            {
                "status": "held_by_exception",
                "account_id": "001QuarantinedAAA",
                "ledger_state": None,
                "erp_internal_id": None,
            },
            "Held: data check failed: salesforce Account 001QuarantinedAAA: field currency "
            "fails iso_currency (value 'XXX')",
            False,
            None,
            id="held-the-account-is-the-root-cause",
        ),
        pytest.param(
            {
                "status": "held_by_exception",
                "invoice_id": "in_unknown",
                "explanation": "the invoice is held by an open exception",
                "ledger_state": None,
                "erp_internal_id": None,
            },
            "Held: the invoice is held by an open exception",
            False,
            None,
            id="held-reason-from-the-reconciliation",
        ),
        pytest.param(
            {"status": "amount_mismatch", "billing_subtotal_minor": 110000},
            "Invoiced for a different amount: renewal 1,200.00 USD, invoice ACME-0004 "
            "1,100.00 USD before tax",
            True,
            "5012",
            id="amount-mismatch",
        ),
        pytest.param(
            {
                "status": "currency_mismatch",
                "billing_currency": "JPY",
                "billing_subtotal_minor": 18000,
            },
            "Invoiced in another currency: renewal 1,200.00 USD, invoice ACME-0004 18,000 JPY "
            "before tax",
            True,
            "5012",
            id="currency-mismatch",
        ),
        pytest.param(
            {"status": "status_mismatch", "billing_status": "void"},
            "Not billed: invoice ACME-0004 was voided in billing",
            False,
            "5012",
            id="voided-in-billing",
        ),
    ],
)
def test_each_renewal_status_reads_right_for_a_sales_rep(
    overrides: dict[str, Any], text: str, paid: bool, erp_id: str | None
) -> None:
    row = _renewal(**overrides)
    [status] = opportunity_statuses(_frame(row), HOLDS).to_dict("records")
    assert status["opportunity_id"] == OPP
    assert status["payload"] == {
        "Finsync_Invoice_Status__c": text,
        "Finsync_Paid__c": paid,
        "Finsync_ERP_Invoice_Id__c": erp_id,
        "Finsync_Stripe_Invoice_Id__c": row["invoice_id"],
    }


def test_a_long_reason_is_cut_to_the_field_length() -> None:
    holds = {INVOICE: "x" * 400}
    row = _renewal(status="held_by_exception", ledger_state=None, erp_internal_id=None)
    [status] = opportunity_statuses(_frame(row), holds).to_dict("records")
    text = status["payload"]["Finsync_Invoice_Status__c"]
    assert len(text) == MAX_STATUS_TEXT and text.startswith("Held: xxx") and text.endswith("...")


def test_an_unknown_status_or_a_float_amount_is_refused() -> None:
    with pytest.raises(ValueError, match=OPP):
        opportunity_statuses(_frame(_renewal(status="drifting")), {})
    with pytest.raises(TypeError, match="integer minor units"):
        opportunity_statuses(
            _frame(_renewal(status="amount_mismatch", billing_subtotal_minor=1100.0)), {}
        )


def test_an_open_exception_wins_over_quarantine_and_the_first_kind_wins() -> None:
    exceptions = pd.DataFrame(
        [
            (INVOICE, "unmapped_product", "finance_ops", "prod_legacy has no NetSuite item"),
            (INVOICE, "tax_mismatch", "tax", "AvaTax computes 99.00 USD"),
        ],
        columns=["source_id", "kind", "owner_queue", "detail"],
    )
    quarantine = pd.DataFrame(
        [
            (INVOICE, "stripe invoice in_1: field lines_tie_out fails lines_tie_out"),
            (ACCOUNT, "salesforce Account 001: field currency fails iso_currency (value 'XXX')"),
            (ACCOUNT, "salesforce Account 001: field billing_country fails iso_country"),
        ],
        columns=["source_id", "reason"],
    )
    reasons = hold_reasons(exceptions, quarantine)
    assert reasons == {
        INVOICE: "tax mismatch, with the tax team: AvaTax computes 99.00 USD",
        ACCOUNT: "data check failed: salesforce Account 001: field billing_country fails "
        "iso_country",
    }
    # Row order never changes the text, so an unchanged hold is never sent again.
    assert hold_reasons(exceptions.iloc[::-1], quarantine.iloc[::-1]) == reasons


@given(
    status=st.sampled_from(RENEWAL_STATUSES),
    billing=st.sampled_from(["paid", "open", "uncollectible", "void", None]),
    ledger=st.sampled_from(["posted", "pending", "in_flight", "rejected", "dead", None]),
    reason=st.text(max_size=600),
)
def test_paid_means_paid_in_billing_and_posted_in_the_erp(
    status: str, billing: str | None, ledger: str | None, reason: str
) -> None:
    row = _renewal(status=status, billing_status=billing, ledger_state=ledger)
    [status_row] = opportunity_statuses(_frame(row), {INVOICE: reason}).to_dict("records")
    payload = status_row["payload"]
    assert payload["Finsync_Paid__c"] is (billing == "paid" and ledger == "posted")
    assert payload["Finsync_ERP_Invoice_Id__c"] == ("5012" if ledger == "posted" else None)
    assert 0 < len(payload["Finsync_Invoice_Status__c"]) <= MAX_STATUS_TEXT


def test_account_status_counts_posted_paid_and_held_invoices() -> None:
    invoices = pd.DataFrame(
        [
            (ACCOUNT, "in_1", "paid", "2026-09-01", "posted", "5001"),
            (ACCOUNT, "in_2", "open", "2026-10-01", "posted", "5012"),
            (ACCOUNT, "in_3", "open", "2026-10-02", "pending", None),
            ("001PaidUpAAA", "in_4", "paid", "2026-10-01", "posted", "5013"),
        ],
        columns=[
            "customer_key",
            "invoice_id",
            "status",
            "invoice_date",
            "ledger_state",
            "erp_internal_id",
        ],
    )
    statuses = dict(zip(*account_statuses(invoices).to_dict("list").values(), strict=True))
    assert statuses[ACCOUNT] == {
        "Finsync_Invoice_Status__c": "2 invoiced in ERP, 1 paid, 1 held",
        "Finsync_Paid__c": False,
        "Finsync_ERP_Invoice_Id__c": "5012",
    }
    assert statuses["001PaidUpAAA"] == {
        "Finsync_Invoice_Status__c": "1 invoiced in ERP, 1 paid",
        "Finsync_Paid__c": True,
        "Finsync_ERP_Invoice_Id__c": "5013",
    }
