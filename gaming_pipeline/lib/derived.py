"""The tables kept from the raw table's rows: one per game, and the two activity tables the
KPIs are read from (lib/kpis.py). They follow the raw table in two ways:

- a batch of new events is added to them, in the ingestion run that wrote it to the raw
  table: its rows appended to each game's table, its activity sums merged into the activity
  tables. The cost follows the batch, not the day it lands in;
- days are rebuilt from the raw table (a backfill, a repair): the per-game rows and the
  activity rows of those days are replaced.

A batch is added only once: only a batch of objects never written before is added (the
ingestion's intents tell), and it is added before the ledger records it. Anything else (an
object written again, a run killed midway and retried, a rollback, an erasure) rebuilds its
days instead, which is exact whatever the tables held.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import date

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from gaming_pipeline.games import GAMES, GAMES_BY_KEYWORD, Game
from gaming_pipeline.lib import kpis, player_state
from gaming_pipeline.lib.maintenance import days_in
from gaming_pipeline.lib.tables import ACTIVITY, PLAYER_STATE, RAW_TABLE, game_table
from gaming_pipeline.lib.warehouse import (
    Commit,
    append_rows,
    at_version,
    latest_version,
    merge_into,
    replace_rows,
    table_path,
)

# Each game's write costs mostly Delta's fixed commit work: a few at once keep both cores busy.
PARALLEL_WRITES = 4


def rows_per_game_and_day(rows: DataFrame) -> list[Row]:
    """How many of the raw rows each (game, eventDate) has: Rows of game, eventDate, count."""
    return rows.groupBy(F.col(kpis.GAME).alias("game"), "eventDate").count().collect()


def add_batch(
    spark: SparkSession, warehouse: str, rows: DataFrame, counted: list[Row], run_id: str
) -> dict[str, dict[date, int]]:
    """Add a batch of raw rows, from objects never written before, to the per-game and
    activity tables (`counted`: rows_per_game_and_day of them). Returns, per table, the rows
    added on each of the batch's days."""
    days = sorted({row.eventDate for row in counted})
    if not days:
        return {}
    # Every game's table is up to date on the batch's days, those the batch had no rows for
    # included: each is reported with the rows it got.
    added: dict[str, dict[date, int]] = {game.table_name: dict.fromkeys(days, 0) for game in GAMES}
    for row in counted:
        if row.game in GAMES_BY_KEYWORD:
            added[GAMES_BY_KEYWORD[row.game].table_name][row.eventDate] = row["count"]
    marker = {"run_id": run_id}

    def append(game: Game) -> None:
        # One file per game and batch. The append makes the game's table, partitioned as a
        # rebuild makes it, if it had none yet: no CREATE TABLE round trip per game and batch.
        table = game_table(game)
        append_rows(
            rows.where(F.col(kpis.GAME) == game.keyword).coalesce(1),
            table.path(warehouse),
            marker,
            partition_by=table.partition_by,
            properties=table.table_properties,
        )

    games = [game for game in GAMES if any(added[game.table_name].values())]
    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
        list(pool.map(append, games))
    events_per_day = {day: sum(row["count"] for row in counted if row.eventDate == day) for day in days}
    # What the batch changes in its players' days and sessions is read off activity_player_days
    # between its versions before and after the batch's merge. Its other writers meanwhile
    # change no row of the batch's players: compaction changes no row, rebuilds wait in the
    # ingest pool, and an erasure's player is dropped from batches.
    paths = {table: ACTIVITY[table].ensure(spark, warehouse) for table in kpis.ACTIVITY}
    before = latest_version(spark, paths[kpis.PLAYER_DAYS])
    for table, activity in kpis.ACTIVITY.items():
        merge_into(
            activity(rows),
            paths[table],
            kpis.KEYS[table],
            kpis.ADDED[table],
            marker,
            scope="t." + days_in(days),
        )
        added[table] = events_per_day
    player_days = (paths[kpis.PLAYER_DAYS], before, latest_version(spark, paths[kpis.PLAYER_DAYS]))
    add_to_player_state(spark, warehouse, rows, days, marker, player_days)
    return added


def add_to_player_state(
    spark: SparkSession,
    warehouse: str,
    rows: DataFrame,
    days: list[date],
    marker: dict,
    player_days: tuple[str, int, int],
) -> None:
    """Merge a batch's players into player_state: their facts, and the days and sessions by
    which the batch changed activity_player_days (`player_days`: its path, and its versions
    before and after the batch's merge), read on the batch's days for its players only."""
    path, before, after = player_days
    keys = list(kpis.KEYS[kpis.PLAYER_DAYS])
    players = kpis.player_days(rows).select(*keys)

    def on_batch_days(version: int) -> DataFrame:
        return at_version(spark, path, version).where(days_in(days)).join(players, keys, "left_semi")

    changes = player_state.batch_changes(rows, on_batch_days(before), on_batch_days(after))
    merge_into(changes, PLAYER_STATE.ensure(spark, warehouse), player_state.KEYS, player_state.MERGED, marker)


def rebuild_player_state(spark: SparkSession, warehouse: str, run_id: str) -> Commit:
    """Replace player_state with the state of every player of the raw table, read whole (a
    player's state spans every day played); returns the commit."""
    raw = spark.read.format("delta").load(table_path(warehouse, RAW_TABLE))
    path = PLAYER_STATE.ensure(spark, warehouse)
    return replace_rows(player_state.rebuilt(raw), path, "true", {"run_id": run_id})


def rebuild_activity(spark: SparkSession, warehouse: str, raw: DataFrame, days: str, run_id: str) -> dict:
    """Replace the activity tables' rows of `days` (a predicate) with sums of `raw`'s rows
    of those days; returns each table's commit."""
    commits = {}
    for table, activity in kpis.ACTIVITY.items():
        path = ACTIVITY[table].ensure(spark, warehouse)
        commits[table] = replace_rows(activity(raw.where(days)), path, days, {"run_id": run_id})
    return commits
