"""Table care for the Delta tables: which days need compaction, OPTIMIZE and Z-ordering,
VACUUM within a safe retention, and RESTORE, each measured the same way.

Every pass reports the table's files and bytes before and after, its Delta versions and
its seconds, so a run's metadata shows what the pass bought.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.lib.warehouse import delta_at, latest_version, retry_on_conflict, table_history

# VACUUM keeps a week of old files by default: time travel and RESTORE reach that far back.
DEFAULT_RETENTION_HOURS = 168
# What the project promises: any table can be rolled back at least this far, so no VACUUM,
# forced or not, deletes files younger than this.
ROLLBACK_WINDOW_HOURS = 72
# The KPIs read a day's events by kind (purchases for bookings, game starts for sessions).
# Not the device id: a column Z-ordered needs statistics, and the device id has none
# (tables.Table.identifying).
ZORDER_COLUMN = "eventName"

# The parts of a Delta log commit (PROTOCOL.md: add and remove actions) that say which
# partitions changed.
_FILE_ACTION = T.StructType(
    [
        T.StructField("partitionValues", T.MapType(T.StringType(), T.StringType())),
        T.StructField("dataChange", T.BooleanType()),
    ]
)
_LOG_ACTIONS = T.StructType([T.StructField("add", _FILE_ACTION), T.StructField("remove", _FILE_ACTION)])


class RetentionRefused(ValueError):
    """A VACUUM retention that would break the rollback promise, or a short one not forced."""


@dataclass(frozen=True)
class Footprint:
    version: int
    files: int
    bytes: int


def footprint(spark: SparkSession, path: str) -> Footprint:
    """The table's current version and the files and bytes its current snapshot reads."""
    detail = spark.sql(f"DESCRIBE DETAIL {delta_at(path)}").first()
    return Footprint(latest_version(path), int(detail.numFiles), int(detail.sizeInBytes))


def measured(spark: SparkSession, path: str, action: Callable[[], object]) -> dict:
    """Run one idempotent maintenance action (again if a concurrent writer wins the race)
    and report files, bytes and versions before and after, and its seconds."""
    before = footprint(spark, path)
    started = time.monotonic()
    retry_on_conflict(action)
    seconds = time.monotonic() - started
    after = footprint(spark, path)
    return {
        **{f"{name}_before": value for name, value in asdict(before).items()},
        **{f"{name}_after": value for name, value in asdict(after).items()},
        "seconds": round(seconds, 2),
    }


def days_changed(
    spark: SparkSession, path: str, after_version: int, through_version: int
) -> set[date] | None:
    """The `eventDate` partitions whose rows changed in the commits after `after_version`
    up to `through_version`, read from the Delta log's add and remove actions (compaction
    moves rows without changing them and does not count). None when those commits are no
    longer in the log (past its retention): then any day may have changed."""
    if through_version <= after_version:
        return set()
    commits = [
        f"{path}/_delta_log/{version:020d}.json" for version in range(after_version + 1, through_version + 1)
    ]
    try:
        actions = spark.read.schema(_LOG_ACTIONS).json(commits)
        rows = (
            actions.select(F.explode(F.array("add", "remove")).alias("action"))
            .where(F.col("action.dataChange"))
            .select(F.col("action.partitionValues").getItem("eventDate").alias("day"))
            .where(F.col("day").isNotNull())
            .distinct()
            .collect()
        )
    except AnalysisException:
        return None
    return {date.fromisoformat(row.day) for row in rows}


def daily_plan(
    changed: set[date] | None, pending: set[date], today: date
) -> tuple[set[date] | None, set[date]]:
    """Which days the daily pass compacts, and which it must remember for later.

    A day is compacted once it is closed (before today, UTC) and has been written since the
    last pass; a day written while still open waits in `pending` until it closes. `changed`
    None (first pass, or the log no longer reaches back) means every closed day.
    """
    written = pending if changed is None else changed | pending
    later = {day for day in written if day >= today}
    return (None if changed is None else written - later), later


def days_in(days: Iterable[date]) -> str:
    dates = ", ".join(f"DATE'{day:%Y-%m-%d}'" for day in sorted(set(days)))
    return f"eventDate IN ({dates})"


def compact(spark: SparkSession, path: str, predicate: str, zorder: bool = False) -> dict:
    """OPTIMIZE the partitions matching `predicate`: bin-packing, or a rewrite ordered by
    device (Z-order) for the weekly pass. Compaction changes no row, so it commits with
    dataChange=false and a reader sees the same rows before, during and after."""

    ordered = f" ZORDER BY ({ZORDER_COLUMN})" if zorder else ""
    statement = f"OPTIMIZE {delta_at(path)} WHERE {predicate}{ordered}"
    return measured(spark, path, lambda: spark.sql(statement).collect())


def retention_hours(hours: float, force_reason: str = "") -> float:
    """The VACUUM retention to use, or why not: a week by default, shorter only when forced
    with a reason, and never inside the rollback window."""
    if hours < ROLLBACK_WINDOW_HOURS:
        raise RetentionRefused(
            f"VACUUM retention of {hours:g} h refused: the project promises rollback for "
            f"{ROLLBACK_WINDOW_HOURS} h, so no VACUUM deletes files younger than that, forced or not."
        )
    if hours < DEFAULT_RETENTION_HOURS and not force_reason.strip():
        raise RetentionRefused(
            f"VACUUM retention of {hours:g} h refused: below the default {DEFAULT_RETENTION_HOURS} h "
            "it needs force_reason, saying why the old files must go early."
        )
    return hours


def vacuum(spark: SparkSession, path: str, hours: float) -> dict:
    """VACUUM files no version inside the last `hours` reads; `hours` comes from
    retention_hours. Delta's own guard against short retentions is lifted only for this call."""
    guard = "spark.databricks.delta.retentionDurationCheck.enabled"
    # The files VACUUM would delete, counted from its dry run.
    statement = f"VACUUM {delta_at(path)} RETAIN {hours:g} HOURS"
    deleted = spark.sql(f"{statement} DRY RUN").count()
    spark.conf.set(guard, str(hours >= DEFAULT_RETENTION_HOURS).lower())
    try:
        report = measured(spark, path, lambda: spark.sql(statement).collect())
    finally:
        spark.conf.set(guard, "true")
    return {**report, "retention_hours": hours, "files_deleted": deleted}


class RollbackRefused(ValueError):
    """A restore that would undo more than asked, or bring erased rows back."""


def _tag(user_metadata: str | None) -> dict:
    """The marker pipeline writes put in a commit's userMetadata (run id, erasure request)."""
    try:
        tag = json.loads(user_metadata or "{}")
    except json.JSONDecodeError:
        return {}
    return tag if isinstance(tag, dict) else {}


def history(spark: SparkSession, path: str, limit: int | None = None) -> list[dict]:
    """The table's commits, newest first: version, time, operation, the run that made it
    and the erasure request it carried out, if any."""
    rows = table_history(spark, path, limit).select("version", "timestamp", "operation", "userMetadata")
    return [
        {
            "version": int(row.version),
            # PySpark hands timestamps over as naive local times of this process.
            "timestamp": row.timestamp.astimezone(UTC).isoformat(),
            "operation": row.operation,
            "run_id": _tag(row.userMetadata).get("run_id", ""),
            "erasure": _tag(row.userMetadata).get("erasure", ""),
        }
        for row in rows.collect()
    ]


def versions_written_by(spark: SparkSession, path: str, run_id: str) -> list[int]:
    """The versions of this table committed by a pipeline run (its writes tag each commit
    with the run id), oldest first."""
    return sorted(commit["version"] for commit in history(spark, path) if commit["run_id"] == run_id)


def version_at(spark: SparkSession, path: str, timestamp: str) -> int:
    """The version that was current at a time (ISO-8601; UTC unless it says otherwise)."""
    moment = datetime.fromisoformat(timestamp)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    earlier = [
        commit["version"]
        for commit in history(spark, path)
        if datetime.fromisoformat(commit["timestamp"]) <= moment
    ]
    if not earlier:
        raise RollbackRefused(f"the table did not exist yet at {timestamp}")
    return max(earlier)


# Commits that move files without changing rows: undoing them loses nothing.
_LAYOUT_ONLY = {"OPTIMIZE", "VACUUM START", "VACUUM END"}


def check_rollback(undone: list[dict], run_id: str = "", undo_later_commits: bool = False) -> None:
    """Refuse a restore that would bring back rows a GDPR erasure deleted, or, when rolling
    back one run, that would also undo other runs' later writes unless asked to."""
    erasures = sorted({commit["erasure"] for commit in undone if commit["erasure"]})
    if erasures:
        raise RollbackRefused(
            f"restoring past erasure request(s) {erasures} would bring erased rows back; "
            "choose a version after them"
        )
    if run_id and not undo_later_commits:
        others = [
            commit["version"]
            for commit in undone
            if commit["run_id"] != run_id and commit["operation"] not in _LAYOUT_ONLY
        ]
        if others:
            raise RollbackRefused(
                f"versions {others} were written after run {run_id} by other runs and would be "
                "undone too; set undo_later_commits to accept that"
            )


# The version "before" a table's first commit, for a run that made the table: no rows.
BEFORE_FIRST_COMMIT = -1


def restore(spark: SparkSession, path: str, version: int) -> dict:
    """RESTORE the table to a version (version_at finds the one current at a time), or empty
    it for BEFORE_FIRST_COMMIT; either is itself a new version, so it can be undone the same way."""
    statement = (
        f"DELETE FROM {delta_at(path)}"
        if version == BEFORE_FIRST_COMMIT
        else f"RESTORE TABLE {delta_at(path)} TO VERSION AS OF {int(version)}"
    )
    return measured(spark, path, lambda: spark.sql(statement).collect())
