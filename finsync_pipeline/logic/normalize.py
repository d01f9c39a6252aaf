"""Flatten native source records into the frames the contracts check.

Flattening is tolerant on purpose: a malformed value becomes null (or is kept as text) so the
contract can name the record, the field and the check, and the row can go to quarantine. It
never raises on a bad record and never drops one.
"""

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import pandas as pd

from finsync_pipeline.money import MoneyError, is_known_currency, to_minor

Record = Mapping[str, Any]


def correlation_id(system: str, obj: str, source_id: str) -> str:
    """The id that follows a record into the ERP and back into reconciliation; deterministic."""
    digest = hashlib.sha256(f"{system}:{obj}:{source_id}".encode()).hexdigest()
    return f"fs-{digest[:20]}"


def as_int(value: Any) -> int | None:
    """An integer amount or count; anything else (float, text, bool, null) is None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def as_text(value: Any) -> str | None:
    return None if value is None else str(value)


def as_upper(value: Any) -> str | None:
    return value.strip().upper() if isinstance(value, str) else None


def as_bool(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def unix_to_date(value: Any) -> str | None:
    seconds = as_int(value)
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).date().isoformat()


def decimal_to_minor(value: Any, currency: Any) -> int | None:
    """A decimal major-unit amount (CRM, ERP) to minor units; None when not exact or unknown."""
    if value is None or not is_known_currency(currency):
        return None
    try:
        return to_minor(Decimal(str(value)), str(currency))
    except (MoneyError, InvalidOperation):
        return None


def _frame(rows: list[dict[str, Any]], dtypes: Mapping[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(dtypes))
    return df.astype(dict(dtypes))


def _sum_ints(values: Iterable[int | None]) -> int | None:
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


CUSTOMER_DTYPES = {
    "source_id": "str",
    "name": "str",
    "currency": "str",
    "salesforce_account_id": "str",
    "legal_entity": "str",
    "created": "Int64",
}


def flatten_stripe_customers(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe customers, one row each."""
    rows = []
    for r in records:
        metadata = r.get("metadata") or {}
        rows.append(
            {
                "source_id": as_text(r.get("id")),
                "name": as_text(r.get("name")),
                "currency": as_upper(r.get("currency")),
                "salesforce_account_id": as_text(metadata.get("salesforce_account_id")),
                "legal_entity": as_text(metadata.get("legal_entity")),
                "created": as_int(r.get("created")),
            }
        )
    return _frame(rows, CUSTOMER_DTYPES)


SUBSCRIPTION_DTYPES = {
    "source_id": "str",
    "customer": "str",
    "status": "str",
    "currency": "str",
    "item_count": "Int64",
    "created": "Int64",
}


def flatten_stripe_subscriptions(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe subscriptions, one row each (items are counted; their periods stay in payload)."""
    rows = [
        {
            "source_id": as_text(r.get("id")),
            "customer": as_text(r.get("customer")),
            "status": as_text(r.get("status")),
            "currency": as_upper(r.get("currency")),
            "item_count": len(((r.get("items") or {}).get("data")) or []),
            "created": as_int(r.get("created")),
        }
        for r in records
    ]
    return _frame(rows, SUBSCRIPTION_DTYPES)


PAYMENT_DTYPES = {
    "source_id": "str",
    "customer": "str",
    "status": "str",
    "currency": "str",
    "amount": "Int64",
    "amount_received": "Int64",
    "created": "Int64",
}


def flatten_stripe_payments(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe payment intents, one row each."""
    rows = [
        {
            "source_id": as_text(r.get("id")),
            "customer": as_text(r.get("customer")),
            "status": as_text(r.get("status")),
            "currency": as_upper(r.get("currency")),
            "amount": as_int(r.get("amount")),
            "amount_received": as_int(r.get("amount_received")),
            "created": as_int(r.get("created")),
        }
        for r in records
    ]
    return _frame(rows, PAYMENT_DTYPES)


INVOICE_DTYPES = {
    "source_id": "str",
    "number": "str",
    "customer": "str",
    "subscription_id": "str",
    "status": "str",
    "currency": "str",
    "subtotal": "Int64",
    "tax": "Int64",
    "total": "Int64",
    "lines_amount": "Int64",
    "line_count": "Int64",
    "created": "Int64",
    "invoice_date": "str",
    "due_date": "str",
    "finalized_at": "str",
}
LINE_DTYPES = {
    "source_id": "str",
    "line_id": "str",
    "line_number": "Int64",
    "amount": "Int64",
    "tax": "Int64",
    "quantity": "Int64",
    "product_id": "str",
    "price_id": "str",
    "description": "str",
    "currency": "str",
    "period_start": "str",
    "period_end": "str",
}


def _line_tax(line: Record) -> int | None:
    taxes = line.get("taxes")
    if taxes is None:
        return 0
    if not isinstance(taxes, list):
        return None
    return _sum_ints(as_int(t.get("amount")) if isinstance(t, Mapping) else None for t in taxes)


def flatten_stripe_invoices(records: Sequence[Record]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stripe invoices and every one of their lines (the extractor already paged past 10)."""
    invoices: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    for r in records:
        invoice_id = as_text(r.get("id"))
        line_objs = ((r.get("lines") or {}).get("data")) or []
        line_amounts: list[int | None] = []
        for n, line in enumerate(line_objs):
            pricing = (line.get("pricing") or {}).get("price_details") or {}
            period = line.get("period") or {}
            amount = as_int(line.get("amount"))
            line_amounts.append(amount)
            lines.append(
                {
                    "source_id": invoice_id,
                    "line_id": as_text(line.get("id")) or f"{invoice_id}:{n}",
                    "line_number": n,
                    "amount": amount,
                    "tax": _line_tax(line),
                    "quantity": as_int(line.get("quantity")),
                    "product_id": as_text(pricing.get("product")),
                    "price_id": as_text(pricing.get("price")),
                    "description": as_text(line.get("description")),
                    "currency": as_upper(line.get("currency")),
                    "period_start": unix_to_date(period.get("start")),
                    "period_end": unix_to_date(period.get("end")),
                }
            )
        taxes = r.get("total_taxes") or []
        transitions = r.get("status_transitions") or {}
        parent = (r.get("parent") or {}).get("subscription_details") or {}
        invoices.append(
            {
                "source_id": invoice_id,
                "number": as_text(r.get("number")),
                "customer": as_text(r.get("customer")),
                "subscription_id": as_text(parent.get("subscription")),
                "status": as_text(r.get("status")),
                "currency": as_upper(r.get("currency")),
                "subtotal": as_int(r.get("subtotal")),
                "tax": _sum_ints(as_int(t.get("amount")) for t in taxes),
                "total": as_int(r.get("total")),
                "lines_amount": _sum_ints(line_amounts),
                "line_count": len(line_objs),
                "created": as_int(r.get("created")),
                "invoice_date": unix_to_date(r.get("created")),
                "due_date": unix_to_date(r.get("due_date")),
                "finalized_at": unix_to_date(transitions.get("finalized_at")),
            }
        )
    return _frame(invoices, INVOICE_DTYPES), _frame(lines, LINE_DTYPES)


ACCOUNT_DTYPES = {
    "source_id": "str",
    "name": "str",
    "parent_id": "str",
    "currency": "str",
    "legal_entity": "str",
    "country": "str",
    "po_required": "bool",
}


def flatten_salesforce_accounts(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce Accounts with their hierarchy and billing facts."""
    rows = [
        {
            "source_id": as_text(r.get("Id")),
            "name": as_text(r.get("Name")),
            "parent_id": as_text(r.get("ParentId")),
            "currency": as_upper(r.get("CurrencyIsoCode")),
            "legal_entity": as_text(r.get("Legal_Entity__c")),
            "country": as_text(r.get("BillingCountry")),
            "po_required": as_bool(r.get("PO_Required__c")),
        }
        for r in records
    ]
    return _frame(rows, ACCOUNT_DTYPES)


OPPORTUNITY_DTYPES = {
    "source_id": "str",
    "account_id": "str",
    "type": "str",
    "stage": "str",
    "close_date": "str",
    "currency": "str",
    "amount_minor": "Int64",
    "is_won": "bool",
    "contract_id": "str",
}


def flatten_salesforce_opportunities(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce Opportunities; Amount (a decimal) becomes exact minor units."""
    rows = [
        {
            "source_id": as_text(r.get("Id")),
            "account_id": as_text(r.get("AccountId")),
            "type": as_text(r.get("Type")),
            "stage": as_text(r.get("StageName")),
            "close_date": as_text(r.get("CloseDate")),
            "currency": as_upper(r.get("CurrencyIsoCode")),
            "amount_minor": decimal_to_minor(r.get("Amount"), as_upper(r.get("CurrencyIsoCode"))),
            "is_won": as_bool(r.get("IsWon")),
            "contract_id": as_text(r.get("ContractId")),
        }
        for r in records
    ]
    return _frame(rows, OPPORTUNITY_DTYPES)


CONTRACT_DTYPES = {
    "source_id": "str",
    "account_id": "str",
    "status": "str",
    "start_date": "str",
    "end_date": "str",
    "term_months": "Int64",
}


def flatten_salesforce_contracts(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce Contracts."""
    rows = [
        {
            "source_id": as_text(r.get("Id")),
            "account_id": as_text(r.get("AccountId")),
            "status": as_text(r.get("Status")),
            "start_date": as_text(r.get("StartDate")),
            "end_date": as_text(r.get("EndDate")),
            "term_months": as_int(r.get("ContractTerm")),
        }
        for r in records
    ]
    return _frame(rows, CONTRACT_DTYPES)


ERP_INVOICE_DTYPES = {
    "source_id": "str",
    "external_id": "str",
    "tran_id": "str",
    "entity": "str",
    "tran_date": "str",
    "currency": "str",
    "total_minor": "Int64",
    "status": "str",
    "memo": "str",
}


def netsuite_date(value: Any) -> str | None:
    """SuiteQL returns dates in the account's format; the sandbox and our accounts use M/D/YYYY."""
    text = as_text(value)
    if text is None:
        return None
    for fmt in ("%Y-%m-%d", "%m/%d/%Y", "%d/%m/%Y"):
        try:
            return dt.datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    return text


def flatten_erp_invoices(
    records: Sequence[Record], currency_codes: Mapping[str, str]
) -> pd.DataFrame:
    """NetSuite invoices from SuiteQL; the currency id maps back to its ISO code."""
    rows = []
    for r in records:
        currency = currency_codes.get(str(r.get("currency")))
        rows.append(
            {
                "source_id": as_text(r.get("id")),
                "external_id": as_text(r.get("externalid")),
                "tran_id": as_text(r.get("tranid")),
                "entity": as_text(r.get("entity")),
                "tran_date": netsuite_date(r.get("trandate")),
                "currency": currency,
                "total_minor": decimal_to_minor(r.get("foreigntotal"), currency),
                "status": as_text(r.get("status")),
                "memo": as_text(r.get("memo")),
            }
        )
    return _frame(rows, ERP_INVOICE_DTYPES)


Flattener = Callable[[Sequence[Record]], pd.DataFrame]
