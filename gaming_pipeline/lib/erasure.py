"""GDPR erasure of one player: their rows out of the event tables, and an audit record of
what was erased that holds no PII (the player is named by their pseudonymous id only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from pyspark.sql import SparkSession

from gaming_pipeline.lib.kpis import DEVICE, PLAYER_DAYS
from gaming_pipeline.lib.maintenance import DEFAULT_RETENTION_HOURS, days_in
from gaming_pipeline.lib.tables import AUDIT, AUDIT_SCHEMA
from gaming_pipeline.lib.warehouse import (
    commits_tagged,
    delta_at,
    latest_version,
    replace_rows,
    retry_on_conflict,
    sql_string,
    version_tagged,
)

ERASURE_TAG = "erasure"


@dataclass(frozen=True)
class TableErasure:
    table: str
    rows_deleted: int
    version: int
    days: list[date] = field(default_factory=list)


# Where a table other than the event tables keeps the device id.
DEVICE_COLUMNS = {PLAYER_DAYS: "device_id"}


def erase_rows(spark: SparkSession, path: str, table: str, device_id: str, marker: dict) -> TableErasure:
    """Delete every row of one device from a table partitioned by day (an event table, or
    one of DEVICE_COLUMNS), in one commit. Repeating it deletes nothing more, so a conflict
    with a concurrent writer is simply retried."""
    device = f"{DEVICE_COLUMNS.get(table, DEVICE)} = {sql_string(device_id)}"
    found = spark.read.format("delta").load(path).where(device).groupBy("eventDate").count().collect()
    if not found:
        return TableErasure(table, 0, latest_version(spark, path))
    days = sorted(row.eventDate for row in found)
    # Naming the days lets Delta rewrite only those partitions' files.
    statement = f"DELETE FROM {delta_at(path)} WHERE {device} AND {days_in(days)}"
    with commits_tagged(spark, marker):
        retry_on_conflict(lambda: spark.sql(statement).collect())
    version = version_tagged(spark, path, marker, operation="DELETE")
    return TableErasure(table, sum(row["count"] for row in found), version, days)


def record_audit(
    spark: SparkSession,
    warehouse: str,
    *,
    request_id: str,
    player_id: str,
    requested_by: str,
    reason: str,
    erased_at: datetime,
    run_id: str,
    tables: list[TableErasure],
    shredded: dict,
) -> int:
    """Append the erasure run's audit row. Every run of a request keeps its own row (a
    repeated request finds nothing more to delete and says so); only a retry within the
    same run replaces its row."""
    row = (
        request_id,
        player_id,
        requested_by,
        reason,
        erased_at,
        run_id,
        [(t.table, t.rows_deleted, t.version, t.days) for t in tables],
        shredded["key_shredded"],
        shredded["records_deleted"],
        erased_at + timedelta(hours=DEFAULT_RETENTION_HOURS),
    )
    path = AUDIT.ensure(spark, warehouse)
    return replace_rows(
        spark.createDataFrame([row], AUDIT_SCHEMA),
        path,
        f"request_id = {sql_string(request_id)} AND run_id = {sql_string(run_id)}",
        {"run_id": run_id, ERASURE_TAG: request_id},
    ).version
