"""Derive: credit memos, customer payments and refunds for the ERP, queued on the posting ledger.

Change-driven like the canonical payments and credit notes they read: each run derives from
every canonical row whose version (the run that landed it) it has not derived from yet, as
``derived_versions`` records, plus every record an open exception of these kinds still holds
(its cause may be gone now), so a fixed mapping clears the queue on the next run. A run that
failed or was killed between validate and derive leaves its rows for the next run.
"""

from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finsync_pipeline import ledger
from finsync_pipeline.landing import amounts_by_currency, sample, sync_exceptions
from finsync_pipeline.logic.derive import (
    ERP,
    LIVE_INVOICE_STATUSES,
    balance_application_external_id,
    credit_memo_external_id,
    derive_balance_applications,
    derive_credit_memos,
    derive_credit_note_voids,
    derive_customer_refunds,
    derive_payment_applications,
    derive_settlements,
    derive_void_compensations,
)
from finsync_pipeline.master_data import load_master_data
from finsync_pipeline.money import to_minor
from finsync_pipeline.resources.warehouse import (
    WarehouseResource,
    frame_records,
    read_frame,
    upsert_rows,
)

OWNERS = ["team:finance-data"]
CREDIT_KINDS = [
    "credit_note_held",
    "unmapped_product",
    "credit_note_voided",
    "uncollectible_invoice",
    "paid_out_of_band",
]
PAYMENT_KINDS = ["unmatched_payment", "payment_held", "customer_balance_unmatched"]
# The derive_versions name of the reversals of invoices voided after they were posted.
VOID_COMPENSATIONS = "void_compensations"
# The derive_versions name of write-offs and out-of-band payments of posted invoices.
SETTLEMENTS = "settlements"
# The derive_versions name of the customer credit applied to invoices paid from the balance.
BALANCE_APPLICATIONS = "balance_applications"
REFUND_KINDS = ["unmatched_refund", "refund_held", "refund_reversed", "refund_account_unmapped"]


def _in(column: str, name: str = "ids") -> str:
    return f"{column} IN :{name}"


def _read(conn: Connection, sql: str, ids: list[str], **params: Any) -> pd.DataFrame:
    if not ids:
        ids = [""]
    result = conn.execute(
        sa.text(sql).bindparams(sa.bindparam("ids", expanding=True)), {"ids": ids, **params}
    )
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _pending(
    conn: Connection, *, asset: str, table: str, key: str, held: list[str]
) -> pd.DataFrame:
    """The rows of a canonical table that ``asset`` has not derived from at their current
    version, and the rows an open exception of its kinds holds."""
    return _read(
        conn,
        f"SELECT c.* FROM {table} c LEFT JOIN derived_versions d ON d.asset = :asset "
        f"AND d.source_id = c.{key} WHERE d.source_id IS NULL "
        f"OR d.extraction_run_id <> c.extraction_run_id OR {_in('c.' + key)}",
        held,
        asset=asset,
    )


def _versions(asset: str, rows: pd.DataFrame, key: str) -> list[dict[str, Any]]:
    """What ``asset`` derived from, to record in ``derived_versions``."""
    at = ledger.now_iso()
    return [
        {"asset": asset, "source_id": k, "extraction_run_id": v, "derived_at": at}
        for k, v in zip(rows[key], rows["extraction_run_id"], strict=True)
    ]


def _held(conn: Connection, detected_by: str, kinds: list[str]) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            sa.text(
                "SELECT source_id FROM finance_exceptions WHERE status = 'open' "
                "AND detected_by = :by AND kind IN :kinds"
            ).bindparams(sa.bindparam("kinds", expanding=True)),
            {"by": detected_by, "kinds": kinds},
        )
    ]


def _ready(conn: Connection, invoice_ids: list[str]) -> pd.DataFrame:
    ready = _read(
        conn,
        "SELECT invoice_id, external_id, customer_external_id, subsidiary_id, currency, payload "
        f"FROM invoice_ready_transactions WHERE erp = '{ERP}' AND doc_type = 'invoice' "
        f"AND {_in('invoice_id')}",
        sorted(set(invoice_ids)),
    )
    ready["payload"] = [ledger.loads(p) for p in ready["payload"]]
    return ready


def _queue(
    conn: Connection, docs: pd.DataFrame, doc_type: str, run_id: str, *, repost: bool = False
) -> ledger.EnqueueResult:
    rows = frame_records(
        docs.assign(payload=[ledger.dumps(p) for p in docs["payload"]], run_id=run_id)
    )
    upsert_rows(conn, "erp_document_requests", rows, ["erp", "doc_type", "external_id"])
    return ledger.enqueue(
        conn,
        [
            ledger.LedgerDoc(
                ERP,
                doc_type,
                r.external_id,
                r.source_system,
                r.source_id,
                r.correlation_id,
                r.partition_date,
                r.payload,
            )
            for r in docs.itertuples(index=False)
        ],
        run_id=run_id,
        repost_changed=repost,
    )


def _publish(
    engine: Engine,
    docs: pd.DataFrame,
    found: pd.DataFrame,
    *,
    detected_by: str,
    kinds: list[str],
    source_ids: list[str],
    versions: list[dict[str, Any]],
    run_id: str,
    reposted: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Queue the derived documents (each on the ledger of its own ``doc_type``), sync the
    detector's exceptions and record the versions derived from, in one transaction; the
    asset's common metadata.

    ``reposted`` documents may change after they posted (a credit memo applied to another
    invoice, its amounts unchanged): a changed one is sent again, under its external id.
    """
    every = [(docs, False), (docs.iloc[0:0] if reposted is None else reposted, True)]
    with engine.begin() as conn:
        results = [
            _queue(conn, group, str(doc_type), run_id, repost=repost)
            for frame, repost in every
            for doc_type, group in frame.groupby("doc_type")
        ]
        queued = ledger.EnqueueResult(
            sum(r.new for r in results),
            sum(r.changed for r in results),
            sum(r.unchanged for r in results),
            [],
        )
        synced = sync_exceptions(
            conn, found, detected_by=detected_by, kinds=kinds, source_ids=source_ids
        )
        upsert_rows(conn, "derived_versions", versions, ["asset", "source_id"])
    return {
        "dagster/row_count": len(docs),
        "total by currency": dg.MetadataValue.json(
            amounts_by_currency(docs, "total_minor", "currency")
        ),
        "ledger: new": queued.new,
        "ledger: changed (re-posted)": queued.changed,
        "ledger: unchanged": queued.unchanged,
        "exceptions found": len(found),
        "exceptions auto-resolved": synced["auto_resolved"],
        "exception sample": sample(found, ["kind", "source_id", "detail"]),
    }


@dg.asset(
    group_name="derive",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["credit_notes", "invoices", "invoice_lines", "invoice_ready_transactions"],
)
def credit_memo_requests(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Credit memos the ERP should hold: one per issued Stripe credit note, one reversing each
    invoice voided in billing after it was posted, and one writing off each uncollectible
    invoice; with them the customer payment of each invoice paid out of band, into the clearing
    account finance named (history is compensated, never edited)."""
    run_id = context.run.run_id
    engine = warehouse.get_engine()
    master = load_master_data()
    with engine.connect() as conn:
        held = _held(conn, "credit_memo_requests", CREDIT_KINDS)
        notes = _pending(
            conn,
            asset="credit_memo_requests",
            table="credit_notes",
            key="credit_note_id",
            held=held,
        )
        raw = _read(
            conn,
            f"SELECT payload FROM stripe_credit_notes WHERE {_in('source_id')}",
            list(notes["credit_note_id"]),
        )
        voided = read_frame(
            conn,
            "SELECT i.*, l.external_id AS posted_external_id, l.payload AS posted_payload "
            "FROM invoices i JOIN posting_ledger l ON l.erp = :erp AND "
            "l.doc_type = 'invoice' AND l.source_id = i.invoice_id AND l.state = 'posted' "
            "LEFT JOIN derived_versions d ON d.asset = :voids AND d.source_id = i.invoice_id "
            "WHERE i.status = 'void' AND (d.source_id IS NULL "
            "OR d.extraction_run_id <> i.extraction_run_id)",
            {"erp": ERP, "voids": VOID_COMPENSATIONS},
        )
        settled = _read(
            conn,
            "SELECT i.* FROM invoices i LEFT JOIN derived_versions d ON d.asset = :settlements "
            "AND d.source_id = i.invoice_id WHERE (i.status = 'uncollectible' "
            "OR (i.status = 'paid' AND i.paid_out_of_band = 1)) AND (d.source_id IS NULL "
            f"OR d.extraction_run_id <> i.extraction_run_id OR {_in('i.invoice_id')})",
            held,
            settlements=SETTLEMENTS,
        )
        collected = _read(
            conn,
            "SELECT invoice_id, SUM(amount_minor) AS amount_minor FROM payments "
            f"WHERE status = 'succeeded' AND {_in('invoice_id')} GROUP BY invoice_id",
            list(settled["invoice_id"]),
        )
        posted_notes = _read(
            conn,
            "SELECT source_id AS credit_note_id, erp_internal_id, payload FROM posting_ledger "
            "WHERE erp = :erp AND doc_type = 'credit_memo' AND state = 'posted' "
            f"AND {_in('source_id')}",
            list(notes.loc[notes["status"] == "void", "credit_note_id"]),
            erp=ERP,
        )
        ready = _ready(conn, [*notes["invoice_id"], *settled["invoice_id"]])
        lines = _read(
            conn,
            f"SELECT line_id, product_id FROM invoice_lines WHERE {_in('invoice_id')}",
            sorted(set(notes["invoice_id"])),
        )
    note_lines = pd.DataFrame(
        [
            {
                "credit_note_id": note["id"],
                "invoice_line_item": line.get("invoice_line_item"),
                "amount_minor": int(line.get("amount") or 0),
            }
            for note in (ledger.loads(p) for p in raw["payload"])
            for line in ((note.get("lines") or {}).get("data")) or []
        ],
        columns=["credit_note_id", "invoice_line_item", "amount_minor"],
    )
    memos, found = derive_credit_memos(notes, note_lines, lines, ready, master)
    posted_notes["payload"] = [ledger.loads(p) for p in posted_notes["payload"]]
    carried, uncarried = derive_credit_note_voids(notes, posted_notes)
    writeoffs, unsettled = derive_settlements(
        settled,
        ready,
        dict(zip(collected["invoice_id"], collected["amount_minor"], strict=True)),
        master,
    )
    # A voided invoice is no longer ready for the ERP; what was posted is in the ledger.
    posted = pd.DataFrame(
        {
            "invoice_id": voided["invoice_id"],
            "external_id": voided["posted_external_id"],
            "payload": [ledger.loads(p) for p in voided["posted_payload"]],
        }
    )
    voids = derive_void_compensations(voided, posted)
    docs = pd.concat([memos, voids, writeoffs], ignore_index=True)
    found = pd.concat([found, unsettled, uncarried], ignore_index=True)
    published = _publish(
        engine,
        docs,
        found,
        reposted=carried,
        detected_by="credit_memo_requests",
        kinds=CREDIT_KINDS,
        source_ids=[*notes["credit_note_id"], *settled["invoice_id"]],
        versions=[
            *_versions("credit_memo_requests", notes, "credit_note_id"),
            *_versions(VOID_COMPENSATIONS, voided, "invoice_id"),
            *_versions(SETTLEMENTS, settled, "invoice_id"),
        ],
        run_id=run_id,
    )
    return dg.MaterializeResult(
        metadata={
            **published,
            "void compensations": len(voids),
            "credit notes voided after posting (carried)": int(
                (carried["doc_type"] == "invoice").sum()
            ),
            "write-offs": int((writeoffs["doc_type"] == "credit_memo").sum()),
            "out-of-band receipts": int((writeoffs["doc_type"] == "customer_payment").sum()),
        }
    )


@dg.asset(
    group_name="derive",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["payments", "invoices", "invoice_ready_transactions"],
)
def payment_applications(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Customer payments the ERP should hold: every collected Stripe charge, applied to the
    invoice it paid, and for every invoice Stripe paid from the customer's credit balance, a
    payment of 0 that applies the credit memos holding that credit to it. A payment for no
    known invoice, or a balance the ERP holds no credit for, is an exception, never a guess."""
    run_id = context.run.run_id
    engine = warehouse.get_engine()
    master = load_master_data()
    with engine.connect() as conn:
        held = _held(conn, "payment_applications", PAYMENT_KINDS)
        payments = _pending(
            conn, asset="payment_applications", table="payments", key="payment_id", held=held
        )
        ready = _ready(conn, [i for i in payments["invoice_id"] if isinstance(i, str)])
        balanced, ready_balanced, credits, drawn = _balance_inputs(conn, held)
    docs, found = derive_payment_applications(payments, ready, master)
    applications, unmatched = derive_balance_applications(
        balanced, ready_balanced, credits, drawn, master
    )
    published = _publish(
        engine,
        pd.concat([docs, applications], ignore_index=True),
        pd.concat([found, unmatched], ignore_index=True),
        detected_by="payment_applications",
        kinds=PAYMENT_KINDS,
        source_ids=[*payments["payment_id"], *balanced["invoice_id"]],
        versions=[
            *_versions("payment_applications", payments, "payment_id"),
            *_versions(BALANCE_APPLICATIONS, balanced, "invoice_id"),
        ],
        run_id=run_id,
    )
    return dg.MaterializeResult(
        metadata={
            **published,
            "failed charges (not posted)": int((payments["status"] == "failed").sum()),
            "customer credit balances applied": len(applications),
        }
    )


def _balance_inputs(
    conn: Connection, held: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """What ``derive_balance_applications`` needs: the live invoices paid from a credit
    balance not derived at their version (or held), their invoice-ready rows, the credit memos
    of net-negative invoices on the ledger (refused or dead ones hold no credit in the ERP),
    and what other balance applications already take from each."""
    balanced = _read(
        conn,
        "SELECT i.* FROM invoices i LEFT JOIN derived_versions d ON d.asset = :asset "
        "AND d.source_id = i.invoice_id WHERE i.starting_balance_minor < 0 "
        f"AND i.status IN ({', '.join(repr(s) for s in LIVE_INVOICE_STATUSES)}) "
        "AND (d.source_id IS NULL "
        f"OR d.extraction_run_id <> i.extraction_run_id OR {_in('i.invoice_id')})",
        held,
        asset=BALANCE_APPLICATIONS,
    )
    credits = read_frame(
        conn,
        "SELECT r.external_id, r.customer_external_id, r.currency, r.total_minor, "
        "r.partition_date FROM invoice_ready_transactions r JOIN posting_ledger l "
        "ON l.erp = r.erp AND l.doc_type = 'credit_memo' AND l.external_id = r.external_id "
        "WHERE r.erp = :erp AND r.doc_type = 'credit_memo' "
        "AND l.state NOT IN ('rejected', 'dead')",
        {"erp": ERP},
    )
    currency_of = dict(zip(credits["external_id"], credits["currency"], strict=True))
    mine = {balance_application_external_id(str(i)) for i in balanced["invoice_id"]}
    others = read_frame(
        conn,
        "SELECT external_id, payload FROM posting_ledger WHERE erp = :erp "
        "AND doc_type = 'customer_payment' AND external_id LIKE :prefix",
        {"erp": ERP, "prefix": balance_application_external_id("") + "%"},
    )
    drawn: dict[str, int] = {}
    for row in others.to_dict("records"):
        if row["external_id"] in mine:
            continue
        for line in (ledger.loads(row["payload"]).get("credit") or {}).get("items", []):
            _doc_type, credit_id = line["doc"]["$ref"]
            if credit_id in currency_of:
                amount = to_minor(line["amount"], currency_of[credit_id])
                drawn[credit_id] = drawn.get(credit_id, 0) + amount
    return balanced, _ready(conn, list(balanced["invoice_id"])), credits, drawn


@dg.asset(
    group_name="derive",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["refunds", "credit_memo_requests"],
)
def customer_refund_requests(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Customer refunds the ERP should hold: every succeeded Stripe refund, paying out the
    credit memo of the credit note it refunds. A refund with no credit note, or one undone
    after it posted, is an exception for finance, never a guess."""
    run_id = context.run.run_id
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        held = _held(conn, "customer_refund_requests", REFUND_KINDS)
        refunds = _pending(
            conn, asset="customer_refund_requests", table="refunds", key="refund_id", held=held
        )
        notes = sorted({n for n in refunds["credit_note_id"] if isinstance(n, str)})
        memos = _read(
            conn,
            "SELECT source_id AS credit_note_id, external_id, payload FROM posting_ledger "
            f"WHERE erp = :erp AND doc_type = 'credit_memo' AND {_in('external_id')}",
            [credit_memo_external_id(n) for n in notes],
            erp=ERP,
        )
        posted = _read(
            conn,
            "SELECT source_id AS refund_id, erp_internal_id FROM posting_ledger WHERE erp = :erp "
            f"AND doc_type = 'customer_refund' AND state = 'posted' AND {_in('source_id')}",
            list(refunds["refund_id"]),
            erp=ERP,
        )
    memos["payload"] = [ledger.loads(p) for p in memos["payload"]]
    docs, found = derive_customer_refunds(refunds, memos, posted, load_master_data())
    published = _publish(
        engine,
        docs,
        found,
        detected_by="customer_refund_requests",
        kinds=REFUND_KINDS,
        source_ids=list(refunds["refund_id"]),
        versions=_versions("customer_refund_requests", refunds, "refund_id"),
        run_id=run_id,
    )
    return dg.MaterializeResult(
        metadata={
            **published,
            "refunds not yet settled (not posted)": int(
                (~refunds["status"].isin(["succeeded", "failed", "canceled"])).sum()
            ),
        }
    )
