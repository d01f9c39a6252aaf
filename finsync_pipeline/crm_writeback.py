"""Billing and posting status written back to Salesforce, through the posting ledger.

Sales and customer success see on each Account whether its invoices reached the ERP and were
paid. Each status is a ledger document (ERP "salesforce", type ``account_status``, external
id the Account id): it is sent only when it changed, by an update that is idempotent (the
same field values again), and every outcome is recorded like an ERP posting.
"""

from typing import Any

import pandas as pd

from finsync_pipeline.resources.salesforce import SalesforceClient

CRM = "salesforce"
DOC_TYPE = "account_status"


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


class SalesforceStatusClient:
    """The posting engine's view of Salesforce: update an Account by its Id (an upsert that
    cannot create), look it up to settle an ambiguous send."""

    def __init__(self, client: SalesforceClient) -> None:
        self.client = client

    def upsert(self, record_type: str, external_id: str, body: dict[str, Any]) -> str:
        record_id, _created = self.client.upsert(record_type, "Id", external_id, body)
        return record_id

    def get_by_external_id(self, record_type: str, external_id: str) -> dict[str, Any] | None:
        # The Account always exists, so finding it proves nothing about an update; an update
        # carries its whole state, so an ambiguous one is settled by sending it again.
        return None
