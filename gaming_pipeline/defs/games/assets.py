"""One Delta table per game of the registry. Follower runs append each batch's rows to them;
materializing days here rebuilds those days from the raw table."""

import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.defs.check_results import check_result
from gaming_pipeline.defs.followers.runs import caught_up, followed_metadata
from gaming_pipeline.defs.games.columns import COLUMN_SCHEMA, column_schema, materialized_columns
from gaming_pipeline.defs.partitions import DAILY, DERIVED_FRESHNESS, window_predicate
from gaming_pipeline.defs.pools import FOLLOWERS_POOL
from gaming_pipeline.defs.resources import SparkResource, WarehouseResource
from gaming_pipeline.games import GAMES, Game
from gaming_pipeline.lib import checks
from gaming_pipeline.lib.derived import PARALLEL_WRITES, game_rows
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import RAW_TABLE, game_table
from gaming_pipeline.lib.warehouse import Commit, replace_rows, table_path

GAMES_GROUP = "games"
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
        metadata={COLUMN_SCHEMA: column_schema(game)},
        description=(
            f"Every event of {game.app_name} (`eventParams.game_keyword = '{game.keyword}'`), "
            "with the columns of mobile_events_delta_raw and one for each parameter of the game's own "
            "(its event catalog in the games registry; a parameter added there adds its column, "
            "null in older rows; one removed keeps its column), partitioned by `eventDate`. "
            "Each ingested batch's rows are appended to it by the next follower run "
            "(follow_raw_job), late ones on their own day; "
            "materializing a day rebuilds that day from the raw table."
        ),
    )


GAME_CHECKS = {
    "schema_matches_raw": (
        "The table has the raw table's columns and a column for each parameter of the game's "
        "catalog, with their types (and keeps the columns of parameters the catalog dropped)."
    ),
    "no_null_keys": "No row written for the refreshed days lacks eventDate, eventTime, eventName, game or source.",
    "rows_match_raw": (
        "The commit that refreshed the days wrote exactly the game's rows of the raw table "
        "(by Delta's own operation metrics)."
    ),
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
    # The tables the follower runs append to: one writer at a time, so a rebuild never
    # misses a batch nor holds one twice.
    pool=FOLLOWERS_POOL,
)
def game_tables(context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: SparkResource):
    """The followers are brought up to the raw table first (a follower run's work); then the
    run's days are read from the raw table once, as that leaves them, and each selected
    game's rows replace that game's rows for those days, one commit per table.
    The checks need no second read: keys and row counts come from the rows read once, and
    each commit's operation metrics say how many rows it wrote."""
    spark = pyspark.spark_session
    days = window_predicate(context)
    followed = caught_up(context, spark, warehouse)
    if followed.added:
        yield dg.AssetMaterialization(asset_key=PLAYER_STATE_TABLE, metadata=followed_metadata(followed))
    raw = followed.step.raw(spark, warehouse.root).where(days).persist()
    game_keyword = F.col("eventParams.game_keyword")
    games = [GAME_BY_KEY[key] for key in sorted(context.selected_asset_keys)]
    paths = {game: table_path(warehouse.root, game.table_name) for game in games}
    try:
        # One job over the cached rows: each game's row count and null keys.
        keys_found = checks.null_keys_by(raw, checks.RAW_KEYS, game_keyword)
        null_keys = {game: keys_found.get(game.keyword, checks.no_rows(checks.RAW_KEYS)) for game in games}

        def write(game: Game) -> tuple[Commit, T.StructType]:
            game_table(game).ensure(spark, warehouse.root)
            rows = null_keys[game].details["rows"]
            # The table's own columns and types: a rebuilt day keeps what the catalog dropped.
            table = spark.read.format("delta").load(paths[game]).schema
            commit = replace_rows(
                # One file per day and game for up to ROWS_PER_FILE rows, not one per raw partition.
                game_rows(raw, game, table).coalesce(max(1, rows // ROWS_PER_FILE)),
                paths[game],
                days,
                {"run_id": context.run.run_id, "game": game.keyword},
                add_new_columns=True,
            )
            return commit, spark.read.format("delta").load(paths[game]).schema

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
            written = dict(zip(games, pool.map(write, games), strict=True))
        context.log.info(f"{len(games)} game table(s) written in {time.monotonic() - started:.1f} s")
    finally:
        raw.unpersist()
    for game, (commit, schema) in written.items():
        expected_rows = null_keys[game].details["rows"]
        outcomes = {
            "schema_matches_raw": checks.schema_matches(schema, game_table(game).schema, kept=True),
            "no_null_keys": null_keys[game],
            "rows_match_raw": checks.Outcome(
                commit.rows_written == expected_rows, {"raw": expected_rows, "written": commit.rows_written}
            ),
        }
        yield dg.MaterializeResult(
            asset_key=game.table_name,
            metadata={
                "rows": commit.rows_written,
                "delta_version": commit.version,
                "days": days,
                "dagster/uri": paths[game],
                **materialized_columns(context.instance, game, schema),
            },
            check_results=[
                check_result(game.table_name, name, outcome)
                for name, outcome in outcomes.items()
                if dg.AssetCheckKey(dg.AssetKey(game.table_name), name) in context.selected_asset_check_keys
            ],
        )
