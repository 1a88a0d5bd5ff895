"""One Delta table per game of the registry, cut from the raw table by day."""

import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import functions as F

from gaming_pipeline.defs.ingest.assets import REFRESH_POOL
from gaming_pipeline.defs.partitions import DAILY, DERIVED_FRESHNESS, window_predicate
from gaming_pipeline.defs.resources import WarehouseResource
from gaming_pipeline.games import GAMES, Game
from gaming_pipeline.lib import checks
from gaming_pipeline.lib.events import RAW_SCHEMA
from gaming_pipeline.lib.warehouse import RAW_TABLE, ensure_table, replace_rows, table_path

GAMES_GROUP = "games"
PARALLEL_WRITES = 4
ROWS_PER_FILE = 1_000_000
GAME_BY_KEY = {dg.AssetKey(game.table_name): game for game in GAMES}


def game_spec(game: Game) -> dg.AssetSpec:
    return dg.AssetSpec(
        game.table_name,
        group_name=GAMES_GROUP,
        kinds={"spark", "delta"},
        deps=[RAW_TABLE],
        partitions_def=DAILY,
        freshness_policy=DERIVED_FRESHNESS,
        tags={"game": game.keyword},
        description=(
            f"Every event of {game.app_name} (`eventParams.game_keyword = '{game.keyword}'`), "
            "with the same columns as mobile_events_delta_raw and partitioned by `eventDate`. "
            "Refreshed for each day that new events arrive for, late ones included."
        ),
    )


GAME_CHECKS = {
    "schema_matches_raw": "The table has exactly the raw table's columns and types.",
    "no_null_keys": "No row of the refreshed days lacks eventDate, eventTime, eventName, game or source.",
    "rows_match_raw": "The refreshed days hold exactly the game's rows of the raw table, read back.",
}


def game_checks(game: Game) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=game.table_name, description=description)
        for name, description in GAME_CHECKS.items()
    ]


@dg.multi_asset(
    name="game_tables",
    specs=[game_spec(game) for game in GAMES],
    check_specs=[check for game in GAMES for check in game_checks(game)],
    can_subset=True,
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=REFRESH_POOL,
)
def game_tables(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: LazyPySparkResource
):
    """The seed's foreachBatch fan-out: the run's days are read from the raw table once and
    each selected game's rows replace that game's rows for those days; then every table
    written is read back, in one Spark job, for its checks."""
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
            rows_of_game = raw.where(F.col("eventParams.game_keyword") == game.keyword)
            return replace_rows(
                # One file per day and game for up to ROWS_PER_FILE rows, not one per raw partition.
                rows_of_game.coalesce(max(1, rows.get(game.keyword, 0) // ROWS_PER_FILE)),
                path,
                days,
                {"run_id": context.run.run_id, "game": game.keyword},
            )

        games = [GAME_BY_KEY[key] for key in sorted(context.selected_asset_keys)]
        # Each write costs mostly Delta's fixed commit work: a few at once keep both cores busy.
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
            versions = dict(zip(games, pool.map(write, games), strict=True))
        context.log.info(f"{len(games)} game table(s) written in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        written = {
            game.keyword: spark.read.format("delta")
            .load(table_path(warehouse.root, game.table_name))
            .where(days)
            for game in games
        }
        null_keys = checks.null_keys_by_table(written, checks.RAW_KEYS)
        context.log.info(
            f"{len(games)} game table(s) read back for their checks in {time.monotonic() - started:.1f} s"
        )
        for game in games:
            expected_rows = rows.get(game.keyword, 0)
            found_rows = null_keys[game.keyword][1]["rows"]
            outcomes = {
                "schema_matches_raw": checks.schema_matches(written[game.keyword].schema, RAW_SCHEMA),
                "no_null_keys": null_keys[game.keyword],
                "rows_match_raw": (found_rows == expected_rows, {"raw": expected_rows, "table": found_rows}),
            }
            yield dg.MaterializeResult(
                asset_key=game.table_name,
                metadata={
                    "rows": found_rows,
                    "delta_version": versions[game],
                    "days": days,
                    "dagster/uri": table_path(warehouse.root, game.table_name),
                },
                check_results=[
                    dg.AssetCheckResult(
                        asset_key=game.table_name, check_name=name, passed=passed, metadata=details
                    )
                    for name, (passed, details) in outcomes.items()
                    if dg.AssetCheckKey(dg.AssetKey(game.table_name), name)
                    in context.selected_asset_check_keys
                ],
            )
    finally:
        raw.unpersist()
