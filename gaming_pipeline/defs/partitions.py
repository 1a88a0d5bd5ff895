"""The daily partitions every per-game and KPI table shares: one per UTC `eventDate`."""

import dagster as dg

# Today is a partition too (end_offset=1): its KPIs fill in through the day.
DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1)


def window_predicate(context: dg.AssetExecutionContext) -> str:
    """The run's days as a Delta predicate: the rows a partition rewrite replaces."""
    start, end = context.partition_time_window
    return f"eventDate >= DATE'{start:%Y-%m-%d}' AND eventDate < DATE'{end:%Y-%m-%d}'"
