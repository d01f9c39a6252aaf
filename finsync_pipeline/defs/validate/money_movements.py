"""Validate: canonical payments, credit notes and refunds.

These assets are change-driven rather than partitioned: each run turns what the Stripe extracts
landed and the canonical tables do not carry yet into canonical rows. That is this run's
landings, plus whatever an earlier run landed and then failed (or was killed) before carrying,
so the next run finishes it whatever day it runs for. The cost follows the day's volume, and
Dagster does not record a year of partitions for each of them on a backfill.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd
import pandera.pandas as pa
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from finsync_pipeline.landing import (
    amounts_by_currency,
    column_schema,
    load_pending_payloads,
    looked_up_invoice_of_intent,
)
from finsync_pipeline.ledger import loads
from finsync_pipeline.logic import normalize
from finsync_pipeline.logic.canonical import build_credit_notes, build_payments, build_refunds
from finsync_pipeline.logic.validation import check_contract
from finsync_pipeline.resources.warehouse import WarehouseResource, frame_records, upsert_rows
from finsync_pipeline.schemas.canonical import CreditNote, Payment, Refund

OWNERS = ["team:finance-data"]


class Landed:
    """The landed records of an extract table that its canonical table does not carry yet."""

    def __init__(self, engine: Engine, table: str, canonical: str, key: str, flatten: Any):
        with engine.connect() as conn:
            raw = load_pending_payloads(conn, table, canonical, key)
        self.records: pd.DataFrame = flatten(list(raw["payload"]))
        self.partition_of = dict(zip(raw["source_id"], raw["partition_date"], strict=True))
        self.run_of = dict(zip(raw["source_id"], raw["extraction_run_id"], strict=True))


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
    """Payment intent -> the invoice it paid: from the canonical invoices' payments, else from
    an invoice payment looked up in Stripe (an invoice from before finsync's first day)."""
    wanted = sorted({i for i in intents if isinstance(i, str)})
    with engine.connect() as conn:
        found = looked_up_invoice_of_intent(conn)
    return {i: found[i] for i in wanted if i in found} | _lookup(
        engine,
        "SELECT payment_intent, invoice_id FROM invoice_payments WHERE payment_intent IN :keys",
        wanted,
    )


def _credit_note_of_refund(
    engine: Engine,
    refunds: pd.DataFrame,
    partition_of: Mapping[str, str],
    invoice_of_intent: Mapping[str, str],
) -> dict[str, str]:
    """Refund id -> the credit note behind it.

    Stripe links the two from the credit note's side (``refunds[]``) and creates them together,
    so the note is among those landed on the refund's day or those crediting its invoice,
    whichever run landed them. A refund landed again later (a status change) keeps the link it
    was first given.
    """
    ids = sorted(refunds["source_id"])
    note_of = _lookup(
        engine,
        "SELECT refund_id, credit_note_id FROM refunds WHERE refund_id IN :keys "
        "AND credit_note_id IS NOT NULL",
        ids,
    )
    days = sorted({partition_of[i] for i in ids if partition_of.get(i)})
    invoices = sorted(
        {invoice_of_intent[i] for i in refunds["payment_intent"] if i in invoice_of_intent}
    )
    if not days and not invoices:
        return note_of
    stmt = sa.text(
        "SELECT payload FROM stripe_credit_notes WHERE partition_date IN :days OR source_id IN "
        "(SELECT credit_note_id FROM credit_notes WHERE invoice_id IN :invoices)"
    ).bindparams(sa.bindparam("days", expanding=True), sa.bindparam("invoices", expanding=True))
    with engine.connect() as conn:
        payloads = [loads(p) for (p,) in conn.execute(stmt, {"days": days, "invoices": invoices})]
    wanted = set(ids)
    found = {
        str(r["refund"]): str(note.get("id"))
        for note in payloads
        for r in note.get("refunds") or []
        if r.get("refund") in wanted
    }
    return found | note_of


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
    deps=[
        "stripe_charges",
        "stripe_invoice_changes",
        "stripe_invoice_payments",
        "invoices",
        "customers",
    ],
)
def payments(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every charge landed and not yet carried, as a canonical payment in minor units, linked to the
    invoice its payment intent paid (even when the invoice is from an earlier day)."""
    engine = warehouse.get_engine()
    landed = Landed(
        engine, "stripe_charges", "payments", "payment_id", normalize.flatten_stripe_charges
    )
    charges = landed.records
    out = build_payments(
        charges,
        landed.partition_of,
        _invoice_of_intent(engine, list(charges["payment_intent"])),
        _customer_keys(engine, list(charges["customer"])),
        landed.run_of,
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
    deps=["stripe_credit_notes", "stripe_invoice_changes", "stripe_invoice_payments", "customers"],
)
def credit_notes(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every credit note landed and not yet carried, in minor units, against the invoice it credits:
    what becomes a credit memo in the ERP."""
    engine = warehouse.get_engine()
    landed = Landed(
        engine,
        "stripe_credit_notes",
        "credit_notes",
        "credit_note_id",
        normalize.flatten_stripe_credit_notes,
    )
    notes = landed.records
    out = build_credit_notes(
        notes,
        landed.partition_of,
        _customer_keys(engine, list(notes["customer"])),
        landed.run_of,
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
    deps=[
        "stripe_refunds",
        "stripe_invoice_changes",
        "stripe_invoice_payments",
        "credit_notes",
        "invoices",
    ],
)
def refunds(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Every refund landed and not yet carried, in minor units, with the charge, invoice and credit
    note behind it."""
    engine = warehouse.get_engine()
    landed = Landed(
        engine, "stripe_refunds", "refunds", "refund_id", normalize.flatten_stripe_refunds
    )
    found = landed.records
    invoice_of = _invoice_of_intent(engine, list(found["payment_intent"]))
    out = build_refunds(
        found,
        landed.partition_of,
        invoice_of,
        _credit_note_of_refund(engine, found, landed.partition_of, invoice_of),
        landed.run_of,
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
