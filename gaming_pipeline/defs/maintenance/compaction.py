"""Keeping the tables fast: the daily compaction of closed days, the weekly Z-order and
VACUUM, and VACUUM on demand.

Each pass leaves an observation on every table it touched (files and bytes before and
after, versions, seconds), so the table's page in the UI shows what each pass bought.
Passes run in their own pool: ingestion goes on while they work, and where both touch the
same files Delta lets one commit and the other retries (both sides are idempotent).
"""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
from pydantic import Field
from pyspark.sql import functions as F

from gaming_pipeline.defs.partitions import days_predicate
from gaming_pipeline.defs.pools import MAINTENANCE_POOL
from gaming_pipeline.defs.resources import SparkResource, WarehouseResource
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import maintenance
from gaming_pipeline.lib.tables import RAW_TABLE, all_tables
from gaming_pipeline.lib.warehouse import is_delta_table, latest_version, table_path

# The event tables: many small files from frequent small writes, and player-level queries.
EVENT_TABLES = [RAW_TABLE, *(game.table_name for game in GAMES)]
DAILY_PASS, WEEKLY_PASS, VACUUM_PASS = "daily compaction", "weekly z-order", "vacuum"


class TablesConfig(dg.Config):
    tables: list[str] = Field(
        default=[],
        description="Tables to work on, by name. Leave empty for the pass's usual tables.",
    )

    def chosen(self, usual: list[str]) -> list[str]:
        unknown = sorted(set(self.tables) - set(all_tables()))
        if unknown:
            raise dg.Failure(f"unknown table(s) {unknown}; the tables are {all_tables()}")
        return self.tables or usual


def _today() -> date:
    return datetime.now(UTC).date()


def existing_tables(spark, warehouse: WarehouseResource, tables: list[str], log) -> list[tuple[str, str]]:
    """(table, path) of those of `tables` written so far; the others are logged as skipped."""
    paths = [(table, table_path(warehouse.root, table)) for table in tables]
    missing = [table for table, path in paths if not is_delta_table(spark, path)]
    if missing:
        log.info(f"not written yet, skipped: {missing}")
    return [(table, path) for table, path in paths if table not in missing]


def last_pass(instance: dg.DagsterInstance, table: str, kind: str) -> dict | None:
    """The metadata of the table's latest maintenance pass of this kind, if any."""
    for record in instance.fetch_observations(dg.AssetKey(table), limit=50).records:
        metadata = record.asset_observation.metadata
        if "maintenance" in metadata and metadata["maintenance"].value == kind:
            return {key: value.value for key, value in metadata.items()}
    return None


@dg.op(out={}, pool=MAINTENANCE_POOL)
def compact_closed_days(
    context: dg.OpExecutionContext,
    config: TablesConfig,
    warehouse: WarehouseResource,
    pyspark: SparkResource,
):
    """OPTIMIZE (bin-packing) the closed days written since each table's last daily pass:
    not the whole table, and never today, which ingestion is still writing."""
    spark = pyspark.spark_session
    today = _today()
    for table, path in existing_tables(spark, warehouse, config.chosen(EVENT_TABLES), context.log):
        previous = last_pass(context.instance, table, DAILY_PASS)
        through = latest_version(path)
        if previous:
            changed = maintenance.days_changed(spark, path, previous["scanned_through"], through)
            pending = {datetime.fromisoformat(day).date() for day in previous["pending_days"]}
        else:
            changed, pending = None, set()
        if changed is None:
            # Without a usable last pass, today's and later days present are the open ones.
            open_days = spark.read.format("delta").load(path).where(F.col("eventDate") >= F.lit(today))
            pending |= {row.eventDate for row in open_days.select("eventDate").distinct().collect()}
        days, pending = maintenance.daily_plan(changed, pending, today)
        metadata = {
            "maintenance": DAILY_PASS,
            "scanned_through": through,
            "pending_days": [day.isoformat() for day in sorted(pending)],
            "days": "every closed day" if days is None else [day.isoformat() for day in sorted(days)],
        }
        if days == set():
            context.log.info(f"{table}: no closed day written since the last pass")
        else:
            predicate = f"eventDate < DATE'{today:%Y-%m-%d}'" if days is None else maintenance.days_in(days)
            metadata |= maintenance.compact(spark, path, predicate)
            context.log.info(f"{table}: {metadata}")
        yield dg.AssetObservation(asset_key=table, metadata=metadata)


@dg.op(out={"done": dg.Out(dg.Nothing)}, pool=MAINTENANCE_POOL)
def zorder_last_week(
    context: dg.OpExecutionContext,
    config: TablesConfig,
    warehouse: WarehouseResource,
    pyspark: SparkResource,
):
    """The seed's second round: rewrite the last seven closed days ordered by device, so a
    player's events sit in few files and player queries (and erasures) skip the rest."""
    spark = pyspark.spark_session
    end = _today()
    first = end - timedelta(days=7)
    for table, path in existing_tables(spark, warehouse, config.chosen(EVENT_TABLES), context.log):
        report = maintenance.compact(spark, path, days_predicate(first, end), zorder=True)
        context.log.info(f"{table}: {report}")
        yield dg.AssetObservation(
            asset_key=table,
            metadata={
                "maintenance": WEEKLY_PASS,
                "days": f"{first}..{end - timedelta(days=1)}",
                "zorder_by": maintenance.ZORDER_COLUMN,
                **report,
            },
        )


class VacuumConfig(TablesConfig):
    retention_hours: float = Field(
        default=maintenance.DEFAULT_RETENTION_HOURS,
        description=(
            f"Keep the files any version of the last this many hours reads. Below "
            f"{maintenance.DEFAULT_RETENTION_HOURS} h only with force_reason; never below the "
            f"{maintenance.ROLLBACK_WINDOW_HOURS} h rollback window."
        ),
    )
    force_reason: str = Field(default="", description="Why a retention shorter than the default is needed.")


@dg.op(ins={"after": dg.In(dg.Nothing)}, out={}, pool=MAINTENANCE_POOL)
def vacuum_tables(
    context: dg.OpExecutionContext,
    config: VacuumConfig,
    warehouse: WarehouseResource,
    pyspark: SparkResource,
):
    """VACUUM every table: delete the files no version inside the retention reads."""
    try:
        hours = maintenance.retention_hours(config.retention_hours, config.force_reason)
    except maintenance.RetentionRefused as refused:
        raise dg.Failure(str(refused)) from refused
    if hours < maintenance.DEFAULT_RETENTION_HOURS:
        context.log.warning(f"VACUUM retention forced to {hours:g} h: {config.force_reason}")
    spark = pyspark.spark_session
    for table, path in existing_tables(spark, warehouse, config.chosen(all_tables()), context.log):
        report = maintenance.vacuum(spark, path, hours)
        context.log.info(f"{table}: {report}")
        yield dg.AssetObservation(
            asset_key=table,
            metadata={"maintenance": VACUUM_PASS, **report, "force_reason": config.force_reason},
        )


@dg.job(description="OPTIMIZE the closed days written since the last daily pass, raw and per-game tables.")
def daily_compaction_job():
    compact_closed_days()


@dg.job(description="Z-order the last seven closed days by device, then VACUUM every table.")
def weekly_maintenance_job():
    vacuum_tables(zorder_last_week())


@dg.job(description="VACUUM every table (or those chosen) with a retention of at least the rollback window.")
def vacuum_job():
    vacuum_tables()


daily_compaction_schedule = dg.ScheduleDefinition(
    job=daily_compaction_job,
    # Early morning UTC: yesterday has closed and its late events have mostly landed.
    cron_schedule="30 1 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

weekly_maintenance_schedule = dg.ScheduleDefinition(
    job=weekly_maintenance_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
