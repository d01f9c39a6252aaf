"""Canonical business objects from validated source frames. Pure: no Dagster, no I/O."""

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pandas as pd

from finsync_pipeline.logic.normalize import correlation_id
from finsync_pipeline.money import round_half_up

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
    first = (
        stripe_customers.sort_values(["created", "source_id"])
        .drop_duplicates("salesforce_account_id", keep="first")
        .set_index("salesforce_account_id")
    )
    billing = first["source_id"]
    # The tax profile comes from billing, where tax is charged: exempt, reverse charge (B2B
    # cross-border VAT) or taxable ("none"), and whether the customer gave a tax id.
    tax_status = first["tax_exempt"] if "tax_exempt" in first else pd.Series(dtype="str")
    tax_ids = first["tax_id_count"] if "tax_id_count" in first else pd.Series(dtype="Int64")
    # The buyer's VAT id and an exempt customer's certificate, as the tax engine wants them.
    profile = {
        name: (first[name] if name in first else pd.Series(dtype="str"))
        for name in ("tax_id", "tax_exemption_number", "tax_entity_use_code")
    }
    out = pd.DataFrame(
        {
            "customer_key": accounts["source_id"],
            "salesforce_account_id": accounts["source_id"],
            "stripe_customer_id": accounts["source_id"].map(billing),
            "name": accounts["name"],
            "parent_customer_key": accounts["parent_id"],
            "hierarchy_depth": accounts["source_id"].map(depths).astype("Int64"),
            "legal_entity": accounts["legal_entity"],
            "tax_exempt": accounts["source_id"].map(tax_status),
            "has_tax_id": accounts["source_id"]
            .map(tax_ids)
            .fillna(0)
            .astype(int)
            .gt(0)
            .astype(int),
            **{name: accounts["source_id"].map(values) for name, values in profile.items()},
            "currency": accounts["currency"],
            "country": accounts["country"],
            "po_required": accounts["po_required"].astype(int),
            "source_system": "salesforce",
            "source_id": accounts["source_id"],
            "source_updated_at": accounts.get("source_updated_at"),
            "extraction_run_id": run_id,
        }
    )
    # A lookup that matched nothing (no Stripe customers yet) must stay a text column.
    out = out.astype(
        {"stripe_customer_id": "str", "parent_customer_key": "str", "tax_exempt": "str"}
        | dict.fromkeys(profile, "str")
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
            "po_number": invoices["po_number"],
            "opportunity_id": invoices["opportunity_id"],
            "stripe_customer_id": invoices["customer"],
            "customer_key": invoices["customer"].map(customer_keys),
            "subscription_id": invoices["subscription_id"],
            "status": invoices["status"],
            "currency": invoices["currency"],
            # Before every discount: Stripe's own subtotal has the lines' discounts taken off.
            "subtotal_minor": invoices["lines_amount"],
            "discount_minor": invoices["discount"],
            "tax_minor": invoices["tax"],
            "inclusive_tax_minor": invoices["inclusive_tax"],
            "total_excluding_tax_minor": invoices["total_excluding_tax"],
            "total_minor": invoices["total"],
            "starting_balance_minor": invoices["starting_balance"],
            "ending_balance_minor": invoices["ending_balance"],
            "amount_due_minor": invoices["amount_due"],
            "line_count": invoices["line_count"],
            # What is left to collect, as billing sees it: reconciliation holds the ERP's
            # balance of the invoice against it.
            "amount_paid_minor": invoices["amount_paid"].fillna(0),
            "amount_remaining_minor": invoices["amount_remaining"].fillna(0),
            "paid_out_of_band": invoices["paid_out_of_band"].astype(int),
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
            "discount_minor": kept["discount"],
            "tax_minor": kept["tax"],
            "inclusive_tax_minor": kept["inclusive_tax"],
            "period_start": kept["period_start"],
            "period_end": kept["period_end"],
            "correlation_id": kept["source_id"].map(corr_of),
        }
    )
    # A lookup that matched nothing (no customers landed yet) must stay a text column.
    head = head.astype(
        {
            "customer_key": "str",
            "subscription_id": "str",
            "number": "str",
            "po_number": "str",
            "opportunity_id": "str",
        }
    )
    return head.reset_index(drop=True), body.reset_index(drop=True)


def monthly_amount(unit_amount: int, quantity: int, interval: str, interval_count: int) -> int:
    """An item's recurring amount per month, in minor units (rounded half up per item)."""
    months = {"month": 1, "year": 12}.get(interval)
    if months is None:
        # Daily and weekly prices are not sold here; refuse rather than guess a month.
        raise ValueError(f"unsupported billing interval {interval!r}")
    return round_half_up(unit_amount * quantity, months * max(interval_count, 1))


def build_subscriptions(
    subscriptions: list[dict[str, Any]],
    contracts: pd.DataFrame,
    customer_keys: pd.Series,
    run_id: str,
) -> pd.DataFrame:
    """Canonical subscriptions: the Stripe subscription under its Salesforce contract's terms.

    Args:
        subscriptions: Valid Stripe subscription payloads (items carry their periods).
        contracts: Valid flattened Salesforce contracts.
        customer_keys: Stripe customer id -> Salesforce account id.
        run_id: The Dagster run, recorded as lineage.
    """
    terms = contracts.set_index("source_id")
    rows = []
    for sub in subscriptions:
        items = (sub.get("items") or {}).get("data") or []
        licensed = [
            i
            for i in items
            if ((i.get("price") or {}).get("recurring") or {}).get("usage_type", "licensed")
            == "licensed"
        ]
        mrr = sum(
            monthly_amount(
                int(i["price"]["unit_amount"]),
                int(i.get("quantity") or 0),
                i["price"]["recurring"]["interval"],
                int(i["price"]["recurring"].get("interval_count") or 1),
            )
            for i in licensed
        )
        intervals = sorted({i["price"]["recurring"]["interval"] for i in licensed})
        starts = [i["current_period_start"] for i in items if i.get("current_period_start")]
        ends = [i["current_period_end"] for i in items if i.get("current_period_end")]
        metadata = sub.get("metadata") or {}
        contract_id = metadata.get("salesforce_contract_id")
        term = terms.loc[contract_id] if contract_id in terms.index else None
        rows.append(
            {
                "subscription_id": sub["id"],
                "stripe_customer_id": sub["customer"],
                "customer_key": customer_keys.get(sub["customer"]),
                "status": sub["status"],
                "currency": str(sub["currency"]).upper(),
                "billing_interval": ",".join(intervals) or None,
                "item_count": len(items),
                "mrr_minor": mrr,
                "current_period_start": _day(min(starts)) if starts else None,
                "current_period_end": _day(max(ends)) if ends else None,
                "salesforce_contract_id": contract_id,
                "salesforce_opportunity_id": metadata.get("salesforce_opportunity_id"),
                "contract_start": None if term is None else term["start_date"],
                "contract_end": None if term is None else term["end_date"],
                "contract_term_months": None if term is None else term["term_months"],
                "source_system": "stripe",
                "source_id": sub["id"],
                "source_updated_at": None,
                "extraction_run_id": run_id,
                "correlation_id": correlation_id("stripe", "subscription", sub["id"]),
            }
        )
    out = pd.DataFrame(rows, columns=SUBSCRIPTION_COLUMNS)
    return out.astype(
        {"item_count": "Int64", "mrr_minor": "Int64", "contract_term_months": "Int64"}
    )


def _day(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).date().isoformat()


SUBSCRIPTION_COLUMNS = [
    "subscription_id",
    "stripe_customer_id",
    "customer_key",
    "status",
    "currency",
    "billing_interval",
    "item_count",
    "mrr_minor",
    "current_period_start",
    "current_period_end",
    "salesforce_contract_id",
    "salesforce_opportunity_id",
    "contract_start",
    "contract_end",
    "contract_term_months",
    "source_system",
    "source_id",
    "source_updated_at",
    "extraction_run_id",
    "correlation_id",
]


def invoice_payment_links(invoices: list[dict[str, Any]]) -> pd.DataFrame:
    """(invoice, payment intent) pairs from Stripe's ``invoice.payments`` (API 2025-03-31+)."""
    rows = []
    for inv in invoices:
        for pay in ((inv.get("payments") or {}).get("data")) or []:
            payment = pay.get("payment") or {}
            if payment.get("type") != "payment_intent" or not payment.get("payment_intent"):
                continue
            rows.append(
                {
                    "invoice_id": inv["id"],
                    "payment_intent": payment["payment_intent"],
                    "amount_paid_minor": int(pay.get("amount_paid") or 0),
                    "currency": str(pay.get("currency") or inv.get("currency")).upper(),
                    "status": str(pay.get("status")),
                }
            )
    return pd.DataFrame(
        rows, columns=["invoice_id", "payment_intent", "amount_paid_minor", "currency", "status"]
    )


def _lineage(df: pd.DataFrame, obj: str, id_column: str, run_of: Mapping[str, str]) -> pd.DataFrame:
    # A link that matched nothing is all-missing; keep text columns text (not float NaN).
    text = [c for c in df.columns if not c.endswith("_minor")]
    df = df.astype(dict.fromkeys(text, "str"))
    df["source_system"] = "stripe"
    df["source_id"] = df[id_column]
    df["source_updated_at"] = None
    # The run that landed the version carried: a later run that finds a landed record with
    # another run id knows the canonical row is behind it.
    df["extraction_run_id"] = df[id_column].map(run_of).astype("str")
    df["correlation_id"] = [correlation_id("stripe", obj, i) for i in df[id_column]]
    return df


def build_payments(
    charges: pd.DataFrame,
    partition_of: Mapping[str, str],
    invoice_of_intent: Mapping[str, str],
    customer_keys: Mapping[str, str],
    run_of: Mapping[str, str],
) -> pd.DataFrame:
    """Canonical payments: one row per charge, linked to the invoice its intent paid.

    ``partition_of`` and ``run_of`` map each charge to its day and the run that landed it.
    """
    out = pd.DataFrame(
        {
            "payment_id": charges["source_id"],
            "partition_date": charges["source_id"].map(partition_of),
            "payment_intent": charges["payment_intent"],
            "invoice_id": charges["payment_intent"].map(invoice_of_intent),
            "stripe_customer_id": charges["customer"],
            "customer_key": charges["customer"].map(customer_keys),
            "status": charges["status"],
            "currency": charges["currency"],
            "amount_minor": charges["amount_captured"],
            "refunded_minor": charges["amount_refunded"],
            "failure_code": charges["failure_code"],
        }
    )
    return _lineage(out, "charge", "payment_id", run_of).reset_index(drop=True)


def build_credit_notes(
    notes: pd.DataFrame,
    partition_of: Mapping[str, str],
    customer_keys: Mapping[str, str],
    run_of: Mapping[str, str],
) -> pd.DataFrame:
    """Canonical credit notes, in minor units, linked to the invoice they credit."""
    out = pd.DataFrame(
        {
            "credit_note_id": notes["source_id"],
            "partition_date": notes["source_id"].map(partition_of),
            "number": notes["number"],
            "invoice_id": notes["invoice"],
            "stripe_customer_id": notes["customer"],
            "customer_key": notes["customer"].map(customer_keys),
            "type": notes["type"],
            "status": notes["status"],
            "reason": notes["reason"],
            "currency": notes["currency"],
            "subtotal_minor": notes["subtotal"],
            "tax_minor": notes["tax"],
            "total_minor": notes["total"],
            "refunded_minor": notes["refunded"].fillna(0),
        }
    )
    return _lineage(out, "credit_note", "credit_note_id", run_of).reset_index(drop=True)


def build_refunds(
    refunds: pd.DataFrame,
    partition_of: Mapping[str, str],
    invoice_of_intent: Mapping[str, str],
    credit_note_of_refund: Mapping[str, str],
    run_of: Mapping[str, str],
) -> pd.DataFrame:
    """Canonical refunds: money returned on a charge, with its invoice and credit note."""
    out = pd.DataFrame(
        {
            "refund_id": refunds["source_id"],
            "partition_date": refunds["source_id"].map(partition_of),
            "payment_id": refunds["charge"],
            "payment_intent": refunds["payment_intent"],
            "invoice_id": refunds["payment_intent"].map(invoice_of_intent),
            "credit_note_id": refunds["source_id"].map(credit_note_of_refund),
            "status": refunds["status"],
            "reason": refunds["reason"],
            "currency": refunds["currency"],
            "amount_minor": refunds["amount"],
        }
    )
    return _lineage(out, "refund", "refund_id", run_of).reset_index(drop=True)
