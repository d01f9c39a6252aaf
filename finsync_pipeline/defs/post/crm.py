"""Post: billing and posting status written back to Salesforce, exactly once per change."""

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.crm_writeback import (
    ACCOUNT_STATUS,
    CRM,
    OPPORTUNITY_STATUS,
    SalesforceStatusClient,
    account_statuses,
    hold_reasons,
    opportunity_statuses,
)
from finsync_pipeline.defs.post.assets import (
    posting_engine_options,
    rejection_exceptions,
    resolve_posted,
)
from finsync_pipeline.landing import sample, sync_exceptions
from finsync_pipeline.logic.derive import ERP, LIVE_INVOICE_STATUSES
from finsync_pipeline.posting import PostingEngine
from finsync_pipeline.resources.salesforce import COLLECTION_LIMIT, SalesforceResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.warehouse import WarehouseResource, read_frame

OWNERS = ["team:finance-data"]


@dg.asset(
    group_name="post",
    kinds={"salesforce", "python"},
    owners=OWNERS,
    deps=["erp_postings", "invoices", "renewal_reconciliation"],
    pool="salesforce_api",
)
def crm_status_writeback(
    context: dg.AssetExecutionContext,
    salesforce: SalesforceResource,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    """Billing and posting status in Salesforce, so sales and customer success see whether a
    renewal was invoiced and paid: on each billing Account (its invoices in the ERP, paid, the
    latest ERP invoice) and on each closed-won renewal Opportunity (its invoice, in the ERP or
    not, paid or not, or why it is held). Only a changed status is sent, through the posting
    ledger."""
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        invoices = _invoices(conn)
        renewals = _renewals(conn)
        holds = hold_reasons(
            read_frame(
                conn,
                "SELECT source_id, kind, owner_queue, detail FROM finance_exceptions "
                "WHERE status = 'open'",
            ),
            read_frame(conn, "SELECT source_id, reason FROM quarantine"),
        )
    accounts = account_statuses(invoices)
    opportunities = opportunity_statuses(renewals, holds)
    docs = {
        ACCOUNT_STATUS: [
            ledger.LedgerDoc(
                CRM, ACCOUNT_STATUS, key, "finsync", key, f"account-status-{key}", None, payload
            )
            for key, payload in zip(accounts["customer_key"], accounts["payload"], strict=True)
        ],
        OPPORTUNITY_STATUS: [
            ledger.LedgerDoc(
                CRM, OPPORTUNITY_STATUS, key, "finsync", key, f"renewal-status-{key}", None, payload
            )
            for key, payload in zip(
                opportunities["opportunity_id"], opportunities["payload"], strict=True
            )
        ],
    }
    with engine.begin() as conn:
        queued = {
            doc_type: ledger.enqueue(conn, batch, run_id=context.run.run_id, repost_changed=True)
            for doc_type, batch in docs.items()
        }
    client = salesforce.get_client()
    options = posting_engine_options(context, settings)
    # One claimed batch is one sObject Collections call: as many as a call takes.
    options["batch_size"] = COLLECTION_LIMIT
    # One engine for both types: a Salesforce outage that pauses it while Accounts post
    # leaves the Opportunities pending too, for the next run, instead of retrying into it.
    poster = PostingEngine(
        engine,
        SalesforceStatusClient(client),
        erp=CRM,
        **options,
    )
    poster.recover()
    sent: dict[str, int] = {}
    for doc_type in docs:
        before = poster.stats.posted
        poster.post(doc_type)
        sent[doc_type] = poster.stats.posted - before
    # A refused update (a validation rule on a closed Opportunity, a field missing in the org)
    # is for the Salesforce admins (revops) to fix; `finsync exceptions retry` resends it.
    found = rejection_exceptions(
        poster.stats.rejections, system=CRM, name="Salesforce", owner_queue="revops"
    )
    with engine.begin() as conn:
        opened = sync_exceptions(conn, found, detected_by="crm_status_writeback", kinds=[])
        resolved = resolve_posted(conn, CRM)
    payloads = opportunities["payload"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(accounts) + len(opportunities),
            "accounts": len(accounts),
            "accounts changed (sent)": sent[ACCOUNT_STATUS],
            "renewal opportunities": len(opportunities),
            "renewal opportunities changed (sent)": sent[OPPORTUNITY_STATUS],
            "renewal opportunities paid": int(sum(p["Finsync_Paid__c"] for p in payloads)),
            "renewal opportunities held": int(
                (opportunities["status"] == "held_by_exception").sum()
            ),
            "changed (sent)": poster.stats.posted,
            "unchanged": sum(q.unchanged for q in queued.values()),
            "rejected": poster.stats.rejected,
            "deferred": poster.stats.deferred,
            "rejected sample": sample(
                pd.DataFrame(
                    poster.stats.rejections, columns=["doc_type", "external_id", "detail"]
                ),
                ["doc_type", "external_id", "detail"],
            ),
            "exceptions opened": opened["open_or_refreshed"],
            "exceptions auto-resolved": resolved,
            "salesforce requests": client.requests_made,
        }
    )


def _invoices(conn: sa.Connection) -> pd.DataFrame:
    """Live invoices of known customers with the state of their ledger row."""
    stmt = sa.text(
        "SELECT i.customer_key, i.invoice_id, i.status, i.invoice_date, l.state AS "
        "ledger_state, l.erp_internal_id FROM invoices i LEFT JOIN posting_ledger l ON "
        "l.erp = :erp AND l.doc_type = 'invoice' AND l.source_id = i.invoice_id "
        "WHERE i.customer_key IS NOT NULL AND i.status IN :live"
    ).bindparams(sa.bindparam("live", expanding=True))
    result = conn.execute(stmt, {"erp": ERP, "live": list(LIVE_INVOICE_STATUSES)})
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _renewals(conn: sa.Connection) -> pd.DataFrame:
    """Each reconciled renewal with its invoice's billing status and ERP ledger row."""
    result = conn.execute(
        sa.text(
            "SELECT r.opportunity_id, r.account_id, r.status, r.explanation, r.term_start, "
            "r.crm_currency, r.crm_amount_minor, r.invoice_id, r.billing_currency, "
            "r.billing_subtotal_minor, i.number AS invoice_number, i.status AS billing_status, "
            "i.due_date, l.state AS ledger_state, l.erp_internal_id "
            "FROM renewal_reconciliation r "
            "LEFT JOIN invoices i ON i.invoice_id = r.invoice_id "
            "LEFT JOIN posting_ledger l ON l.erp = :erp AND l.doc_type = 'invoice' "
            "AND l.source_id = r.invoice_id"
        ),
        {"erp": ERP},
    )
    # object dtype: a column of amounts with a NULL must stay integers, never become float.
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()), dtype=object)
