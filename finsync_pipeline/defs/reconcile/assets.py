"""Reconcile: prove every day that billing and the ERP agree, or say exactly where they don't."""

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from finsync_pipeline.landing import load_payloads, quarantined_ids, sample, sync_exceptions
from finsync_pipeline.ledger import loads as ledger_loads
from finsync_pipeline.logic import normalize
from finsync_pipeline.logic.derive import (
    ERP,
    LIVE_INVOICE_STATUSES,
    credit_note_void_external_id,
    invoice_external_id,
    payment_external_id,
    refund_external_id,
    void_external_id,
)
from finsync_pipeline.logic.reconcile import (
    BALANCE_DOCUMENTS_SQL,
    DRIFT_STATUSES,
    RECON_COLUMNS,
    RENEWAL_DRIFT,
    RENEWAL_STATUSES,
    as_erp_documents,
    balance_applications_expected,
    credit_note_voids_expected,
    expected_erp_remaining,
    out_of_band_payments_expected,
    reconcile_invoices,
    reconcile_payments,
    reconcile_renewals,
    renewal_exceptions,
    summarize,
)
from finsync_pipeline.master_data import load_master_data
from finsync_pipeline.partitions import daily_partitions, date_bounds, single_run
from finsync_pipeline.posting_flows import awaiting_windows, batch_windows
from finsync_pipeline.resources.warehouse import (
    WarehouseResource,
    frame_records,
    read_frame,
    replace_partitions,
    upsert_rows,
)

OWNERS = ["team:finance-data"]


@dg.asset(
    group_name="reconcile",
    kinds={"python", "sql"},
    owners=OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=["invoices", "erp_invoices", "invoice_ready_transactions", "erp_postings"],
)
def invoice_reconciliation(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Stripe against NetSuite, invoice by invoice: matched, missing, duplicated, extra, or
    differing in amount or currency, each explained with both sides and the correlation id.
    An invoice an open finance exception holds back is reported as held, not as drift."""
    date_from, date_to = date_bounds(context)
    engine = warehouse.get_engine()
    rng = {"date_from": date_from, "date_to": date_to}
    with engine.connect() as conn:
        billing = read_frame(
            conn,
            "SELECT invoice_id, partition_date, currency, total_minor, correlation_id, status, "
            "amount_remaining_minor FROM invoices "
            "WHERE partition_date >= :date_from AND partition_date < :date_to",
            rng,
        )
        pending = {**_paid_after_last_read_day(conn, rng), **_balance_pending(conn, rng)}
        quarantined = _quarantined_invoices(conn, rng)
        held = read_frame(
            conn,
            "SELECT source_id FROM finance_exceptions WHERE status = 'open'",
        )
        raw = load_payloads(conn, "erp_invoices", date_from, date_to)
        bad_erp = quarantined_ids(conn, "erp_invoices")
        posted = read_frame(
            conn,
            "SELECT doc_type, source_id, external_id FROM posting_ledger WHERE erp = 'netsuite' "
            "AND state = 'posted' AND doc_type IN ('invoice', 'credit_memo') "
            "AND partition_date >= :date_from AND partition_date < :date_to",
            rng,
        )
        awaiting = awaiting_windows(conn, ERP, batch_windows())
        compensations = read_frame(
            conn,
            "SELECT l.external_id, l.source_id AS credit_note_id, l.partition_date, c.currency, "
            "c.total_minor, c.correlation_id, m.state AS memo_state FROM posting_ledger l "
            "JOIN credit_notes c ON c.credit_note_id = l.source_id "
            "LEFT JOIN posting_ledger m ON m.erp = l.erp AND m.doc_type = 'credit_memo' "
            "AND m.source_id = l.source_id WHERE l.erp = :erp AND l.doc_type = 'invoice' "
            "AND l.external_id LIKE :prefix AND l.partition_date >= :date_from "
            "AND l.partition_date < :date_to",
            {"erp": ERP, "prefix": credit_note_void_external_id("") + "%", **rng},
        )
    codes = {v: k for k, v in load_master_data().netsuite_currency_ids.items()}
    erp = normalize.flatten_erp_invoices(list(raw["payload"]), codes)
    erp = erp[~erp["source_id"].isin(bad_erp)]
    # An invoice voided in billing after it was posted stays in the ERP, reversed by a credit
    # memo (VOID_<invoice>): it is expected there, and reversed or not is what matters.
    posted_invoices = set(posted.loc[posted["doc_type"] == "invoice", "source_id"])
    reversed_ids = set(posted.loc[posted["doc_type"] == "credit_memo", "external_id"])
    expected = billing[
        billing["status"].isin(LIVE_INVOICE_STATUSES)
        | ((billing["status"] == "void") & billing["invoice_id"].isin(posted_invoices))
    ].copy()
    expected["external_id"] = expected["invoice_id"].map(invoice_external_id)
    # A void invoice's balance is judged by its reversal below, and a net-negative one's (a
    # credit memo in the ERP, drawn on by later invoices) by those invoices' own balances.
    expected["remaining_minor"] = [
        None if status == "void" or total < 0 else expected_erp_remaining(status, left)
        for status, left, total in zip(
            expected["status"],
            expected["amount_remaining_minor"],
            expected["total_minor"].fillna(0),
            strict=True,
        )
    ]
    voided = set(expected.loc[expected["status"] == "void", "invoice_id"])
    # A credit note voided after its credit memo posted: the invoice compensating that memo.
    recharges, recharging = credit_note_voids_expected(compensations, set(held["source_id"]))
    expected = pd.concat([as_erp_documents(expected), recharges], ignore_index=True)
    recon = reconcile_invoices(
        expected, erp, set(held["source_id"]), awaiting, {**pending, **recharging}
    )
    for i in recon.index[recon["invoice_id"].isin(voided)]:
        reversal = void_external_id(str(recon.at[i, "invoice_id"]))
        if recon.at[i, "status"] != "matched":
            continue
        if reversal in reversed_ids:
            recon.at[i, "explanation"] = f"voided in billing; reversed in the ERP by {reversal}"
        elif reversal in awaiting:
            recon.at[i, "status"] = "awaiting_window"
            recon.at[i, "explanation"] = (
                f"voided in billing; its reversing credit memo {reversal} is queued for the "
                f"batch posting window ({awaiting[reversal]}, UTC)"
            )
        else:
            recon.at[i, "status"] = "status_mismatch"
            recon.at[i, "explanation"] = (
                "voided in billing, still open in the ERP: "
                f"its reversing credit memo {reversal} is not posted"
            )
    # An invoice whose earlier version is reconciled above is reported there, once.
    quarantined = quarantined[~quarantined["invoice_id"].isin(recon["invoice_id"])]
    recon = pd.concat([recon, quarantined], ignore_index=True) if len(quarantined) else recon
    recon["run_id"] = context.run.run_id
    with engine.begin() as conn:
        replace_partitions(
            conn,
            "invoice_reconciliation",
            frame_records(recon),
            date_from=date_from,
            date_to=date_to,
            key=["partition_date", "external_id"],
        )
    return _recon_result(recon)


def _balance_pending(conn: Connection, rng: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Invoice id -> why its ERP balance may still differ from billing's: a document that moves
    it (a payment, credit memo, reversal or write-off) is held by an open exception or still
    on its way to the ERP."""
    docs = read_frame(
        conn,
        f"SELECT d.invoice_id, d.doc_id, l.external_id, l.state FROM ({BALANCE_DOCUMENTS_SQL}"
        ") d LEFT JOIN posting_ledger l ON l.source_id = d.doc_id AND l.doc_type <> 'invoice' "
        "WHERE d.invoice_id IN (SELECT invoice_id FROM invoices "
        "  WHERE partition_date >= :date_from AND partition_date < :date_to)",
        rng,
    )
    exceptions = read_frame(
        conn, "SELECT source_id, kind FROM finance_exceptions WHERE status = 'open'"
    )
    kind_of = dict(zip(exceptions["source_id"], exceptions["kind"], strict=False))
    found: dict[str, tuple[str, str]] = {}
    for doc in docs.sort_values(["invoice_id", "doc_id"]).to_dict("records"):
        invoice_id, doc_id = str(doc["invoice_id"]), str(doc["doc_id"])
        for key in (doc_id, doc["external_id"]):
            if isinstance(key, str) and key in kind_of:
                found[invoice_id] = (
                    "held_by_exception",
                    f"an open {kind_of[key]} exception on {key} explains it",
                )
        if invoice_id not in found and doc["state"] in ("pending", "in_flight"):
            found[invoice_id] = (
                "awaiting_window",
                f"{doc['external_id']} is queued for posting ({doc['state']})",
            )
    return found


def _paid_after_last_read_day(conn: Connection, rng: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Invoice id -> why its ERP balance may still differ: billing (read today) records it paid
    by a charge on a day after the last day whose charges finsync has read, so its payment has
    not reached the warehouse yet; the run of that day posts it. A backfill of a past stretch
    meets this for every invoice its customers paid after the stretch's last day."""
    (last_read,) = conn.execute(sa.text("SELECT MAX(partition_date) FROM stripe_charges")).one()
    paid = read_frame(
        conn,
        "SELECT s.source_id, s.payload FROM stripe_invoices s JOIN invoices i "
        "ON i.invoice_id = s.source_id WHERE i.status = 'paid' "
        "AND i.partition_date >= :date_from AND i.partition_date < :date_to",
        rng,
    )
    found: dict[str, tuple[str, str]] = {}
    for source_id, payload in zip(paid["source_id"], paid["payload"], strict=True):
        invoice = ledger_loads(payload)
        if invoice.get("paid_out_of_band"):
            continue  # no charge will come: its settlement document is derived from the invoice
        paid_on = normalize.unix_to_date((invoice.get("status_transitions") or {}).get("paid_at"))
        if paid_on is None or (last_read is not None and paid_on <= str(last_read)):
            continue
        through = f"through {last_read}" if last_read is not None else "none yet"
        found[str(source_id)] = (
            "awaiting_window",
            f"billing records it paid on {paid_on}, after the last day whose payments finsync "
            f"has read ({through}); the run of {paid_on} posts its payment",
        )
    return found


def _quarantined_invoices(conn: Connection, rng: dict[str, str]) -> pd.DataFrame:
    """Billing invoices of the range in quarantine, with the amount the ERP does not have."""
    raw = read_frame(
        conn,
        "SELECT s.partition_date, s.payload, q.reason FROM stripe_invoices s JOIN ("
        "  SELECT source_id, MIN(reason) AS reason FROM quarantine "
        "  WHERE asset = 'stripe_invoices' GROUP BY source_id"
        ") q ON q.source_id = s.source_id "
        "WHERE s.partition_date >= :date_from AND s.partition_date < :date_to",
        rng,
    )
    rows: list[dict[str, object]] = []
    for r in raw.to_dict("records"):
        inv = ledger_loads(r["payload"])
        if inv.get("status") in ("draft", "void"):
            continue
        currency = normalize.as_upper(inv.get("currency"))
        total = normalize.as_int(inv.get("total"))
        invoice_id = str(inv.get("id"))
        rows.append(
            {
                "partition_date": r["partition_date"],
                "external_id": invoice_external_id(invoice_id),
                "invoice_id": invoice_id,
                "status": "quarantined",
                "billing_currency": currency,
                "billing_total_minor": total,
                "billing_status": normalize.as_text(inv.get("status")),
                "billing_remaining_minor": normalize.as_int(inv.get("amount_remaining")),
                "correlation_id": normalize.correlation_id("stripe", "invoice", invoice_id),
                "explanation": f"billing has {total} {currency} (minor units) in quarantine, "
                f"so the ERP has none of it: {r['reason']}",
            }
        )
    return pd.DataFrame(rows, columns=RECON_COLUMNS)


@dg.asset_check(
    asset=invoice_reconciliation,
    name="no_drift",
    partitions_def=daily_partitions,
    description="Every live billing invoice of the range is in NetSuite exactly once with the "
    "same currency and total, held by an open finance exception, or queued for its batch "
    "posting window.",
)
def invoice_reconciliation_no_drift(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return _drift_check(context, warehouse, "invoice_reconciliation")


@dg.asset(
    group_name="reconcile",
    kinds={"python", "sql"},
    owners=OWNERS,
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    deps=[
        "payments",
        "refunds",
        "erp_payments",
        "payment_applications",
        "customer_refund_requests",
        "erp_postings",
    ],
)
def payment_reconciliation(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The gateway against NetSuite, money movement by money movement: every collected Stripe
    charge is one NetSuite customer payment, and every succeeded Stripe refund one NetSuite
    customer refund, with the same amount and currency, or the difference is classified and
    explained. Failed charges and refunds moved no money and are not expected."""
    date_from, date_to = date_bounds(context)
    engine = warehouse.get_engine()
    rng = {"date_from": date_from, "date_to": date_to}
    with engine.connect() as conn:
        collected = read_frame(
            conn,
            "SELECT payment_id, partition_date, currency, amount_minor AS total_minor, "
            "correlation_id FROM payments WHERE status = 'succeeded' "
            "AND partition_date >= :date_from AND partition_date < :date_to",
            rng,
        )
        refunded = read_frame(
            conn,
            "SELECT refund_id AS payment_id, partition_date, currency, amount_minor AS "
            "total_minor, correlation_id FROM refunds WHERE status = 'succeeded' "
            "AND partition_date >= :date_from AND partition_date < :date_to",
            rng,
        )
        # Invoices Stripe paid (partly) from the customer's credit balance: each has one
        # customer payment of 0 in NetSuite that applies the credit memo to the invoice.
        balanced = read_frame(
            conn,
            "SELECT invoice_id, partition_date, currency, total_minor, starting_balance_minor, "
            "ending_balance_minor, correlation_id, status FROM invoices "
            "WHERE starting_balance_minor < 0 AND partition_date >= :date_from "
            "AND partition_date < :date_to",
            rng,
        )
        # Invoices paid out of band: with a clearing account, each has one customer payment
        # in NetSuite for what it received outside Stripe.
        outside = read_frame(
            conn,
            "SELECT invoice_id, partition_date, currency, status, paid_out_of_band, "
            "amount_paid_minor, correlation_id FROM invoices WHERE status = 'paid' "
            "AND paid_out_of_band = 1 AND partition_date >= :date_from "
            "AND partition_date < :date_to",
            rng,
        )
        charged = read_frame(
            conn,
            "SELECT invoice_id, SUM(amount_minor) AS amount_minor FROM payments "
            "WHERE status = 'succeeded' AND invoice_id IN (SELECT invoice_id FROM invoices "
            "WHERE paid_out_of_band = 1) GROUP BY invoice_id",
        )
        held = read_frame(conn, "SELECT source_id FROM finance_exceptions WHERE status = 'open'")
        raw = load_payloads(conn, "erp_payments", date_from, date_to)
        bad_erp = quarantined_ids(conn, "erp_payments")
        awaiting = awaiting_windows(conn, ERP, batch_windows())
    master = load_master_data()
    codes = {v: k for k, v in master.netsuite_currency_ids.items()}
    erp = normalize.flatten_erp_invoices(list(raw["payload"]), codes)
    erp = erp[~erp["source_id"].isin(bad_erp)]
    collected["external_id"] = collected["payment_id"].map(payment_external_id)
    refunded["external_id"] = refunded["payment_id"].map(refund_external_id)
    receipts = out_of_band_payments_expected(
        outside,
        dict(zip(charged["invoice_id"], charged["amount_minor"], strict=True)),
        posted=master.netsuite_oob_clearing_account_id is not None,
    )
    moved = pd.concat(
        [collected, refunded, balance_applications_expected(balanced), receipts],
        ignore_index=True,
    )
    recon = reconcile_payments(moved, erp, set(held["source_id"]), awaiting)
    recon["run_id"] = context.run.run_id
    with engine.begin() as conn:
        replace_partitions(
            conn,
            "payment_reconciliation",
            frame_records(recon),
            date_from=date_from,
            date_to=date_to,
            key=["partition_date", "external_id"],
        )
    return _recon_result(recon)


def _recon_result(recon: pd.DataFrame) -> dg.MaterializeResult:
    counts = summarize(recon)
    drift = recon[recon["status"].isin(DRIFT_STATUSES)]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(recon),
            **counts,
            "drift": int(sum(counts[s] for s in DRIFT_STATUSES)),
            "drift sample": sample(drift, ["status", "external_id", "explanation"]),
        }
    )


def _drift_check(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, table: str
) -> dg.AssetCheckResult:
    date_from, date_to = date_bounds(context)
    with warehouse.get_engine().connect() as conn:
        recon = read_frame(
            conn,
            f"SELECT status, external_id, explanation FROM {table} "
            "WHERE partition_date >= :date_from AND partition_date < :date_to",
            {"date_from": date_from, "date_to": date_to},
        )
    drift = recon[recon["status"].isin(DRIFT_STATUSES)]
    by_status = drift["status"].value_counts().astype(int).to_dict() if len(drift) else {}
    return dg.AssetCheckResult(
        passed=drift.empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "drift": len(drift),
            "by status": dg.MetadataValue.json(by_status),
            "sample": sample(pd.DataFrame(drift), ["status", "external_id", "explanation"]),
        },
    )


@dg.asset_check(
    asset=payment_reconciliation,
    name="no_drift",
    partitions_def=daily_partitions,
    description="Every collected payment and succeeded refund of the range is in NetSuite "
    "exactly once with the same currency and amount, held by an open finance exception, or "
    "queued for its batch posting window.",
)
def payment_reconciliation_no_drift(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    return _drift_check(context, warehouse, "payment_reconciliation")


@dg.asset(
    group_name="reconcile",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["salesforce_opportunities", "salesforce_contracts", "invoices", "invoice_reconciliation"],
)
def renewal_reconciliation(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every closed-won renewal in Salesforce against its first invoice in Stripe (same
    currency, subtotal equal to the renewal amount) and that invoice in NetSuite: the CRM,
    billing and the ERP agree on each renewal, or the difference is explained."""
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        opps_raw = load_payloads(conn, "salesforce_opportunities")
        contracts_raw = load_payloads(conn, "salesforce_contracts")
        bad = quarantined_ids(conn, "salesforce_opportunities")
        bad_accounts = quarantined_ids(conn, "salesforce_accounts")
        invoices = read_frame(
            conn,
            "SELECT invoice_id, customer_key, invoice_date, currency, subtotal_minor, status "
            "FROM invoices WHERE status IN ('open', 'paid', 'uncollectible', 'void') "
            "AND customer_key IS NOT NULL",
        )
        erp = read_frame(
            conn,
            "SELECT invoice_id, status FROM invoice_reconciliation WHERE invoice_id IS NOT NULL",
        )
        held = read_frame(conn, "SELECT source_id FROM finance_exceptions WHERE status = 'open'")
        # An invoice in quarantine still explains a renewal: it is held, not missing.
        quarantined = read_frame(
            conn,
            "SELECT payload FROM stripe_invoices WHERE source_id IN "
            "(SELECT source_id FROM quarantine WHERE asset = 'stripe_invoices')",
        )
        keys = read_frame(
            conn,
            "SELECT stripe_customer_id, customer_key FROM customers "
            "WHERE stripe_customer_id IS NOT NULL",
        )
    held_invoices, _lines = normalize.flatten_stripe_invoices(
        [ledger_loads(p) for p in quarantined["payload"]]
    )
    invoices = pd.concat(
        [
            invoices,
            pd.DataFrame(
                {
                    "invoice_id": held_invoices["source_id"],
                    "customer_key": held_invoices["customer"].map(
                        dict(zip(keys["stripe_customer_id"], keys["customer_key"], strict=True))
                    ),
                    "invoice_date": held_invoices["invoice_date"],
                    "currency": held_invoices["currency"],
                    "subtotal_minor": held_invoices["subtotal"],
                    "status": "quarantined",
                }
            ),
        ],
        ignore_index=True,
    )
    opps = normalize.flatten_salesforce_opportunities(list(opps_raw["payload"]))
    contracts = normalize.flatten_salesforce_contracts(list(contracts_raw["payload"]))
    start_of = dict(zip(contracts["source_id"], contracts["start_date"], strict=True))
    renewals = opps[(opps["type"] == "Renewal") & opps["is_won"] & ~opps["source_id"].isin(bad)]
    renewals = pd.DataFrame(
        {
            "opportunity_id": renewals["source_id"],
            "account_id": renewals["account_id"],
            "close_date": renewals["close_date"],
            "term_start": renewals["contract_id"].map(start_of),
            "currency": renewals["currency"],
            "amount_minor": renewals["amount_minor"],
        }
    )
    billed = (
        (str(invoices["invoice_date"].min()), str(invoices["invoice_date"].max()))
        if len(invoices)
        else ("9999-12-31", "0000-01-01")
    )
    recon = reconcile_renewals(
        renewals,
        invoices,
        dict(zip(erp["invoice_id"], erp["status"], strict=True)),
        set(held["source_id"]),
        quarantined_accounts=bad_accounts,
        billed_through=billed,
    )
    recon["run_id"] = context.run.run_id
    found = renewal_exceptions(recon)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM renewal_reconciliation"))
        upsert_rows(conn, "renewal_reconciliation", frame_records(recon), ["opportunity_id"])
        synced = sync_exceptions(
            conn,
            found,
            detected_by="renewal_reconciliation",
            kinds=["renewal_mismatch"],
            source_ids=list(recon["opportunity_id"]),
        )
    counts = recon["status"].value_counts().astype(int).to_dict()
    drift = recon[recon["status"].isin(RENEWAL_DRIFT)]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(recon),
            **{s: int(counts.get(s, 0)) for s in RENEWAL_STATUSES},
            "drift": len(drift),
            "outside the billing history (not judged)": len(renewals) - len(recon),
            "exceptions open (revops)": len(found),
            "exceptions auto-resolved": synced["auto_resolved"],
            "drift sample": sample(drift, ["status", "opportunity_id", "explanation"]),
        }
    )


@dg.asset_check(
    asset=renewal_reconciliation,
    name="no_drift",
    description="Every closed-won renewal is invoiced for its amount and in the ERP, or held "
    "by an open finance exception.",
)
def renewal_reconciliation_no_drift(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.get_engine().connect() as conn:
        recon = read_frame(
            conn, "SELECT status, opportunity_id, explanation FROM renewal_reconciliation"
        )
    drift = recon[recon["status"].isin(RENEWAL_DRIFT)]
    return dg.AssetCheckResult(
        passed=drift.empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "drift": len(drift),
            "sample": sample(drift, ["status", "opportunity_id", "explanation"]),
        },
    )
