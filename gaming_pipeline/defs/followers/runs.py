"""The raw table's followers (per-game tables, activity tables, player_state) are brought up
to it in runs of their own (lib/follow.py), in the `followers` pool: ingestion never waits
for them, and one follower run takes every batch ingested since the last, however many."""

import time

import dagster as dg

from gaming_pipeline.defs.games.columns import materialized_columns
from gaming_pipeline.defs.ingest.sensors import WAITING, coalescing, latest_request
from gaming_pipeline.defs.partitions import DAILY, EVENT_DATES, EVENTS_PER_GAME
from gaming_pipeline.defs.pools import FOLLOWERS_POOL
from gaming_pipeline.defs.resources import SparkResource, WarehouseResource
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib.follow import Followed, follow
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path


def caught_up(context: dg.OpExecutionContext, spark, warehouse: WarehouseResource) -> Followed:
    """Bring the followers up to the raw table: a follower run's work, and the first step of
    every rebuild of days, which then reads the raw table as the pass leaves the followers
    (Pass.raw) so that no batch is counted twice or missed."""
    followed = follow(spark, warehouse.root, context.run.run_id)
    step = followed.step
    context.log.info(
        f"followers at raw version {step.through} (were at {step.after}"
        f"{', repeating a pass cut short' if step.repeated else ''}): "
        f"{len(step.objects)} landing object(s) added, on days {[str(d) for d in followed.event_dates]}"
    )
    return followed


def followed_metadata(followed: Followed) -> dict:
    """What player_state's materialization says of a pass: the refresh sensor asks for the
    KPIs of its EVENT_DATES, and the alerts sensor tells a silent game by EVENTS_PER_GAME."""
    per_game = {game.keyword: sum(followed.added.get(game.table_name, {}).values()) for game in GAMES}
    return {
        EVENT_DATES: [day.isoformat() for day in followed.event_dates],
        EVENTS_PER_GAME: {game: events for game, events in per_game.items() if events},
        "followed_through_raw_version": followed.step.through,
        "objects_added": len(followed.step.objects),
        "seconds_by_stage": followed.stages.rounded(),
    }


@dg.op(out={}, pool=FOLLOWERS_POOL)
def follow_raw(context: dg.OpExecutionContext, warehouse: WarehouseResource, pyspark: SparkResource):
    """Add every batch ingested since the last follower run to the per-game tables, the
    activity tables and player_state, exactly once."""
    followed = caught_up(context, pyspark.spark_session, warehouse)
    if not followed.added:
        return
    games = {game.table_name: game for game in GAMES}
    for table, days in followed.added.items():
        # A game's table written to says which columns it has, and those its catalog added.
        written = table in games and any(days.values())
        columns = materialized_columns(context.instance, games[table]) if written else {}
        for day, rows in sorted(days.items()):
            if DAILY.has_partition_key(day.isoformat()):
                yield dg.AssetMaterialization(
                    asset_key=table,
                    partition=day.isoformat(),
                    metadata={
                        "rows_added": rows,
                        "dagster/uri": table_path(warehouse.root, table),
                        **columns,
                    },
                )
    yield dg.AssetMaterialization(
        asset_key=PLAYER_STATE_TABLE,
        metadata={
            **followed_metadata(followed),
            "dagster/uri": table_path(warehouse.root, PLAYER_STATE_TABLE),
        },
    )


@dg.job(description="Add the batches ingested since the last run to the raw table's followers.")
def follow_raw_job():
    follow_raw()


# A pass's worth of rows at a trickle: about a 2 MiB batch of landing objects.
TRICKLE_ROWS = 50_000


def build_follow_sensor(batch_interval_seconds: float) -> dg.SensorDefinition:
    @dg.sensor(
        name="follow_raw_sensor",
        job=follow_raw_job,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "After ingestion runs, requests one follower run for all their batches, unless one "
            "is already waiting to start (it will take them). At a trickle (rows arriving too "
            "slowly to fill a pass within the interval), one pass every "
            f"{batch_interval_seconds:.0f} s (GAMING_PIPELINE_BATCH_INTERVAL_SECONDS): the "
            "derived work, not the raw table, is what a trickle gathers."
        ),
    )
    def follow_raw_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(RAW_TABLE),
                after_storage_id=int(context.cursor) if context.cursor else None,
            ),
            limit=1000,
            ascending=True,
        ).records
        if not records:
            return dg.SensorResult(skip_reason="no ingestion since the last tick")
        last = records[-1].storage_id

        def counted(record, key: str) -> int:
            return (record.asset_materialization.metadata.get(key) or dg.MetadataValue.int(0)).value

        # An ingestion that found its objects in the ledger already may be the retry of one
        # killed after its ledger write: their batch still waits for a pass.
        if not any(counted(r, "rows_written") or counted(r, "objects_already_ingested") for r in records):
            return dg.SensorResult(skip_reason="the new ingestions took no objects", cursor=str(last))
        if context.instance.get_runs_count(dg.RunsFilter(job_name=follow_raw_job.name, statuses=WAITING)):
            return dg.SensorResult(
                skip_reason="a follower run waiting to start will take them", cursor=str(last)
            )
        rows = sum(counted(record, "rows_written") for record in records)
        held = coalescing(
            latest_request(context.instance, follow_raw_job.name),
            rows,
            time.time(),
            batch_interval_seconds,
            batch=TRICKLE_ROWS,
            what="rows ingested",
            run="follower",
        )
        if held:
            # The cursor stays: the next tick counts these rows again, with any new ones.
            return dg.SensorResult(skip_reason=held)
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"follow:{last}")], cursor=str(last))

    return follow_raw_sensor


follow_raw_sensor = build_follow_sensor(Settings.from_env().batch_interval_seconds)
