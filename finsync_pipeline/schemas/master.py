"""Contracts of the finance-owned mapping files. Version 1.

A mapping file that breaks its contract stops the run that loads it, with the file named:
a wrong mapping would post every affected document to the wrong place.
"""

from typing import Optional

import pandera.pandas as pa
from pandera.typing import Series

import finsync_pipeline.schemas.checks  # noqa: F401  (registers iso_currency)


class LegalEntity(pa.DataFrameModel):
    """A legal entity of the company and its ERP subsidiary (legal_entities.csv)."""

    legal_entity: Series[str] = pa.Field(
        unique=True,
        str_matches=r"^[A-Z0-9]{2,8}$",
        description="Code used in CRM and billing metadata",
    )
    name: Series[str] = pa.Field(str_length={"min_value": 1}, description="Registered name")
    country: Series[str] = pa.Field(str_matches=r"^[A-Z]{2}$", description="ISO 3166 alpha-2")
    currency: Series[str] = pa.Field(iso_currency=(), description="Functional currency")
    netsuite_subsidiary_id: Series[str] = pa.Field(
        str_matches=r"^[0-9]+$", description="NetSuite subsidiary internal id"
    )
    # Optional: a file from before the column existed still loads (refunds then wait).
    netsuite_refund_account_id: Optional[Series[str]] = pa.Field(  # noqa: UP045 (pandera)
        nullable=True,
        str_matches=r"^([0-9]+)?$",
        description="NetSuite bank account (of this subsidiary) customer refunds are paid from; "
        "empty when the entity refunds nothing through finsync",
    )


class ProductMapping(pa.DataFrameModel):
    """A billing product and the ERP item it posts to (products.csv)."""

    stripe_product_id: Series[str] = pa.Field(
        unique=True, str_startswith="prod_", description="Stripe product id"
    )
    netsuite_item_id: Series[str] = pa.Field(
        str_matches=r"^[0-9]+$", description="NetSuite item internal id"
    )
    description: Series[str] = pa.Field(nullable=True, description="What the product is")
