"""Validate: canonical payments, credit notes and refunds.

These assets are change-driven rather than partitioned: each run turns what this run's Stripe
extracts landed (their rows carry the run id) into canonical rows. The cost follows the day's
volume, and Dagster does not record a year of partitions for each of them on a backfill.
"""

from typing import Any

import dagster as dg
import pandas as pd
import pandera.pandas as pa
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline.landing import (
    amounts_by_currency,
    column_schema,
    load_run_payloads,
    quarantined_ids,
)
from finsync_pipeline.logic import normalize
from finsync_pipeline.logic.canonical import build_credit_notes, build_payments, build_refunds
from finsync_pipeline.logic.validation import check_contract
from finsync_pipeline.resources.warehouse import WarehouseResource, frame_records, upsert_rows
from finsync_pipeline.schemas.canonical import CreditNote, Payment, Refund

OWNERS = ["team:finance-data"]


def _landed(
    engine: Engine, table: str, run_id: str, flatten: Any
) -> tuple[pd.DataFrame, dict[str, str]]:
    """This run's valid records of an extract table, flattened, and their partition days."""
    with engine.connect() as conn:
        raw = load_run_payloads(conn, table, run_id)
        bad = quarantined_ids(conn, table)
    flat = flatten(list(raw["payload"]))
    partition_of = dict(zip(raw["source_id"], raw["partition_date"], strict=True))
    return flat[~flat["source_id"].isin(bad)].reset_index(drop=True), partition_of


def _lookup(engine: Engine, sql: str, keys: list[str]) -> dict[str, str]:
    if not keys:
        return {}
    stmt = sa.text(sql).bindparams(sa.bindparam("keys", expanding=True))
    with engine.connect() as conn:
        return {str(k): str(v) for k, v in conn.execute(stmt, {"keys": keys})}


def _customer_keys(engine: Engine, customers: list[str]) -> dict[str, str]:
    return _lookup(
        engine,
        "SELECT stripe_customer_id, customer_key FROM customers WHERE stripe_customer_id IN :keys",
        sorted({c for c in customers if isinstance(c, str)}),
    )


def _invoice_of_intent(engine: Engine, intents: list[str]) -> dict[str, str]:
    return _lookup(
        engine,
        "SELECT payment_intent, invoice_id FROM invoice_payments WHERE payment_intent IN :keys",
        sorted({i for i in intents if isinstance(i, str)}),
    )


def _store(
    engine: Engine, table: str, key: str, out: pd.DataFrame, model: type[pa.DataFrameModel]
) -> dict[str, Any]:
    out = check_contract(out, model)
    with engine.begin() as conn:
        upsert_rows(conn, table, frame_records(out), [key])
    return {
        "dagster/row_count": len(out),
        "dagster/column_schema": column_schema(model),
    }


@dg.asset(
    group_name="validate",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["stripe_charges", "invoices", "customers"],
)
def payments(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every charge this run extracted, as a canonical payment in minor units, linked to the
    invoice its payment intent paid (even when the invoice is from an earlier day)."""
    engine = warehouse.get_engine()
    charges, partition_of = _landed(
        engine, "stripe_charges", context.run.run_id, normalize.flatten_stripe_charges
    )
    out = build_payments(
        charges,
        partition_of,
        _invoice_of_intent(engine, list(charges["payment_intent"])),
        _customer_keys(engine, list(charges["customer"])),
        context.run.run_id,
    )
    meta = _store(engine, "payments", "payment_id", out, Payment)
    succeeded = out[out["status"] == "succeeded"]
    return dg.MaterializeResult(
        metadata={
            **meta,
            "collected by currency": dg.MetadataValue.json(
                amounts_by_currency(succeeded, "amount_minor", "currency")
            ),
            "failed": int((out["status"] == "failed").sum()),
            "without an invoice": int(succeeded["invoice_id"].isna().sum()),
        }
    )


@dg.asset(
    group_name="validate",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["stripe_credit_notes", "customers"],
)
def credit_notes(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every credit note this run extracted, in minor units, against the invoice it credits:
    what becomes a credit memo in the ERP."""
    engine = warehouse.get_engine()
    notes, partition_of = _landed(
        engine, "stripe_credit_notes", context.run.run_id, normalize.flatten_stripe_credit_notes
    )
    out = build_credit_notes(
        notes, partition_of, _customer_keys(engine, list(notes["customer"])), context.run.run_id
    )
    meta = _store(engine, "credit_notes", "credit_note_id", out, CreditNote)
    return dg.MaterializeResult(
        metadata={
            **meta,
            "credited by currency": dg.MetadataValue.json(
                amounts_by_currency(out[out["status"] == "issued"], "total_minor", "currency")
            ),
            "by type": dg.MetadataValue.json(out["type"].value_counts().astype(int).to_dict()),
        }
    )


@dg.asset(
    group_name="validate",
    kinds={"python", "sql"},
    owners=OWNERS,
    deps=["stripe_refunds", "stripe_credit_notes", "invoices"],
)
def refunds(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every refund this run extracted, in minor units, with the charge, invoice and credit
    note behind it."""
    engine = warehouse.get_engine()
    found, partition_of = _landed(
        engine, "stripe_refunds", context.run.run_id, normalize.flatten_stripe_refunds
    )
    # Stripe links a refund to its credit note from the credit note's side (refunds[]); the two
    # are created together, so the credit notes this run landed cover this run's new refunds. A
    # refund landed again later (a status change) keeps the link it was first given.
    with engine.connect() as conn:
        notes = load_run_payloads(conn, "stripe_credit_notes", context.run.run_id)
    note_of = _lookup(
        engine,
        "SELECT refund_id, credit_note_id FROM refunds WHERE refund_id IN :keys "
        "AND credit_note_id IS NOT NULL",
        sorted(found["source_id"]),
    )
    note_of |= {
        str(r.get("refund")): str(note.get("id"))
        for note in notes["payload"]
        for r in note.get("refunds") or []
        if r.get("refund")
    }
    out = build_refunds(
        found,
        partition_of,
        _invoice_of_intent(engine, list(found["payment_intent"])),
        note_of,
        context.run.run_id,
    )
    meta = _store(engine, "refunds", "refund_id", out, Refund)
    return dg.MaterializeResult(
        metadata={
            **meta,
            "refunded by currency": dg.MetadataValue.json(
                amounts_by_currency(out, "amount_minor", "currency")
            ),
        }
    )
