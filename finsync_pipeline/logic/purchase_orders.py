"""The purchase order of an invoice read from the Salesforce Opportunity or CPQ quote it bills.

Pure functions over DataFrames. Which record an invoice bills: the Opportunity its Stripe
metadata names (``PoSource.opportunity_of``, read into the canonical invoice's
``opportunity_id``); without that link, the account's closed-won Opportunity whose term starts
on the invoice date or within ``TERM_GRACE_DAYS`` before it, the rule renewal reconciliation
matches renewals to invoices by. The link wins: an invoice in the middle of a term (monthly
billing) is found only by it. The quote source then reads the Opportunity's primary CPQ quote.
"""

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import pandas as pd

from finsync_pipeline.logic import normalize
from finsync_pipeline.logic.reconcile import TERM_GRACE_DAYS
from finsync_pipeline.po_source import PoSource

Record = Mapping[str, Any]
PO_COLUMNS = ["invoice_id", "po_number", "po_where"]
OPPORTUNITY_COLUMNS = ["opportunity_id", "account_id", "is_won", "term_start", "po_number"]
QUOTE_COLUMNS = ["quote_id", "opportunity_id", "primary", "po_number"]


def field_text(record: Record, name: str) -> str | None:
    """A Salesforce field as PO text: a text field stripped, a number field as its digits;
    blank, null or anything else is none."""
    value = record.get(name)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        return format(Decimal(value).normalize(), "f")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def crm_frames(
    opportunities: Sequence[Record],
    contracts: Sequence[Record],
    quotes: Sequence[Record],
    field: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Opportunities (with their term start and PO) and CPQ quotes (with their PO) of
    native Salesforce records, ``field`` being the configured PO field.

    An Opportunity's term starts on its contract's start date, else on its close date.
    """
    opps = normalize.flatten_salesforce_opportunities(list(opportunities))
    terms = normalize.flatten_salesforce_contracts(list(contracts))
    start_of = dict(zip(terms["source_id"], terms["start_date"], strict=True))
    opp_frame = pd.DataFrame(
        {
            "opportunity_id": opps["source_id"],
            "account_id": opps["account_id"],
            "is_won": opps["is_won"],
            "term_start": opps["contract_id"].map(start_of).fillna(opps["close_date"]),
            "po_number": [field_text(r, field) for r in opportunities],
        },
        columns=OPPORTUNITY_COLUMNS,
    )
    flat = normalize.flatten_cpq_quotes(list(quotes))
    quote_frame = pd.DataFrame(
        {
            "quote_id": flat["source_id"],
            "opportunity_id": flat["opportunity_id"],
            "primary": flat["primary"],
            "po_number": [field_text(r, field) for r in quotes],
        },
        columns=QUOTE_COLUMNS,
    )
    return opp_frame, quote_frame


def crm_purchase_orders(
    invoices: pd.DataFrame,
    opportunities: pd.DataFrame,
    quotes: pd.DataFrame,
    source: PoSource,
    *,
    grace_days: int = TERM_GRACE_DAYS,
) -> pd.DataFrame:
    """Each invoice's PO from its Opportunity (or that Opportunity's primary quote).

    Args:
        invoices: invoice_id, customer_key, invoice_date, opportunity_id (the linked one).
        opportunities: OPPORTUNITY_COLUMNS (``crm_frames``).
        quotes: QUOTE_COLUMNS; read only by the quote source.
        source: A Salesforce PO source.
        grace_days: How long after a term starts its invoice may be dated, for invoices
            without a link.

    Returns:
        PO_COLUMNS, one row per invoice in order: the PO (or none) and, when there is none,
        ``po_where``: what finance sets for the next run to find it, naming the record and
        the field.
    """
    opps = {str(o["opportunity_id"]): o for o in opportunities.to_dict("records")}
    won_by_account: dict[str, list[dict[str, Any]]] = {}
    for opp in opps.values():
        if opp["is_won"] and isinstance(opp["term_start"], str):
            won_by_account.setdefault(str(opp["account_id"]), []).append(opp)
    primary = {
        str(q["opportunity_id"]): q
        for q in quotes.sort_values("quote_id").to_dict("records")
        if q["primary"]
    }
    rows = []
    for inv in invoices.to_dict("records"):
        link = None if _na(inv["opportunity_id"]) else str(inv["opportunity_id"])
        if link is not None:
            opp = opps.get(link)
            if opp is None:
                rows.append(_missing(inv, _unknown_link(source, link)))
                continue
        else:
            opp = _term_started(won_by_account, inv, grace_days)
            if opp is None:
                rows.append(_missing(inv, _no_link(source, inv, grace_days)))
                continue
        rows.append(_from_record(inv, opp, primary, source))
    return pd.DataFrame(rows, columns=PO_COLUMNS)


def _na(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def _missing(inv: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {"invoice_id": inv["invoice_id"], "po_number": None, "po_where": where}


def _term_started(
    won_by_account: Mapping[str, list[dict[str, Any]]], inv: Mapping[str, Any], grace_days: int
) -> dict[str, Any] | None:
    """The account's closed-won Opportunity whose term starts on the invoice date or within
    ``grace_days`` before it: the latest such start, then the highest id."""
    if _na(inv["customer_key"]) or _na(inv["invoice_date"]):
        return None
    day = dt.date.fromisoformat(str(inv["invoice_date"])[:10])
    earliest = (day - dt.timedelta(days=grace_days)).isoformat()
    fits = [
        o
        for o in won_by_account.get(str(inv["customer_key"]), [])
        if earliest <= str(o["term_start"])[:10] <= day.isoformat()
    ]
    return max(fits, key=lambda o: (o["term_start"], o["opportunity_id"]), default=None)


def _from_record(
    inv: Mapping[str, Any],
    opp: Mapping[str, Any],
    primary: Mapping[str, Mapping[str, Any]],
    source: PoSource,
) -> dict[str, Any]:
    opp_id = str(opp["opportunity_id"])
    if source.kind == "salesforce_opportunity":
        record, where = opp, f"field {source.name} on Salesforce Opportunity {opp_id}"
    else:
        quote = primary.get(opp_id)
        if quote is None:
            return _missing(
                inv,
                f"field {source.name} on a primary CPQ quote (SBQQ__Quote__c) of Salesforce "
                f"Opportunity {opp_id}, which has none",
            )
        record = quote
        where = (
            f"field {source.name} on the primary CPQ quote {quote['quote_id']} "
            f"(SBQQ__Quote__c) of Salesforce Opportunity {opp_id}"
        )
    po = record["po_number"]
    if _na(po):
        return _missing(inv, where)
    return {"invoice_id": inv["invoice_id"], "po_number": str(po), "po_where": None}


def _unknown_link(source: PoSource, link: str) -> str:
    return (
        f"metadata key '{source.link_key}' on the Stripe subscription or invoice to the "
        f"Opportunity it bills: it names {link}, which finsync has not extracted (unknown or "
        f"quarantined); then the {source.where.split(' on ', 1)[0]} on it"
    )


def _no_link(source: PoSource, inv: Mapping[str, Any], grace_days: int) -> str:
    return (
        f"metadata key '{source.link_key}' on the Stripe subscription or invoice to the "
        f"Opportunity it bills (no key, and no closed-won Opportunity of account "
        f"{inv['customer_key']} starts within {grace_days} days before the invoice date), "
        f"then the {source.where.split(' on ', 1)[0]} on it"
    )
