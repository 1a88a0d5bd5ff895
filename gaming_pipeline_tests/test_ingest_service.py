"""The ingest service as a game client meets it: a real process over HTTP, landing objects in
the local S3 (CONTRACT.md sections 2 and 3)."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from datetime import UTC, datetime

import msgspec

from gaming_pipeline.cli import main
from gaming_pipeline.ingest_service import keys
from gaming_pipeline.lib import aws, erasure
from gaming_pipeline.lib.kinesis import KinesisSource, Positions
from gaming_pipeline.local import generator, ports
from gaming_pipeline_tests.service_helpers import IngestService, event, landed, wait_until


def test_every_answer_of_the_contract(service):
    _, key = service.new_key()
    one = msgspec.json.encode(event(1))

    assert service.post(one, None)[0] == 401
    assert service.post(one, "gpk_not-a-key")[0] == 401
    status, answer = service.post(one, key, content_type="text/plain")
    assert status == 415 and "application/json" in answer["error"]
    status, answer = service.post(b'{"eventName": ', key)
    assert status == 400 and answer["error"].startswith("the body is not JSON")
    assert service.post(b"nope\nnot json either\n", key, "application/x-ndjson")[0] == 400
    huge = msgspec.json.encode([event(n) for n in range(20_000)])
    assert len(huge) > 4 * 1024 * 1024
    status, answer = service.post(huge, key)
    assert status == 413 and "4,194,304" in answer["error"]
    # A small gzip body that inflates past the limit is refused as well.
    bomb = gzip.compress(b"[" + b" " * (5 * 1024 * 1024) + b"]")
    assert service.post(bomb, key, **{"content-encoding": "gzip"})[0] == 413
    # Two gzip members, or one cut short, would be read in part: refused whole.
    two_members = gzip.compress(one) + gzip.compress(one)
    assert service.post(two_members, key, **{"content-encoding": "gzip"})[0] == 400
    assert service.post(gzip.compress(one)[:-6], key, **{"content-encoding": "gzip"})[0] == 400
    assert service.post(one, key, **{"content-encoding": "br"})[0] == 415

    assert service.post(one, key) == (
        202,
        {
            "accepted": 1,
            "rejected": 0,
            "duplicates": 0,
            "unknown_game": 0,
            "errors": [],
            "duplicate_events": [],
        },
    )
    array = msgspec.json.encode([event(2), event(3)])
    assert service.post(array, key)[1]["accepted"] == 2
    ndjson = b"\n".join(msgspec.json.encode(event(n)) for n in (4, 5, 6)) + b"\n"
    assert service.post(ndjson, key, "application/x-ndjson")[1]["accepted"] == 3
    gzipped = gzip.compress(msgspec.json.encode(event(7)))
    assert service.post(gzipped, key, **{"content-encoding": "gzip"})[1]["accepted"] == 1

    status, health = service.get("/healthz")
    assert status == 200 and json.loads(health)["status"] == "ok"
    assert service.metric('ingest_events_accepted_total{destination="landing"}') == 7
    assert service.metric('ingest_requests_total{status="401"}') == 2


def test_bad_events_are_turned_away_one_by_one_with_their_reason(service):
    _, key = service.new_key()
    batch = [
        event(10),
        event(11, params={"device_id": None}),
        {"eventName": "levelUp", "eventParams": {"game_keyword": "ninja_run"}},
        event(13, eventName="purchaseEvent"),
        event(14, params={"amount": 1.99}),
        event(15, eventName="purchaseEvent", params={"amount": -1}),
        event(16, params={"scoreAdjustment": "many"}),
        event(17, params={"client_event_time": "yesterday"}),
        event(18, params={"favourite_colour": "blue"}),
        "just a string",
        event(20, eventName="purchaseEvent", params={"amount": 4.99}),
        event(21, params={"game_keyword": "not_in_the_registry"}),
    ]
    status, answer = service.post(msgspec.json.encode(batch), key)
    assert status == 202
    assert (answer["accepted"], answer["rejected"], answer["unknown_game"]) == (3, 9, 1)
    reasons = {error["index"]: error["reason"] for error in answer["errors"]}
    assert reasons == {
        1: "Expected `str`, got `null` - at `$.eventParams.device_id`",
        2: "Object missing required field `device_id` - at `$.eventParams`",
        3: "a purchaseEvent needs eventParams.amount",
        4: "eventParams.amount is for purchaseEvent only, not levelUp",
        5: "Expected `float` >= 0.0 - at `$.eventParams.amount`",
        6: "Expected `int | null`, got `str` - at `$.eventParams.scoreAdjustment`",
        7: reasons[7],
        8: "eventParams favourite_colour: not declared for levelUp in the game's catalog",
        9: "Expected `object`, got `str`",
    }
    assert "client_event_time" in reasons[7] and "regex" in reasons[7]
    assert service.metric('ingest_events_rejected_total{reason="purchase_rule"}') == 2
    assert service.metric('ingest_events_rejected_total{reason="out_of_range"}') == 2
    assert service.metric('ingest_events_accepted_total{destination="unknown_game"}') == 1


def test_a_client_event_id_is_taken_once_within_the_window(service):
    _, key = service.new_key()
    assert service.post(msgspec.json.encode([event(1), event(2)]), key)[1]["accepted"] == 2
    status, answer = service.post(msgspec.json.encode([event(2), event(3), event(3)]), key)
    assert status == 202
    assert answer["accepted"] == 1
    assert answer["duplicate_events"] == [
        {"index": 0, "event_id": "evt-2"},
        {"index": 2, "event_id": "evt-3"},
    ]
    # Events without an id are each new: the service gives them one.
    anonymous = {k: v for k, v in event(4).items() if k != "event_id"}
    assert service.post(msgspec.json.encode([anonymous, anonymous]), key)[1]["accepted"] == 2

    objects = wait_until(lambda: landed(service.bucket), what="landing objects")
    ids = [e["event_id"] for events in objects.values() for e in events]
    assert sorted(ids[:3]) == ["evt-1", "evt-2", "evt-3"] and len(ids) == 5 and len(set(ids)) == 5


def test_the_duplicate_window_is_per_app(service):
    _, galaxy = service.new_key("galaxy-client")
    _, ninja = service.new_key("ninja-client")
    purchase = msgspec.json.encode(event(1, eventName="purchaseEvent", params={"amount": 0.99}))
    assert service.post(purchase, galaxy)[1]["accepted"] == 1
    assert service.post(purchase, ninja)[1]["accepted"] == 1
    assert service.post(purchase, ninja)[1]["duplicates"] == 1
    # A second key of the same app shares its window.
    _, galaxy_again = service.new_key("galaxy-client")
    assert service.post(purchase, galaxy_again)[1]["duplicates"] == 1


def test_keys_rotate_without_a_restart(service):
    old_id, old = service.new_key("galaxy-client")
    assert service.post(msgspec.json.encode(event(1)), old)[0] == 202
    _, new = service.new_key("galaxy-client")
    wait_until(lambda: service.post(msgspec.json.encode(event(2)), new)[0] == 202, 5, what="the new key")
    assert service.post(msgspec.json.encode(event(3)), old)[0] == 202
    keys.revoke(service.home / "api-keys.json", old_id)
    wait_until(lambda: service.post(msgspec.json.encode(event(4)), old)[0] == 401, 5, what="the revocation")
    assert service.post(msgspec.json.encode(event(5)), new)[0] == 202
    stored = (service.home / "api-keys.json").read_text()
    assert new not in stored and keys.hashed(new) in stored
    # The service logs who called by app and key id, never the key.
    assert "galaxy-client" in service.log.read_text() and new not in service.log.read_text()


def test_landing_objects_are_stamped_gzip_ndjson_by_hour_without_pii(service):
    _, key = service.new_key()
    before = time.time()
    sent = [
        event(1, pii={"email": "someone@example.com"}),
        event(2, params={"game_keyword": "new_game_2027"}),
    ]
    sent.append({k: v for k, v in event(3).items() if k != "event_id"} | {"eventTime": 1})
    assert service.post(msgspec.json.encode(sent), key)[1]["accepted"] == 3
    objects = wait_until(
        lambda: len(landed(service.bucket)) == 2 and landed(service.bucket), what="2 objects"
    )
    after = time.time()
    (events_key,) = [k for k in objects if k.startswith("events/")]
    (parked_key,) = [k for k in objects if k.startswith("unknown-games/")]
    hour = datetime.fromtimestamp(before, UTC).strftime("%Y/%m/%d/%H")
    assert events_key.startswith(f"events/{hour}/ingest-") and events_key.endswith(".ndjson.gz")
    first, third = objects[events_key]
    assert first["event_id"] == "evt-1" and "pii" not in first
    assert before * 1000 - 1 <= first["eventTime"] <= after * 1000
    # The client's eventTime is replaced by the time of receipt; its own time is kept.
    assert third["eventTime"] == first["eventTime"] and len(third["event_id"]) == 32
    assert first["eventParams"]["client_event_time"] == "2026-11-23T08:15:02.123Z"
    assert [e["eventParams"]["game_keyword"] for e in objects[parked_key]] == ["new_game_2027"]


def test_a_full_spool_answers_503_holds_everything_and_delivers_once_s3_is_back(local_aws, landing, tmp_path):
    dead_endpoint = f"http://127.0.0.1:{ports.free_port()}"
    cut_off = IngestService(
        tmp_path / "home",
        landing.bucket,
        options=["--flush-seconds", "0.2", "--spool-max-bytes", "20000", "--max-body-bytes", "4000"],
        environ={"AWS_ENDPOINT_URL": dead_endpoint},
    ).start()
    _, key = cut_off.new_key()
    accepted, statuses, n = [], [], 0
    while 503 not in statuses:
        batch = [event(n + i) for i in range(5)]
        status, answer = cut_off.post(msgspec.json.encode(batch), key)
        statuses.append(status)
        if status == 202:
            accepted += [e["event_id"] for e in batch]
        n += 5
        assert n < 2000, "the spool never filled"
    assert set(statuses) == {202, 503} and statuses[-1] == 503
    status, health = cut_off.get("/healthz")
    assert (status, json.loads(health)) == (503, {"status": "full"})
    wait_until(lambda: cut_off.metric("ingest_delivery_failing") == 1, what="a failure")
    cut_off.stop()  # stopping cannot deliver either: the spool keeps it all

    back = IngestService(cut_off.home, landing.bucket, master_key=cut_off.master_key).start()
    try:
        objects = wait_until(lambda: landed(landing.bucket), what="the held events")
        ids = [e["event_id"] for events in objects.values() for e in events]
        assert sorted(ids) == sorted(accepted)
        assert back.get("/healthz")[0] == 200
    finally:
        back.stop()


def test_the_kinesis_sink_holds_events_until_the_stream_takes_them_once_their_pii_in_the_vault(
    local_aws, landing, tmp_path
):
    stream = f"events-{uuid.uuid4().hex[:8]}"
    service = IngestService(
        tmp_path / "home",
        landing.bucket,
        options=["--flush-seconds", "0.2", "--sink", "kinesis"],
        environ={"GAMING_PIPELINE_KINESIS_STREAM": stream},
    ).start()
    try:
        sender = service.sender(service.new_key()[1])
        # No stream yet: the events are accepted all the same, and held in the spool.
        assert (
            sender.send([event(n, pii={"email": f"p{n}@example.com"}) for n in range(40)])["accepted"] == 40
        )
        wait_until(lambda: service.metric("ingest_delivery_failing") == 1, what="a failed delivery")
        assert service.get("/healthz")[0] == 200
        aws.provision_stream(aws.client("kinesis"), stream, shards=2)
        later = [event(n) for n in range(40, 80)] + [event(80, params={"game_keyword": "not_yet_known"})]
        answer = sender.send(later)
        assert answer["accepted"] == 41, answer
    finally:
        service.stop()
    spool = service.home / "spool"
    assert not [*spool.glob("*.wal"), *spool.glob("put-*")]  # no segment, no progress left

    source = KinesisSource(aws.client("kinesis"), aws.client("s3"), stream, landing.bucket)
    read = source.deliver(Positions(), time.time() + 30)
    objects = landed(landing.bucket, "kinesis/")
    events = [e for held in objects.values() for e in held]
    assert sorted(e["event_id"] for e in events) == sorted(f"evt-{n}" for n in range(80))
    assert not any("pii" in e for e in events)
    shards_of_device = {}
    for key, held in objects.items():
        for e in held:
            shards_of_device.setdefault(e["eventParams"]["device_id"], set()).add(key.split("/")[2])
    assert all(len(shards) == 1 for shards in shards_of_device.values()), shards_of_device
    # A game the registry does not know yet: parked in the bucket, as without the sink.
    (parked,) = landed(landing.bucket, "unknown-games/").values()
    assert [e["event_id"] for e in parked] == ["evt-80"]
    # Each player's PII is found through the objects read from the stream, as erasure finds it.
    segments = erasure.pii_segments(aws.client("s3"), [(landing.bucket, obj.key) for obj in read.objects])
    held = service.vault().read("d-1", segments)
    assert sorted(r["pii"]["email"] for r in held) == sorted(
        f"p{n}@example.com" for n in range(40) if n % 7 == 1
    )


def test_an_unreadable_segment_is_parked_counted_and_the_rest_delivered(local_aws, landing, tmp_path):
    home = tmp_path / "home"
    (home / "spool").mkdir(parents=True)
    # What a spool of another format (or a bad disk) leaves: a sealed segment nothing can read.
    (home / "spool" / "sealed-00000000000000001.wal").write_bytes(b"\x05\x00\x00\x00garbage")
    service = IngestService(home, landing.bucket).start()
    try:
        sender = service.sender(service.new_key()[1])
        assert sender.send([event(1), event(2)])["accepted"] == 2
        objects = wait_until(lambda: landed(landing.bucket), what="the new events")
        assert sorted(e["event_id"] for events in objects.values() for e in events) == ["evt-1", "evt-2"]
        assert service.metric("ingest_spool_parked_segments") == 1
        assert (home / "spool" / "parked-00000000000000001.reason").read_text()
        assert service.get("/healthz")[0] == 200
    finally:
        service.stop()


def test_stopping_flushes_what_is_buffered(local_aws, landing, tmp_path):
    patient = IngestService(tmp_path / "home", landing.bucket, options=["--flush-seconds", "3600"]).start()
    _, key = patient.new_key()
    assert patient.post(msgspec.json.encode([event(n) for n in range(50)]), key)[1]["accepted"] == 50
    time.sleep(1)
    assert landed(landing.bucket) == {}
    patient.stop()
    (events,) = landed(landing.bucket).values()
    assert len(events) == 50
    assert not list((patient.home / "spool").glob("*.wal"))


def test_the_generator_posts_as_clients_do_and_their_pii_reaches_only_the_vault(service, capsys):
    _, key = service.new_key("generator")
    command = ["generate", "--to", "http", "--url", service.url, "--api-key", key, "--events", "1200"]
    assert main([*command, "--quiet", "--totals"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == 1200
    service.stop()
    events = [e for batch in landed(service.bucket).values() for e in batch]
    assert len(events) == 1200 and len({e["event_id"] for e in events}) == 1200
    assert not any("pii" in e for e in events)
    starter = next(e for e in events if e["eventName"] == "gameStart")["eventParams"]["device_id"]
    held = service.read_pii(starter)
    assert held and all(r["pii"] == generator.player_pii(starter) for r in held)
