"""Putting tables right: rollback by Delta time travel, and GDPR erasure of a player.

Both end by recording the raw table's changed days as days to rebuild, so the refresh
sensor rebuilds the per-game, activity and KPI partitions of exactly those days.
"""

import re
import uuid
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from gaming_pipeline.defs.ingest.assets import objects_in_bucket
from gaming_pipeline.defs.maintenance.compaction import EVENT_TABLES, existing_tables
from gaming_pipeline.defs.partitions import REBUILD_DATES
from gaming_pipeline.defs.pools import MAINTENANCE_POOL
from gaming_pipeline.defs.resources import (
    LandingBucketResource,
    PiiVaultResource,
    SparkResource,
    WarehouseResource,
)
from gaming_pipeline.lib import erasure, maintenance
from gaming_pipeline.lib.ingest import ensure_ingest_tables, pending
from gaming_pipeline.lib.pseudonyms import ErasedPlayers
from gaming_pipeline.lib.tables import (
    AUDIT_TABLE,
    INTENT_TABLE,
    LEDGER_TABLE,
    QUARANTINE_TABLE,
    RAW_TABLE,
    all_tables,
)
from gaming_pipeline.lib.warehouse import latest_version, table_path

# The ledger keeps saying which objects were taken in, so a rollback does not make the
# reconciler ingest the same bad objects again; the audit is never rolled back.
# Every table holding a device id (the quarantine in its lines' text).
PLAYER_TABLES = [*EVENT_TABLES, *erasure.DEVICE_COLUMNS, QUARANTINE_TABLE]
RESTORABLE = [table for table in all_tables() if table not in (LEDGER_TABLE, INTENT_TABLE, AUDIT_TABLE)]


class RollbackConfig(dg.Config):
    table: str = Field(
        default="", description="The table to restore. Leave empty to restore every table run_id wrote."
    )
    version: int = Field(
        default=-1, description="Restore `table` to this version (its history is in the run's logs)."
    )
    timestamp: str = Field(default="", description="Or to the version current at this time (ISO-8601, UTC).")
    run_id: str = Field(
        default="", description="Restore every table this run wrote to its version before the run."
    )
    undo_later_commits: bool = Field(
        default=False,
        description="Also undo commits made after the chosen version by other runs (refused otherwise).",
    )


def _history_markdown(history: list[dict]) -> dg.MetadataValue:
    lines = ["| version | time (UTC) | operation | run |", "| --- | --- | --- | --- |"]
    lines += [f"| {h['version']} | {h['timestamp']} | {h['operation']} | {h['run_id']} |" for h in history]
    return dg.MetadataValue.md("\n".join(lines))


def _targets(spark, warehouse: WarehouseResource, config: RollbackConfig, log) -> dict[str, int]:
    """The version each table goes back to."""
    if bool(config.table) == bool(config.run_id):
        raise dg.Failure("give either `table` (with `version` or `timestamp`) or `run_id`")
    if config.run_id:
        targets = {}
        for table, path in existing_tables(spark, warehouse, RESTORABLE, log):
            written = maintenance.versions_written_by(spark, path, config.run_id)
            if written:
                targets[table] = written[0] - 1
        if not targets:
            raise dg.Failure(f"run {config.run_id} wrote no table that can be restored")
        return targets
    if config.table not in RESTORABLE:
        raise dg.Failure(f"`{config.table}` cannot be restored; restorable tables: {RESTORABLE}")
    if (config.version >= 0) == bool(config.timestamp):
        raise dg.Failure("give exactly one of `version` and `timestamp`")
    path = table_path(warehouse.root, config.table)
    if config.version >= 0:
        return {config.table: config.version}
    return {config.table: maintenance.version_at(spark, path, config.timestamp)}


@dg.op(out={}, pool=MAINTENANCE_POOL)
def restore_tables(
    context: dg.OpExecutionContext,
    config: RollbackConfig,
    warehouse: WarehouseResource,
    pyspark: SparkResource,
):
    """RESTORE one table to a version or a time, or every table a run wrote to before the
    run; then the per-game and KPI days the raw table changed on are rebuilt."""
    spark = pyspark.spark_session
    for table, target in _targets(spark, warehouse, config, context.log).items():
        path = table_path(warehouse.root, table)
        history = maintenance.history(spark, path)
        current = history[0]["version"]
        # The commits from a few before the target up to now: what the choice was made from.
        shown = _history_markdown([commit for commit in history if commit["version"] >= target - 5][:50])
        context.log.info(f"{table}: restoring version {current} to version {target}")
        undone = [commit for commit in history if commit["version"] > target]
        try:
            # A run that made the table is undone by emptying it.
            lowest = maintenance.BEFORE_FIRST_COMMIT if config.run_id else 0
            if not lowest <= target <= current:
                raise maintenance.RollbackRefused(f"version {target} is not one of 0..{current}")
            maintenance.check_rollback(undone, config.run_id, config.undo_later_commits)
        except maintenance.RollbackRefused as refused:
            raise dg.Failure(f"{table}: {refused}", metadata={"history": shown}) from refused
        days = maintenance.days_changed(spark, path, target, current)
        report = maintenance.restore(spark, path, version=target) if undone else {}
        metadata = {
            "restored_to_version": target,
            "restored_from_version": current,
            "history": shown,
            "days": [day.isoformat() for day in sorted(days or [])],
            **report,
        }
        if table == RAW_TABLE:
            metadata[REBUILD_DATES] = metadata["days"]
        yield dg.AssetMaterialization(asset_key=table, metadata=metadata)


@dg.job(
    description="Roll tables back by Delta RESTORE: one table to a version or time, or every table a run wrote."
)
def rollback_job():
    restore_tables()


class ErasureConfig(dg.Config):
    player_id: str = Field(
        description=(
            "The player to erase, by pseudonymous id: `gaming-pipeline pii player-id DEVICE_ID` "
            "prints it. Never the device id: run config stays in Dagster's run storage."
        )
    )
    requested_by: str = Field(description="Who asked for the erasure (recorded in the audit).")
    reason: str = Field(default="GDPR Art. 17 erasure request", description="Recorded in the audit.")
    request_id: str = Field(default="", description="The request's id; a new one when empty.")


audit_table = dg.AssetSpec(
    AUDIT_TABLE,
    group_name="maintenance",
    kinds={"delta"},
    description=(
        "One row per GDPR erasure run: request, who asked, when, the pseudonymous player id; "
        "per table the rows deleted, the Delta version and the days; and per place (landing "
        "objects, table files, table logs) what was removed and when its last copy is gone. "
        "It never holds the device id or any PII. Written by erase_player_job."
    ),
)


def untaken_objects(landing: LandingBucketResource, warehouse_root: str) -> list[tuple[str, str]]:
    """The landing objects (bucket, key) no run has taken in: parked, or waiting on the queue.
    Their lines hold players too, and the PII vault holds their PII already."""
    return [(obj.bucket, obj.key) for obj in pending(warehouse_root, objects_in_bucket(landing))[0]]


@dg.op(out={}, pool=MAINTENANCE_POOL)
def erase_player(
    context: dg.OpExecutionContext,
    config: ErasureConfig,
    landing: LandingBucketResource,
    warehouse: WarehouseResource,
    pii_vault: PiiVaultResource,
    pyspark: SparkResource,
):
    """Put the player on the erased-players list, so that nothing of theirs is taken from
    then on (events still in an ingest spool or on the queue included); take their lines out
    of the landing objects; delete their rows from the per-game and player-activity tables,
    their lines from the quarantine and their rows from the raw table; shred their PII key,
    take their sealed records out of the vault's segments and write the audit record. The
    days they played on are then rebuilt without them. Older table versions keep the rows
    until VACUUM's retention has passed.

    Each step can be repeated, and the places left are found from those not yet cleaned (the
    raw table, emptied last, gives the device and the landing objects' lineage): a run
    that fails midway, a denied request say, is completed by running it again."""
    if not re.fullmatch(r"[0-9a-f]{64}", config.player_id):
        raise dg.Failure(
            "`player_id` is a player's pseudonymous id, 64 hex digits: `gaming-pipeline pii player-id "
            "DEVICE_ID` prints it (the job never takes a device id, which run storage would keep)"
        )
    if not config.requested_by.strip():
        raise dg.Failure("an erasure needs `requested_by`")
    spark = pyspark.spark_session
    vault = pii_vault.vault()
    player = config.player_id
    vault.mark_erased(player)
    erased_player = ErasedPlayers(vault.pseudonym_key, frozenset([player]))
    request_id = config.request_id or str(uuid.uuid4())
    marker = {"run_id": context.run.run_id, erasure.ERASURE_TAG: request_id}
    # The derived tables first and raw last (see above).
    tables = dict(
        sorted(
            existing_tables(spark, warehouse, PLAYER_TABLES, context.log),
            key=lambda table: table[0] == RAW_TABLE,
        )
    )
    s3 = landing.s3()
    # Objects no run has taken in: parked, or waiting on the queue; their lines hold the player
    # too, and ingestion would leave those out, but the objects would keep them.
    ensure_ingest_tables(spark, warehouse.root)
    untaken = untaken_objects(landing, warehouse.root)
    device_id = erasure.device_in_tables(spark, tables, erased_player) or erasure.device_in_objects(
        s3, untaken, erased_player
    )
    if device_id is None:
        context.log.info(f"player {player}: no table or landing object holds them")
        landed = []
        erased = [erasure.TableErasure(table, 0, latest_version(path)) for table, path in tables.items()]
    else:
        sources = erasure.source_objects(spark, tables, device_id)
        # Before the landing objects and the raw table, which lead to the segments, lose the player.
        vault.note_segments(player, erasure.pii_segments(s3, sources + untaken))
        landed = erasure.erase_from_objects(s3, sources + untaken, device_id)
        erased = [
            erasure.erase_from_table(spark, path, table, device_id, marker) for table, path in tables.items()
        ]
    shredded = vault.shred(player)
    erased_at = datetime.now(UTC)
    audit_version = erasure.record_audit(
        spark,
        warehouse.root,
        request_id=request_id,
        player_id=player,
        requested_by=config.requested_by,
        reason=config.reason,
        erased_at=erased_at,
        run_id=context.run.run_id,
        tables=erased,
        landing=landed,
        shredded=shredded,
        logs_with_statistics=[
            table for table, path in tables.items() if erasure.keeps_statistics_of_players(spark, path)
        ],
    )
    summary = {t.table: t.rows_deleted for t in erased if t.rows_deleted}
    context.log.info(f"player {player} erased (request {request_id}): rows {summary}, PII {shredded}")
    raw_days = next((t.days for t in erased if t.table == RAW_TABLE), [])
    yield dg.AssetMaterialization(
        asset_key=RAW_TABLE,
        metadata={
            "erasure_request": request_id,
            "player_id": player,
            "rows_deleted": sum(summary.values()),
            "landing_lines_removed": sum(rewritten.lines_removed for rewritten in landed),
            REBUILD_DATES: [day.isoformat() for day in raw_days],
        },
    )
    yield dg.AssetMaterialization(
        asset_key=AUDIT_TABLE,
        metadata={
            "request_id": request_id,
            "player_id": player,
            "delta_version": audit_version,
            "tables": summary,
        },
    )


@dg.job(
    description="Erase one player (GDPR): landing lines, rows, quarantined lines, PII key, KPIs rebuilt, audit recorded.",
    # On Kubernetes the run's pod takes the erasure role (deploy/iam/erasure-policy.json): the
    # only one that may rewrite landing objects and shred PII keys.
    tags={"dagster-k8s/config": {"pod_spec_config": {"service_account_name": "gaming-pipeline-erasure"}}},
)
def erase_player_job():
    erase_player()
