"""The daily partitions every per-game and KPI table shares: one per UTC `eventDate`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


# What the runs record for the refresh sensor (defs/refresh/sensors.py): on player_state, a
# follower run's days whose new events are in the activity tables now, so only their KPIs
# wait...
EVENT_DATES = "event_dates"
# ...and on the raw table, by its writers, the days whose rows counted before changed, to
# rebuild from the raw table.
REBUILD_DATES = "rebuild_dates"
# On player_state, the new events of each game a follower run added (game keyword -> count;
# games without any left out), from which alerts_sensor tells a game gone silent.
EVENTS_PER_GAME = "events_per_game"


# The tags by which Dagster says which partitions a run covers: one, or a backfill's range.
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class RunDays:
    """The days [first, last] a run covers, as its tags say, for the sensors that ask for runs
    and read them back."""

    first: date
    last: date

    @classmethod
    def of(cls, tags: Mapping[str, str]) -> RunDays | None:
        """The days in a run's tags; None for a run of no partition."""
        if PARTITION_TAG in tags:
            day = date.fromisoformat(tags[PARTITION_TAG])
            return cls(day, day)
        if RANGE_START_TAG in tags:
            return cls(date.fromisoformat(tags[RANGE_START_TAG]), date.fromisoformat(tags[RANGE_END_TAG]))
        return None

    def days(self) -> set[date]:
        return {self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)}

    def request(self, run_key: str, **kwargs) -> dg.RunRequest:
        """A run request for these days: a partition, or a range in one run."""
        if self.first == self.last:
            return dg.RunRequest(partition_key=self.first.isoformat(), run_key=run_key, **kwargs)
        tags = {
            RANGE_START_TAG: self.first.isoformat(),
            RANGE_END_TAG: self.last.isoformat(),
            **kwargs.pop("tags", {}),
        }
        return dg.RunRequest(run_key=run_key, tags=tags, **kwargs)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}..{self.last}"
