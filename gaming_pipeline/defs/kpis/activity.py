"""The activity tables every KPI is computed from: follower runs add each batch to them;
materializing a day here rebuilds it from the raw table."""

from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from pyspark.sql import functions as F

from gaming_pipeline.defs.check_results import check_result
from gaming_pipeline.defs.followers.runs import caught_up, followed_metadata
from gaming_pipeline.defs.partitions import DAILY, DERIVED_FRESHNESS, window_predicate
from gaming_pipeline.defs.players.assets import rebuild as rebuild_player_state
from gaming_pipeline.defs.pools import FOLLOWERS_POOL
from gaming_pipeline.defs.resources import SparkResource, WarehouseResource
from gaming_pipeline.lib import checks, derived, kpis
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path

ACTIVITY_GROUP = "activity"

DESCRIPTIONS = {
    kpis.GAME_HOURS: (
        "Events, purchases and bookings per hour (`window_start`, `window_end`), game and "
        "`platform`. The hourly KPIs and revenue by platform are sums of it. Each ingested "
        "batch is added to it; materializing a day rebuilds that day from the raw table."
    ),
    kpis.PLAYER_DAYS: (
        "One row per day, game and player (`device_id`): events, purchases, bookings and the "
        "player's `sessions` that day as (first_at, last_at) spans, a session ending at a pause "
        "of over 30 minutes. DAU, paying users, ARPDAU, sessions and retention are read from it. "
        "Each ingested batch is merged into it; materializing a day rebuilds that day from "
        "the raw table."
    ),
    kpis.GAME_PARAMS: (
        "One row per day, game, and value of a parameter of the games' own that the KPIs read: "
        "`param` = `level` (a level of the `levelStarted` / `levelCompleted` / `levelFailed` "
        "events: how many `started`, `completed`, `failed` it) or `item_id` (an item the "
        "purchases named, null for none: its `purchases` and `bookings`); `events` is how many "
        "events each row sums. The progression funnel and revenue by item are read from it. "
        "Each ingested batch is merged into it; materializing a day rebuilds that day from the "
        "raw table."
    ),
}


@dg.multi_asset(
    name="activity_tables",
    specs=[
        dg.AssetSpec(
            table,
            group_name=ACTIVITY_GROUP,
            kinds={"spark", "delta"},
            deps=[RAW_TABLE],
            partitions_def=DAILY,
            freshness_policy=DERIVED_FRESHNESS,
            description=description,
        )
        for table, description in DESCRIPTIONS.items()
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "events_match_raw",
            asset=table,
            description=(
                "Each rebuilt day's events, per game, equal that day's raw events (of those the table sums)."
            ),
        )
        for table in DESCRIPTIONS
    ],
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # The tables the follower runs add to: one writer at a time, so a rebuild never misses a
    # batch nor counts one twice.
    pool=FOLLOWERS_POOL,
)
def activity_tables(context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: SparkResource):
    """Bring the followers up to the raw table, then rebuild the run's days of the activity
    tables from the raw table as that leaves it, read once, and player_state whole."""
    spark = pyspark.spark_session
    days = window_predicate(context)
    followed = caught_up(context, spark, warehouse)
    whole = followed.step.raw(spark, warehouse.root)
    raw = whole.where(days).persist()
    per_game = raw.withColumn("game_keyword", F.col(kpis.GAME))

    def events_match(table: str) -> checks.Outcome:
        written = spark.read.format("delta").load(table_path(warehouse.root, table)).where(days)
        expected = checks.by_day_and_game(kpis.summarized_events(table, per_game), F.count(F.lit(1)))
        return checks.compare(checks.by_day_and_game(written, F.sum("events")), expected)

    try:
        # player_state is rebuilt from the raw table whole, not from the activity: beside it.
        with ThreadPoolExecutor(max_workers=len(kpis.ACTIVITY)) as pool:
            rebuilt_state = pool.submit(rebuild_player_state, spark, warehouse, whole, context.run.run_id)
            commits = derived.rebuild_activity(spark, warehouse.root, raw, days, context.run.run_id)
            outcomes = dict(zip(commits, pool.map(events_match, commits), strict=True))
            state = rebuilt_state.result()
    finally:
        raw.unpersist()
    for table, commit in commits.items():
        path = table_path(warehouse.root, table)
        yield dg.MaterializeResult(
            asset_key=table,
            metadata={
                "rows": commit.rows_written,
                "delta_version": commit.version,
                "days": days,
                "dagster/uri": path,
            },
            check_results=[check_result(table, "events_match_raw", outcomes[table])],
        )
    yield dg.AssetMaterialization(
        asset_key=PLAYER_STATE_TABLE,
        description="Rebuilt with the days above.",
        metadata={**state, **followed_metadata(followed)},
    )
