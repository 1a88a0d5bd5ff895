"""The player state an offers system reads (lib/player_state.py): kept up by every follower
run and every rebuild of days; materializing it here rebuilds it whole from the raw table."""

import dagster as dg

from gaming_pipeline.defs.followers.runs import caught_up, followed_metadata
from gaming_pipeline.defs.pools import FOLLOWERS_POOL
from gaming_pipeline.defs.resources import SparkResource, WarehouseResource
from gaming_pipeline.lib.derived import rebuild_player_state
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path

PLAYERS_GROUP = "players"


@dg.asset(
    name=PLAYER_STATE_TABLE,
    group_name=PLAYERS_GROUP,
    kinds={"spark", "delta"},
    deps=[RAW_TABLE],
    # Follower runs and rebuilds of days write it too: one writer at a time.
    pool=FOLLOWERS_POOL,
)
def player_state(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: SparkResource
) -> dg.MaterializeResult:
    """One row per player (`device_id`) and game, for an offers or bundles system: `first_seen`,
    `last_seen`, `days_active`, `sessions` (events less than 30 minutes apart, cut at
    midnight UTC, as in kpi_sessions), lifetime `purchases` and `bookings`,
    `last_purchase_at` and `last_purchase_amount`, and the `platform` and `app_version` of the
    player's latest event. Each follower run merges the players of the batches ingested since
    the last one in (fresh within seconds of the batch); a rebuild of days (a rewritten object, a rollback, an erasure)
    rebuilds it from the raw table, and so does materializing it here. An erased player's
    rows are deleted with the rest. Any Delta reader can read it (delta-rs included)."""
    spark = pyspark.spark_session
    followed = caught_up(context, spark, warehouse)
    rebuilt = rebuild(spark, warehouse, followed.step.raw(spark, warehouse.root), context.run.run_id)
    return dg.MaterializeResult(metadata={**rebuilt, **followed_metadata(followed)})


def rebuild(spark, warehouse: WarehouseResource, raw, run_id: str) -> dict:
    """Rebuild player_state whole from the raw table's rows `raw`; the metadata its
    materialization shows."""
    commit = rebuild_player_state(spark, warehouse.root, raw, run_id)
    return {
        "rows": commit.rows_written,
        "delta_version": commit.version,
        "dagster/uri": table_path(warehouse.root, PLAYER_STATE_TABLE),
    }
