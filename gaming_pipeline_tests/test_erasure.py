"""GDPR erasure of one player on real tables and a real PII vault in the local S3: their rows
leave the current version of every event table (an independent Delta reader agrees), their
lines leave the quarantine and the landing objects (which ingest again to the same rows),
no commit names them, their PII no longer decrypts, the audit names them only by pseudonym
and says where they were, the KPI days they played on are rebuilt without them, and no
rollback can bring them back."""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import timedelta

import dagster as dg
import pyarrow.compute as pc
import pytest
from botocore.exceptions import ClientError
from deltalake import DeltaTable as IndependentReader
from pyspark.sql import functions as F

from gaming_pipeline.defs.games.assets import game_tables
from gaming_pipeline.defs.kpis.activity import activity_tables
from gaming_pipeline.defs.kpis.assets import kpi_tables
from gaming_pipeline.defs.maintenance.recovery import PLAYER_TABLES, rollback_job, untaken_objects
from gaming_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from gaming_pipeline.defs.refresh.sensors import raw_days_sensor
from gaming_pipeline.defs.resources import PiiVaultResource
from gaming_pipeline.games import ALL_GAMES, GAMES
from gaming_pipeline.lib import aws, maintenance
from gaming_pipeline.lib.erasure import export_player
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.kpis import DAILY_ACTIVE_USERS, PLAYER_DAYS
from gaming_pipeline.lib.pii import PlayerErased
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.s3_events import PARKED_PREFIX, LandedObject
from gaming_pipeline.lib.tables import AUDIT_TABLE, QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import is_delta_table, latest_version, table_history, table_path
from gaming_pipeline_tests.ingest_helpers import CLOSED, erase, events_on, land, resources

PLAYER, OTHER = "d-erase-me-4711", "d-keep-me-0815"
# Holds PLAYER's id as a prefix: erasing PLAYER must leave it alone.
LONGER = PLAYER + "0"
GAME = GAMES[0]
# The players' events as the ingest service lands a spool segment's, and the name the PII
# vault holds the segment's PII under: an erasure finds the PII through the object.
SEGMENT = "ingest-spool-1-segment-1"
DELIVERED = f"players/{SEGMENT}.ndjson.gz"
# A segment of an unknown game's events only: parked in the landing bucket, never ingested.
PARKED_SEGMENT = "ingest-spool-1-segment-2"
PARKED = f"{PARKED_PREFIX}not_a_game/{PARKED_SEGMENT}.ndjson.gz"


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


def landed_lines(bucket: str) -> dict[str, list[str]]:
    """Every landing object's lines, inflated."""
    s3 = aws.client("s3")
    found = {}
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        text = (gzip.decompress(body) if obj["Key"].endswith(".gz") else body).decode()
        found[obj["Key"]] = [line for line in text.split("\n") if line]
    return found


def lines_of(device: str, lines: list[str]) -> list[str]:
    """The lines holding the device id as a JSON value or as the first field of free text."""
    return [line for line in lines if json.dumps(device) in line or line.split(",")[0] == device]


def put_lines(bucket: str, key: str, lines: list[str]) -> LandedObject:
    s3 = aws.client("s3")
    s3.put_object(Bucket=bucket, Key=key, Body="\n".join(lines).encode() + b"\n")
    return LandedObject(bucket, key, s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"'))


def dau(spark, warehouse: str) -> dict:
    rows = spark.read.format("delta").load(table_path(warehouse, "kpi_daily_active_users")).collect()
    return {(row.eventDate, row.game_keyword): row.dau for row in rows}


def test_erasure_removes_a_player_everywhere_and_keeps_only_a_pseudonymous_audit(spark, landing, warehouse):
    raw, game_path = table_path(warehouse, RAW_TABLE), table_path(warehouse, GAME.table_name)
    events = []
    for n, day in enumerate(CLOSED):
        generated = events_on(day, 60, 70 + n)
        events += played_by(PLAYER, generated[:10]) + played_by(OTHER, generated[10:15]) + generated[15:]
    # Lines that do not parse still name their player: they go to the quarantine. Free text
    # names them by a whole word only.
    broken = [
        *(
            f'{{"eventName": "levelUp", "eventParams": {{"device_id": "{device}"'
            for device in (PLAYER, OTHER, LONGER)
        ),
        *(f"{device},levelUp,2026-11-20T10:00:00Z" for device in (PLAYER, LONGER)),
    ]
    objects = [
        land(landing.bucket, DELIVERED, events),
        put_lines(landing.bucket, "players/broken.ndjson", broken),
    ]
    ingest_objects(spark, warehouse, objects, "ingest-run")

    def games_of(device: str) -> set[str]:
        return {e["eventParams"]["game_keyword"] for e in events if e["eventParams"]["device_id"] == device}

    # An unknown game's events, parked: never ingested, still to be erased.
    parked = {
        **played_by(PLAYER, events[:1])[0],
        "eventParams": {"device_id": PLAYER, "game_keyword": "not_a_game"},
    }
    land(landing.bucket, PARKED, [parked])
    before_erasure = landed_lines(landing.bucket)
    assert {key: len(lines_of(PLAYER, lines)) for key, lines in before_erasure.items()} == {
        DELIVERED: 20,
        "players/broken.ndjson": 2,
        PARKED: 1,
    }
    quarantine = table_path(warehouse, QUARANTINE_TABLE)
    assert spark.read.format("delta").load(quarantine).count() == 5
    pii_bucket = f"{landing.bucket}-pii"
    vault_resource = PiiVaultResource(bucket=pii_bucket)
    vault = vault_resource.vault()
    erased = {"event_id": "e-1", "pii": {"email": "erase.me@example.com", "name": "Erin Erased"}}
    kept = {"event_id": "e-2", "pii": {"email": "keep.me@example.com", "name": "Kim Kept"}}
    erased_parked = {"event_id": "e-3", "pii": {"email": "erase.me@example.com"}}
    vault.store(SEGMENT, {vault.player_id(PLAYER): [erased], vault.player_id(OTHER): [kept]})
    vault.store(PARKED_SEGMENT, {vault.player_id(PLAYER): [erased_parked]})
    assert vault.read(PLAYER, [SEGMENT]) == [erased]

    resources_ = {**resources(landing, warehouse), "pii_vault": vault_resource}
    derived_range = {RANGE_START_TAG: CLOSED[0].isoformat(), RANGE_END_TAG: CLOSED[-1].isoformat()}
    with dg.DagsterInstance.ephemeral() as instance:

        def build_derived() -> None:
            assert dg.materialize(
                [game_tables, activity_tables, kpi_tables],
                selection=[
                    dg.AssetKey(GAME.table_name),
                    *activity_tables.keys,
                    dg.AssetKey(DAILY_ACTIVE_USERS),
                ],
                resources=resources_,
                instance=instance,
                tags=derived_range,
            ).success

        build_derived()
        before = dau(spark, warehouse)
        assert device_rows(spark, raw, PLAYER) == device_rows(spark, game_path, PLAYER) == 20
        raw_rows, version_before = spark.read.format("delta").load(raw).count(), latest_version(raw)
        # The right of access: everything held of the player, their PII decrypted.
        tables = {table: table_path(warehouse, table) for table in PLAYER_TABLES}
        # Their PII found through their events: the ingested ones' lineage, and the objects
        # no run has taken in, as `gaming-pipeline pii export` passes them.
        held = export_player(
            spark,
            {t: path for t, path in tables.items() if is_delta_table(spark, path)},
            vault,
            PLAYER,
            untaken_objects(resources_["landing"], warehouse),
        )
        assert (held["player_id"], held["pii"]) == (vault.player_id(PLAYER), [erased, erased_parked])
        assert {table: len(rows) for table, rows in held["tables"].items()} == {
            RAW_TABLE: 20,
            GAME.table_name: 20,
            PLAYER_DAYS: 2,
            PLAYER_STATE_TABLE: len(games_of(PLAYER)),
            QUARANTINE_TABLE: 2,
        }
        assert {row["eventParams"]["device_id"] for row in held["tables"][RAW_TABLE]} == {PLAYER}

        result = erase(vault.player_id(PLAYER), resources_, instance)
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
        state = spark.read.format("delta").load(table_path(warehouse, PLAYER_STATE_TABLE))
        assert state.where(F.col("device_id") == PLAYER).count() == 0
        assert state.where(F.col("device_id") == OTHER).count() == len(games_of(OTHER))
        # Out of the quarantine and the landing objects too; lines of others stay, the
        # longer id's included; an object left with no line is gone.
        lines = [row.line for row in spark.read.format("delta").load(quarantine).collect()]
        assert lines_of(PLAYER, lines) == [] and len(lines) == 3
        after_erasure = landed_lines(landing.bucket)
        assert set(after_erasure) == {DELIVERED, "players/broken.ndjson"}
        for key, lines in after_erasure.items():
            assert lines_of(PLAYER, lines) == []
            assert lines == [line for line in before_erasure[key] if not lines_of(PLAYER, [line])]
        # No commit of any table names the player: Delta keeps each DELETE's predicate.
        for table in PLAYER_TABLES:
            if is_delta_table(spark, table_path(warehouse, table)):
                history = table_history(spark, table_path(warehouse, table)).collect()
                assert PLAYER not in str(history), table
        # The rewritten objects, ingested again, give the rows the erasure left.
        s3 = aws.client("s3")
        rewritten = [
            LandedObject(
                landing.bucket, key, s3.head_object(Bucket=landing.bucket, Key=key)["ETag"].strip('"')
            )
            for key in after_erasure
        ]
        ingest_objects(spark, warehouse, rewritten, "ingest-again-run")
        assert independent_device_rows(raw, PLAYER) == (0, raw_rows - 20)
        assert device_rows(spark, raw, OTHER) == 10
        assert spark.read.format("delta").load(quarantine).count() == 3
        # Older versions still hold the rows until VACUUM's retention has passed.
        assert device_rows(spark, raw, PLAYER, version_before) == 20

        with pytest.raises(PlayerErased):
            vault.read(PLAYER, [SEGMENT, PARKED_SEGMENT])
        assert vault.read(OTHER, [SEGMENT, PARKED_SEGMENT]) == [kept]
        # Their line is out of the segment they shared with OTHER, whose PII export still
        # finds; the segment that held them alone is gone.
        listed = s3.list_objects_v2(Bucket=pii_bucket, Prefix="pii/segments/")["Contents"]
        assert [obj["Key"] for obj in listed] == [f"pii/segments/{SEGMENT}"]
        segment = s3.get_object(Bucket=pii_bucket, Key=f"pii/segments/{SEGMENT}")["Body"].read()
        assert vault.player_id(PLAYER).encode() not in segment
        assert export_player(spark, {RAW_TABLE: raw}, vault, OTHER)["pii"] == [kept]

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
            PLAYER_STATE_TABLE: len(games_of(PLAYER)),
            QUARANTINE_TABLE: 2,
        }
        assert sorted(next(e.days for e in audit.tables if e.table == RAW_TABLE)) == CLOSED
        assert audit.pii_key_shredded and audit.pii_records_deleted == 2
        assert audit.files_purged_after - audit.erased_at == timedelta(
            hours=maintenance.DEFAULT_RETENTION_HOURS
        )
        places = {place.place: place for place in audit.places}
        landed_place = places[f"landing s3://{landing.bucket}"]
        assert (landed_place.removed, landed_place.detail) == (23, "2 object(s) rewritten, 1 deleted")
        assert landed_place.last_copy_gone_after == audit.erased_at
        assert places["table files"].last_copy_gone_after == audit.files_purged_after
        # The tables keep no statistics of device ids: their logs never held the player.
        assert places["table logs"].last_copy_gone_after == audit.erased_at
        assert places["ingestion"].last_copy_gone_after == audit.erased_at
        vault_place = places[f"pii vault s3://{pii_bucket}"]
        assert vault_place.removed == 2
        assert vault_place.detail == (
            "key shredded: no copy of the player's PII can be opened; 2 sealed record(s) deleted: "
            "1 segment object(s) rewritten, 1 deleted, 0 object(s) of the per-player layout deleted"
        )
        assert vault_place.last_copy_gone_after == audit.erased_at
        assert PLAYER not in str(audit.asDict(recursive=True)) and "erase.me" not in str(
            audit.asDict(recursive=True)
        )

        # The days sensor asks for the player's days; rebuilt, DAU counts one player fewer.
        with dg.build_sensor_context(instance=instance) as context:
            (refresh, *_) = raw_days_sensor(context).run_requests
        assert (refresh.tags[RANGE_START_TAG], refresh.tags[RANGE_END_TAG]) == (
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
            resources=resources_,
            instance=instance,
            raise_on_error=False,
        )
        assert not refused.success
        assert "erasure" in str(refused.failure_data_for_node("restore_tables").error)
        assert device_rows(spark, raw, PLAYER) == 0


class KeyShreddingDenied(PiiVaultResource):
    """The vault as a role that may not delete PII keys sees it: the erasure's last step
    before its audit is refused."""

    def vault(self):
        vault = super().vault()
        s3 = aws.client("s3")

        def delete_object(**request):
            if "/keys/" in request["Key"]:
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "DeleteObject")
            return s3.delete_object(**request)

        s3.delete_object = delete_object
        return dataclasses.replace(vault, s3=s3)


def test_an_erasure_refused_midway_is_completed_by_running_it_again(spark, landing, warehouse):
    """A denial after the rows are gone (the PII key's deletion) fails the run; the player is
    already refused from then on, and the same request run again finds what is left: the key,
    their sealed PII (noted before the rows that lead to it went), and the audit."""
    raw = table_path(warehouse, RAW_TABLE)
    generated = events_on(CLOSED[0], 20, 7)
    ingest_objects(
        spark,
        warehouse,
        [land(landing.bucket, DELIVERED, played_by(PLAYER, generated[:5]) + generated[5:])],
        "ingest-run",
    )
    vault_resource = PiiVaultResource(bucket=f"{landing.bucket}-pii")
    vault = vault_resource.vault()
    vault.store(
        SEGMENT, {vault.player_id(PLAYER): [{"event_id": "e-1", "pii": {"email": "erase.me@example.com"}}]}
    )
    with dg.DagsterInstance.ephemeral() as instance:
        denied = {
            **resources(landing, warehouse),
            "pii_vault": KeyShreddingDenied(bucket=vault_resource.bucket),
        }
        refused = erase(vault.player_id(PLAYER), denied, instance, request_id="request-1")
        assert not refused.success
        assert device_rows(spark, raw, PLAYER) == 0
        assert vault.read(PLAYER, [SEGMENT])  # the key survived the denial...
        assert vault.erased().holds(PLAYER)  # ...but the player is refused already
        assert not is_delta_table(spark, table_path(warehouse, AUDIT_TABLE))
        # The rewritten landing object is ingested again meanwhile, as any object written
        # again is: nothing the tables or the landing bucket hold leads to the segment now.
        s3 = aws.client("s3")
        rewritten = s3.head_object(Bucket=landing.bucket, Key=DELIVERED)["ETag"].strip('"')
        ingest_objects(
            spark, warehouse, [LandedObject(landing.bucket, DELIVERED, rewritten)], "ingest-again-run"
        )

        retried = erase(
            vault.player_id(PLAYER),
            {**resources(landing, warehouse), "pii_vault": vault_resource},
            instance,
            request_id="request-1",
        )
        assert retried.success
    with pytest.raises(PlayerErased):
        vault.read(PLAYER, [SEGMENT])
    (audit,) = spark.read.format("delta").load(table_path(warehouse, AUDIT_TABLE)).collect()
    assert (audit.request_id, audit.pii_key_shredded, audit.pii_records_deleted) == ("request-1", True, 1)
    assert spark.read.format("delta").load(raw).count() == 15
