"""PII sent with events reaches no landing object, log, spool file or table in clear; it is
readable from the vault by the player's pseudonym. Once the player is erased (by pseudonym)
and the tables vacuumed, their device id is nowhere: not in landing objects, the quarantine,
table files, Delta logs and checkpoints, the spool, or Dagster's run storage; what the spool
held of them is dropped and what they send after is refused."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from gaming_pipeline.defs.ingest.assets import objects_in_bucket
from gaming_pipeline.defs.resources import LandingBucketResource, PiiVaultResource
from gaming_pipeline.ingest_service.schema import ERASED_PLAYER
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.pii import PlayerErased
from gaming_pipeline.lib.s3_events import LandedObject
from gaming_pipeline.lib.tables import RAW_TABLE, all_tables, register_views
from gaming_pipeline.lib.warehouse import is_delta_table, table_path
from gaming_pipeline_tests.ingest_helpers import erase, resources
from gaming_pipeline_tests.service_helpers import IngestService, landed


def pii_of(player: int) -> dict[str, str]:
    marker = uuid.uuid4().hex[:12]
    return {
        "email": f"pii-{marker}@example.com",
        "name": f"Name{marker}",
        "ip_address": f"198.51.{player}.{int(marker[:2], 16)}",
        "advertising_id": str(uuid.uuid4()),
    }


def session(device: str, pii: dict, n: int) -> list[dict]:
    params = {"game_keyword": "word_wizard", "device_id": device, "client_event_time": "2026-11-23T09:00:00Z"}
    return [
        {"event_id": f"{device}-start-{n}", "eventName": "gameStart", "eventParams": params, "pii": pii},
        {"event_id": f"{device}-level-{n}", "eventName": "levelUp", "eventParams": params},
        {
            "event_id": f"{device}-buy-{n}",
            "eventName": "purchaseEvent",
            "eventParams": {**params, "amount": 1.99},
            "pii": pii,
        },
    ]


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def _as_stored(path: Path) -> bytes:
    """A file's bytes, a Parquet file's (a table's data, a Delta checkpoint) as the values it
    holds: compressed, its bytes could hide them."""
    if path.suffix != ".parquet":
        return path.read_bytes()
    return str(pq.read_table(path).to_pylist()).encode()


def stored_everywhere(spark, warehouse: str, buckets: list[str], home: Path) -> dict[str, bytes]:
    """Everything stored: the buckets' objects (inflated), the service's home (spool, log,
    keys), every file of the warehouse, and every row of every table, as text."""
    s3 = aws.client("s3")
    stored: dict[str, bytes] = {}
    for bucket in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                stored[f"s3://{bucket}/{obj['Key']}"] = (
                    gzip.decompress(body) if obj["Key"].endswith(".gz") else body
                )
    for path in files_under(home) + files_under(Path(warehouse)):
        stored[str(path)] = _as_stored(path)
    for table in register_views(spark, warehouse):
        rows = spark.table(table).select(F.to_json(F.struct("*")).alias("row")).collect()
        stored[f"table {table}"] = "\n".join(row.row for row in rows).encode()
    return stored


def vacuum_to_current_files(spark, warehouse: str) -> None:
    """VACUUM every table down to its current files, past the rollback window a real VACUUM
    keeps: what an erasure leaves once that window has passed."""
    key = "spark.databricks.delta.retentionDurationCheck.enabled"
    spark.conf.set(key, "false")
    try:
        for table in all_tables():
            path = table_path(warehouse, table)
            if is_delta_table(spark, path):
                spark.sql(f"VACUUM delta.`{path}` RETAIN 0 HOURS").collect()
    finally:
        spark.conf.unset(key)


@pytest.fixture
def checkpoint_often(spark):
    """Tables made meanwhile write a Delta checkpoint every other commit, so that there are
    checkpoints to scan."""
    key = "spark.databricks.delta.properties.defaults.checkpointInterval"
    spark.conf.set(key, "2")
    yield
    spark.conf.unset(key)


def test_pii_is_kept_apart_encrypted_and_erasable(
    spark, local_aws, landing, tmp_path, warehouse, checkpoint_often, session_home
):
    # Held in the spool until the service stops, so the spool is scanned with everything in it.
    service = IngestService(tmp_path / "home", landing.bucket, options=["--flush-seconds", "3600"]).start()
    _, key = service.new_key()
    players = {f"d-pii-{n}": pii_of(n) for n in range(3)}
    sender = service.sender(key)
    for n in range(2):
        for device, pii in players.items():
            # A rejected event that carries PII must not leak it either (an unknown field).
            bad = {**session(device, pii, n)[1], "event_id": f"{device}-bad-{n}", "pii": pii, "extra": 1}
            answer = sender.send([*session(device, pii, n), bad])
            assert (answer["accepted"], answer["rejected"]) == (3, 1)
    spooled = b"".join(path.read_bytes() for path in files_under(service.home / "spool"))
    assert b"d-pii-0-buy-1" in spooled  # what the spool holds in clear, the scan sees
    for pii in players.values():
        assert not any(value.encode() in spooled for value in pii.values())
    service.stop()

    objects = landed(landing.bucket)
    assert sum(len(events) for events in objects.values()) == 18
    s3 = aws.client("s3")
    landed_objects = [
        LandedObject(landing.bucket, k, s3.head_object(Bucket=landing.bucket, Key=k)["ETag"].strip('"'))
        for k in objects
    ]
    ingest_objects(spark, warehouse, landed_objects, "pii-run")

    written = stored_everywhere(spark, warehouse, [landing.bucket, service.pii_bucket], service.home)
    assert any(name.startswith("table mobile_events_delta_raw") for name in written)
    assert len(written) > 20
    for pii in players.values():
        for value in pii.values():
            leaks = [name for name, data in written.items() if value.encode() in data]
            assert leaks == [], f"{value!r} found in clear in {leaks}"

    raw = spark.table("mobile_events_delta_raw")
    assert raw.count() == 18 and raw.where("eventParams.client_event_time is null").count() == 0
    assert spark.table("quarantine_events").count() == 0

    vault = service.vault()
    erased, kept, _ = players
    held = service.read_pii(erased)
    assert sorted(r["event_id"] for r in held) == sorted(
        f"{erased}-{kind}-{n}" for kind in ("start", "buy") for n in range(2)
    )
    assert all(r["pii"] == players[erased] for r in held)

    # The player sends more, held in the spool while they are erased; and a line of theirs
    # that does not parse waits on the queue, never ingested.
    service.start(same_port=True)
    answer = sender.send(session(erased, players[erased], 2))
    assert answer["accepted"] == 3
    waiting = f'{{"eventName": "levelUp", "eventParams": {{"device_id": "{erased}"'
    s3.put_object(Bucket=landing.bucket, Key="events/waiting.ndjson", Body=waiting.encode() + b"\n")
    resources_ = {
        **resources(landing, warehouse),
        "pii_vault": PiiVaultResource(bucket=service.pii_bucket),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        result = erase(vault.player_id(erased), resources_, instance)
        assert result.success
        # What the spool held of them is dropped at delivery; what they send now is refused.
        service.stop()
        service.start(same_port=True)
        answer = sender.send(session(erased, players[erased], 3) + session(kept, players[kept], 3))
        assert answer["accepted"] == 3
        assert {error["reason"] for error in answer["errors"]} == {ERASED_PLAYER}
        service.stop()
        # Everything landed by now is ingested, then every table vacuumed to its current files.
        ingest_objects(
            spark, warehouse, objects_in_bucket(LandingBucketResource(bucket=landing.bucket)), "late-run"
        )
        vacuum_to_current_files(spark, warehouse)

        with pytest.raises(PlayerErased):
            service.read_pii(erased)
        assert [r["pii"] for r in service.read_pii(kept)] == [players[kept]] * 6
        raw = spark.read.format("delta").load(table_path(warehouse, RAW_TABLE))
        assert raw.where(F.col("eventParams.device_id") == kept).count() == 9
        # Not one copy of the device id: landing objects, every file of the warehouse (Delta
        # logs and checkpoints read as what they hold), every table's rows, the service's
        # home, and Dagster's run storage (run config and event logs).
        held_now = stored_everywhere(spark, warehouse, [landing.bucket, service.pii_bucket], service.home)
        # The Spark server's log (the test run's own, when the tests attach to one).
        for path in files_under(session_home / "logs"):
            held_now[str(path)] = path.read_bytes()
        runs = instance.get_runs()
        held_now["dagster runs"] = str([(run.run_config, run.tags) for run in runs]).encode()
        held_now["dagster event logs"] = str([instance.all_logs(run.run_id) for run in runs]).encode()
        assert len(held_now) > 20
        assert any(name.endswith(".checkpoint.parquet") for name in held_now)
        leaks = [name for name, data in held_now.items() if erased.encode() in data]
        assert leaks == [], f"{erased!r} still in {leaks}"
        # Their sealed PII is gone from the segments they shared with the others, not only
        # unreadable: the vault names them (by pseudonym) on the erased-players list alone.
        pseudonym, in_vault = vault.player_id(erased), f"s3://{service.pii_bucket}/"
        named = [
            name
            for name, data in held_now.items()
            if name.startswith(in_vault) and (pseudonym in name or pseudonym.encode() in data)
        ]
        assert named == [f"{in_vault}pii/erased/{pseudonym}"]
