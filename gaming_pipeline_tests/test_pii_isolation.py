"""PII sent with events reaches no landing object, log, spool file or table in clear; it is
readable from the vault by the player's pseudonym, and not after their key is shredded."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.pii import PlayerErased
from gaming_pipeline.lib.s3_events import LandedObject
from gaming_pipeline.lib.tables import register_views
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


def test_pii_is_kept_apart_encrypted_and_erasable(spark, local_aws, landing, tmp_path, warehouse):
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

    # Everything the run wrote: landing objects (inflated), the vault's objects, the
    # service's home (spool, log, keys) and every file of the warehouse; and every row of
    # every table, as text.
    written: dict[str, bytes] = {}
    for bucket in (landing.bucket, service.pii_bucket):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                written[f"s3://{bucket}/{obj['Key']}"] = (
                    gzip.decompress(body) if obj["Key"].endswith(".gz") else body
                )
    for path in files_under(service.home) + files_under(Path(warehouse)):
        written[str(path)] = path.read_bytes()
    for table in register_views(spark, warehouse):
        rows = spark.table(table).select(F.to_json(F.struct("*")).alias("row")).collect()
        written[f"table {table}"] = "\n".join(row.row for row in rows).encode()
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
    held = vault.read(erased)
    assert sorted(r["event_id"] for r in held) == sorted(
        f"{erased}-{kind}-{n}" for kind in ("start", "buy") for n in range(2)
    )
    assert all(r["pii"] == players[erased] for r in held)
    assert vault.shred(vault.player_id(erased))["key_shredded"]
    with pytest.raises(PlayerErased):
        vault.read(erased)
    assert [r["pii"] for r in vault.read(kept)] == [players[kept]] * 4
