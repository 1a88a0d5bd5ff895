"""GDPR erasure of one player on real tables and a real PII vault in the local S3: their rows
leave the current version of every event table (an independent Delta reader agrees), their
PII no longer decrypts, the audit names them only by pseudonym, the KPI days they played on
are rebuilt without them, and no rollback can bring them back."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pyarrow.compute as pc
import pytest
from dagster_pyspark import LazyPySparkResource
from deltalake import DeltaTable as IndependentReader
from pyspark.sql import functions as F

from gaming_pipeline.defs.games.assets import game_tables
from gaming_pipeline.defs.kpis.activity import activity_tables
from gaming_pipeline.defs.kpis.assets import kpi_tables
from gaming_pipeline.defs.maintenance.recovery import PLAYER_TABLES, erase_player_job, rollback_job
from gaming_pipeline.defs.refresh.sensors import RANGE_END, RANGE_START, raw_days_sensor
from gaming_pipeline.defs.resources import PiiVaultResource, WarehouseResource
from gaming_pipeline.games import ALL_GAMES, GAMES
from gaming_pipeline.lib import maintenance
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.kpis import DAILY_ACTIVE_USERS, PLAYER_DAYS
from gaming_pipeline.lib.pii import PlayerErased, new_master_key
from gaming_pipeline.lib.tables import AUDIT_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import is_delta_table, latest_version, table_path
from gaming_pipeline_tests.ingest_helpers import CLOSED, events_on, land

PLAYER, OTHER = "d-erase-me-4711", "d-keep-me-0815"
GAME = GAMES[0]


def played_by(device: str, events: list[dict]) -> list[dict]:
    """The events as one device playing GAME."""
    return [
        {**event, "eventParams": {**event["eventParams"], "device_id": device, "game_keyword": GAME.keyword}}
        for event in events
    ]


def device_rows(spark, path: str, device: str, version: int | None = None) -> int:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path).where(F.col("eventParams.device_id") == device).count()


def independent_device_rows(path: str, device: str) -> tuple[int, int]:
    """(rows of the device, all rows) in the current version, read by delta-rs."""
    table = IndependentReader(path).to_pyarrow_table(columns=["eventParams"])
    devices = pc.struct_field(table.column("eventParams"), "device_id")
    return pc.sum(pc.equal(devices, device)).as_py() or 0, table.num_rows


def dau(spark, warehouse: str) -> dict:
    rows = spark.read.format("delta").load(table_path(warehouse, "kpi_daily_active_users")).collect()
    return {(row.eventDate, row.game_keyword): row.dau for row in rows}


def test_erasure_removes_a_player_everywhere_and_keeps_only_a_pseudonymous_audit(spark, landing, warehouse):
    raw, game_path = table_path(warehouse, RAW_TABLE), table_path(warehouse, GAME.table_name)
    events = []
    for n, day in enumerate(CLOSED):
        generated = events_on(day, 60, 70 + n)
        events += played_by(PLAYER, generated[:10]) + played_by(OTHER, generated[10:15]) + generated[15:]
    ingest_objects(spark, warehouse, [land(landing.bucket, "players/0.ndjson.gz", events)], "ingest-run")
    pii_bucket = f"{landing.bucket}-pii"
    vault_resource = PiiVaultResource(bucket=pii_bucket, master_key=new_master_key())
    vault = vault_resource.vault()
    erased = {"event_id": "e-1", "pii": {"email": "erase.me@example.com", "name": "Erin Erased"}}
    kept = {"event_id": "e-2", "pii": {"email": "keep.me@example.com", "name": "Kim Kept"}}
    vault.store(vault.player_id(PLAYER), "batch-1", [erased])
    vault.store(vault.player_id(OTHER), "batch-1", [kept])
    assert vault.read(PLAYER) == [erased]

    resources = {
        "warehouse": WarehouseResource(root=warehouse),
        "pii_vault": vault_resource,
        "pyspark": LazyPySparkResource(spark_config={}),
    }
    derived_range = {RANGE_START: CLOSED[0].isoformat(), RANGE_END: CLOSED[-1].isoformat()}
    with dg.DagsterInstance.ephemeral() as instance:

        def build_derived() -> None:
            assert dg.materialize(
                [game_tables, activity_tables, kpi_tables],
                selection=[
                    dg.AssetKey(GAME.table_name),
                    *activity_tables.keys,
                    dg.AssetKey(DAILY_ACTIVE_USERS),
                ],
                resources=resources,
                instance=instance,
                tags=derived_range,
            ).success

        build_derived()
        before = dau(spark, warehouse)
        assert device_rows(spark, raw, PLAYER) == device_rows(spark, game_path, PLAYER) == 20
        raw_rows, version_before = spark.read.format("delta").load(raw).count(), latest_version(spark, raw)

        result = erase_player_job.execute_in_process(
            run_config={
                "ops": {
                    "erase_player": {"config": {"device_id": PLAYER, "requested_by": "dpo@studio.example"}}
                }
            },
            resources=resources,
            instance=instance,
        )
        assert result.success

        # Gone from the current version of every event table, as Spark and delta-rs read it.
        for path in (raw, game_path):
            assert device_rows(spark, path, PLAYER) == 0
            assert device_rows(spark, path, OTHER) == 10
        assert independent_device_rows(raw, PLAYER) == (0, raw_rows - 20)
        assert independent_device_rows(game_path, PLAYER)[0] == 0
        players = spark.read.format("delta").load(table_path(warehouse, PLAYER_DAYS))
        assert players.where(F.col("device_id") == PLAYER).count() == 0
        assert players.where(F.col("device_id") == OTHER).count() == 2
        # Older versions still hold the rows until VACUUM's retention has passed.
        assert device_rows(spark, raw, PLAYER, version_before) == 20

        with pytest.raises(PlayerErased):
            vault.read(PLAYER)
        assert vault.read(OTHER) == [kept]

        (audit,) = spark.read.format("delta").load(table_path(warehouse, AUDIT_TABLE)).collect()
        assert audit.player_id == vault.player_id(PLAYER)
        assert audit.requested_by == "dpo@studio.example"
        # Every table that can hold a player is searched and named in the audit, those
        # without them with 0 rows. Ten events a day on two days: one activity row a day.
        deleted = {entry.table: entry.rows_deleted for entry in audit.tables}
        assert set(deleted) == {
            table for table in PLAYER_TABLES if is_delta_table(spark, table_path(warehouse, table))
        }
        assert {table: rows for table, rows in deleted.items() if rows} == {
            RAW_TABLE: 20,
            GAME.table_name: 20,
            PLAYER_DAYS: 2,
        }
        assert sorted(next(e.days for e in audit.tables if e.table == RAW_TABLE)) == CLOSED
        assert audit.pii_key_shredded and audit.pii_records_deleted == 1
        assert audit.files_purged_after - audit.erased_at == timedelta(
            hours=maintenance.DEFAULT_RETENTION_HOURS
        )
        assert PLAYER not in str(audit.asDict(recursive=True)) and "erase.me" not in str(
            audit.asDict(recursive=True)
        )

        # The days sensor asks for the player's days; rebuilt, DAU counts one player fewer.
        with dg.build_sensor_context(instance=instance) as context:
            (refresh, *_) = raw_days_sensor(context).run_requests
        assert (refresh.tags[RANGE_START], refresh.tags[RANGE_END]) == (
            CLOSED[0].isoformat(),
            CLOSED[-1].isoformat(),
        )
        build_derived()
        after = dau(spark, warehouse)
        for day in CLOSED:
            for game in (GAME.keyword, ALL_GAMES):
                assert after[(day, game)] == before[(day, game)] - 1

        # A rollback past the erasure would bring the player back: refused.
        refused = rollback_job.execute_in_process(
            run_config={
                "ops": {"restore_tables": {"config": {"table": RAW_TABLE, "version": version_before}}}
            },
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert not refused.success
        assert "erasure" in str(refused.failure_data_for_node("restore_tables").error)
        assert device_rows(spark, raw, PLAYER) == 0
