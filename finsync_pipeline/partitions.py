"""Partitions: transactional assets are partitioned by UTC day.

A day's partition holds the records created that day, so its cost follows that day's volume,
not the size of the history. Backfills over any range run as a single run per asset.
"""

import datetime as dt

import dagster as dg

HISTORY_START = "2023-01-01"

# Today is a partition too (end_offset=1): the near-real-time runs derive what changed today
# before the day is over; the nightly run derives the whole day again once it is.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=HISTORY_START, timezone="UTC", end_offset=1
)
single_run = dg.BackfillPolicy.single_run()

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def range_tags(first_day: dt.date, last_day: dt.date) -> dict[str, str]:
    """Run tags that make one run cover the inclusive day range [first_day, last_day]."""
    return {RANGE_START_TAG: first_day.isoformat(), RANGE_END_TAG: last_day.isoformat()}


def window(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) UTC datetimes the run covers."""
    tw = context.partition_time_window
    return tw.start.astimezone(dt.UTC), tw.end.astimezone(dt.UTC)


def date_bounds(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> tuple[str, str]:
    """The [from, to) partition dates (YYYY-MM-DD) the run covers."""
    start, end = window(context)
    return start.date().isoformat(), end.date().isoformat()
