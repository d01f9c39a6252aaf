"""Reusable pandera checks for the contracts.

They are registered as check methods so a field reads ``pa.Field(iso_date=())`` and a failure
names the check plainly (``iso_date``, ``iso_currency``) in quarantine.
"""

import pandas as pd
from pandera import extensions

from finsync_pipeline.money import EXPONENTS

CURRENCY_CODES = frozenset(EXPONENTS)


@extensions.register_check_method(check_type="vectorized")
def iso_date(pandas_obj: pd.Series) -> pd.Series:
    """A real calendar date written YYYY-MM-DD (2025-02-30 fails)."""
    return pd.to_datetime(pandas_obj, format="%Y-%m-%d", errors="coerce").notna()


@extensions.register_check_method(check_type="vectorized")
def iso_currency(pandas_obj: pd.Series) -> pd.Series:
    """An upper-case ISO 4217 code finsync knows (see money.EXPONENTS)."""
    return pandas_obj.isin(CURRENCY_CODES)
