"""Billing and posting status written back to Salesforce, through the posting ledger.

Sales and customer success see on each Account whether its invoices reached the ERP and were
paid, and on each closed-won renewal Opportunity whether that renewal was invoiced, is in the
ERP and is paid, or why it is held. Each status is a ledger document (ERP "salesforce", type
``account_status`` with the Account id, or ``opportunity_status`` with the Opportunity id, as
external id): it is sent only when it changed, by an update that is idempotent (the same
field values again), and every outcome is recorded like an ERP posting.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from finsync_pipeline.money import MoneyError, format_amount
from finsync_pipeline.posting import BatchOutcome
from finsync_pipeline.resources.salesforce import SalesforceClient

CRM = "salesforce"
ACCOUNT_STATUS = "account_status"
OPPORTUNITY_STATUS = "opportunity_status"
# Finsync_Invoice_Status__c is a Text(255) field.
MAX_STATUS_TEXT = 255
OPPORTUNITY_INPUT_COLUMNS = [
    "opportunity_id",
    "account_id",
    "status",
    "explanation",
    "term_start",
    "crm_currency",
    "crm_amount_minor",
    "invoice_id",
    "billing_currency",
    "billing_subtotal_minor",
    "invoice_number",
    "billing_status",
    "due_date",
    "ledger_state",
    "erp_internal_id",
]


def account_statuses(invoices: pd.DataFrame) -> pd.DataFrame:
    """One status per billing account from its live invoices and their ledger state.

    Args:
        invoices: customer_key, invoice_id, status (billing), ledger_state (None when not
            queued), erp_internal_id, invoice_date.
    """
    rows = []
    for key, group in invoices.sort_values("invoice_date").groupby("customer_key"):
        posted = group[group["ledger_state"] == "posted"]
        paid = int((posted["status"] == "paid").sum())
        held = int((group["ledger_state"] != "posted").sum())
        latest = posted["erp_internal_id"].iloc[-1] if len(posted) else None
        text = f"{len(posted)} invoiced in ERP, {paid} paid"
        if held:
            text += f", {held} held"
        rows.append(
            {
                "customer_key": str(key),
                "payload": {
                    "Finsync_Invoice_Status__c": text,
                    "Finsync_Paid__c": bool(len(posted)) and paid == len(posted) and not held,
                    "Finsync_ERP_Invoice_Id__c": None if latest is None else str(latest),
                },
            }
        )
    return pd.DataFrame(rows, columns=["customer_key", "payload"])


def hold_reasons(exceptions: pd.DataFrame, quarantine: pd.DataFrame) -> dict[str, str]:
    """Why each held record is held, in words a sales rep can pass on, by source id.

    An open finance exception names its kind, the team working it and its detail; a record in
    quarantine gives the data check it failed (the reason names the record and the field).
    The first exception by kind and the first check by reason win, so the text (and the ledger
    payload built from it) is the same on every run.

    Args:
        exceptions: Open finance exceptions: source_id, kind, owner_queue, detail.
        quarantine: Quarantined records: source_id, reason.
    """
    checks: dict[str, str] = {}
    for row in quarantine.sort_values(["source_id", "reason"]).itertuples(index=False):
        checks.setdefault(str(row.source_id), f"data check failed: {row.reason}")
    worked: dict[str, str] = {}
    for row in exceptions.sort_values(["source_id", "kind"]).itertuples(index=False):
        kind = str(row.kind).replace("_", " ")
        team = str(row.owner_queue).replace("_", " ")
        worked.setdefault(str(row.source_id), f"{kind}, with the {team} team: {row.detail}")
    # An exception says who is working on it: it wins over a quarantine note.
    return {**checks, **worked}


def opportunity_statuses(renewals: pd.DataFrame, holds: Mapping[str, str]) -> pd.DataFrame:
    """One status per closed-won renewal Opportunity, from its renewal reconciliation.

    ``Finsync_Paid__c`` is true only when the renewal's invoice is paid in billing and posted
    to the ERP; ``Finsync_ERP_Invoice_Id__c`` is the ERP internal id once it is posted.

    Args:
        renewals: The rows of ``renewal_reconciliation`` (opportunity_id, account_id, status,
            explanation, term_start, crm_currency, crm_amount_minor, invoice_id,
            billing_currency, billing_subtotal_minor) joined with the invoice's billing
            invoice_number, billing_status and due_date, and its ERP ledger_state and
            erp_internal_id (None where there is none). Amounts are integer minor units.
        holds: Why a record is held, by source id (``hold_reasons``): the account is looked up
            first (a held account holds its invoices, whose own exception only points back to
            it), then the invoice.

    Raises:
        ValueError: A reconciliation status this function does not know.
        TypeError: An amount that is not an integer.
    """
    rows = []
    for record in renewals.sort_values("opportunity_id").to_dict("records"):
        r = {k: _plain(v) for k, v in record.items()}
        invoice_id = r["invoice_id"]
        posted = r["ledger_state"] == "posted"
        erp_id = str(r["erp_internal_id"]) if posted and r["erp_internal_id"] else None
        text = _renewal_text(r, holds)
        rows.append(
            {
                "opportunity_id": str(r["opportunity_id"]),
                "status": r["status"],
                "payload": {
                    "Finsync_Invoice_Status__c": _truncate(text),
                    "Finsync_Paid__c": posted and r["billing_status"] == "paid",
                    "Finsync_ERP_Invoice_Id__c": erp_id,
                    "Finsync_Stripe_Invoice_Id__c": None if invoice_id is None else str(invoice_id),
                },
            }
        )
    return pd.DataFrame(rows, columns=["opportunity_id", "status", "payload"])


def _renewal_text(r: dict[str, Any], holds: Mapping[str, str]) -> str:
    status = r["status"]
    invoice = f"invoice {r['invoice_number'] or r['invoice_id']}"
    if status == "matched":
        return f"Invoiced in ERP ({invoice}), {_payment(r)}"
    if status == "missing_in_erp":
        if r["ledger_state"] in ("rejected", "dead"):
            return f"Invoiced ({invoice}), {_payment(r)}; the ERP refused it, finance ops is on it"
        return f"Invoiced ({invoice}), {_payment(r)}; not yet in the ERP"
    if status == "awaiting_window":
        return f"Invoiced ({invoice}), {_payment(r)}; waits for the ERP's batch posting window"
    if status == "missing_in_billing":
        return f"Not yet invoiced (the renewal term starts {r['term_start']})"
    if status == "held_by_exception":
        reason = next(
            (holds[k] for k in (r["account_id"], r["invoice_id"]) if k is not None and k in holds),
            r["explanation"],
        )
        return f"Held: {reason}"
    crm = _amount(r, "crm_amount_minor", "crm_currency")
    if status == "amount_mismatch":
        billed = _amount(r, "billing_subtotal_minor", "billing_currency")
        return f"Invoiced for a different amount: renewal {crm}, {invoice} {billed} before tax"
    if status == "currency_mismatch":
        billed = _amount(r, "billing_subtotal_minor", "billing_currency")
        return f"Invoiced in another currency: renewal {crm}, {invoice} {billed} before tax"
    if status == "status_mismatch":
        if r["billing_status"] == "void":
            return f"Not billed: {invoice} was voided in billing"
        return f"Invoiced ({invoice}); the ERP disagrees: {r['explanation']}"
    raise ValueError(
        f"renewal_reconciliation: opportunity {r['opportunity_id']} has unknown status {status!r}"
    )


def _payment(r: dict[str, Any]) -> str:
    billing = r["billing_status"]
    if billing == "paid":
        return "paid"
    if billing == "open":
        return f"awaiting payment (due {r['due_date']})" if r["due_date"] else "awaiting payment"
    if billing == "uncollectible":
        return "marked uncollectible"
    return f"billing status {billing or 'unknown'}"


def _amount(r: dict[str, Any], field: str, currency_field: str) -> str:
    minor, currency = r[field], r[currency_field]
    if minor is not None and (isinstance(minor, bool) or not isinstance(minor, int)):
        raise TypeError(
            f"renewal_reconciliation: opportunity {r['opportunity_id']} field {field} must be "
            f"integer minor units, got {minor!r}"
        )
    if minor is None or currency is None:
        return "no amount"
    try:
        return format_amount(minor, str(currency))
    except MoneyError:
        # Only display text: a currency finsync cannot format is shown as stored.
        return f"{minor} minor units of {currency}"


def _plain(value: Any) -> Any:
    """A pandas cell as a plain Python value: NA becomes None, numpy scalars become Python."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _truncate(text: str) -> str:
    if len(text) <= MAX_STATUS_TEXT:
        return text
    return text[: MAX_STATUS_TEXT - 3] + "..."


class SalesforceStatusClient:
    """The posting engine's view of Salesforce: update Accounts or Opportunities by their Id.

    A batch of statuses goes in sObject Collections (200 records a call, ``allOrNone`` false):
    a writeback of N statuses of one type costs ceil(N / 200) API calls of the org's daily
    quota, and a status Salesforce refuses is refused alone. One status at a time is an upsert
    on ``Id``, which cannot create a record.
    """

    def __init__(self, client: SalesforceClient) -> None:
        self.client = client

    def upsert_batch(
        self, record_type: str, docs: list[tuple[str, dict[str, Any]]]
    ) -> list[BatchOutcome]:
        results = self.client.update_collection(record_type, docs)
        return [BatchOutcome(None if r.error else r.record_id, r.error) for r in results]

    def upsert(self, record_type: str, external_id: str, body: dict[str, Any]) -> str:
        record_id, _created = self.client.upsert(record_type, "Id", external_id, body)
        return record_id

    def get_by_external_id(self, record_type: str, external_id: str) -> dict[str, Any] | None:
        # The record always exists, so finding it proves nothing about an update; an update
        # carries its whole state, so an ambiguous one is settled by sending it again.
        return None
