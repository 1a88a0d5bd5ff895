"""The daily partitions every per-game and KPI table shares: one per UTC `eventDate`."""

from datetime import date, timedelta

import dagster as dg

# Today is a partition too (end_offset=1): its KPIs fill in through the day.
DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1)

# How stale a per-game or KPI table may get while events keep arriving. The UI shows it on
# every asset (instance setting `freshness: enabled`), and alerts deliver breaches.
DERIVED_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=1), warn_window=timedelta(minutes=20)
)


def run_days(context: dg.AssetExecutionContext) -> tuple[date, date]:
    """The run's days as [first, end): one partition, or a backfill's whole range."""
    start, end = context.partition_time_window
    return start.date(), end.date()


def days_predicate(first: date, end: date) -> str:
    """Days [first, end) as a Delta predicate: the rows a partition rewrite replaces."""
    return f"eventDate >= DATE'{first:%Y-%m-%d}' AND eventDate < DATE'{end:%Y-%m-%d}'"


def window_predicate(context: dg.AssetExecutionContext) -> str:
    return days_predicate(*run_days(context))


# What a writer of the raw table records for the refresh sensor (defs/refresh/sensors.py):
# the days whose new events are in the activity tables already, so only their KPIs wait...
EVENT_DATES = "event_dates"
# ...and the days whose rows counted before changed, to rebuild from the raw table.
REBUILD_DATES = "rebuild_dates"
