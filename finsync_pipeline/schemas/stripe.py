"""Contracts for Stripe records as finsync flattens them (API version 2026-07-29.dahlia).

Version 1 (credit notes, refunds and charges added in version 1 of their own models); invoice
lines are at version 2 (discounts and tax-inclusive prices), invoices at version 3 (an invoice
whose total, subtotal and every line are negative is refused). Amounts are integers in
the currency's minor unit, exactly as Stripe sends them.

The invoice identities are the ones Stripe guarantees, whatever the invoice's shape (a coupon,
a line discount, a tax-inclusive price, a 100%-off invoice):

- a line's ``amount`` is before any discount and includes the tax of a tax-inclusive price;
  ``subtotal`` is the sum of the lines' amounts with the lines' own discounts already taken off
  (Stripe: "before any invoice level discount or exclusive tax is applied. Item discounts are
  already incorporated"), so ``sum(line amounts) - item discounts == subtotal``;
- ``sum(line amounts) - sum(total_discount_amounts) + sum(exclusive total_taxes) == total``:
  ``total_discount_amounts`` aggregates every discount, the lines' own and the invoice's, and
  inclusive tax is already inside the line amounts;
- ``total_excluding_tax + sum(total_taxes) == total``: ``total_excluding_tax`` is after
  discounts and excludes every tax, inclusive tax included;
- ``amount_due + pre_payment_credit_notes_amount == max(0, total + starting_balance)`` once
  finalized: the customer's balance is applied at finalization (``starting_balance`` negative is
  a credit, positive a debt), and a pre-payment credit note lowers ``amount_due`` afterwards.
  A total may be negative (a downgrade whose proration credit exceeds its charges): nothing is
  due, and the credit goes to the customer's balance (``ending_balance = starting_balance +
  total``).
"""

from typing import Optional

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

import finsync_pipeline.schemas.checks  # noqa: F401  (registers iso_date, iso_currency)

# A Stripe object id: its prefix, then letters and digits. Ids become ERP external ids and URL
# path segments, so one with anything else (a '/', a '?') is quarantined here, not sent.
STRIPE_ID = r"^{}_[A-Za-z0-9]+$"
INVOICE_STATUSES = ["draft", "open", "paid", "uncollectible", "void"]


class StripeCustomerRecord(pa.DataFrameModel):
    """A Stripe customer, linked to its Salesforce account through metadata."""

    source_id: Series[str] = pa.Field(
        unique=True, str_matches=STRIPE_ID.format("cus"), description="Stripe id"
    )
    name: Series[str] = pa.Field(nullable=True, description="Customer name")
    currency: Series[str] = pa.Field(nullable=True, description="Default currency, upper-case")
    salesforce_account_id: Series[str] = pa.Field(
        description="metadata.salesforce_account_id: the CRM account this customer bills"
    )
    legal_entity: Series[str] = pa.Field(nullable=True, description="metadata.legal_entity")
    tax_exempt: Series[str] = pa.Field(
        nullable=True, isin=["none", "exempt", "reverse"], description="Tax status"
    )
    created: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Unix seconds")


class StripeInvoiceRecord(pa.DataFrameModel):
    """A Stripe invoice header with its line totals (lines: StripeInvoiceLineRecord). Version 2:
    discounts and inclusive tax are fields, and the identities are Stripe's own."""

    source_id: Series[str] = pa.Field(
        unique=True, str_matches=STRIPE_ID.format("in"), description="Stripe id"
    )
    customer: Series[str] = pa.Field(str_startswith="cus_", description="Stripe customer id")
    status: Series[str] = pa.Field(isin=INVOICE_STATUSES, description="Stripe invoice status")
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217, upper-case")
    subtotal: Series[pd.Int64Dtype] = pa.Field(
        description="Line amounts less their own discounts, inclusive tax included; minor units"
    )
    discount: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="Sum of total_discount_amounts (coupons and line discounts), minor units"
    )
    tax: Series[pd.Int64Dtype] = pa.Field(description="Sum of total_taxes, minor units")
    inclusive_tax: Series[pd.Int64Dtype] = pa.Field(
        description="Sum of total_taxes with tax_behavior inclusive, minor units"
    )
    exclusive_tax: Series[pd.Int64Dtype] = pa.Field(
        description="Sum of total_taxes with tax_behavior exclusive, minor units"
    )
    total_excluding_tax: Series[pd.Int64Dtype] = pa.Field(
        description="After discounts, before every tax (inclusive tax too), minor units"
    )
    total: Series[pd.Int64Dtype] = pa.Field(
        description="line amounts - discount + exclusive tax, minor units"
    )
    lines_amount: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, description="Sum of every line's amount (null when a line is malformed)"
    )
    item_discount: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=0, description="The lines' own discounts (not the invoice's), minor units"
    )
    line_count: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Number of lines, all pages")
    amount_paid: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Paid so far, minor units")
    amount_remaining: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="Left to collect, minor units"
    )
    starting_balance: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, description="Customer balance before finalization; negative is a credit"
    )
    ending_balance: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, description="Customer balance after finalization (null before it)"
    )
    amount_due: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=0, description="What is due after the balance is applied, minor units"
    )
    pre_payment_credit_notes_amount: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=0, description="Pre-payment credit notes, which lower amount_due"
    )
    created: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Unix seconds")
    # Optional: the column is the flattener's reading of FINSYNC_PO_SOURCE, nothing to check.
    po_number: Optional[Series[str]] = pa.Field(  # noqa: UP045 (pandera reads Optional)
        nullable=True,
        description="The customer's PO from FINSYNC_PO_SOURCE: a custom_fields entry (the list "
        "may be null) or a metadata key; none when absent or blank",
    )
    opportunity_id: Optional[Series[str]] = pa.Field(  # noqa: UP045 (pandera reads Optional)
        nullable=True,
        description="The Salesforce Opportunity named in the invoice's or its subscription's "
        "metadata (FINSYNC_PO_OPPORTUNITY_KEY); none when absent",
    )

    largest_line_amount: Optional[Series[pd.Int64Dtype]] = pa.Field(  # noqa: UP045
        nullable=True,
        description="The largest line amount (null when a line is malformed); set by the check",
    )

    @pa.dataframe_check(name="not_all_negative")
    def not_all_negative(cls, df: pd.DataFrame) -> Series[bool]:
        # A downgrade may total below zero, but it still bills the new plan's time: a positive
        # line. An invoice whose total, subtotal and every line are negative is the sign of
        # every amount flipped upstream; it is held for a person, never posted.
        if "largest_line_amount" not in df:
            return pd.Series(True, index=df.index)
        negated = (df["total"] < 0) & (df["subtotal"] < 0) & (df["largest_line_amount"] < 0)
        return ~negated.fillna(False).astype(bool)

    @pa.dataframe_check(name="amount_due_ties_out")
    def amount_due_ties_out(cls, df: pd.DataFrame) -> Series[bool]:
        # Stripe applies the balance at finalization: amount_due is what the balance leaves of
        # the total, never below zero. Draft and void invoices never reach the ERP.
        live = df["status"].isin(["open", "paid", "uncollectible"])
        owed = (df["total"] + df["starting_balance"]).clip(lower=0)
        due = df["amount_due"] + df["pre_payment_credit_notes_amount"]
        ties = (due == owed).fillna(False).astype(bool)
        return ~live | ties

    @pa.dataframe_check(name="lines_tie_out")
    def lines_tie_out(cls, df: pd.DataFrame) -> Series[bool]:
        # Draft and void invoices never reach the ERP, so only live invoices must tie out.
        live = df["status"].isin(["open", "paid", "uncollectible"])
        # The subtotal has the lines' own discounts taken off already, not the invoice's.
        subtotal = df["lines_amount"] - df["item_discount"]
        ties = (subtotal == df["subtotal"]).fillna(False).astype(bool)
        return ~live | ties

    @pa.dataframe_check(name="total_ties_out")
    def total_ties_out(cls, df: pd.DataFrame) -> Series[bool]:
        # Inclusive tax is inside the line amounts already; only exclusive tax is added on top.
        total = df["lines_amount"] - df["discount"] + df["exclusive_tax"]
        return (total == df["total"]).fillna(False).astype(bool)

    @pa.dataframe_check(name="total_excluding_tax_ties_out")
    def total_excluding_tax_ties_out(cls, df: pd.DataFrame) -> Series[bool]:
        total = df["total_excluding_tax"] + df["tax"]
        return (total == df["total"]).fillna(False).astype(bool)


class StripeInvoiceLineRecord(pa.DataFrameModel):
    """One invoice line. A bad line quarantines its invoice: invoices post whole or not at all."""

    source_id: Series[str] = pa.Field(description="The invoice id the line belongs to")
    line_id: Series[str] = pa.Field(description="Stripe line item id")
    line_number: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Position on the invoice")
    amount: Series[pd.Int64Dtype] = pa.Field(
        description="Line amount before discounts, inclusive tax included; minor units"
    )
    discount: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="Sum of the line's discount_amounts, minor units"
    )
    tax: Series[pd.Int64Dtype] = pa.Field(description="Sum of the line's taxes, minor units")
    inclusive_tax: Series[pd.Int64Dtype] = pa.Field(
        description="Sum of the line's taxes with tax_behavior inclusive, minor units"
    )
    quantity: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Quantity billed")
    product_id: Series[str] = pa.Field(nullable=True, description="pricing.price_details.product")
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217, upper-case")


class StripeSubscriptionRecord(pa.DataFrameModel):
    """A Stripe subscription; since 2025-03-31.basil its periods live on each item."""

    source_id: Series[str] = pa.Field(
        unique=True, str_matches=STRIPE_ID.format("sub"), description="Stripe id"
    )
    customer: Series[str] = pa.Field(str_startswith="cus_", description="Stripe customer id")
    status: Series[str] = pa.Field(
        isin=[
            "incomplete",
            "incomplete_expired",
            "trialing",
            "active",
            "past_due",
            "canceled",
            "unpaid",
            "paused",
        ],
        description="Stripe subscription status",
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217, upper-case")
    item_count: Series[pd.Int64Dtype] = pa.Field(ge=1, description="Subscription items")
    created: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Unix seconds")


class StripePaymentRecord(pa.DataFrameModel):
    """A Stripe payment intent: money collected, in minor units."""

    source_id: Series[str] = pa.Field(
        unique=True, str_matches=STRIPE_ID.format("pi"), description="Stripe id"
    )
    customer: Series[str] = pa.Field(nullable=True, description="Stripe customer id")
    status: Series[str] = pa.Field(
        isin=[
            "requires_payment_method",
            "requires_confirmation",
            "requires_action",
            "processing",
            "requires_capture",
            "canceled",
            "succeeded",
        ],
        description="Stripe payment intent status",
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217, upper-case")
    amount: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Amount, minor units")
    amount_received: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Received, minor units")
    created: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Unix seconds")


class StripeCreditNoteRecord(pa.DataFrameModel):
    """A Stripe credit note: a downgrade, a service credit or a duplicate, against one invoice.

    Version 1. A pre-payment note lowers what is due on an open invoice; a post-payment note
    is refunded to the card. Its lines plus its tax equal its total, and it never refunds more
    than its total.
    """

    source_id: Series[str] = pa.Field(
        unique=True, str_matches=STRIPE_ID.format("cn"), description="Stripe id"
    )
    number: Series[str] = pa.Field(nullable=True, description="Credit note number")
    invoice: Series[str] = pa.Field(str_startswith="in_", description="The invoice it credits")
    customer: Series[str] = pa.Field(str_startswith="cus_", description="Stripe customer id")
    status: Series[str] = pa.Field(isin=["issued", "void"], description="issued or void")
    type: Series[str] = pa.Field(
        isin=["pre_payment", "post_payment", "mixed"], description="Before or after payment"
    )
    reason: Series[str] = pa.Field(
        nullable=True,
        isin=["duplicate", "fraudulent", "order_change", "product_unsatisfactory"],
        description="Why it was issued",
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217, upper-case")
    subtotal: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Sum of lines, minor units")
    tax: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Sum of total_taxes, minor units")
    total: Series[pd.Int64Dtype] = pa.Field(ge=0, description="subtotal + tax, minor units")
    lines_amount: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, description="Sum of every line's amount (null when a line is malformed)"
    )
    line_count: Series[pd.Int64Dtype] = pa.Field(ge=1, description="Number of lines, all pages")
    refunded: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=0, description="Sum of refunds[].amount_refunded, minor units"
    )
    created: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Unix seconds")

    @pa.dataframe_check(name="lines_tie_out")
    def lines_tie_out(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["lines_amount"] == df["subtotal"]).fillna(False).astype(bool)

    @pa.dataframe_check(name="total_ties_out")
    def total_ties_out(cls, df: pd.DataFrame) -> Series[bool]:
        return ((df["subtotal"] + df["tax"]) == df["total"]).fillna(False).astype(bool)

    @pa.dataframe_check(name="refund_within_total")
    def refund_within_total(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["refunded"] <= df["total"]).fillna(False).astype(bool)


class StripeRefundRecord(pa.DataFrameModel):
    """A Stripe refund of (part of) a charge. Version 1."""

    source_id: Series[str] = pa.Field(
        unique=True, str_matches=STRIPE_ID.format("re"), description="Stripe id"
    )
    charge: Series[str] = pa.Field(str_matches=r"^(ch|py)_", description="The charge refunded")
    payment_intent: Series[str] = pa.Field(nullable=True, description="The charge's intent")
    status: Series[str] = pa.Field(
        isin=["pending", "requires_action", "succeeded", "failed", "canceled"],
        description="Stripe refund status",
    )
    reason: Series[str] = pa.Field(
        nullable=True,
        isin=["duplicate", "fraudulent", "requested_by_customer", "expired_uncaptured_charge"],
        description="Why it was refunded",
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217, upper-case")
    amount: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Refunded, minor units")
    created: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Unix seconds")


class StripeChargeRecord(pa.DataFrameModel):
    """A Stripe charge: one attempt to move money, succeeded or failed. Version 1."""

    source_id: Series[str] = pa.Field(
        unique=True, str_matches=STRIPE_ID.format("(ch|py)"), description="Stripe id"
    )
    customer: Series[str] = pa.Field(nullable=True, description="Stripe customer id")
    payment_intent: Series[str] = pa.Field(nullable=True, description="The intent it belongs to")
    status: Series[str] = pa.Field(
        isin=["succeeded", "pending", "failed"], description="Stripe charge status"
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="ISO 4217, upper-case")
    amount: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Amount, minor units")
    amount_captured: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Captured, minor units")
    amount_refunded: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Refunded, minor units")
    failure_code: Series[str] = pa.Field(nullable=True, description="Decline code when failed")
    created: Series[pd.Int64Dtype] = pa.Field(gt=0, description="Unix seconds")

    @pa.dataframe_check(name="refund_within_amount")
    def refund_within_amount(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["amount_refunded"] <= df["amount"]).fillna(False).astype(bool)
