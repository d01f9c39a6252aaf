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

from finsync_pipeline.money import MAX_SAFE_INTEGER, MoneyError, is_known_currency, to_minor
from finsync_pipeline.po_source import DEFAULT_PO_SOURCE, PoSource

Record = Mapping[str, Any]


def correlation_id(system: str, obj: str, source_id: str) -> str:
    """The id that follows a record into the ERP and back into reconciliation; deterministic."""
    digest = hashlib.sha256(f"{system}:{obj}:{source_id}".encode()).hexdigest()
    return f"fs-{digest[:20]}"


def as_int(value: Any) -> int | None:
    """An integer amount or count; anything else (float, text, bool, null, an integer beyond
    2**53 - 1) is None."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_SAFE_INTEGER:
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
    try:
        return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return None  # past year 9999: the contract check quarantines the record


def decimal_to_minor(value: Any, currency: Any) -> int | None:
    """A decimal major-unit amount (CRM, ERP) to minor units; None when not exact or unknown."""
    if value is None or not is_known_currency(currency):
        return None
    try:
        minor = to_minor(Decimal(str(value)), str(currency))
    except (MoneyError, InvalidOperation):
        return None
    return minor if abs(minor) <= MAX_SAFE_INTEGER else None


def _frame(rows: list[dict[str, Any]], dtypes: Mapping[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(dtypes))
    return df.astype(dict(dtypes))


Getter = Callable[[Record], Any]
# column name -> (pandas dtype, how to read it from a native record)
Columns = Mapping[str, tuple[str, Getter]]


def field(key: str, convert: Callable[[Any], Any] = as_text) -> Getter:
    """Read ``key`` of a record and convert it tolerantly."""
    return lambda record: convert(record.get(key))


def flatten_with(records: Sequence[Record], columns: Columns) -> pd.DataFrame:
    """One row per record, one column per spec; never raises on a malformed value."""
    rows = [{name: get(r) for name, (_, get) in columns.items()} for r in records]
    return _frame(rows, {name: dtype for name, (dtype, _) in columns.items()})


def _sum_ints(values: Iterable[int | None]) -> int | None:
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


def _metadata(key: str) -> Getter:
    return lambda record: as_text((record.get("metadata") or {}).get(key))


def first_vat_id(record: Record) -> str | None:
    """The value of a customer's first VAT-type tax id (``eu_vat``, ``gb_vat``, ``ch_vat``...).

    The ids are in ``tax_ids.data`` only when the listing expanded them. An ``eu_oss_vat`` is
    the One-Stop-Shop registration a seller uses, not a buyer's VAT id, and is skipped.
    """
    tax_ids = record.get("tax_ids")
    data = tax_ids.get("data") if isinstance(tax_ids, Mapping) else None
    for tax_id in data if isinstance(data, list) else []:
        kind = tax_id.get("type") if isinstance(tax_id, Mapping) else None
        value = tax_id.get("value") if isinstance(tax_id, Mapping) else None
        if isinstance(kind, str) and kind.endswith("_vat") and kind != "eu_oss_vat" and value:
            return str(value)
    return None


CUSTOMER_COLUMNS: Columns = {
    "source_id": ("str", field("id")),
    "name": ("str", field("name")),
    "currency": ("str", field("currency", as_upper)),
    "salesforce_account_id": ("str", _metadata("salesforce_account_id")),
    "legal_entity": ("str", _metadata("legal_entity")),
    "tax_exempt": ("str", field("tax_exempt")),
    "tax_id_count": ("Int64", lambda r: len(((r.get("tax_ids") or {}).get("data")) or [])),
    "tax_id": ("str", first_vat_id),
    # Stripe keeps no exemption certificate: finsync reads it from the customer's metadata.
    "tax_exemption_number": ("str", _metadata("tax_exemption_number")),
    "tax_entity_use_code": ("str", _metadata("tax_entity_use_code")),
    "created": ("Int64", field("created", as_int)),
}
SUBSCRIPTION_COLUMNS: Columns = {
    "source_id": ("str", field("id")),
    "customer": ("str", field("customer")),
    "status": ("str", field("status")),
    "currency": ("str", field("currency", as_upper)),
    # Items are counted here; their periods (since 2025-03-31.basil) stay in the payload.
    "item_count": ("Int64", lambda r: len(((r.get("items") or {}).get("data")) or [])),
    "created": ("Int64", field("created", as_int)),
}
PAYMENT_COLUMNS: Columns = {
    "source_id": ("str", field("id")),
    "customer": ("str", field("customer")),
    "status": ("str", field("status")),
    "currency": ("str", field("currency", as_upper)),
    "amount": ("Int64", field("amount", as_int)),
    "amount_received": ("Int64", field("amount_received", as_int)),
    "created": ("Int64", field("created", as_int)),
}


def _list_data(record: Record, key: str) -> list[Any] | None:
    """``record[key]`` as a list: a Stripe list object's ``data`` or a plain array."""
    value = record.get(key)
    if isinstance(value, Mapping):
        value = value.get("data")
    if value is None:
        return []
    return value if isinstance(value, list) else None


def _sum_of(key: str, item_key: str) -> Getter:
    """Sum of an integer field over a list (null when any item is malformed)."""

    def get(record: Record) -> int | None:
        items = _list_data(record, key)
        if items is None:
            return None
        return _sum_ints(as_int(i.get(item_key)) if isinstance(i, Mapping) else None for i in items)

    return get


def _count_of(key: str) -> Getter:
    return lambda record: len(_list_data(record, key) or [])


CREDIT_NOTE_COLUMNS: Columns = {
    "source_id": ("str", field("id")),
    "number": ("str", field("number")),
    "invoice": ("str", field("invoice")),
    "customer": ("str", field("customer")),
    "status": ("str", field("status")),
    "type": ("str", field("type")),
    "reason": ("str", field("reason")),
    "currency": ("str", field("currency", as_upper)),
    "subtotal": ("Int64", field("subtotal", as_int)),
    "tax": ("Int64", _sum_of("total_taxes", "amount")),
    "total": ("Int64", field("total", as_int)),
    "lines_amount": ("Int64", _sum_of("lines", "amount")),
    "line_count": ("Int64", _count_of("lines")),
    "refunded": ("Int64", _sum_of("refunds", "amount_refunded")),
    "created": ("Int64", field("created", as_int)),
    "effective_date": ("str", field("effective_at", unix_to_date)),
}
REFUND_COLUMNS: Columns = {
    "source_id": ("str", field("id")),
    "charge": ("str", field("charge")),
    "payment_intent": ("str", field("payment_intent")),
    "status": ("str", field("status")),
    "reason": ("str", field("reason")),
    "currency": ("str", field("currency", as_upper)),
    "amount": ("Int64", field("amount", as_int)),
    "created": ("Int64", field("created", as_int)),
}
CHARGE_COLUMNS: Columns = {
    "source_id": ("str", field("id")),
    "customer": ("str", field("customer")),
    "payment_intent": ("str", field("payment_intent")),
    "status": ("str", field("status")),
    "currency": ("str", field("currency", as_upper)),
    "amount": ("Int64", field("amount", as_int)),
    "amount_captured": ("Int64", field("amount_captured", as_int)),
    "amount_refunded": ("Int64", field("amount_refunded", as_int)),
    "refunded": ("bool", field("refunded", as_bool)),
    "failure_code": ("str", field("failure_code")),
    "created": ("Int64", field("created", as_int)),
}


def flatten_stripe_credit_notes(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe credit notes, one row each, with their line and refund totals (all lines paged)."""
    return flatten_with(records, CREDIT_NOTE_COLUMNS)


def flatten_stripe_refunds(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe refunds, one row each."""
    return flatten_with(records, REFUND_COLUMNS)


def flatten_stripe_charges(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe charges, one row each, failed attempts included."""
    return flatten_with(records, CHARGE_COLUMNS)


def flatten_stripe_customers(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe customers, one row each, with the CRM link from metadata."""
    return flatten_with(records, CUSTOMER_COLUMNS)


def flatten_stripe_subscriptions(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe subscriptions, one row each."""
    return flatten_with(records, SUBSCRIPTION_COLUMNS)


def flatten_stripe_payments(records: Sequence[Record]) -> pd.DataFrame:
    """Stripe payment intents, one row each."""
    return flatten_with(records, PAYMENT_COLUMNS)


INVOICE_DTYPES = {
    "source_id": "str",
    "number": "str",
    "po_number": "str",
    "opportunity_id": "str",
    "customer": "str",
    "subscription_id": "str",
    "status": "str",
    "currency": "str",
    "subtotal": "Int64",
    "discount": "Int64",
    "tax": "Int64",
    "inclusive_tax": "Int64",
    "exclusive_tax": "Int64",
    "total_excluding_tax": "Int64",
    "total": "Int64",
    "lines_amount": "Int64",
    "item_discount": "Int64",
    "line_count": "Int64",
    "amount_paid": "Int64",
    "amount_remaining": "Int64",
    "paid_out_of_band": "bool",
    "starting_balance": "Int64",
    "ending_balance": "Int64",
    "amount_due": "Int64",
    "pre_payment_credit_notes_amount": "Int64",
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
    "discount": "Int64",
    "tax": "Int64",
    "inclusive_tax": "Int64",
    "quantity": "Int64",
    "product_id": "str",
    "price_id": "str",
    "description": "str",
    "currency": "str",
    "period_start": "str",
    "period_end": "str",
}


TAX_BEHAVIORS = ("inclusive", "exclusive")


def _item_discount(line: Mapping[str, Any]) -> int | None:
    """A line's own discounts (those its ``discounts`` names), not its share of the
    invoice's: Stripe's invoice ``subtotal`` already has them taken off ("item discounts are
    already incorporated")."""
    own = line.get("discounts") or []
    if not isinstance(own, list):
        return None
    ids = {d if isinstance(d, str) else (d or {}).get("id") for d in own}
    applied = line.get("discount_amounts") or []
    if not isinstance(applied, list):
        return None
    mine = [a for a in applied if isinstance(a, Mapping) and _discount_id(a) in ids]
    return _amounts(mine)


def _discount_id(amount: Mapping[str, Any]) -> str | None:
    discount = amount.get("discount")
    return discount if isinstance(discount, str) else (discount or {}).get("id")


def _amounts(items: Any, behavior: str | None = None) -> int | None:
    """Sum of ``amount`` over a list of Stripe amount objects (taxes, discount amounts).

    With ``behavior``, only the taxes of that ``tax_behavior`` count. Null when the list or an
    item is malformed, or a tax names no known behaviour: the contract then names the field.
    """
    if items is None:
        return 0
    if not isinstance(items, list):
        return None
    total = 0
    for item in items:
        if not isinstance(item, Mapping):
            return None
        amount = as_int(item.get("amount"))
        if amount is None:
            return None
        if behavior is not None:
            if item.get("tax_behavior") not in TAX_BEHAVIORS:
                return None
            if item.get("tax_behavior") != behavior:
                continue
        total += amount
    return total


def split_deleted(records: Iterable[Record]) -> tuple[list[Record], list[Record]]:
    """The records that still exist, and those landed as deleted.

    Stripe marks a deleted object ``"deleted": true``; change capture lands a deleted draft
    invoice that way. A deleted draft is gone, not malformed: it is neither checked against a
    contract nor built into a canonical record.
    """
    live: list[Record] = []
    gone: list[Record] = []
    for record in records:
        (gone if record.get("deleted") is True else live).append(record)
    return live, gone


def flatten_stripe_invoices(
    records: Sequence[Record], po_source: PoSource = DEFAULT_PO_SOURCE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stripe invoices and every one of their lines (the extractor already paged past 10),
    with the customer's PO read from ``po_source`` and the Salesforce Opportunity the invoice
    names under ``po_source.link_key`` (``opportunity_id``)."""
    invoices: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    for r in records:
        invoice_id = as_text(r.get("id"))
        line_objs = ((r.get("lines") or {}).get("data")) or []
        line_amounts: list[int | None] = []
        item_discounts: list[int | None] = []
        for n, line in enumerate(line_objs):
            pricing = (line.get("pricing") or {}).get("price_details") or {}
            period = line.get("period") or {}
            amount = as_int(line.get("amount"))
            line_amounts.append(amount)
            item_discounts.append(_item_discount(line))
            lines.append(
                {
                    "source_id": invoice_id,
                    "line_id": as_text(line.get("id")) or f"{invoice_id}:{n}",
                    "line_number": n,
                    "amount": amount,
                    # Stripe's line amount is before discounts and, for a tax-inclusive price,
                    # includes the tax; both are carried so derive can state them.
                    "discount": _amounts(line.get("discount_amounts")),
                    "tax": _amounts(line.get("taxes")),
                    "inclusive_tax": _amounts(line.get("taxes"), "inclusive"),
                    "quantity": as_int(line.get("quantity")),
                    "product_id": as_text(pricing.get("product")),
                    "price_id": as_text(pricing.get("price")),
                    "description": as_text(line.get("description")),
                    "currency": as_upper(line.get("currency")),
                    "period_start": unix_to_date(period.get("start")),
                    "period_end": unix_to_date(period.get("end")),
                }
            )
        taxes = r.get("total_taxes")
        transitions = r.get("status_transitions") or {}
        parent = (r.get("parent") or {}).get("subscription_details") or {}
        invoices.append(
            {
                "source_id": invoice_id,
                "number": as_text(r.get("number")),
                "po_number": po_source.read(r),
                "opportunity_id": po_source.opportunity_of(r),
                "customer": as_text(r.get("customer")),
                "subscription_id": as_text(parent.get("subscription")),
                "status": as_text(r.get("status")),
                "currency": as_upper(r.get("currency")),
                "subtotal": as_int(r.get("subtotal")),
                "discount": _amounts(r.get("total_discount_amounts")),
                "tax": _amounts(taxes),
                "inclusive_tax": _amounts(taxes, "inclusive"),
                "exclusive_tax": _amounts(taxes, "exclusive"),
                "total_excluding_tax": as_int(r.get("total_excluding_tax")),
                "total": as_int(r.get("total")),
                "lines_amount": _sum_ints(line_amounts),
                "item_discount": _sum_ints(item_discounts),
                "line_count": len(line_objs),
                "amount_paid": as_int(r.get("amount_paid")),
                "amount_remaining": as_int(r.get("amount_remaining")),
                "paid_out_of_band": as_bool(r.get("paid_out_of_band")),
                "starting_balance": as_int(r.get("starting_balance")),
                "ending_balance": as_int(r.get("ending_balance")),
                "amount_due": as_int(r.get("amount_due")),
                "pre_payment_credit_notes_amount": as_int(r.get("pre_payment_credit_notes_amount")),
                "created": as_int(r.get("created")),
                "invoice_date": unix_to_date(r.get("created")),
                "due_date": unix_to_date(r.get("due_date")),
                "finalized_at": unix_to_date(transitions.get("finalized_at")),
            }
        )
    return _frame(invoices, INVOICE_DTYPES), _frame(lines, LINE_DTYPES)


ACCOUNT_COLUMNS: Columns = {
    "source_id": ("str", field("Id")),
    "name": ("str", field("Name")),
    "parent_id": ("str", field("ParentId")),
    "currency": ("str", field("CurrencyIsoCode", as_upper)),
    "legal_entity": ("str", field("Legal_Entity__c")),
    "country": ("str", field("BillingCountry")),
    "po_required": ("bool", field("PO_Required__c", as_bool)),
}
OPPORTUNITY_COLUMNS: Columns = {
    "source_id": ("str", field("Id")),
    "account_id": ("str", field("AccountId")),
    "type": ("str", field("Type")),
    "stage": ("str", field("StageName")),
    "close_date": ("str", field("CloseDate")),
    "currency": ("str", field("CurrencyIsoCode", as_upper)),
    # Amount is a decimal in the opportunity's currency: exact minor units or null.
    "amount_minor": (
        "Int64",
        lambda r: decimal_to_minor(r.get("Amount"), as_upper(r.get("CurrencyIsoCode"))),
    ),
    "is_won": ("bool", field("IsWon", as_bool)),
    "contract_id": ("str", field("ContractId")),
}
CONTRACT_COLUMNS: Columns = {
    "source_id": ("str", field("Id")),
    "account_id": ("str", field("AccountId")),
    "status": ("str", field("Status")),
    "start_date": ("str", field("StartDate")),
    "end_date": ("str", field("EndDate")),
    "term_months": ("Int64", field("ContractTerm", as_int)),
}


def flatten_salesforce_accounts(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce Accounts with their hierarchy and billing facts."""
    return flatten_with(records, ACCOUNT_COLUMNS)


def flatten_salesforce_opportunities(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce Opportunities; Amount becomes exact minor units."""
    return flatten_with(records, OPPORTUNITY_COLUMNS)


def flatten_salesforce_contracts(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce Contracts."""
    return flatten_with(records, CONTRACT_COLUMNS)


def as_whole_number(value: Any) -> int | None:
    """A count sent as a decimal (CPQ quantities come as ``25.0``); None unless whole."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    if not number.is_finite() or number != number.to_integral_value():
        return None
    return int(number)


def _cpq_money(key: str) -> Getter:
    # CPQ currency fields are decimals in the record's CurrencyIsoCode: exact minor units or null.
    return lambda r: decimal_to_minor(r.get(key), as_upper(r.get("CurrencyIsoCode")))


CPQ_QUOTE_COLUMNS: Columns = {
    "source_id": ("str", field("Id")),
    "name": ("str", field("Name")),
    "account_id": ("str", field("SBQQ__Account__c")),
    "opportunity_id": ("str", field("SBQQ__Opportunity2__c")),
    "type": ("str", field("SBQQ__Type__c")),
    "status": ("str", field("SBQQ__Status__c")),
    "primary": ("bool", field("SBQQ__Primary__c", as_bool)),
    "start_date": ("str", field("SBQQ__StartDate__c")),
    "end_date": ("str", field("SBQQ__EndDate__c")),
    "term_months": ("Int64", field("SBQQ__SubscriptionTerm__c", as_whole_number)),
    "billing_frequency": ("str", field("SBQQ__BillingFrequency__c")),
    "payment_terms": ("str", field("SBQQ__PaymentTerms__c")),
    "master_contract_id": ("str", field("SBQQ__MasterContract__c")),
    "currency": ("str", field("CurrencyIsoCode", as_upper)),
    "net_amount_minor": ("Int64", _cpq_money("SBQQ__NetAmount__c")),
}
CPQ_QUOTE_LINE_COLUMNS: Columns = {
    "source_id": ("str", field("Id")),
    "quote_id": ("str", field("SBQQ__Quote__c")),
    "product_id": ("str", field("SBQQ__Product__c")),
    "product_code": ("str", field("SBQQ__ProductCode__c")),
    "quantity": ("Int64", field("SBQQ__Quantity__c", as_whole_number)),
    "prior_quantity": ("Int64", field("SBQQ__PriorQuantity__c", as_whole_number)),
    "list_price_minor": ("Int64", _cpq_money("SBQQ__ListPrice__c")),
    "net_price_minor": ("Int64", _cpq_money("SBQQ__NetPrice__c")),
    "net_total_minor": ("Int64", _cpq_money("SBQQ__NetTotal__c")),
    "start_date": ("str", field("SBQQ__StartDate__c")),
    "end_date": ("str", field("SBQQ__EndDate__c")),
    "term_months": ("Int64", field("SBQQ__SubscriptionTerm__c", as_whole_number)),
    "billing_frequency": ("str", field("SBQQ__BillingFrequency__c")),
    "renewed_subscription_id": ("str", field("SBQQ__RenewedSubscription__c")),
    "upgraded_subscription_id": ("str", field("SBQQ__UpgradedSubscription__c")),
    "stripe_subscription_item_id": ("str", field("Stripe_Subscription_Item_Id__c")),
    "currency": ("str", field("CurrencyIsoCode", as_upper)),
}
CPQ_SUBSCRIPTION_COLUMNS: Columns = {
    "source_id": ("str", field("Id")),
    "contract_id": ("str", field("SBQQ__Contract__c")),
    "account_id": ("str", field("SBQQ__Account__c")),
    "product_id": ("str", field("SBQQ__Product__c")),
    "quantity": ("Int64", field("SBQQ__Quantity__c", as_whole_number)),
    "net_price_minor": ("Int64", _cpq_money("SBQQ__NetPrice__c")),
    # The subscription's own dates, else the formula's fallback to the contract's.
    "start_date": (
        "str",
        lambda r: as_text(r.get("SBQQ__SubscriptionStartDate__c") or r.get("SBQQ__StartDate__c")),
    ),
    "end_date": (
        "str",
        lambda r: as_text(r.get("SBQQ__SubscriptionEndDate__c") or r.get("SBQQ__EndDate__c")),
    ),
    "terminated_date": ("str", field("SBQQ__TerminatedDate__c")),
    "billing_frequency": ("str", field("SBQQ__BillingFrequency__c")),
    "quote_line_id": ("str", field("SBQQ__QuoteLine__c")),
    "revised_subscription_id": ("str", field("SBQQ__RevisedSubscription__c")),
    "stripe_subscription_item_id": ("str", field("Stripe_Subscription_Item_Id__c")),
    "currency": ("str", field("CurrencyIsoCode", as_upper)),
}


def flatten_cpq_quotes(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce CPQ quotes (SBQQ__Quote__c); the net amount becomes exact minor units."""
    return flatten_with(records, CPQ_QUOTE_COLUMNS)


def flatten_cpq_quote_lines(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce CPQ quote lines (SBQQ__QuoteLine__c); quantities must be whole numbers."""
    return flatten_with(records, CPQ_QUOTE_LINE_COLUMNS)


def flatten_cpq_subscriptions(records: Sequence[Record]) -> pd.DataFrame:
    """Salesforce CPQ subscriptions (SBQQ__Subscription__c), amendment deltas included."""
    return flatten_with(records, CPQ_SUBSCRIPTION_COLUMNS)


def netsuite_date(value: Any) -> str | None:
    """A SuiteQL date as YYYY-MM-DD: accounts format dates per preference (M/D/YYYY by default)."""
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

    def currency(r: Record) -> str | None:
        return currency_codes.get(str(r.get("currency")))

    return flatten_with(
        records,
        {
            "source_id": ("str", field("id")),
            "external_id": ("str", field("externalid")),
            "tran_id": ("str", field("tranid")),
            "entity": ("str", field("entity")),
            "tran_date": ("str", field("trandate", netsuite_date)),
            "currency": ("str", currency),
            "total_minor": (
                "Int64",
                lambda r: decimal_to_minor(r.get("foreigntotal"), currency(r)),
            ),
            # In the document's own currency; ``amountremaining`` is in the base currency.
            "remaining_minor": (
                "Int64",
                lambda r: decimal_to_minor(r.get("foreignamountremaining"), currency(r)),
            ),
            "status": ("str", field("status")),
            "memo": ("str", field("memo")),
        },
    )


Flattener = Callable[[Sequence[Record]], pd.DataFrame]
