"""The tables kept from the raw table's rows: one per game, the two activity tables the
KPIs are read from (lib/kpis.py) and player_state. They follow the raw table in two ways:

- batches of new events are added to them by a follower pass (follow.py), in a run of its
  own after the ingestion runs that wrote them: their rows appended to each game's table,
  their activity sums merged into the activity tables and their players into player_state.
  The cost follows the batches, not the days they land in;
- days are rebuilt from the raw table (a backfill, a repair): the per-game rows and the
  activity rows of those days are replaced, and player_state is rebuilt whole.

A batch is added only once: only a batch of objects never written before is added (the
ingestion's intents tell), by Delta's idempotent writes. Anything else (an object written
again, an ingestion killed midway and retried, a rollback, an erasure) rebuilds its days
instead, which is exact whatever the tables held.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import date

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.games import GAMES, GAMES_BY_KEYWORD, Game
from gaming_pipeline.lib import kpis, player_state
from gaming_pipeline.lib.events import PARAM_TYPES, RAW_SCHEMA, typed_params
from gaming_pipeline.lib.maintenance import days_in
from gaming_pipeline.lib.stages import StageClock
from gaming_pipeline.lib.tables import ACTIVITY, PLAYER_STATE, game_table
from gaming_pipeline.lib.warehouse import (
    Commit,
    Txn,
    append_rows,
    at_version,
    merge_into,
    replace_rows,
    version_marked,
)

# What a follower pass's commits record in their metadata: the raw version it follows
# through, by which a pass finds its own commit whichever try of it made that.
FOLLOWED_THROUGH = "followed_through"
# What an ingestion run's raw commit records: its batch is added by a follower pass (a
# release before follower passes added it in the ingestion run).
FOLLOWED_BY = "followed_by"

# Each game's write costs mostly Delta's fixed commit work: a few at once keep both cores busy.
PARALLEL_WRITES = 4


def game_rows(rows: DataFrame, game: Game, table: T.StructType | None = None) -> DataFrame:
    """The game's rows of raw rows, with its own parameters as columns (its table's rows).
    With the table's schema `table`, a column the table has keeps the table's type (a
    parameter whose type the catalog changed), and the columns of parameters the catalog no
    longer declares are filled too, from customParams, as long as events still carry them."""
    columns = {param.name: PARAM_TYPES[param.type] for param in game.columns}
    if table is not None:
        kept = {field.name: field.dataType for field in table.fields if field.name not in RAW_SCHEMA.names}
        columns = {**columns, **kept}
    return typed_params(rows.where(F.col(kpis.GAME) == game.keyword), columns)


def append_game_rows(
    rows: DataFrame, game: Game, warehouse: str, marker: dict, txn: Txn | None = None
) -> None:
    """Append the game's rows of a batch of raw rows to its table, in one file. The append
    makes the table, partitioned as a rebuild makes it, if it had none yet: no CREATE TABLE
    round trip per game and batch. A parameter new to the game's catalog becomes its column
    in the same commit (older rows read null; no file is rewritten)."""
    table = game_table(game)
    path = table.path(warehouse)

    def append(schema: T.StructType | None) -> None:
        append_rows(
            game_rows(rows, game, schema).coalesce(1),
            path,
            marker,
            partition_by=table.partition_by,
            properties=table.table_properties,
            txn=txn,
            add_new_columns=True,
        )

    try:
        # The table's schema is read only when the catalog's types do not merge into it.
        append(None)
    except AnalysisException:
        append(rows.sparkSession.read.format("delta").load(path).schema)


def rows_per_game_and_day(rows: DataFrame) -> list[Row]:
    """How many of the raw rows each (game, eventDate) has: Rows of game, eventDate, count."""
    return rows.groupBy(F.col(kpis.GAME).alias("game"), "eventDate").count().collect()


def add_batch(
    spark: SparkSession,
    warehouse: str,
    rows: DataFrame,
    counted: list[Row],
    marker: dict,
    txn: Txn,
    clock: StageClock,
) -> dict[str, dict[date, int]]:
    """Add a batch of raw rows, of objects never written before, to the per-game and activity
    tables and player_state (`counted`: rows_per_game_and_day of them), each write with the
    pass's transaction `txn` (follow.py), so that a repeated pass adds nothing twice. `marker`
    tags the commits and carries FOLLOWED_THROUGH. Returns, per table, the rows added on each
    of the batch's days. Each table's write is timed on `clock`."""
    days = sorted({row.eventDate for row in counted})
    if not days:
        return {}
    # Every game's table is up to date on the batch's days, those the batch had no rows for
    # included: each is reported with the rows it got.
    added: dict[str, dict[date, int]] = {game.table_name: dict.fromkeys(days, 0) for game in GAMES}
    for row in counted:
        if row.game in GAMES_BY_KEYWORD:
            added[GAMES_BY_KEYWORD[row.game].table_name][row.eventDate] = row["count"]
    events_per_day = {day: sum(row["count"] for row in counted if row.eventDate == day) for day in days}
    paths = {table: ACTIVITY[table].ensure(spark, warehouse) for table in kpis.ACTIVITY}

    def merge(table: str) -> None:
        activity = kpis.ACTIVITY[table]
        scope = "t." + days_in(days)
        with clock.stage(f"{table}_merge"):
            merge_into(activity(rows), paths[table], kpis.KEYS[table], kpis.ADDED[table], marker, scope, txn)
        added[table] = events_per_day

    def append(game: Game) -> None:
        append_game_rows(rows, game, warehouse, marker, txn)

    # The first table a pass writes, so that a pass cut short is known (follow.py).
    merge(kpis.GAME_HOURS)
    games = [game for game in GAMES if any(added[game.table_name].values())]
    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
        # Beside the appends (other tables, mostly Delta's fixed commit work), and before the
        # players' merge, as the hourly one: a KPI refresh reads activity_player_days'
        # version first, so the other two hold at least its batches.
        game_params = pool.submit(merge, kpis.GAME_PARAMS)
        with clock.stage("game_appends"):
            list(pool.map(append, games))
        game_params.result()
    merge(kpis.PLAYER_DAYS)
    # What the batch changes in its players' days and sessions is read off activity_player_days
    # between its versions before and after the pass's merge (made by an earlier try of the
    # pass, if that one was cut short after it). Its other writers meanwhile change no row of
    # the batch's players: compaction changes no row, rebuilds wait in the followers' pool,
    # and an erased player's rows are rebuilt away after the erasure.
    # Matched on MERGE too: the auto compaction after it carries the session's tag as well.
    merged = version_marked(paths[kpis.PLAYER_DAYS], FOLLOWED_THROUGH, marker[FOLLOWED_THROUGH], "MERGE")
    if merged is None:
        raise RuntimeError(
            f"the pass's merge into {kpis.PLAYER_DAYS} is not among its recent commits: the run "
            "fails rather than guess its players' days (a retry repeats the pass)"
        )
    before, after = merged - 1, merged
    # The last table a pass writes.
    with clock.stage(f"{PLAYER_STATE.name}_merge"):
        add_to_player_state(
            spark, warehouse, rows, days, marker, txn, (paths[kpis.PLAYER_DAYS], before, after)
        )
    return added


def add_to_player_state(
    spark: SparkSession,
    warehouse: str,
    rows: DataFrame,
    days: list[date],
    marker: dict,
    txn: Txn,
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
    merge_into(
        changes,
        PLAYER_STATE.ensure(spark, warehouse),
        player_state.KEYS,
        player_state.MERGED,
        marker,
        txn=txn,
    )


def rebuild_player_state(spark: SparkSession, warehouse: str, raw: DataFrame, run_id: str) -> Commit:
    """Replace player_state with the state of every player of the raw table's rows `raw`,
    read whole (a player's state spans every day played); returns the commit."""
    path = PLAYER_STATE.ensure(spark, warehouse)
    return replace_rows(player_state.rebuilt(raw), path, "true", {"run_id": run_id})


def rebuild_activity(spark: SparkSession, warehouse: str, raw: DataFrame, days: str, run_id: str) -> dict:
    """Replace the activity tables' rows of `days` (a predicate) with sums of `raw`'s rows
    of those days; returns each table's commit."""

    def rebuild(table: str) -> Commit:
        path = ACTIVITY[table].ensure(spark, warehouse)
        return replace_rows(kpis.ACTIVITY[table](raw.where(days)), path, days, {"run_id": run_id})

    # Three tables, each a small job and a commit: side by side.
    with ThreadPoolExecutor(max_workers=len(kpis.ACTIVITY)) as pool:
        return dict(zip(kpis.ACTIVITY, pool.map(rebuild, kpis.ACTIVITY), strict=True))
