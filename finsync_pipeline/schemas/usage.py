"""Contracts for usage metering: CloudEvents usage events and their daily totals.

Version 1. A usage event is what a metering producer sent (CloudEvents 1.0); finsync's usage
contract is stricter than CloudEvents: the value must be a non-negative integer (a quantity
billed per unit, never a float), the subject must name who is billed, the time must be a real
RFC 3339 instant and the meter one finsync bills.
"""

import datetime as dt
import re
from decimal import Decimal

import pandas as pd
import pandera.pandas as pa
from pandera import extensions
from pandera.typing import Series

import finsync_pipeline.schemas.checks  # noqa: F401  (registers iso_date)
from finsync_pipeline.money import MAX_SAFE_INTEGER

VERSION = 1
METERS = ["api_calls", "storage_gb_hours"]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def rfc3339_utc(value: object) -> str | None:
    """``value`` as a fixed-width UTC instant (``...T10:00:00.000000Z``), or None when it is not
    an RFC 3339 timestamp of a real instant (``2026-02-30T...`` is not)."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def usage_quantity(value: object) -> int | None:
    """The value as a quantity when it is a JSON integer >= 0; None otherwise.

    ``12``, and ``12.0`` sent as an exact decimal, are quantities; ``"12"`` (a string),
    ``12.5``, ``-3``, ``true`` and a value beyond ``MAX_SAFE_INTEGER`` (which no JSON reader
    keeps exact, nor a column holds) are not.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_SAFE_INTEGER:
        return value
    return None


@extensions.register_check_method(check_type="element_wise")
def non_negative_integer(value: object) -> bool:
    """A JSON integer >= 0 (not a string, a fraction, a negative number or a boolean)."""
    return usage_quantity(value) is not None


@extensions.register_check_method(check_type="element_wise")
def rfc3339_instant(value: object) -> bool:
    """An RFC 3339 timestamp of a real instant, with a UTC offset."""
    return rfc3339_utc(value) is not None


class UsageEventRecord(pa.DataFrameModel):
    """One usage event (CloudEvents 1.0) as finsync flattens it; one row per (source, id)."""

    source_id: Series[str] = pa.Field(
        unique=True, description="finsync's record id: '<source>/<id>' (CloudEvents identity)"
    )
    source: Series[str] = pa.Field(str_length={"min_value": 1}, description="CloudEvents source")
    event_id: Series[str] = pa.Field(str_length={"min_value": 1}, description="CloudEvents id")
    subject: Series[str] = pa.Field(
        str_length={"min_value": 1},
        description="Who is billed: a Stripe subscription id (sub_...) or customer id (cus_...)",
    )
    meter: Series[str] = pa.Field(isin=METERS, description="data.meter (or the type's meter)")
    event_time: Series[str] = pa.Field(
        rfc3339_instant=(), description="CloudEvents time: when the usage happened (RFC 3339)"
    )
    value: Series[object] = pa.Field(
        non_negative_integer=(), description="data.value: units used, a non-negative integer"
    )


class UsageDaily(pa.DataFrameModel):
    """Usage per UTC day, subscription and meter, from the events that kept their contract."""

    usage_date: Series[str] = pa.Field(iso_date=(), description="UTC day of the events' time")
    subscription_id: Series[str] = pa.Field(
        str_startswith="sub_", description="The Stripe subscription the usage is billed on"
    )
    meter: Series[str] = pa.Field(isin=METERS, description="The meter")
    quantity: Series[pd.Int64Dtype] = pa.Field(ge=0, description="Sum of the events' values")
    events: Series[pd.Int64Dtype] = pa.Field(ge=1, description="Events summed (each once)")
    first_event_at: Series[str] = pa.Field(description="Earliest event time (UTC RFC 3339)")
    last_event_at: Series[str] = pa.Field(description="Latest event time (UTC RFC 3339)")
    run_id: Series[str] = pa.Field(description="The Dagster run that aggregated the day")

    class Config:
        unique = ("usage_date", "subscription_id", "meter")
