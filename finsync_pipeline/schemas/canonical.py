"""Canonical contracts: the business objects every later stage relies on. Version 1; invoices
and their lines are at version 2 (discounts and inclusive tax).

Money is in integer minor units with the ISO 4217 exponent of ``currency``. Every row carries
its lineage: source system, source id, source version, extraction run and correlation id.
"""

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

import finsync_pipeline.schemas.checks  # noqa: F401  (registers iso_date, iso_currency)


class Lineage(pa.DataFrameModel):
    """Where a canonical row came from; the correlation id follows it into the ERP and back."""

    source_system: Series[str] = pa.Field(
        isin=["stripe", "salesforce", "netsuite"], description="The system the row came from"
    )
    source_id: Series[str] = pa.Field(description="The record's id in its source system")
    source_updated_at: Series[str] = pa.Field(nullable=True, description="Source version")
    extraction_run_id: Series[str] = pa.Field(description="The Dagster run that extracted it")
    correlation_id: Series[str] = pa.Field(
        str_startswith="fs-",
        description="Deterministic id that follows the row into the ERP memo and back",
    )


class Customer(Lineage):
    """A customer: one Salesforce account, with its Stripe customer when it is billed."""

    customer_key: Series[str] = pa.Field(unique=True, description="Salesforce account id")
    salesforce_account_id: Series[str] = pa.Field(description="Salesforce account id")
    stripe_customer_id: Series[str] = pa.Field(nullable=True, description="Stripe customer id")
    name: Series[str] = pa.Field(description="Account name")
    parent_customer_key: Series[str] = pa.Field(nullable=True, description="Parent account")
    hierarchy_depth: Series[pd.Int64Dtype] = pa.Field(
        ge=-1, description="0 = top of the hierarchy; -1 = parent unknown or a cycle"
    )
    legal_entity: Series[str] = pa.Field(nullable=True, description="Legal entity code")
    tax_exempt: Series[str] = pa.Field(
        nullable=True,
        isin=["none", "exempt", "reverse"],
        description="Tax profile from billing: taxable (none), exempt, or reverse charge",
    )
    has_tax_id: Series[int] = pa.Field(isin=[0, 1], description="A tax id is on file (1)")
    tax_id: Series[str] = pa.Field(
        nullable=True, description="The buyer's VAT id (first VAT-type Stripe tax id)"
    )
    tax_exemption_number: Series[str] = pa.Field(
        nullable=True, description="Exemption certificate number (Stripe metadata)"
    )
    tax_entity_use_code: Series[str] = pa.Field(
        nullable=True, description="Tax engine entity use code, e.g. E charitable (metadata)"
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="Billing currency")
    country: Series[str] = pa.Field(nullable=True, description="Billing country")
    po_required: Series[int] = pa.Field(isin=[0, 1], description="A PO number is required")


class Invoice(Lineage):
    """A billing invoice in minor units. Version 4 (what is paid, what remains, and the CRM
    Opportunity it bills).

    Lines (before discounts, inclusive tax included) less the discount plus the exclusive tax
    equal the total; the total excluding tax plus every tax equals the total too. A 100%-off
    invoice has a discount equal to its subtotal and a total of zero.
    """

    invoice_id: Series[str] = pa.Field(unique=True, description="Stripe invoice id")
    partition_date: Series[str] = pa.Field(iso_date=(), description="Day it was created")
    number: Series[str] = pa.Field(nullable=True, description="Invoice number")
    po_number: Series[str] = pa.Field(
        nullable=True, description="The customer's purchase order, read from FINSYNC_PO_SOURCE"
    )
    opportunity_id: Series[str] = pa.Field(
        nullable=True,
        description="The Salesforce Opportunity the invoice bills, from its Stripe metadata "
        "(FINSYNC_PO_OPPORTUNITY_KEY)",
    )
    stripe_customer_id: Series[str] = pa.Field(description="Stripe customer id")
    customer_key: Series[str] = pa.Field(nullable=True, description="Salesforce account id")
    subscription_id: Series[str] = pa.Field(nullable=True, description="Stripe subscription")
    status: Series[str] = pa.Field(
        isin=["draft", "open", "paid", "uncollectible", "void"], description="Stripe status"
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217")
    subtotal_minor: Series[pd.Int64Dtype] = pa.Field(
        description="Sum of lines before discounts, inclusive tax included; minor units"
    )
    discount_minor: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="Every discount (coupons and line discounts), minor units"
    )
    tax_minor: Series[pd.Int64Dtype] = pa.Field(
        description="Every tax, inclusive and exclusive, minor units"
    )
    inclusive_tax_minor: Series[pd.Int64Dtype] = pa.Field(
        description="The part of tax_minor already inside tax-inclusive prices, minor units"
    )
    total_excluding_tax_minor: Series[pd.Int64Dtype] = pa.Field(
        description="After discounts, before every tax, minor units"
    )
    total_minor: Series[pd.Int64Dtype] = pa.Field(
        description="subtotal - discount + exclusive tax, minor units; negative when a "
        "downgrade credits more than it charges (a credit memo in the ERP)"
    )
    starting_balance_minor: Series[pd.Int64Dtype] = pa.Field(
        nullable=True,
        description="The customer's balance before this invoice; negative is a credit",
    )
    ending_balance_minor: Series[pd.Int64Dtype] = pa.Field(
        nullable=True,
        description="The customer's balance after it: what the invoice took from or added to "
        "the balance is ending - starting",
    )
    amount_due_minor: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=0, description="What the balance left due, minor units"
    )
    line_count: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Lines, every page")
    amount_paid_minor: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="Paid so far, by card, bank or out of band, minor units"
    )
    amount_remaining_minor: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="Left to collect in billing, minor units (0 once paid or void)"
    )
    paid_out_of_band: Series[int] = pa.Field(
        isin=[0, 1], description="Marked paid in billing for money received outside it (1)"
    )
    invoice_date: Series[str] = pa.Field(iso_date=(), description="Invoice date (UTC)")

    @pa.dataframe_check(name="total_ties_out")
    def total_ties_out(cls, df: pd.DataFrame) -> Series[bool]:
        exclusive = df["tax_minor"] - df["inclusive_tax_minor"]
        total = df["subtotal_minor"] - df["discount_minor"] + exclusive
        return (total == df["total_minor"]).fillna(False).astype(bool)

    @pa.dataframe_check(name="total_excluding_tax_ties_out")
    def total_excluding_tax_ties_out(cls, df: pd.DataFrame) -> Series[bool]:
        total = df["total_excluding_tax_minor"] + df["tax_minor"]
        return (total == df["total_minor"]).fillna(False).astype(bool)


class InvoiceLine(pa.DataFrameModel):
    """One line of a canonical invoice, in minor units. Version 2: with its discount and the
    tax inside a tax-inclusive price; ``amount - discount - inclusive tax`` is what is taxed."""

    line_id: Series[str] = pa.Field(unique=True, description="Stripe line item id")
    invoice_id: Series[str] = pa.Field(description="Stripe invoice id")
    line_number: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Position on the invoice")
    product_id: Series[str] = pa.Field(nullable=True, description="Stripe product id")
    quantity: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Quantity billed")
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217")
    amount_minor: Series[pd.Int64Dtype] = pa.Field(
        description="Line amount before discounts, inclusive tax included; minor units"
    )
    discount_minor: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="The line's share of every discount, minor units"
    )
    tax_minor: Series[pd.Int64Dtype] = pa.Field(description="Line tax, every kind, minor units")
    inclusive_tax_minor: Series[pd.Int64Dtype] = pa.Field(
        description="The part of tax_minor inside the line amount, minor units"
    )
    correlation_id: Series[str] = pa.Field(str_startswith="fs-", description="The invoice's")


class Subscription(Lineage):
    """A Stripe subscription under the terms of its Salesforce contract, with its MRR."""

    subscription_id: Series[str] = pa.Field(unique=True, description="Stripe subscription id")
    stripe_customer_id: Series[str] = pa.Field(description="Stripe customer id")
    customer_key: Series[str] = pa.Field(nullable=True, description="Salesforce account id")
    status: Series[str] = pa.Field(description="Stripe subscription status")
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217")
    billing_interval: Series[str] = pa.Field(
        nullable=True, description="month, year, or both when items differ"
    )
    item_count: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Subscription items")
    mrr_minor: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="Licensed recurring amount per month, minor units, rounded per item"
    )
    current_period_start: Series[str] = pa.Field(
        nullable=True, description="Earliest item period start"
    )
    current_period_end: Series[str] = pa.Field(nullable=True, description="Latest item period end")
    salesforce_contract_id: Series[str] = pa.Field(
        nullable=True, description="metadata.salesforce_contract_id"
    )
    salesforce_opportunity_id: Series[str] = pa.Field(
        nullable=True, description="metadata.salesforce_opportunity_id"
    )
    contract_start: Series[str] = pa.Field(nullable=True, description="Contract StartDate")
    contract_end: Series[str] = pa.Field(nullable=True, description="Contract EndDate")
    contract_term_months: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=1, description="Contract ContractTerm"
    )


class Payment(Lineage):
    """Money collected (or attempted) on a charge, linked to the invoice its intent paid."""

    payment_id: Series[str] = pa.Field(
        unique=True, str_matches=r"^(ch|py)_", description="Stripe charge id"
    )
    partition_date: Series[str] = pa.Field(iso_date=(), description="Day of the charge")
    payment_intent: Series[str] = pa.Field(nullable=True, description="Stripe payment intent")
    invoice_id: Series[str] = pa.Field(nullable=True, description="Invoice it paid, when known")
    stripe_customer_id: Series[str] = pa.Field(nullable=True, description="Stripe customer id")
    customer_key: Series[str] = pa.Field(nullable=True, description="Salesforce account id")
    status: Series[str] = pa.Field(
        isin=["succeeded", "pending", "failed"], description="Charge status"
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217")
    amount_minor: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Captured, minor units")
    refunded_minor: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Refunded, minor units")
    failure_code: Series[str] = pa.Field(nullable=True, description="Decline code when failed")

    @pa.dataframe_check(name="refund_within_payment")
    def refund_within_payment(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["refunded_minor"] <= df["amount_minor"]).fillna(False).astype(bool)


class CreditNote(Lineage):
    """A credit against one invoice, in minor units; lines plus tax equal the total."""

    credit_note_id: Series[str] = pa.Field(
        unique=True, str_startswith="cn_", description="Stripe credit note id"
    )
    partition_date: Series[str] = pa.Field(iso_date=(), description="Day it was created")
    number: Series[str] = pa.Field(nullable=True, description="Credit note number")
    invoice_id: Series[str] = pa.Field(str_startswith="in_", description="Invoice it credits")
    stripe_customer_id: Series[str] = pa.Field(description="Stripe customer id")
    customer_key: Series[str] = pa.Field(nullable=True, description="Salesforce account id")
    type: Series[str] = pa.Field(
        isin=["pre_payment", "post_payment", "mixed"], description="Before or after payment"
    )
    status: Series[str] = pa.Field(isin=["issued", "void"], description="issued or void")
    reason: Series[str] = pa.Field(nullable=True, description="Why it was issued")
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217")
    subtotal_minor: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Lines, minor units")
    tax_minor: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Tax, minor units")
    total_minor: Series[pd.Int64Dtype] = pa.Field(ge=0, description="subtotal + tax")
    refunded_minor: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Refunded to the card")

    @pa.dataframe_check(name="total_ties_out")
    def total_ties_out(cls, df: pd.DataFrame) -> Series[bool]:
        return ((df["subtotal_minor"] + df["tax_minor"]) == df["total_minor"]).fillna(False)


class Refund(Lineage):
    """Money returned on a charge, linked to its invoice and credit note when known."""

    refund_id: Series[str] = pa.Field(
        unique=True, str_startswith="re_", description="Stripe refund id"
    )
    partition_date: Series[str] = pa.Field(iso_date=(), description="Day of the refund")
    payment_id: Series[str] = pa.Field(description="The charge refunded")
    payment_intent: Series[str] = pa.Field(nullable=True, description="Its payment intent")
    invoice_id: Series[str] = pa.Field(nullable=True, description="The invoice it was paid on")
    credit_note_id: Series[str] = pa.Field(nullable=True, description="The credit note behind it")
    status: Series[str] = pa.Field(description="Stripe refund status")
    reason: Series[str] = pa.Field(nullable=True, description="Why it was refunded")
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217")
    amount_minor: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Refunded, minor units")
