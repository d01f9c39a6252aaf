"""Validate: the canonical business objects, built only from records that kept their contract."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from finsync_pipeline.landing import (
    amounts_by_currency,
    column_schema,
    load_payloads,
    quarantined_ids,
    sample,
)
from finsync_pipeline.logic import normalize
from finsync_pipeline.logic.canonical import (
    UNKNOWN_PARENT,
    build_customers,
    build_invoices,
    build_subscriptions,
    invoice_payment_links,
)
from finsync_pipeline.logic.validation import check_contract
from finsync_pipeline.partitions import daily_partitions, date_bounds, single_run
from finsync_pipeline.po_source import po_source
from finsync_pipeline.resources.warehouse import (
    WarehouseResource,
    frame_records,
    read_frame,
    replace_partitions,
    upsert_rows,
)
from finsync_pipeline.schemas.canonical import Customer, Invoice, InvoiceLine, Subscription

OWNERS = ["team:finance-data"]


@dg.asset(
    group_name="validate",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["salesforce_accounts", "stripe_customers"],
)
def customers(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every customer once: the CRM account (hierarchy, legal entity, currency) joined with the
    Stripe customer that bills it. Quarantined records are left out until they are fixed."""
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        accounts_raw = load_payloads(conn, "salesforce_accounts")
        stripe_raw = load_payloads(conn, "stripe_customers")
        bad_accounts = quarantined_ids(conn, "salesforce_accounts")
        bad_customers = quarantined_ids(conn, "stripe_customers")
    accounts = normalize.flatten_salesforce_accounts(list(accounts_raw["payload"]))
    accounts["source_updated_at"] = list(accounts_raw["source_updated_at"])
    accounts = accounts[~accounts["source_id"].isin(bad_accounts)]
    billing = normalize.flatten_stripe_customers(list(stripe_raw["payload"]))
    billing = billing[~billing["source_id"].isin(bad_customers)]
    out = build_customers(accounts, billing, context.run.run_id)
    out = check_contract(out, Customer)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM customers"))
        upsert_rows(conn, "customers", frame_records(out), ["customer_key"])
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(out),
            "dagster/column_schema": column_schema(Customer),
            "billing customers (with Stripe)": int(out["stripe_customer_id"].notna().sum()),
            "parents (no Stripe customer)": int(out["stripe_customer_id"].isna().sum()),
            "unplaceable in hierarchy": int((out["hierarchy_depth"] == UNKNOWN_PARENT).sum()),
            "by legal entity": dg.MetadataValue.json(
                out["legal_entity"].fillna("(none)").value_counts().astype(int).to_dict()
            ),
        }
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "invoices",
            group_name="validate",
            kinds={"python", "sql"},
            owners=OWNERS,
            # The changes stream writes late changes into the extract first: the same run
            # validates them.
            deps=["stripe_invoices", "stripe_invoice_changes", "stripe_customers"],
            description="Stripe invoices in integer minor units with their lineage and "
            "correlation id; quarantined invoices are left out until fixed.",
            partitions_def=daily_partitions,
        ),
        dg.AssetSpec(
            "invoice_lines",
            group_name="validate",
            kinds={"python", "sql"},
            owners=OWNERS,
            deps=["stripe_invoices"],
            description="Every line of every canonical invoice, in integer minor units.",
            partitions_def=daily_partitions,
        ),
    ],
    backfill_policy=single_run,
)
def invoices(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> Iterator[dg.MaterializeResult]:
    """Canonical invoices and lines of the partition range."""
    date_from, date_to = date_bounds(context)
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        raw = load_payloads(conn, "stripe_invoices", date_from, date_to)
        bad = quarantined_ids(conn, "stripe_invoices")
        keys = read_frame(
            conn,
            "SELECT stripe_customer_id, customer_key FROM customers "
            "WHERE stripe_customer_id IS NOT NULL",
        )
    # A deleted draft is gone: never built, so never posted, quarantined or counted as drift.
    live, deleted = normalize.split_deleted(raw["payload"])
    heads, lines = normalize.flatten_stripe_invoices(live, po_source())
    heads = heads[~heads["source_id"].isin(bad)]
    partition_of = dict(zip(raw["source_id"], raw["partition_date"], strict=True))
    head, body = build_invoices(
        heads,
        lines,
        keys.set_index("stripe_customer_id")["customer_key"],
        pd.Series(partition_of),
        context.run.run_id,
    )
    head = check_contract(head, Invoice)
    body = check_contract(body, InvoiceLine)
    valid_ids = set(head["invoice_id"])
    links = invoice_payment_links([dict(p) for p in live if p.get("id") in valid_ids])
    with engine.begin() as conn:
        if valid_ids:
            conn.execute(
                sa.text("DELETE FROM invoice_payments WHERE invoice_id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"ids": sorted(valid_ids)},
            )
        upsert_rows(
            conn, "invoice_payments", frame_records(links), ["invoice_id", "payment_intent"]
        )
        replace_partitions(
            conn,
            "invoices",
            frame_records(head),
            date_from=date_from,
            date_to=date_to,
            key=["invoice_id"],
        )
        replace_partitions(
            conn,
            "invoice_lines",
            frame_records(body),
            date_from=date_from,
            date_to=date_to,
            key=["line_id"],
        )
    yield dg.MaterializeResult(
        asset_key="invoices",
        metadata={
            "dagster/row_count": len(head),
            "dagster/column_schema": column_schema(Invoice),
            "total by currency": dg.MetadataValue.json(
                amounts_by_currency(head, "total_minor", "currency")
            ),
            "by status": dg.MetadataValue.json(head["status"].value_counts().astype(int).to_dict()),
            "quarantined (left out)": len(set(raw["source_id"]) & bad),
            "deleted drafts (left out)": len(deleted),
            "sample": sample(head, ["invoice_id", "status", "currency", "total_minor"]),
        },
    )
    yield dg.MaterializeResult(
        asset_key="invoice_lines",
        metadata={
            "dagster/row_count": len(body),
            "dagster/column_schema": column_schema(InvoiceLine),
            "max lines on one invoice": int(body.groupby("invoice_id").size().max())
            if len(body)
            else 0,
        },
    )


@dg.asset(
    group_name="validate",
    kinds={"sql"},
    owners=OWNERS,
    deps=[
        "stripe_customers",
        "stripe_subscriptions",
        "stripe_invoices",
        "stripe_payments",
        "stripe_charges",
        "stripe_credit_notes",
        "stripe_refunds",
        "salesforce_accounts",
        "salesforce_opportunities",
        "salesforce_contracts",
        "cpq_quotes",
        "cpq_quote_lines",
        "cpq_subscriptions",
        "usage_events",
        "erp_invoices",
        "erp_payments",
    ],
)
def quarantine(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The records that broke their contract, each with its system, id, field and check.
    Nothing is dropped silently: a bad record waits here until its source fixes it."""
    with warehouse.get_engine().connect() as conn:
        rows = read_frame(
            conn,
            "SELECT asset, source_system, source_id, field, check_name, reason FROM quarantine "
            "ORDER BY asset, source_id",
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "records quarantined": int(rows[["asset", "source_id"]].drop_duplicates().shape[0]),
            "by asset": dg.MetadataValue.json(rows["asset"].value_counts().astype(int).to_dict()),
            "sample": sample(rows, ["asset", "source_id", "field", "check_name"]),
        }
    )


@dg.asset(
    group_name="validate",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["stripe_subscriptions", "salesforce_contracts", "customers"],
)
def subscriptions(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every Stripe subscription under the terms of its Salesforce contract (start, end, term),
    with its monthly recurring revenue in minor units: what renewals are reconciled against."""
    engine = warehouse.get_engine()
    with engine.connect() as conn:
        subs_raw = load_payloads(conn, "stripe_subscriptions")
        contracts_raw = load_payloads(conn, "salesforce_contracts")
        bad_subs = quarantined_ids(conn, "stripe_subscriptions")
        bad_contracts = quarantined_ids(conn, "salesforce_contracts")
        keys = read_frame(
            conn,
            "SELECT stripe_customer_id, customer_key FROM customers "
            "WHERE stripe_customer_id IS NOT NULL",
        )
    contracts = normalize.flatten_salesforce_contracts(list(contracts_raw["payload"]))
    contracts = contracts[~contracts["source_id"].isin(bad_contracts)]
    valid = [p for p in subs_raw["payload"] if p.get("id") not in bad_subs]
    out = build_subscriptions(
        valid, contracts, keys.set_index("stripe_customer_id")["customer_key"], context.run.run_id
    )
    out = check_contract(out, Subscription)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM subscriptions"))
        upsert_rows(conn, "subscriptions", frame_records(out), ["subscription_id"])
    active = out[out["status"].isin(["active", "trialing", "past_due"])]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(out),
            "dagster/column_schema": column_schema(Subscription),
            "active": len(active),
            "MRR by currency (active)": dg.MetadataValue.json(
                amounts_by_currency(active, "mrr_minor", "currency")
            ),
            "without a Salesforce contract": int(out["contract_start"].isna().sum()),
        }
    )
