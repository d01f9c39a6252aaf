"""Derive what the ERP should hold, and the finance exceptions that stop a document.

Pure functions over DataFrames. A document that cannot be derived cleanly is never dropped: it
becomes a finance exception with its kind, owner queue and a readable detail, and the
exception resolves itself once a later run derives the document cleanly.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from finsync_pipeline.logic.canonical import UNKNOWN_PARENT
from finsync_pipeline.master_data import MasterData
from finsync_pipeline.money import to_decimal

ERP = "netsuite"
LIVE_INVOICE_STATUSES = ("open", "paid", "uncollectible")

EXCEPTION_COLUMNS = [
    "kind",
    "source_system",
    "source_id",
    "severity",
    "owner_queue",
    "partition_date",
    "correlation_id",
    "legal_entity",
    "detail",
]

# kind -> (severity, owner queue). Owners are the teams that can remove the cause.
EXCEPTION_KINDS: dict[str, tuple[str, str]] = {
    "unknown_legal_entity": ("high", "revops"),
    "unknown_parent": ("medium", "revops"),
    "unmatched_customer": ("high", "revops"),
    "customer_held": ("medium", "revops"),
    "unmapped_product": ("high", "finance_ops"),
    "unmapped_currency": ("high", "finance_ops"),
    "posting_rejected": ("high", "finance_ops"),
    "posting_dead": ("high", "finance_ops"),
    "posted_document_changed": ("medium", "finance_ops"),
    "unknown_usage_subject": ("high", "revops"),
    "tax_mismatch": ("high", "tax"),
    "tax_address_missing": ("medium", "tax"),
}


def customer_external_id(customer_key: str) -> str:
    """The NetSuite external id of a customer: deterministic from its Salesforce account id."""
    return f"SF_{customer_key}"


def invoice_external_id(invoice_id: str) -> str:
    """The NetSuite external id of an invoice: deterministic from its Stripe invoice id."""
    return f"STRIPE_{invoice_id}"


def ref(doc_type: str, external_id: str) -> dict[str, list[str]]:
    """A reference to another document in the same ERP, resolved to its internal id at posting."""
    return {"$ref": [doc_type, external_id]}


@dataclass
class _Exceptions:
    rows: list[dict[str, Any]]

    def add(self, kind: str, system: str, source_id: str, detail: str, **extra: Any) -> None:
        severity, owner = EXCEPTION_KINDS[kind]
        self.rows.append(
            {
                "kind": kind,
                "source_system": system,
                "source_id": source_id,
                "severity": severity,
                "owner_queue": owner,
                "partition_date": extra.get("partition_date"),
                "correlation_id": extra.get("correlation_id"),
                "legal_entity": extra.get("legal_entity"),
                "detail": detail,
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=EXCEPTION_COLUMNS)


def _na(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def derive_customer_upserts(
    customers: pd.DataFrame, master: MasterData
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ERP customer upserts (parents before children) and the customers that cannot be placed."""
    problems = _Exceptions([])
    rows: list[dict[str, Any]] = []
    placed: set[str] = set()
    ordered = customers.sort_values(["hierarchy_depth", "customer_key"])
    for c in ordered.itertuples(index=False):
        key = str(c.customer_key)
        extra = {"correlation_id": c.correlation_id, "legal_entity": c.legal_entity}
        entity = master.legal_entities.get(str(c.legal_entity))
        parent = None if _na(c.parent_customer_key) else str(c.parent_customer_key)
        if c.hierarchy_depth == UNKNOWN_PARENT:
            problems.add(
                "unknown_parent",
                "salesforce",
                key,
                f"Account {key} has ParentId {parent}, which is not a known account "
                "(missing, quarantined or a cycle)",
                **extra,
            )
            continue
        if entity is None:
            problems.add(
                "unknown_legal_entity",
                "salesforce",
                key,
                f"Account {key} field Legal_Entity__c is {c.legal_entity!r}, "
                "which is not in legal_entities.csv",
                **extra,
            )
            continue
        if parent is not None and parent not in placed:
            problems.add(
                "unknown_parent",
                "salesforce",
                key,
                f"Account {key} waits for its parent {parent}, which is held by its own exception",
                **extra,
            )
            continue
        currency = str(c.currency) if not _na(c.currency) else entity.currency
        currency_id = master.netsuite_currency_ids.get(currency)
        if currency_id is None:
            problems.add(
                "unmapped_currency",
                "salesforce",
                key,
                f"Account {key} currency {currency} has no NetSuite currency in currencies.csv",
                **extra,
            )
            continue
        external_id = customer_external_id(key)
        payload: dict[str, Any] = {
            "externalId": external_id,
            "companyName": str(c.name),
            "isPerson": False,
            "subsidiary": {"id": entity.netsuite_subsidiary_id},
            "currency": {"id": currency_id},
            "comments": f"finsync {c.correlation_id} salesforce Account {key}",
        }
        if parent is not None:
            payload["parent"] = ref("customer", customer_external_id(parent))
        placed.add(key)
        rows.append(
            {
                "erp": ERP,
                "external_id": external_id,
                "customer_key": key,
                "parent_external_id": None if parent is None else customer_external_id(parent),
                "hierarchy_depth": int(c.hierarchy_depth),
                "subsidiary_id": entity.netsuite_subsidiary_id,
                "currency_id": currency_id,
                "payload": payload,
                "correlation_id": c.correlation_id,
            }
        )
    upserts = pd.DataFrame(
        rows,
        columns=[
            "erp",
            "external_id",
            "customer_key",
            "parent_external_id",
            "hierarchy_depth",
            "subsidiary_id",
            "currency_id",
            "payload",
            "correlation_id",
        ],
    )
    return upserts, problems.frame()


def derive_invoice_ready(
    invoices: pd.DataFrame,
    lines: pd.DataFrame,
    upserts: pd.DataFrame,
    customers: pd.DataFrame,
    master: MasterData,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Invoice-ready transactions for the ERP, and the invoices that must wait.

    Only live invoices (open, paid, uncollectible) are posted; drafts are not final and voids
    before posting never reach the ERP.
    """
    problems = _Exceptions([])
    placed = dict(zip(upserts["customer_key"], upserts["external_id"], strict=True))
    entity_of: Mapping[str, Any] = dict(
        zip(customers["customer_key"], customers["legal_entity"], strict=True)
    )
    lines_of = {k: g.sort_values("line_number") for k, g in lines.groupby("invoice_id")}
    rows: list[dict[str, Any]] = []
    live = invoices[invoices["status"].isin(LIVE_INVOICE_STATUSES)]
    for inv in live.sort_values("invoice_id").itertuples(index=False):
        invoice_id = str(inv.invoice_id)
        key = None if _na(inv.customer_key) else str(inv.customer_key)
        legal_entity = None if key is None else entity_of.get(key)
        extra = {
            "partition_date": inv.partition_date,
            "correlation_id": inv.correlation_id,
            "legal_entity": None if _na(legal_entity) else legal_entity,
        }
        if key is None or key not in entity_of:
            problems.add(
                "unmatched_customer",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} bills customer {inv.stripe_customer_id}, "
                "whose metadata.salesforce_account_id matches no valid account",
                **extra,
            )
            continue
        if key not in placed:
            problems.add(
                "customer_held",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} waits for its customer {key}, which is "
                "held by its own exception",
                **extra,
            )
            continue
        entity = master.legal_entities[str(legal_entity)]
        currency_id = master.netsuite_currency_ids.get(str(inv.currency))
        if currency_id is None:
            problems.add(
                "unmapped_currency",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} field currency {inv.currency} has no "
                "NetSuite currency in currencies.csv",
                **extra,
            )
            continue
        inv_lines = lines_of.get(invoice_id, lines.iloc[0:0])
        unmapped = sorted(
            {
                "(no product)" if _na(p) else str(p)
                for p in inv_lines["product_id"]
                if _na(p) or str(p) not in master.netsuite_items
            }
        )
        if unmapped:
            problems.add(
                "unmapped_product",
                "stripe",
                invoice_id,
                f"Stripe invoice {invoice_id} lines carry products {', '.join(unmapped)} "
                "with no NetSuite item in products.csv",
                **extra,
            )
            continue
        currency = str(inv.currency)
        items = [
            {
                "item": {"id": master.netsuite_items[str(line.product_id)]},
                "quantity": int(line.quantity),
                "amount": to_decimal(int(line.amount_minor), currency),
                "description": "" if _na(line.description) else str(line.description),
            }
            for line in inv_lines.itertuples(index=False)
        ]
        if int(inv.tax_minor):
            items.append(
                {
                    "item": {"id": master.netsuite_tax_item_id},
                    "quantity": 1,
                    "amount": to_decimal(int(inv.tax_minor), currency),
                    "description": "Tax",
                }
            )
        external_id = invoice_external_id(invoice_id)
        payload: dict[str, Any] = {
            "externalId": external_id,
            "entity": ref("customer", placed[key]),
            "tranDate": inv.invoice_date,
            "subsidiary": {"id": entity.netsuite_subsidiary_id},
            "currency": {"id": currency_id},
            "memo": f"finsync {inv.correlation_id} stripe invoice {invoice_id}",
            "item": {"items": items},
        }
        if not _na(inv.due_date):
            payload["dueDate"] = inv.due_date
        if not _na(inv.number):
            payload["otherRefNum"] = str(inv.number)
        rows.append(
            {
                "erp": ERP,
                "external_id": external_id,
                "invoice_id": invoice_id,
                "partition_date": inv.partition_date,
                "customer_external_id": placed[key],
                "legal_entity": entity.code,
                "subsidiary_id": entity.netsuite_subsidiary_id,
                "currency": currency,
                "total_minor": int(inv.total_minor),
                "tax_minor": int(inv.tax_minor),
                "line_count": len(items),
                "tran_date": inv.invoice_date,
                "payload": payload,
                "correlation_id": inv.correlation_id,
            }
        )
    ready = pd.DataFrame(
        rows,
        columns=[
            "erp",
            "external_id",
            "invoice_id",
            "partition_date",
            "customer_external_id",
            "legal_entity",
            "subsidiary_id",
            "currency",
            "total_minor",
            "tax_minor",
            "line_count",
            "tran_date",
            "payload",
            "correlation_id",
        ],
    )
    return ready, problems.frame()
