"""Canonical business objects from validated source frames. Pure: no Dagster, no I/O."""

import pandas as pd

from finsync_pipeline.logic.normalize import correlation_id

UNKNOWN_PARENT = -1


def hierarchy_depths(parents: dict[str, str | None]) -> dict[str, int]:
    """Depth of every account in its hierarchy (0 = top).

    An account whose parent is unknown, or that sits on a cycle, gets UNKNOWN_PARENT: it cannot
    be placed in the ERP until the hierarchy is fixed, and derive raises an exception for it.
    """
    depths: dict[str, int] = {}

    def depth_of(account: str, seen: frozenset[str]) -> int:
        if account in depths:
            return depths[account]
        parent = parents[account]
        if parent is None:
            depth = 0
        elif parent not in parents or parent in seen:
            depth = UNKNOWN_PARENT
        else:
            above = depth_of(parent, seen | {account})
            depth = UNKNOWN_PARENT if above == UNKNOWN_PARENT else above + 1
        depths[account] = depth
        return depth

    for account in parents:
        depth_of(account, frozenset())
    return depths


def build_customers(
    accounts: pd.DataFrame, stripe_customers: pd.DataFrame, run_id: str
) -> pd.DataFrame:
    """One customer per Salesforce account, with its Stripe customer when it bills.

    The CRM owns the hierarchy, the legal entity and the currency; Stripe links to it through
    ``metadata.salesforce_account_id``.
    """
    parents = {
        str(r.source_id): (None if pd.isna(r.parent_id) else str(r.parent_id))
        for r in accounts.itertuples()
    }
    depths = hierarchy_depths(parents)
    billing = (
        stripe_customers.sort_values(["created", "source_id"])
        .drop_duplicates("salesforce_account_id", keep="first")
        .set_index("salesforce_account_id")["source_id"]
    )
    out = pd.DataFrame(
        {
            "customer_key": accounts["source_id"],
            "salesforce_account_id": accounts["source_id"],
            "stripe_customer_id": accounts["source_id"].map(billing),
            "name": accounts["name"],
            "parent_customer_key": accounts["parent_id"],
            "hierarchy_depth": accounts["source_id"].map(depths).astype("Int64"),
            "legal_entity": accounts["legal_entity"],
            "currency": accounts["currency"],
            "country": accounts["country"],
            "po_required": accounts["po_required"].astype(int),
            "source_system": "salesforce",
            "source_id": accounts["source_id"],
            "source_updated_at": accounts.get("source_updated_at"),
            "extraction_run_id": run_id,
        }
    )
    out["correlation_id"] = [
        correlation_id("salesforce", "Account", k) for k in out["customer_key"]
    ]
    return out.sort_values("customer_key").reset_index(drop=True)


def build_invoices(
    invoices: pd.DataFrame,
    lines: pd.DataFrame,
    customer_keys: pd.Series,
    partition_of: pd.Series,
    run_id: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical invoices and lines from valid Stripe invoices.

    Args:
        invoices: Valid flattened Stripe invoices.
        lines: Their lines (every page).
        customer_keys: Stripe customer id -> Salesforce account id.
        partition_of: Stripe invoice id -> the partition date it was extracted under.
        run_id: The Dagster run, recorded as lineage.
    """
    corr = invoices["source_id"].map(lambda i: correlation_id("stripe", "invoice", i))
    head = pd.DataFrame(
        {
            "invoice_id": invoices["source_id"],
            "partition_date": invoices["source_id"].map(partition_of),
            "number": invoices["number"],
            "stripe_customer_id": invoices["customer"],
            "customer_key": invoices["customer"].map(customer_keys),
            "subscription_id": invoices["subscription_id"],
            "status": invoices["status"],
            "currency": invoices["currency"],
            "subtotal_minor": invoices["subtotal"],
            "tax_minor": invoices["tax"],
            "total_minor": invoices["total"],
            "line_count": invoices["line_count"],
            "invoice_date": invoices["invoice_date"],
            "due_date": invoices["due_date"],
            "finalized_at": invoices["finalized_at"],
            "source_system": "stripe",
            "source_id": invoices["source_id"],
            "source_updated_at": invoices["finalized_at"],
            "extraction_run_id": run_id,
            "correlation_id": corr,
        }
    )
    corr_of = dict(zip(head["invoice_id"], head["correlation_id"], strict=True))
    kept = lines[lines["source_id"].isin(corr_of)]
    body = pd.DataFrame(
        {
            "line_id": kept["line_id"],
            "invoice_id": kept["source_id"],
            "partition_date": kept["source_id"].map(partition_of),
            "line_number": kept["line_number"],
            "product_id": kept["product_id"],
            "price_id": kept["price_id"],
            "description": kept["description"],
            "quantity": kept["quantity"],
            "currency": kept["currency"],
            "amount_minor": kept["amount"],
            "tax_minor": kept["tax"],
            "period_start": kept["period_start"],
            "period_end": kept["period_end"],
            "correlation_id": kept["source_id"].map(corr_of),
        }
    )
    return head.reset_index(drop=True), body.reset_index(drop=True)
