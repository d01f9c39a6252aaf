"""Derive: what the ERP should hold, queued on the posting ledger, and what stops it."""

from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from finsync_pipeline import ledger
from finsync_pipeline.landing import (
    amounts_by_currency,
    load_payloads,
    quarantined_ids,
    sample,
    sync_exceptions,
)
from finsync_pipeline.logic.derive import (
    ERP,
    EXCEPTION_COLUMNS,
    EXCEPTION_KINDS,
    derive_customer_upserts,
    derive_invoice_ready,
    only_references_changed,
)
from finsync_pipeline.logic.purchase_orders import crm_frames, crm_purchase_orders
from finsync_pipeline.master_data import load_master_data
from finsync_pipeline.partitions import daily_partitions, date_bounds, single_run
from finsync_pipeline.po_source import PoSource, po_source
from finsync_pipeline.resources.warehouse import (
    WarehouseResource,
    frame_records,
    read_frame,
    replace_partitions,
    upsert_rows,
)

OWNERS = ["team:finance-data"]
CUSTOMER_KINDS = ["unknown_parent", "unknown_legal_entity", "unmapped_currency"]
INVOICE_KINDS = [
    "unmatched_customer",
    "customer_held",
    "unmapped_currency",
    "unmapped_product",
    "unmapped_discount",
    "missing_po",
    "posted_document_changed",
]


def _exception_metadata(found: pd.DataFrame, synced: dict[str, int]) -> dict[str, Any]:
    return {
        "exceptions found": len(found),
        "exceptions auto-resolved": synced["auto_resolved"],
        "by kind": dg.MetadataValue.json(found["kind"].value_counts().astype(int).to_dict()),
        "exception sample": sample(found, ["kind", "source_id", "detail"]),
    }


@dg.asset(group_name="derive", kinds={"python", "sql"}, owners=OWNERS, deps=["customers"])
def erp_customer_upserts(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The NetSuite customers finsync keeps in step, parents before children, queued on the
    posting ledger. A customer that cannot be placed (unknown legal entity or parent) becomes a
    finance exception instead."""
    engine = warehouse.get_engine()
    master = load_master_data()
    with engine.connect() as conn:
        customers = read_frame(conn, "SELECT * FROM customers ORDER BY customer_key")
    upserts, found = derive_customer_upserts(customers, master)
    docs = [
        ledger.LedgerDoc(
            ERP,
            "customer",
            r.external_id,
            "salesforce",
            r.customer_key,
            r.correlation_id,
            None,
            r.payload,
            depth=r.hierarchy_depth,
        )
        for r in upserts.itertuples(index=False)
    ]
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM erp_customer_upserts")
        rows = frame_records(upserts.assign(payload=[ledger.dumps(p) for p in upserts["payload"]]))
        upsert_rows(conn, "erp_customer_upserts", rows, ["erp", "external_id"])
        queued = ledger.enqueue(conn, docs, run_id=context.run.run_id, repost_changed=True)
        synced = sync_exceptions(
            conn, found, detected_by="erp_customer_upserts", kinds=CUSTOMER_KINDS
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(upserts),
            "ledger: new": queued.new,
            "ledger: changed (re-posted)": queued.changed,
            "ledger: unchanged": queued.unchanged,
            **_exception_metadata(found, synced),
        }
    )


@dg.asset(
    group_name="derive",
    kinds={"python", "sql"},
    owners=OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    # The Opportunities and quotes hold the PO when FINSYNC_PO_SOURCE names a Salesforce field.
    deps=[
        "invoices",
        "invoice_lines",
        "erp_customer_upserts",
        "salesforce_opportunities",
        "salesforce_contracts",
        "cpq_quotes",
    ],
)
def invoice_ready_transactions(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Invoices ready for the ERP: mapped to legal entity, subsidiary, currency and items, tied
    out to the cent, and queued on the posting ledger under a deterministic external id. An
    invoice that cannot be derived cleanly becomes a finance exception with its reason."""
    date_from, date_to = date_bounds(context)
    engine = warehouse.get_engine()
    master = load_master_data()
    source = po_source()
    rng = {"date_from": date_from, "date_to": date_to}
    with engine.connect() as conn:
        invoices = read_frame(
            conn,
            "SELECT * FROM invoices WHERE partition_date >= :date_from "
            "AND partition_date < :date_to",
            rng,
        )
        lines = read_frame(
            conn,
            "SELECT * FROM invoice_lines WHERE partition_date >= :date_from "
            "AND partition_date < :date_to",
            rng,
        )
        upserts = read_frame(conn, "SELECT customer_key, external_id FROM erp_customer_upserts")
        customers = read_frame(
            conn, "SELECT customer_key, legal_entity, po_required FROM customers"
        )
        # Invoices posted before their account required a PO, or before finsync read POs (a
        # net-negative one posted as a credit memo, its source the invoice too).
        in_erp = read_frame(
            conn,
            "SELECT source_id FROM posting_ledger WHERE erp = :erp "
            "AND doc_type IN ('invoice', 'credit_memo') "
            "AND state IN ('posted', 'in_flight') AND partition_date >= :date_from "
            "AND partition_date < :date_to",
            {"erp": ERP, **rng},
        )
        if source.crm:
            invoices = _with_crm_purchase_orders(conn, invoices, source)
    ready, found = derive_invoice_ready(
        invoices,
        lines,
        upserts,
        customers,
        master,
        po_source=source,
        in_erp=frozenset(in_erp["source_id"]),
    )
    # A net-negative invoice is a credit memo in the ERP; the ledger queues each type apart.
    docs = {
        doc_type: [
            ledger.LedgerDoc(
                ERP,
                doc_type,
                r.external_id,
                "stripe",
                r.invoice_id,
                r.correlation_id,
                r.partition_date,
                r.payload,
            )
            for r in group.itertuples(index=False)
        ]
        for doc_type, group in ready.groupby("doc_type")
    }
    with engine.begin() as conn:
        rows = frame_records(ready.assign(payload=[ledger.dumps(p) for p in ready["payload"]]))
        replace_partitions(
            conn,
            "invoice_ready_transactions",
            rows,
            date_from=date_from,
            date_to=date_to,
            key=["erp", "external_id"],
        )
        results = [
            ledger.enqueue(conn, batch, run_id=context.run.run_id, repost_changed=False)
            for batch in docs.values()
        ]
        queued = ledger.EnqueueResult(
            sum(r.new for r in results),
            sum(r.changed for r in results),
            sum(r.unchanged for r in results),
            [x for r in results for x in r.changed_after_posting],
        )
        changed_ids = _materially_changed(conn, ready, queued.changed_after_posting)
        if changed_ids:
            changed = ready[ready["external_id"].isin(changed_ids)]
            severity, owner = EXCEPTION_KINDS["posted_document_changed"]
            extra = pd.DataFrame(
                {
                    "kind": "posted_document_changed",
                    "source_system": "stripe",
                    "source_id": changed["invoice_id"],
                    "severity": severity,
                    "owner_queue": owner,
                    "partition_date": changed["partition_date"],
                    "correlation_id": changed["correlation_id"],
                    "legal_entity": changed["legal_entity"],
                    "detail": "the invoice changed after it was posted; a compensating "
                    "document is needed",
                },
                columns=EXCEPTION_COLUMNS,
            )
            found = pd.concat([found, extra], ignore_index=True)
        synced = sync_exceptions(
            conn,
            found,
            detected_by="invoice_ready_transactions",
            kinds=INVOICE_KINDS,
            date_from=date_from,
            date_to=date_to,
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(ready),
            "total by currency": dg.MetadataValue.json(
                amounts_by_currency(ready, "total_minor", "currency")
            ),
            "discount by currency": dg.MetadataValue.json(
                amounts_by_currency(ready, "discount_minor", "currency")
            ),
            "net-negative invoices (credit memos)": int((ready["doc_type"] == "credit_memo").sum()),
            "ledger: new": queued.new,
            "ledger: changed before posting": queued.changed,
            "ledger: unchanged": queued.unchanged,
            **_exception_metadata(found, synced),
        }
    )


def _with_crm_purchase_orders(
    conn: sa.Connection, invoices: pd.DataFrame, source: PoSource
) -> pd.DataFrame:
    """The invoices with the PO of the Salesforce Opportunity (or primary CPQ quote) each bills,
    and, where there is none, the record and field finance sets (``po_where``).

    Quarantined Opportunities and quotes are left out: a PO is never read from a record that
    broke its contract.
    """
    opportunities = _valid_payloads(conn, "salesforce_opportunities")
    contracts = _valid_payloads(conn, "salesforce_contracts")
    quotes = _valid_payloads(conn, "cpq_quotes") if source.kind == "salesforce_quote" else []
    opps, quote_frame = crm_frames(opportunities, contracts, quotes, source.name)
    resolved = crm_purchase_orders(invoices, opps, quote_frame, source)
    return invoices.drop(columns=["po_number"]).merge(resolved, on="invoice_id", how="left")


def _valid_payloads(conn: sa.Connection, table: str) -> list[dict[str, Any]]:
    landed = load_payloads(conn, table)
    bad = quarantined_ids(conn, table)
    return [
        p for sid, p in zip(landed["source_id"], landed["payload"], strict=True) if sid not in bad
    ]


def _materially_changed(conn: sa.Connection, ready: pd.DataFrame, changed: list[str]) -> list[str]:
    """The posted invoices (or the credit memos of net-negative ones) among ``changed`` whose
    amounts, dates, party or lines changed.

    One whose PO or memo alone changed (every invoice posted while ``otherRefNum`` carried the
    Stripe number, or a PO added after posting) keeps what it was posted with: a reference
    needs no compensating document, so finance is not asked for one.
    """
    if not changed:
        return []
    posted: dict[str, str] = dict(
        conn.execute(
            sa.text(
                "SELECT external_id, payload FROM posting_ledger WHERE erp = :erp "
                "AND doc_type IN ('invoice', 'credit_memo') AND external_id IN :ids"
            ).bindparams(sa.bindparam("ids", expanding=True)),
            {"erp": ERP, "ids": sorted(changed)},
        ).all()
    )
    derived = dict(zip(ready["external_id"], ready["payload"], strict=True))
    return [
        x
        for x in changed
        if x not in posted
        or not only_references_changed(
            ledger.loads(posted[x]), ledger.loads(ledger.dumps(derived[x]))
        )
    ]


@dg.asset(
    group_name="derive",
    kinds={"sql"},
    owners=OWNERS,
    deps=[
        "erp_customer_upserts",
        "invoice_ready_transactions",
        "credit_memo_requests",
        "payment_applications",
        "customer_refund_requests",
    ],
)
def finance_exceptions(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The finance exceptions queue: one row per problem with its kind, owner queue, source
    record and correlation id. Rows resolve themselves when their cause is gone."""
    with warehouse.get_engine().connect() as conn:
        rows = read_frame(
            conn,
            "SELECT kind, owner_queue, severity, source_system, source_id, status, first_seen, "
            "detail FROM finance_exceptions ORDER BY first_seen, kind, source_id",
        )
    open_rows = rows[rows["status"] == "open"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "open": len(open_rows),
            "resolved": int((rows["status"] == "resolved").sum()),
            "open by queue": dg.MetadataValue.json(
                open_rows["owner_queue"].value_counts().astype(int).to_dict()
            ),
            "open by kind": dg.MetadataValue.json(
                open_rows["kind"].value_counts().astype(int).to_dict()
            ),
            "oldest open": sample(open_rows, ["kind", "source_id", "first_seen"]),
        }
    )
