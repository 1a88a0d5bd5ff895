"""Keeps each day's KPI partitions in step with the raw table, and rebuilds days when rows
already counted have changed.

Each follower run adds the batches ingested since the last to the per-game and activity
tables and records the days it added events to (`event_dates`, on player_state); this sensor
then asks for those days' KPIs, which read only the activity tables. A day's events also decide the retention and spending of the
cohorts up to 30 days before it, which its refresh rewrites too, and the KPIs of every later
day that follow the days before them (first days, trailing weeks and months), which one run
of those KPIs refreshes. When rows counted before
changed (an object written again, a rollback, an erasure), the writer records the days to
rebuild (`rebuild_dates`) and the sensor asks for a rebuild of everything derived from them.

Why a sensor rather than an AutomationCondition: the raw table is one unpartitioned asset fed
by object-driven runs, so Dagster cannot tell which days a run touched; the days are in the
run's metadata, and only they are refreshed, however late they are.

Consecutive days go in one run (a partition range, as a single-run backfill would), and a
day already waiting in a run that will cover it is not asked for again: while runs are in
flight, new batches coalesce into the next run. A day's refresh rewrites the cohorts of the
30 days before it too (its events are their returns): a cohort refresh reads every player's
first day whatever the number of cohorts, so they cost no run of their own. Only later days
get a run of their own, of the KPIs that follow earlier days (lib/kpis.py
FOLLOW_EARLIER_DAYS), all of them in one, from the first to the last; today's events alone
have no later day, so the steady path is one run.
"""

from datetime import date, timedelta

import dagster as dg

from gaming_pipeline.defs.games.assets import GAMES_GROUP
from gaming_pipeline.defs.ingest.sensors import WAITING
from gaming_pipeline.defs.kpis.activity import ACTIVITY_GROUP
from gaming_pipeline.defs.kpis.assets import KPI_GROUP
from gaming_pipeline.defs.partitions import DAILY, EVENT_DATES, REBUILD_DATES, RunDays
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib.kpis import ACTIVITY_TABLES, FOLLOW_EARLIER_DAYS, KPI_TABLES
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import RAW_TABLE

refresh_days_job = dg.define_asset_job(
    "refresh_days_job",
    selection=dg.AssetSelection.groups(GAMES_GROUP, ACTIVITY_GROUP, KPI_GROUP),
    partitions_def=DAILY,
    description=(
        "Rebuild the chosen days of the per-game, activity and KPI tables from the raw table "
        "(all of them), or refresh their KPIs from the activity tables (the KPI assets alone)."
    ),
)
KPI_KEYS = [dg.AssetKey(table) for table in KPI_TABLES]
FOLLOWING_KEYS = [dg.AssetKey(table) for table in FOLLOW_EARLIER_DAYS]
DERIVED_KEYS = [dg.AssetKey(t) for t in (*(game.table_name for game in GAMES), *ACTIVITY_TABLES, *KPI_TABLES)]


def consecutive(days: set[date]) -> list[tuple[date, date]]:
    """Days as runs of consecutive days, (first, last) each."""
    runs: list[tuple[date, date]] = []
    for day in sorted(days):
        if runs and day - runs[-1][1] == timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def later_days(days: set[date]) -> set[date]:
    """The days after the first of `days` through today, but `days` themselves: their KPIs that
    follow the days before them (FOLLOW_EARLIER_DAYS: a player's first day may move to or from
    them, the trailing week and month hold the events) can change."""
    if not days:
        return set()
    today = date.fromisoformat(DAILY.get_last_partition_key())
    return {min(days) + timedelta(days=n) for n in range(1, (today - min(days)).days + 1)} - days


def covers(run: dg.DagsterRun, keys: set[dg.AssetKey]) -> set[date]:
    """The days a waiting refresh run will bring `keys` up to date on."""
    days = RunDays.of(run.tags)
    return days.days() if days and (run.asset_selection is None or keys <= run.asset_selection) else set()


@dg.sensor(
    job=refresh_days_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After each follower run, requests the KPIs of the days the new events belong to; "
        "after a change to rows already counted, a rebuild of the changed days."
    ),
)
def raw_days_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else None
    # The follower runs (player_state's materializations) say which days' new events are in
    # the activity tables; the raw table's writers (a replay, an erasure, a rollback), which
    # days to rebuild. One cursor for both: the event log's ids are one sequence.
    streams = {
        key: context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(table), after_storage_id=after),
            limit=200,
            ascending=True,
        ).records
        for key, table in ((EVENT_DATES, PLAYER_STATE_TABLE), (REBUILD_DATES, RAW_TABLE))
    }
    # A stream cut at its limit is read on from there next tick, and the other's later
    # records with it.
    cut = min((records[-1].storage_id for records in streams.values() if len(records) == 200), default=None)
    asked: dict[str, set[date]] = {EVENT_DATES: set(), REBUILD_DATES: set()}
    last = after
    for key, records in streams.items():
        for record in records:
            if cut is not None and record.storage_id > cut:
                break
            found = record.asset_materialization.metadata.get(key)
            asked[key].update(date.fromisoformat(day) for day in (found.value if found else []))
            last = max(last or 0, record.storage_id)
    if last == after:
        return dg.SensorResult(skip_reason="no follower run nor change to the raw table since the last tick")
    outside = sorted(
        day for day in set().union(*asked.values()) if not DAILY.has_partition_key(day.isoformat())
    )
    if outside:
        context.log.warning(f"events on days outside the partitions ({DAILY.start:%Y-%m-%d} on): {outside}")
    # A refresh still waiting to start reads the tables as they are then: asking again for
    # what it covers would only repeat the same work.
    waiting = context.instance.get_runs(dg.RunsFilter(job_name=refresh_days_job.name, statuses=WAITING))

    def wanted(days: set[date], keys: set[dg.AssetKey], *served: set[date]) -> set[date]:
        covered = set().union(*(covers(run, keys) for run in waiting), *served)
        return {day for day in days if DAILY.has_partition_key(day.isoformat())} - covered

    rebuild = wanted(asked[REBUILD_DATES], set(DERIVED_KEYS))
    refresh = wanted(asked[EVENT_DATES], set(KPI_KEYS), rebuild)
    changed = asked[REBUILD_DATES] | asked[EVENT_DATES]
    # Each changed day's refresh (or rebuild) rewrites the cohorts it is a return day of itself.
    later = wanted(later_days(changed), set(FOLLOWING_KEYS))
    requests = (
        [RunDays(first, end).request(f"{first}:{end}:{last}") for first, end in consecutive(rebuild)]
        + [
            RunDays(first, end).request(f"{first}:{end}:{last}:kpis", asset_selection=KPI_KEYS)
            for first, end in consecutive(refresh)
        ]
        + [
            RunDays(first, end).request(f"{first}:{end}:{last}:later", asset_selection=FOLLOWING_KEYS)
            for first, end in ([(min(later), max(later))] if later else [])
        ]
    )
    return dg.SensorResult(run_requests=requests, cursor=str(last))
