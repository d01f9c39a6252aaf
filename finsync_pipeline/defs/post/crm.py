"""Post: billing and posting status written back to Salesforce, exactly once per change."""

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.crm_writeback import CRM, DOC_TYPE, SalesforceStatusClient, account_statuses
from finsync_pipeline.defs.post.assets import _run_alive
from finsync_pipeline.logic.derive import ERP, LIVE_INVOICE_STATUSES
from finsync_pipeline.posting import PostingEngine
from finsync_pipeline.resources.salesforce import SalesforceResource
from finsync_pipeline.resources.settings import PipelineSettings
from finsync_pipeline.resources.warehouse import WarehouseResource

OWNERS = ["team:finance-data"]


@dg.asset(
    group_name="post",
    kinds={"salesforce", "python"},
    owners=OWNERS,
    deps=["erp_postings", "invoices"],
    pool="salesforce_api",
)
def crm_status_writeback(
    context: dg.AssetExecutionContext,
    salesforce: SalesforceResource,
    warehouse: WarehouseResource,
    settings: PipelineSettings,
) -> dg.MaterializeResult:
    """Each billing account's status in Salesforce: how many of its invoices are in the ERP,
    how many are paid, and the latest ERP invoice, so sales and customer success see whether a
    renewal was invoiced and paid. Only a changed status is sent, through the posting ledger."""
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        invoices = _invoices(conn)
    statuses = account_statuses(invoices)
    docs = [
        ledger.LedgerDoc(
            CRM,
            DOC_TYPE,
            r.customer_key,
            "finsync",
            r.customer_key,
            f"account-status-{r.customer_key}",
            None,
            r.payload,
        )
        for r in statuses.itertuples(index=False)
    ]
    with engine.begin() as conn:
        queued = ledger.enqueue(conn, docs, run_id=context.run.run_id, repost_changed=True)
    client = salesforce.get_client()
    poster = PostingEngine(
        engine,
        SalesforceStatusClient(client),
        erp=CRM,
        run_id=context.run.run_id,
        is_run_alive=lambda run_id: _run_alive(context.instance, run_id),
        max_attempts=settings.posting_max_attempts,
        batch_size=settings.posting_batch_size,
    )
    poster.recover()
    poster.post(DOC_TYPE)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(statuses),
            "changed (sent)": poster.stats.posted,
            "unchanged": queued.unchanged,
            "rejected": poster.stats.rejected,
            "deferred": poster.stats.deferred,
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
