"""The player state an offers system reads (lib/player_state.py): kept up by every ingestion
batch and every rebuild of days; materializing it here rebuilds it whole from the raw table."""

import dagster as dg

from gaming_pipeline.defs.pools import INGEST_POOL
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
    # Ingestion and rebuilds of days write it too: one writer at a time.
    pool=INGEST_POOL,
)
def player_state(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: SparkResource
) -> dg.MaterializeResult:
    """One row per player (`device_id`) and game, for an offers or bundles system: `first_seen`,
    `last_seen`, `days_active`, `sessions` (events less than 30 minutes apart, cut at
    midnight UTC, as in kpi_sessions), lifetime `purchases` and `bookings`,
    `last_purchase_at` and `last_purchase_amount`, and the `platform` and `app_version` of the
    player's latest event. Each ingestion run merges its players in (fresh as soon as the
    batch is ingested); a rebuild of days (a rewritten object, a rollback, an erasure)
    rebuilds it from the raw table, and so does materializing it here. An erased player's
    rows are deleted with the rest. Any Delta reader can read it (delta-rs included)."""
    return dg.MaterializeResult(metadata=rebuild(pyspark.spark_session, warehouse, context.run.run_id))


def rebuild(spark, warehouse: WarehouseResource, run_id: str) -> dict:
    """Rebuild player_state whole from the raw table; the metadata its materialization shows."""
    commit = rebuild_player_state(spark, warehouse.root, run_id)
    return {
        "rows": commit.rows_written,
        "delta_version": commit.version,
        "dagster/uri": table_path(warehouse.root, PLAYER_STATE_TABLE),
    }
