"""Contracts for Salesforce CRM records as SOQL returns them. Version 1."""

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

import finsync_pipeline.schemas.checks  # noqa: F401  (registers iso_date, iso_currency)


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
