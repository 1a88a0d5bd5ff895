"""Keeps each day's per-game and KPI partitions in step with the raw table.

Every ingestion run records the event days it wrote (`event_dates`); this sensor asks for a
refresh of exactly those days, late days included, so a purchase that lands a day late is
still counted on the day it happened. A day's events also decide the retention of the
cohorts 1 and 7 days before it, so those cohorts' retention partitions refresh too.

Why a sensor rather than an AutomationCondition: the raw table is one unpartitioned asset fed
by object-driven runs, so Dagster cannot tell which days a run touched; the days are in the
run's metadata, and only they are rebuilt, however late they are.

Consecutive days go in one run (a partition range, as a single-run backfill would): every
run starts a JVM, so three days in one run cost about a third of three runs.
"""

from datetime import date, timedelta

import dagster as dg

from gaming_pipeline.defs.games.assets import GAMES_GROUP
from gaming_pipeline.defs.ingest.sensors import WAITING
from gaming_pipeline.defs.kpis.assets import KPI_GROUP
from gaming_pipeline.defs.partitions import DAILY
from gaming_pipeline.lib.daily import RETENTION, RETURN_DAYS
from gaming_pipeline.lib.warehouse import RAW_TABLE

RETENTION_ONLY = "gaming_pipeline/retention_only"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

refresh_days_job = dg.define_asset_job(
    "refresh_days_job",
    selection=dg.AssetSelection.groups(GAMES_GROUP, KPI_GROUP),
    partitions_def=DAILY,
    description="Rebuild the per-game and KPI partitions of the chosen days from the raw table.",
)


def consecutive(days: set[date]) -> list[tuple[date, date]]:
    """Days as runs of consecutive days, (first, last) each."""
    runs: list[tuple[date, date]] = []
    for day in sorted(days):
        if runs and day - runs[-1][1] == timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def days_of(run: dg.DagsterRun) -> set[date]:
    """The days a refresh run covers: its partition, or its range."""
    if "dagster/partition" in run.tags:
        return {date.fromisoformat(run.tags["dagster/partition"])}
    if RANGE_START in run.tags:
        first, last = date.fromisoformat(run.tags[RANGE_START]), date.fromisoformat(run.tags[RANGE_END])
        return {first + timedelta(days=n) for n in range((last - first).days + 1)}
    return set()


def refresh_request(first: date, last: date, run_key: str, **kwargs) -> dg.RunRequest:
    if first == last:
        return dg.RunRequest(partition_key=first.isoformat(), run_key=run_key, **kwargs)
    tags = {RANGE_START: first.isoformat(), RANGE_END: last.isoformat(), **kwargs.pop("tags", {})}
    return dg.RunRequest(run_key=run_key, tags=tags, **kwargs)


@dg.sensor(
    job=refresh_days_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After each ingestion, requests a refresh of the per-game and KPI partitions of the "
        "days the new events belong to."
    ),
)
def raw_days_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(RAW_TABLE),
            after_storage_id=int(context.cursor) if context.cursor else None,
        ),
        limit=200,
        ascending=True,
    ).records
    if not records:
        return dg.SensorResult(skip_reason="no new ingestion since the last tick")
    days = set()
    for record in records:
        event_dates = record.asset_materialization.metadata.get("event_dates")
        days.update(event_dates.value if event_dates else [])
    # A refresh still waiting to start will read the raw table as it is then: asking again
    # for its days would only repeat the same work.
    waiting = context.instance.get_runs(dg.RunsFilter(job_name=refresh_days_job.name, statuses=WAITING))
    waiting_days = set().union(*(days_of(run) for run in waiting if RETENTION_ONLY not in run.tags))
    waiting_any = set().union(*(days_of(run) for run in waiting))
    outside = sorted(day for day in days if not DAILY.has_partition_key(day))
    if outside:
        context.log.warning(f"events on days outside the partitions ({DAILY.start:%Y-%m-%d} on): {outside}")
    last = records[-1].storage_id
    written = {date.fromisoformat(day) for day in days if day not in outside}
    refresh = written - waiting_days
    cohorts = (
        {
            cohort
            for day in refresh
            for cohort in (day - timedelta(days=n) for n in RETURN_DAYS)
            if DAILY.has_partition_key(cohort.isoformat())
        }
        - written
        - waiting_any
    )
    return dg.SensorResult(
        run_requests=[
            refresh_request(first, end, f"{first}:{end}:{last}") for first, end in consecutive(refresh)
        ]
        + [
            refresh_request(
                first,
                end,
                f"{first}:{end}:{last}:{RETENTION}",
                asset_selection=[dg.AssetKey(RETENTION)],
                tags={RETENTION_ONLY: "true"},
            )
            for first, end in consecutive(cohorts)
        ],
        cursor=str(last),
    )
