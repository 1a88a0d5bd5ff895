"""The raw table's followers (the per-game tables, the activity tables and player_state)
follow it in passes of their own, never in the way of the raw table.

Ingestion commits a batch to the raw table and the ledger and nothing more, so a batch is
queryable there as soon as its run reaches Spark, whatever derived work earlier batches
left. A follower pass then takes every batch the ledger recorded since the last pass, all
in one go (under load, many batches make one pass), and adds them to the followers
(derived.add_batch): the cost of a pass is paid once per pass, not once per batch.

Exactly once, by Delta's own idempotent writes: every write of a pass carries the
transaction (FOLLOWERS, v), v the raw version the pass follows through, and Delta skips a
write whose transaction its table has taken already. A pass writes activity_game_hours
first and player_state last, so their two transaction versions say where the followers
stand: equal, every pass is whole; activity_game_hours ahead, a pass was cut short (a
killed run) and the next one repeats it over the same batches, the tables it had reached
skipping their writes.

Why the ledger and not the raw table's change data feed or a streaming read of it: the
ledger already tells a batch appended for the first time (to add) from an object written
again (whose days are rebuilt, defs/refresh/sensors.py); a change feed would keep a second
copy of every replaced and erased row in `_change_data` files, PII an erasure would have to
find too, and a streaming read of the raw table stops at the first DELETE or replaceWhere
(an erasure, a replay) unless told to skip them, which would lose a replay silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from gaming_pipeline.lib import kpis
from gaming_pipeline.lib.derived import FOLLOWED_BY, FOLLOWED_THROUGH, add_batch, rows_per_game_and_day
from gaming_pipeline.lib.ingest import rows_of
from gaming_pipeline.lib.ledger import delta_rs_table
from gaming_pipeline.lib.stages import StageClock
from gaming_pipeline.lib.tables import ACTIVITY, LEDGER, PLAYER_STATE, RAW
from gaming_pipeline.lib.warehouse import Txn, append_rows, at_version, in_list, table_history

# The Delta application id every follower write carries.
FOLLOWERS = "gaming_pipeline.followers"
# The first table a pass writes (derived.add_batch); the last is player_state.
FIRST = kpis.GAME_HOURS


@dataclass(frozen=True)
class Pass:
    """What one pass takes: the batches appended to the raw table after version `after`
    through `through`, as the ledger records them (object URI -> last-modified micros)."""

    after: int
    through: int
    objects: dict[str, int]
    # The raw version the pass reads, and the ingestion runs that appended to it after
    # `through` (their ledger rows not written yet): theirs are the next pass's rows.
    raw_version: int
    unrecorded_runs: tuple[str, ...] = ()
    # Whether it repeats a pass cut short, and whether no pass has been recorded before it.
    repeated: bool = False
    unmarked: bool = False

    def raw(self, spark: SparkSession, warehouse: str) -> DataFrame:
        """The raw table as the followers stand once the pass is done: what a rebuild of days
        reads, so that no batch is in a rebuilt day before its pass, nor missing after."""
        rows = at_version(spark, RAW.path(warehouse), self.raw_version)
        if self.unrecorded_runs:
            rows = rows.where(f"NOT ({in_list('_ingest_run_id', self.unrecorded_runs)})")
        return rows


@dataclass
class Followed:
    step: Pass
    # Per table, the rows the pass added to each day.
    added: dict[str, dict[date, int]] = field(default_factory=dict)
    stages: StageClock = field(default_factory=StageClock)

    @property
    def event_dates(self) -> list[date]:
        return sorted({day for days in self.added.values() for day in days})


def _raw_commits(spark: SparkSession, raw_path: str, after: int | None) -> tuple[int, list[Row]]:
    """The raw table's latest version, and its commits after version `after` (all of them if
    None), from one read of its history, so that none is missed while other runs commit."""
    limit = 64
    while True:
        commits = (
            table_history(spark, raw_path, limit).select(
                "version", "operation", "operationParameters", "userMetadata"
            )
        ).collect()
        versions = [int(commit.version) for commit in commits]
        if len(commits) < limit or (after is not None and min(versions) <= after + 1):
            break
        limit *= 4
    latest = max(versions)
    later = [commit for commit in commits if after is None or commit.version > after]
    if after is not None and latest > after and min(commit.version for commit in later) != after + 1:
        raise RuntimeError(
            f"the raw table's log no longer holds version {after + 1} (past its log retention): the "
            "followers cannot tell which batches came after it; rebuild every day from the raw "
            "table (materialize the per-game and activity tables over all days)"
        )
    return latest, later


def _ingestion_appends(commits: list[Row], tag: str | None = None) -> dict[int, str]:
    """Of the raw table's commits, the ingestion runs' appends (not an object written again,
    an erasure or compaction): version -> run id. With `tag`, those whose marker lacks it."""
    appends = {}
    for commit in commits:
        if commit.operation != "WRITE" or (commit.operationParameters or {}).get("mode") != "Append":
            continue
        try:
            marker = json.loads(commit.userMetadata or "{}")
        except ValueError:
            continue
        if "objects" in marker and "run_id" in marker and (tag is None or tag not in marker):
            appends[int(commit.version)] = marker["run_id"]
    return appends


def _standing(warehouse: str) -> tuple[int | None, int | None]:
    """The pass versions player_state (the last table a pass writes) and activity_game_hours
    (the first) have taken; read with delta-rs, no Spark job."""
    last, first = (
        delta_rs_table(PLAYER_STATE.path(warehouse)),
        delta_rs_table(ACTIVITY[FIRST].path(warehouse)),
    )
    return tuple(None if table is None else table.transaction_version(FOLLOWERS) for table in (last, first))


def plan(spark: SparkSession, warehouse: str) -> Pass:
    """The next pass: the one cut short, if any; else every batch recorded since the last."""
    raw_path, ledger_path = RAW.ensure(spark, warehouse), LEDGER.ensure(spark, warehouse)
    done, started = _standing(warehouse)
    latest, commits = _raw_commits(spark, raw_path, done)
    if done is None:
        # No pass yet. Batches a release before follower passes ingested were added to the
        # followers by their own runs (their raw commits lack FOLLOWED_BY): the first pass
        # starts after the last of them. Version 0 of the raw table is its creation.
        after = max(_ingestion_appends(commits, tag=FOLLOWED_BY), default=0)
    else:
        after = done
    repeated = started is not None and started > after
    rows = (
        spark.read.format("delta")
        .load(ledger_path)
        .where(f"rows_written > 0 AND raw_version > {after} AND raw_version <= {latest}")
        .select("object", F.unix_micros("source_modified_at").alias("modified"), "raw_version")
        .collect()
    )
    through = started if repeated else max((row.raw_version for row in rows), default=after)
    appends = _ingestion_appends([commit for commit in commits if commit.version > after])
    objects = {
        row.object: row.modified
        for row in rows
        if row.raw_version <= through and row.raw_version in appends and row.modified is not None
    }
    unrecorded = tuple(sorted({run for version, run in appends.items() if version > through}))
    return Pass(after, through, objects, latest, unrecorded, repeated, unmarked=done is None)


def follow(spark: SparkSession, warehouse: str, run_id: str) -> Followed:
    """One pass: add the batches recorded since the last pass to the followers."""
    clock = StageClock()
    with clock.stage("plan"):
        step = plan(spark, warehouse)
    followed = Followed(step, stages=clock)
    txn = Txn(FOLLOWERS, step.through)
    marker = {"run_id": run_id, FOLLOWED_THROUGH: step.through}
    if step.objects:
        rows = step.raw(spark, warehouse).where(rows_of(list(step.objects), list(step.objects.values())))
        rows = rows.persist()
        try:
            with clock.stage("count_games_and_days"):
                counted = rows_per_game_and_day(rows)
            followed.added = add_batch(spark, warehouse, rows, counted, marker, txn, clock)
        finally:
            rows.unpersist()
    if not followed.added and (step.through > step.after or step.unmarked):
        # Nothing to add (objects written again, players erased since) still moves the
        # followers on, so that the next pass starts after these versions: an empty commit
        # to the last table, with the pass's transaction.
        append_rows(
            spark.createDataFrame([], PLAYER_STATE.schema),
            PLAYER_STATE.ensure(spark, warehouse),
            marker,
            txn=txn,
        )
    return followed
