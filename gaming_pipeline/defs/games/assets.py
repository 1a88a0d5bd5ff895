"""One Delta table per game of the registry, cut from the raw table by day."""

from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import functions as F

from gaming_pipeline.defs.ingest.assets import SPARK_POOL
from gaming_pipeline.defs.partitions import DAILY, window_predicate
from gaming_pipeline.defs.resources import WarehouseResource
from gaming_pipeline.games import GAMES, Game
from gaming_pipeline.lib.events import RAW_SCHEMA
from gaming_pipeline.lib.warehouse import RAW_TABLE, ensure_table, replace_rows, table_path

GAMES_GROUP = "games"
PARALLEL_WRITES = 4
GAME_BY_KEY = {dg.AssetKey(game.table_name): game for game in GAMES}


def game_spec(game: Game) -> dg.AssetSpec:
    return dg.AssetSpec(
        game.table_name,
        group_name=GAMES_GROUP,
        kinds={"spark", "delta"},
        deps=[RAW_TABLE],
        partitions_def=DAILY,
        tags={"game": game.keyword},
        description=(
            f"Every event of {game.app_name} (`eventParams.game_keyword = '{game.keyword}'`), "
            "with the same columns as mobile_events_delta_raw and partitioned by `eventDate`. "
            "Refreshed for each day that new events arrive for, late ones included."
        ),
    )


@dg.multi_asset(
    name="game_tables",
    specs=[game_spec(game) for game in GAMES],
    can_subset=True,
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=SPARK_POOL,
)
def game_tables(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: LazyPySparkResource
):
    """The seed's foreachBatch fan-out: the run's days are read from the raw table once and
    each selected game's rows replace that game's rows for those days."""
    spark = pyspark.spark_session
    days = window_predicate(context)
    raw_path = table_path(warehouse.root, RAW_TABLE)
    ensure_table(spark, raw_path, RAW_SCHEMA, partition_by=("eventDate",))
    raw = spark.read.format("delta").load(raw_path).where(days).persist()
    try:
        rows = {
            row.game_keyword: row.rows
            for row in raw.groupBy(F.col("eventParams.game_keyword").alias("game_keyword"))
            .agg(F.count(F.lit(1)).alias("rows"))
            .collect()
        }

        def write(game: Game) -> int:
            path = table_path(warehouse.root, game.table_name)
            ensure_table(spark, path, RAW_SCHEMA, partition_by=("eventDate",))
            return replace_rows(
                raw.where(F.col("eventParams.game_keyword") == game.keyword),
                path,
                days,
                {"run_id": context.run.run_id, "game": game.keyword},
            )

        games = [GAME_BY_KEY[key] for key in sorted(context.selected_asset_keys)]
        # The writes are small and mostly wait on Delta's log: a few at once keep both cores busy.
        with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
            versions = list(pool.map(write, games))
        for game, version in zip(games, versions, strict=True):
            yield dg.MaterializeResult(
                asset_key=game.table_name,
                metadata={
                    "rows": rows.get(game.keyword, 0),
                    "delta_version": version,
                    "days": days,
                    "dagster/uri": table_path(warehouse.root, game.table_name),
                },
            )
    finally:
        raw.unpersist()
