"""The rules table care follows, as pure logic: which days the daily pass takes, which VACUUM
retentions are allowed, which rollbacks are refused; and the PII vault on the local S3."""

import base64
import gzip
import io
import json
import uuid
from collections import Counter
from datetime import date

import pytest
from botocore.exceptions import ClientError

from gaming_pipeline.ingest_service.delivery import Delivery, pii_batches
from gaming_pipeline.ingest_service.spool import Record
from gaming_pipeline.lib import aws, erasure, maintenance
from gaming_pipeline.lib.pii import (
    DATA_KEY_CONTEXT,
    KmsKeys,
    LocalKeys,
    PiiVault,
    PlayerErased,
    new_master_key,
    seal_to,
)
from gaming_pipeline.lib.s3_events import ingest_segments

TODAY = date(2026, 11, 23)
D1, D2, D3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)


def test_daily_plan_takes_closed_days_and_keeps_open_ones_for_later():
    assert maintenance.daily_plan({D1, TODAY}, set(), TODAY) == ({D1}, {TODAY})
    # Yesterday was open at the last pass and has closed since: it is due now.
    assert maintenance.daily_plan(set(), {D3}, TODAY) == ({D3}, set())
    assert maintenance.daily_plan(set(), set(), TODAY) == (set(), set())
    # Without a usable last pass: every closed day, and the open ones still remembered.
    assert maintenance.daily_plan(None, {TODAY}, TODAY) == (None, {TODAY})


def test_vacuum_retention_is_a_week_unless_forced_and_never_inside_the_rollback_window():
    assert maintenance.retention_hours(168) == 168
    assert maintenance.retention_hours(500) == 500
    with pytest.raises(maintenance.RetentionRefused, match="needs force_reason"):
        maintenance.retention_hours(100)
    with pytest.raises(maintenance.RetentionRefused, match="needs force_reason"):
        maintenance.retention_hours(100, "   ")
    assert maintenance.retention_hours(100, "storage budget") == 100
    assert (
        maintenance.retention_hours(maintenance.ROLLBACK_WINDOW_HOURS, "x")
        == maintenance.ROLLBACK_WINDOW_HOURS
    )
    with pytest.raises(maintenance.RetentionRefused, match="rollback for 72 h"):
        maintenance.retention_hours(71.9, "disk full")


def commit(version: int, operation: str = "WRITE", run_id: str = "", erasure: str = "") -> dict:
    return {"version": version, "timestamp": "", "operation": operation, "run_id": run_id, "erasure": erasure}


def test_rollback_refuses_to_bring_erased_rows_back_or_undo_other_runs_unasked():
    maintenance.check_rollback([commit(5, run_id="bad"), commit(6, "OPTIMIZE")], run_id="bad")
    with pytest.raises(maintenance.RollbackRefused, match=r"versions \[7\]"):
        maintenance.check_rollback([commit(5, run_id="bad"), commit(7, run_id="later")], run_id="bad")
    maintenance.check_rollback(
        [commit(5, run_id="bad"), commit(7, run_id="later")], "bad", undo_later_commits=True
    )
    # A table restored to a chosen version undoes what follows it: that is the request.
    maintenance.check_rollback([commit(5, run_id="a"), commit(6, run_id="b")])
    with pytest.raises(maintenance.RollbackRefused, match="erasure"):
        maintenance.check_rollback(
            [commit(8, "DELETE", run_id="e", erasure="req-1")], undo_later_commits=True
        )


def vault_objects(s3, bucket: str) -> dict[str, bytes]:
    return {
        obj["Key"]: s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    }


def test_vault_keeps_pii_per_player_and_shredding_a_key_makes_it_unreadable(local_aws):
    s3 = aws.client("s3")
    aws.ensure_bucket(s3, "pii-rules")
    vault = PiiVault(s3, "pii-rules", LocalKeys(new_master_key()))
    player = vault.player_id("d-1")
    segments = ["segment-1", "segment-2"]
    vault.store(
        "segment-1",
        {player: [{"email": "a@example.com"}], vault.player_id("d-2"): [{"email": "b@example.com"}]},
    )
    vault.store("segment-2", {player: [{"email": "a2@example.com"}]})
    assert player != vault.player_id("d-2")
    assert "d-1" not in player and len(player) == 64
    # Another master key names the same device differently and cannot read its records.
    stranger = PiiVault(s3, "pii-rules", LocalKeys(new_master_key()))
    assert stranger.player_id("d-1") != player
    with pytest.raises(PlayerErased):
        stranger.read("d-1", segments)
    assert sorted(r["email"] for r in vault.read("d-1", segments)) == ["a2@example.com", "a@example.com"]
    assert b"example.com" not in b"".join(vault_objects(s3, "pii-rules").values())

    vault.note_segments(player, segments)
    shredded = vault.shred(player)
    assert (shredded.key_shredded, shredded.records_deleted) == (True, 2)
    with pytest.raises(PlayerErased):
        vault.read("d-1", segments)
    assert vault.read("d-2", segments) == [{"email": "b@example.com"}]
    again = vault.shred(player)
    assert (again.key_shredded, again.records_deleted) == (False, 0)
    # An erased player's PII that still arrives (from a spool, or sent since) is dropped,
    # never given a new key.
    vault.store("late", {player: [{"email": "late@example.com"}]})
    with pytest.raises(PlayerErased):
        vault.read("d-1", [*segments, "late"])
    # Nothing but the erased-players list names them: no key, no record, in no object.
    assert [
        key
        for key, body in vault_objects(s3, "pii-rules").items()
        if player.encode() in body or player in key
    ] == [f"pii/erased/{player}"]


def client_request(vault: PiiVault, devices: list[str]) -> Record:
    """A request the ingest service accepted: an event of each device, each with its PII."""
    lines = [
        json.dumps(
            {"event_id": f"e-{device}", "eventName": "gameStart", "eventParams": {"device_id": device}}
        )
        for device in devices
    ]
    pii = [
        (
            vault.player_id(device),
            f"e-{device}",
            vault.seal_pending(vault.player_id(device), {"email": f"{device}@x.y"}),
        )
        for device in devices
    ]
    return Record(1_795_420_800_000, "".join(line + "\n" for line in lines).encode(), b"", pii, [])


@pytest.fixture
def delivered(local_aws):
    """A landing bucket, a vault beside it, and a delivery writing to both."""
    s3 = aws.client("s3")
    suffix = uuid.uuid4().hex[:8]
    landing, pii_bucket = f"landing-{suffix}", f"pii-{suffix}"
    for bucket in (landing, pii_bucket):
        aws.ensure_bucket(s3, bucket)
    vault = PiiVault(s3, pii_bucket, LocalKeys(new_master_key()))
    return s3, landing, vault, Delivery(s3, landing, vault, "spool-1")


def segments_of_landed(s3, landing: str) -> list[str]:
    """The vault's segments, found as erasure and export find them: through landing objects."""
    listed = s3.list_objects_v2(Bucket=landing).get("Contents", [])
    return ingest_segments((landing, obj["Key"]) for obj in listed)


DEVICES = [f"d-{n}" for n in range(5)]


def test_a_segments_pii_is_one_vault_object_whatever_its_players_and_a_retry_replaces_it(delivered):
    s3, landing, vault, delivery = delivered
    assert (
        delivery(
            "segment-1", [client_request(vault, DEVICES[:3]), client_request(vault, DEVICES[3:])]
        ).players
        == 5
    )
    stored = vault_objects(s3, vault.bucket)
    # One PUT for the segment's PII, and one for each new player's key (a player's by nature).
    assert sorted(key for key in stored if not key.startswith("pii/keys/")) == [
        "pii/segments/ingest-spool-1-segment-1"
    ]
    assert len([key for key in stored if key.startswith("pii/keys/")]) == 5
    assert not any(device.encode() in body for device in DEVICES for body in stored.values())
    # Delivered again (a crash before the spool let go of it): the same object, replaced.
    delivery("segment-1", [client_request(vault, DEVICES[:3]), client_request(vault, DEVICES[3:])])
    assert vault_objects(s3, vault.bucket).keys() == stored.keys()
    segments = segments_of_landed(s3, landing)
    assert segments == ["ingest-spool-1-segment-1"]
    for device in DEVICES:
        assert vault.read(device, segments) == [
            {
                "event_id": f"e-{device}",
                "received_at": "2026-11-23T08:00:00.000+00:00",
                "pii": {"email": f"{device}@x.y"},
            }
        ]


def test_a_returning_players_pii_costs_no_request_for_their_key(delivered):
    """The vault's requests follow the segments: the players' keys are looked up once."""
    s3, _, vault, delivery = delivered
    delivery("segment-1", [client_request(vault, DEVICES)])
    requests = Counter()
    s3.meta.events.register("before-call.s3", lambda model, **_: requests.update([model.name]))
    delivery("segment-2", [client_request(vault, DEVICES)])
    # The erased-players list, the segment's PII and its one landing object.
    assert requests == {"ListObjectsV2": 1, "PutObject": 2}


def test_erasing_one_player_of_a_shared_segment_takes_out_theirs_alone(delivered):
    s3, landing, vault, delivery = delivered
    delivery("segment-1", [client_request(vault, DEVICES[:3])])
    delivery("segment-2", [client_request(vault, DEVICES[:1])])
    segments = segments_of_landed(s3, landing)
    erased, *kept = DEVICES[:3]
    player = vault.player_id(erased)
    vault.mark_erased(player)
    vault.note_segments(player, segments)
    shredded = vault.shred(player)
    assert (shredded.key_shredded, shredded.records_deleted) == (True, 2)
    # segment-1 holds the others still; segment-2 held the erased player alone.
    assert (shredded.segments_rewritten, shredded.segments_deleted, shredded.player_objects_deleted) == (
        1,
        1,
        0,
    )
    assert not shredded.versioned
    with pytest.raises(PlayerErased):
        vault.read(erased, segments)
    for device in kept:
        assert [r["pii"] for r in vault.read(device, segments)] == [{"email": f"{device}@x.y"}]
    held = vault_objects(s3, vault.bucket)
    assert [key for key in held if key.startswith("pii/segments/")] == [
        "pii/segments/ingest-spool-1-segment-1"
    ]
    assert [key for key, body in held.items() if player.encode() in body or player in key] == [
        f"pii/erased/{player}"
    ]
    # The last player of a segment erased, its object goes.
    for device in kept:
        vault.note_segments(vault.player_id(device), segments)
        vault.shred(vault.player_id(device))
    assert not [key for key in vault_objects(s3, vault.bucket) if key.startswith("pii/segments/")]


def test_a_segment_delivered_again_after_its_player_was_erased_keeps_nothing_of_theirs(delivered):
    """Its PII reached the vault, then the service died before its landing objects: no table
    or landing object leads an erasure to it. The delivery after the restart drops the
    erased player and replaces the object, though no player is left in it."""
    s3, landing, vault, delivery = delivered
    request = client_request(vault, DEVICES[:1])
    vault.store("ingest-spool-1-segment-1", pii_batches(vault, [request]))
    player = vault.player_id(DEVICES[0])
    vault.mark_erased(player)
    assert vault.shred(player).records_deleted == 0
    delivery("segment-1", [request])
    assert vault_objects(s3, vault.bucket)["pii/segments/ingest-spool-1-segment-1"] == b""


def test_records_of_the_per_player_layout_are_still_read_and_erased(delivered):
    """A vault the earlier code wrote: an object a player and segment, found by listing the
    player's prefix. A segment that code delivered and this code delivered again (a crash
    between delivery and letting go of the segment, then the upgrade) is read once."""
    s3, landing, vault, delivery = delivered
    device = DEVICES[0]
    player = vault.player_id(device)
    delivery("segment-2", [client_request(vault, [device])])
    public = base64.b64decode(json.loads(vault_objects(s3, vault.bucket)[f"pii/keys/{player}"])["public"])
    (new_layout,) = vault.read(device, ["ingest-spool-1-segment-2"])
    earlier = {
        "event_id": "e-earlier",
        "received_at": "2026-11-22T08:00:00.000+00:00",
        "pii": {"email": "old@x.y"},
    }
    for segment, records in (
        ("ingest-spool-1-segment-1", [earlier]),
        ("ingest-spool-1-segment-2", [new_layout]),
    ):
        s3.put_object(
            Bucket=vault.bucket,
            Key=f"pii/records/{player}/{segment}",
            Body=seal_to(public, json.dumps(records).encode(), player.encode()),
        )
    segments = segments_of_landed(s3, landing)
    assert vault.read(device, segments) == [earlier, new_layout]
    vault.note_segments(player, segments)
    shredded = vault.shred(player)
    assert (shredded.records_deleted, shredded.player_objects_deleted, shredded.segments_deleted) == (3, 2, 1)
    with pytest.raises(PlayerErased):
        vault.read(device, segments)
    assert [key for key in vault_objects(s3, vault.bucket) if player in key] == [f"pii/erased/{player}"]


def test_kms_vault_records_stay_readable_after_the_key_is_rotated(local_aws):
    """Records sealed before a rotation open after it: KMS keeps a rotated key's earlier
    material, and a manual rotation (the alias moved to a new key) leaves the old key to
    open what it made."""
    s3, kms = aws.client("s3"), aws.client("kms")
    aws.ensure_bucket(s3, "pii-rotation")
    alias, mac_alias = "alias/pii-rotation-test", "alias/pii-rotation-test-mac"
    first_key = aws.provision_pii_keys(kms, alias, mac_alias)[alias]
    before = PiiVault(s3, "pii-rotation", KmsKeys(kms, alias, mac_alias))
    before.store("segment-1", {before.player_id("d-1"): [{"email": "a@example.com"}]})
    kms.rotate_key_on_demand(KeyId=first_key)
    new_key = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    kms.update_alias(AliasName=alias, TargetKeyId=new_key)
    after = PiiVault(s3, "pii-rotation", KmsKeys(kms, alias, mac_alias))
    after.store("segment-2", {after.player_id("d-2"): [{"email": "b@example.com"}]})
    # The pseudonyms stay: the MAC key is not rotated.
    assert after.player_id("d-1") == before.player_id("d-1")
    assert after.read("d-1", ["segment-1"]) == [{"email": "a@example.com"}]
    assert after.read("d-2", ["segment-2"]) == [{"email": "b@example.com"}]
    # A key object holds the public key and the private key sealed, its data key wrapped by KMS.
    held = json.loads(
        s3.get_object(Bucket="pii-rotation", Key=f"pii/keys/{after.player_id('d-2')}")["Body"].read()
    )
    assert set(held) == {"public", "data_key", "private"}
    assert kms.decrypt(CiphertextBlob=base64.b64decode(held["data_key"]), EncryptionContext=DATA_KEY_CONTEXT)[
        "KeyId"
    ].endswith(new_key)


class ChangingBucket:
    """An S3 client holding objects in memory whose conditional writes fail, as S3's do, when
    the object changed since it was read; `change_once` changes one object right after the
    first read of it (another writer's upload)."""

    class exceptions:
        class NoSuchKey(Exception):
            pass

    def __init__(
        self,
        objects: dict[str, bytes],
        change_once: dict[str, bytes] | None = None,
        metadata: dict[str, dict] | None = None,
    ):
        self.objects = dict(objects)
        self.change_once = dict(change_once or {})
        self.metadata = dict(metadata or {})
        self.puts: list[str] = []

    def _etag(self, key: str) -> str:
        return f'"{hash(self.objects[key])}"'

    def get_object(self, Bucket, Key):
        if Key not in self.objects:
            raise self.exceptions.NoSuchKey()
        got = {
            "Body": io.BytesIO(self.objects[Key]),
            "ETag": self._etag(Key),
            "Metadata": self.metadata.get(Key, {}),
        }
        if Key in self.change_once:
            self.objects[Key] = self.change_once.pop(Key)
        return got

    def _precondition(self, key: str, etag: str) -> None:
        if self._etag(key) != etag:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")

    def put_object(self, Bucket, Key, Body, ContentType, Metadata, IfMatch):
        self._precondition(Key, IfMatch)
        self.objects[Key] = Body
        self.metadata[Key] = Metadata
        self.puts.append(Key)

    def delete_object(self, Bucket, Key, IfMatch):
        self._precondition(Key, IfMatch)
        del self.objects[Key]

    def get_bucket_versioning(self, Bucket):
        return {}


def ndjson(*devices: str) -> bytes:
    return b"".join(json.dumps({"eventParams": {"device_id": d}}).encode() + b"\n" for d in devices)


def test_erasure_takes_a_players_lines_out_of_landing_objects_and_never_overwrites_a_newer_upload():
    player = "d-7\u00e9"  # non-ASCII: found however the encoder wrote it
    escaped = ndjson(player)
    unescaped = json.dumps({"eventParams": {"device_id": player}}, ensure_ascii=False).encode() + b"\n"
    bucket = ChangingBucket(
        {
            "a.ndjson.gz": gzip.compress(ndjson("d-1", player, "d-7\u00e90") + unescaped),
            # Lines that do not parse: the id as a whole word counts, inside a longer one not.
            "b.ndjson": escaped + f"{player},levelUp\n{player}0,levelUp\n".encode(),
            "c.ndjson": f'{{"eventParams": {{"device_id": x-{player}}}\n{player}\n'.encode(),
            "only-them.ndjson": escaped,
            "untouched.ndjson": ndjson("d-2"),
        },
        # Someone uploads b again between the erasure's read and its write.
        change_once={"b.ndjson": ndjson("d-3", player)},
        # What a Kinesis read's object says of itself, which erasure needs again later.
        metadata={"a.ndjson.gz": {"ingest-segments": "ingest-0a1b2c3d-00000000000000042"}},
    )
    keys = ["a.ndjson.gz", "b.ndjson", "c.ndjson", "only-them.ndjson", "untouched.ndjson", "gone.ndjson"]
    (erased,) = erasure.erase_from_objects(bucket, [("landing", key) for key in keys], player)
    assert gzip.decompress(bucket.objects["a.ndjson.gz"]) == ndjson("d-1", "d-7\u00e90")
    assert bucket.metadata["a.ndjson.gz"] == {"ingest-segments": "ingest-0a1b2c3d-00000000000000042"}
    # The newer upload is read again and cleaned; its other lines stay.
    assert bucket.objects["b.ndjson"] == ndjson("d-3")
    assert bucket.objects["c.ndjson"] == f'{{"eventParams": {{"device_id": x-{player}}}\n'.encode()
    assert "only-them.ndjson" not in bucket.objects
    assert bucket.objects["untouched.ndjson"] == ndjson("d-2")
    assert sorted(bucket.puts) == ["a.ndjson.gz", "b.ndjson", "c.ndjson"]
    assert (erased.lines_removed, erased.objects_rewritten, erased.objects_deleted) == (5, 3, 1)
