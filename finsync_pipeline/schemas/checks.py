"""Reusable pandera checks for the contracts."""

import pandas as pd
import pandera.pandas as pa

from finsync_pipeline.money import EXPONENTS


def iso_date() -> pa.Check:
    """A real calendar date written YYYY-MM-DD (2025-02-30 fails)."""
    return pa.Check(
        lambda s: pd.to_datetime(s, format="%Y-%m-%d", errors="coerce").notna(),
        name="iso_date",
        error="must be a real date written YYYY-MM-DD",
    )


def iso_currency() -> pa.Check:
    """An ISO 4217 code finsync knows, upper-case."""
    return pa.Check.isin(sorted(EXPONENTS), name="iso_currency")
