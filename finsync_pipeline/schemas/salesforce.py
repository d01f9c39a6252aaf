"""Contracts for Salesforce CRM and CPQ records as SOQL returns them.

Version 1 (the CPQ models CpqQuoteRecord, CpqQuoteLineRecord and CpqSubscriptionRecord were
added in version 1 of their own). Currency fields are decimals in the record's
CurrencyIsoCode on the wire and exact integers in its minor unit here.
"""

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

import finsync_pipeline.schemas.checks  # noqa: F401  (registers iso_date, iso_currency)

# The Account fields the extract selects.
ACCOUNT_FIELDS = [
    "Id",
    "Name",
    "ParentId",
    "Type",
    "BillingStreet",
    "BillingCity",
    "BillingState",
    "BillingPostalCode",
    "BillingCountry",
    "CurrencyIsoCode",
    "Legal_Entity__c",
    "PO_Required__c",
    "CreatedDate",
    "LastModifiedDate",
    "SystemModstamp",
]


class SalesforceAccountRecord(pa.DataFrameModel):
    """A CRM account: the customer hierarchy, its legal entity and its currency."""

    source_id: Series[str] = pa.Field(unique=True, str_length={"min_value": 15, "max_value": 18})
    name: Series[str] = pa.Field(description="Account Name")
    parent_id: Series[str] = pa.Field(nullable=True, description="ParentId (hierarchy)")
    currency: Series[str] = pa.Field(iso_currency=(), description="CurrencyIsoCode")
    legal_entity: Series[str] = pa.Field(nullable=True, description="Legal_Entity__c")
    country: Series[str] = pa.Field(nullable=True, description="BillingCountry")
    po_required: Series[bool] = pa.Field(description="PO_Required__c")


class SalesforceOpportunityRecord(pa.DataFrameModel):
    """An opportunity: new business, renewal or amendment."""

    source_id: Series[str] = pa.Field(unique=True)
    account_id: Series[str] = pa.Field(description="AccountId")
    type: Series[str] = pa.Field(nullable=True, description="Type")
    stage: Series[str] = pa.Field(description="StageName")
    close_date: Series[str] = pa.Field(iso_date=(), description="CloseDate")
    currency: Series[str] = pa.Field(iso_currency=(), description="CurrencyIsoCode")
    amount_minor: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, description="Amount in minor units"
    )
    is_won: Series[bool] = pa.Field(description="IsWon")


class SalesforceContractRecord(pa.DataFrameModel):
    """A contract: the term a subscription runs under."""

    source_id: Series[str] = pa.Field(unique=True)
    account_id: Series[str] = pa.Field(description="AccountId")
    status: Series[str] = pa.Field(description="Status")
    start_date: Series[str] = pa.Field(iso_date=(), description="StartDate")
    end_date: Series[str] = pa.Field(nullable=True, description="EndDate")
    term_months: Series[pd.Int64Dtype] = pa.Field(nullable=True, ge=1, description="ContractTerm")


CPQ_QUOTE_TYPES = ["Quote", "Renewal", "Amendment", "Re-Quote"]
CPQ_QUOTE_STATUSES = [
    "Draft",
    "In Review",
    "Approved",
    "Denied",
    "Presented",
    "Accepted",
    "Rejected",
]
CPQ_BILLING_FREQUENCIES = ["Monthly", "Quarterly", "Semiannual", "Annual", "Invoice Plan"]


class CpqQuoteRecord(pa.DataFrameModel):
    """A CPQ quote (SBQQ__Quote__c): the primary, accepted one fixes a contract term's terms."""

    source_id: Series[str] = pa.Field(unique=True, description="Quote Id")
    account_id: Series[str] = pa.Field(description="SBQQ__Account__c")
    opportunity_id: Series[str] = pa.Field(description="SBQQ__Opportunity2__c")
    type: Series[str] = pa.Field(isin=CPQ_QUOTE_TYPES, description="SBQQ__Type__c")
    status: Series[str] = pa.Field(isin=CPQ_QUOTE_STATUSES, description="SBQQ__Status__c")
    primary: Series[bool] = pa.Field(description="SBQQ__Primary__c")
    start_date: Series[str] = pa.Field(iso_date=(), description="SBQQ__StartDate__c")
    end_date: Series[str] = pa.Field(nullable=True, description="SBQQ__EndDate__c")
    term_months: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=1, description="SBQQ__SubscriptionTerm__c (months)"
    )
    billing_frequency: Series[str] = pa.Field(
        nullable=True, isin=CPQ_BILLING_FREQUENCIES, description="SBQQ__BillingFrequency__c"
    )
    master_contract_id: Series[str] = pa.Field(
        nullable=True, description="SBQQ__MasterContract__c (the amended contract)"
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="CurrencyIsoCode")
    net_amount_minor: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, description="SBQQ__NetAmount__c in minor units"
    )


class CpqQuoteLineRecord(pa.DataFrameModel):
    """A CPQ quote line (SBQQ__QuoteLine__c): one product's quantity and price on a quote.

    The net price is per billing period; an amendment line carries the new total quantity and
    the prior one.
    """

    source_id: Series[str] = pa.Field(unique=True, description="Quote line Id")
    quote_id: Series[str] = pa.Field(description="SBQQ__Quote__c")
    product_id: Series[str] = pa.Field(description="SBQQ__Product__c (Product2)")
    product_code: Series[str] = pa.Field(
        nullable=True, description="SBQQ__ProductCode__c (the Stripe product id)"
    )
    quantity: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="SBQQ__Quantity__c, a whole number"
    )
    prior_quantity: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, ge=0, description="SBQQ__PriorQuantity__c (amendments)"
    )
    net_price_minor: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="SBQQ__NetPrice__c per billing period, minor units"
    )
    net_total_minor: Series[pd.Int64Dtype] = pa.Field(
        nullable=True, description="SBQQ__NetTotal__c, minor units"
    )
    start_date: Series[str] = pa.Field(nullable=True, description="SBQQ__StartDate__c")
    end_date: Series[str] = pa.Field(nullable=True, description="SBQQ__EndDate__c")
    billing_frequency: Series[str] = pa.Field(
        nullable=True, isin=CPQ_BILLING_FREQUENCIES, description="SBQQ__BillingFrequency__c"
    )
    renewed_subscription_id: Series[str] = pa.Field(
        nullable=True, description="SBQQ__RenewedSubscription__c (renewal lines)"
    )
    upgraded_subscription_id: Series[str] = pa.Field(
        nullable=True, description="SBQQ__UpgradedSubscription__c (amendment lines)"
    )
    stripe_subscription_item_id: Series[str] = pa.Field(
        nullable=True, description="Stripe_Subscription_Item_Id__c: the billed item"
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="CurrencyIsoCode")


class CpqSubscriptionRecord(pa.DataFrameModel):
    """A CPQ subscription (SBQQ__Subscription__c): what a contract entitles the customer to.

    An amendment adds a delta row (its quantity may be negative) whose revised subscription is
    the original; the quantity in force is the sum over the original and its deltas.
    """

    source_id: Series[str] = pa.Field(unique=True, description="Subscription Id")
    contract_id: Series[str] = pa.Field(description="SBQQ__Contract__c")
    account_id: Series[str] = pa.Field(description="SBQQ__Account__c")
    product_id: Series[str] = pa.Field(description="SBQQ__Product__c (Product2)")
    quantity: Series[pd.Int64Dtype] = pa.Field(description="SBQQ__Quantity__c, a whole number")
    net_price_minor: Series[pd.Int64Dtype] = pa.Field(
        ge=0, description="SBQQ__NetPrice__c per billing period, minor units"
    )
    start_date: Series[str] = pa.Field(
        iso_date=(), description="SBQQ__SubscriptionStartDate__c, else SBQQ__StartDate__c"
    )
    end_date: Series[str] = pa.Field(
        nullable=True, description="SBQQ__SubscriptionEndDate__c, else SBQQ__EndDate__c"
    )
    terminated_date: Series[str] = pa.Field(nullable=True, description="SBQQ__TerminatedDate__c")
    quote_line_id: Series[str] = pa.Field(nullable=True, description="SBQQ__QuoteLine__c")
    revised_subscription_id: Series[str] = pa.Field(
        nullable=True, description="SBQQ__RevisedSubscription__c (amendment deltas)"
    )
    stripe_subscription_item_id: Series[str] = pa.Field(
        nullable=True, description="Stripe_Subscription_Item_Id__c: the billed item"
    )
    currency: Series[str] = pa.Field(iso_currency=(), description="CurrencyIsoCode")
