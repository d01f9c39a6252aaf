"""Contracts for what finsync reads back from NetSuite through SuiteQL. Version 1."""

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

import finsync_pipeline.schemas.checks  # noqa: F401  (registers iso_date)


class ErpInvoiceRecord(pa.DataFrameModel):
    """A NetSuite invoice (transaction type CustInvc) as SuiteQL returns it."""

    source_id: Series[str] = pa.Field(unique=True, description="NetSuite internal id")
    external_id: Series[str] = pa.Field(nullable=True, description="externalid")
    tran_date: Series[str] = pa.Field(iso_date=(), description="trandate")
    currency: Series[str] = pa.Field(nullable=True, description="ISO code of the currency id")
    total_minor: Series[pd.Int64Dtype] = pa.Field(nullable=True, description="foreigntotal")
    memo: Series[str] = pa.Field(nullable=True, description="memo: carries the correlation id")
