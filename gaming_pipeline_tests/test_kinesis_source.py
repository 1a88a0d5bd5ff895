"""A Kinesis stream as a way in (lib/kinesis.py, defs/kinesis/sensors.py): every form of record
a producer writes, each record in exactly one landing object whatever tick is cut short, a
parent shard read to its end before its children, throttling waited out, and records lost to
retention said, not hidden."""

from __future__ import annotations

import copy
import gzip
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from botocore.exceptions import ClientError

from gaming_pipeline.defs.kinesis.sensors import build_kinesis_sensor
from gaming_pipeline.defs.kpis.assets import kpi_tables
from gaming_pipeline.defs.resources import AlertWebhookResource
from gaming_pipeline.ingest_service.delivery import StreamSink
from gaming_pipeline.ingest_service.spool import Progress, Record, SegmentUnreadable
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.kinesis import (
    MAX_SEGMENTS_PER_OBJECT,
    SEGMENTS_METADATA,
    KinesisSource,
    Positions,
    ShardRange,
    StreamGone,
    lines_of,
    object_key,
    put_records,
    record_lines,
    seed_lambda_record,
    staged_segments,
)
from gaming_pipeline.lib.pseudonyms import NOBODY_ERASED, ErasedPlayers
from gaming_pipeline.lib.tables import QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline.local import generator
from gaming_pipeline_tests.ingest_helpers import follow, ingest_only, refresh, resources
from gaming_pipeline_tests.kinesis_fakes import FakeKinesis, FakeS3
from gaming_pipeline_tests.kpi_helpers import actual_kpis, expected_kpis

EVENT = {"eventName": "gameStart", "eventTime": 1764000000, "eventParams": {"game_keyword": "g"}}


def aggregate(events: list[dict]) -> bytes:
    """One KPL aggregated record of the events, as the Kinesis Producer Library packs them."""
    aggregator = RecordAggregator()
    for event in events:
        assert aggregator.add_user_record(str(uuid.uuid4()), json.dumps(event).encode()) is None
    return aggregator.clear_and_get().get_contents()[2]


def test_every_record_form_becomes_event_lines():
    plain = json.dumps(EVENT).encode()
    api_gateway = {
        "resource": "/events",
        "httpMethod": "POST",
        "requestContext": {},
        "body": json.dumps(EVENT),
    }
    seed_lambda = {**api_gateway, "body": EVENT}  # the seed's Lambda puts the parsed body back
    ndjson = b"\n".join([plain, b"{not json", plain])
    assert [json.loads(line) for line in record_lines(plain, "s 1")] == [EVENT]
    assert [json.loads(line) for line in record_lines(json.dumps(api_gateway).encode(), "s 1")] == [EVENT]
    assert [json.loads(line) for line in record_lines(json.dumps(seed_lambda).encode(), "s 1")] == [EVENT]
    assert [json.loads(line) for line in record_lines(json.dumps([EVENT, EVENT]).encode(), "s 1")] == [
        EVENT
    ] * 2
    # A bad line of NDJSON stays as it came, for quarantine to say why; its neighbours go on.
    assert record_lines(ndjson, "s 1") == [
        json.dumps(EVENT, separators=(",", ":")),
        "{not json",
        json.dumps(EVENT, separators=(",", ":")),
    ]
    assert record_lines(gzip.compress(ndjson), "s 1") == record_lines(ndjson, "s 1")

    packed = {
        "SequenceNumber": "7",
        "PartitionKey": "p",
        "ApproximateArrivalTimestamp": datetime.now(UTC),
        "Data": aggregate([EVENT, {**EVENT, "eventName": "gameEnd"}]),
    }
    assert [json.loads(line)["eventName"] for line in lines_of([packed], "shardId-1")] == [
        "gameStart",
        "gameEnd",
    ]

    corrupt = {**packed, "Data": packed["Data"][:-1] + b"x"}  # its digest no longer matches
    (line,) = lines_of([corrupt], "shardId-1")
    assert "neither UTF-8 text, gzip nor a KPL aggregate" in json.loads(line)["_rejected"]

    for data, why in [
        (b"\xff\xfe\x00binary", "neither UTF-8 text"),
        (b"   ", "an empty record"),
        (b"plain words", "not JSON, NDJSON"),
        (b"42", "not an event object"),
        (b"\x1f\x8bnot really gzip", "gzip that does not decompress"),
        (json.dumps({**api_gateway, "body": "{oops"}).encode(), "body is not JSON"),
    ]:
        (line,) = record_lines(data, "shardId-000000000001 4955")
        rejected = json.loads(line)
        assert rejected["_rejected"].startswith("Kinesis record shardId-000000000001 4955: "), rejected
        assert why in rejected["_rejected"]


def test_the_seeds_lambda_form_carries_no_pii_and_every_refused_record_is_put_again():
    event = generator.client_event(generator.EventFactory(3).event(1_764_000_000))
    event["pii"] = {"email": "someone@example.com"}
    record = json.loads(seed_lambda_record(event, 1_764_000_001.25))
    assert record["body"]["eventTime"] == 1_764_000_001.25 and "pii" not in record["body"]
    assert [json.loads(line) for line in record_lines(json.dumps(record).encode(), "s 1")] == [record["body"]]

    class Busy:
        """Refuses every other record of each call, as a busy shard does."""

        def __init__(self):
            self.taken: list[bytes] = []

        def put_records(self, StreamName, Records):  # noqa: N803
            answers = []
            for index, entry in enumerate(Records):
                if index % 2:
                    answers.append({"ErrorCode": "ProvisionedThroughputExceededException"})
                else:
                    self.taken.append(entry["Data"])
                    answers.append({"SequenceNumber": str(len(self.taken))})
            return {"FailedRecordCount": len(Records) // 2, "Records": answers}

    busy = Busy()
    records = [str(n).encode() for n in range(1200)]
    put_records(busy, "events", records)
    assert sorted(busy.taken, key=int) == records


def test_object_keys_name_stream_shard_and_range():
    key = object_key(
        "arn:aws:kinesis:us-east-1:123456789012:stream/game-events", "shardId-000000000003", "12", "40"
    )
    assert key == "kinesis/game-events/shardId-000000000003/12-40.ndjson.gz"
    assert ShardRange.of_key(key) == ShardRange("game-events", "shardId-000000000003", "12", "40")
    assert ShardRange.of_key("events/2026/11/23/x.ndjson.gz") is None


class Stream:
    """A fake stream, its bucket and a sensor's positions, ticked as the daemon would."""

    def __init__(self, shards: int, max_records_per_shard: int = 10_000):
        self.kinesis, self.s3 = FakeKinesis(shards), FakeS3()
        self.source = KinesisSource(
            self.kinesis,
            self.s3,
            "events",
            "landing",
            max_records_per_shard,
            clock=lambda: self.kinesis.now,
            sleep=lambda _: None,
        )
        self.positions = Positions()
        self.sent: list[int] = []
        self.order: list[ShardRange] = []

    def put(self, count: int) -> None:
        rng = random.Random(len(self.sent))
        for _ in range(count):
            number = len(self.sent)
            self.kinesis.put(rng.choice(self.kinesis.open_shards()), json.dumps({"n": number}).encode())
            self.sent.append(number)

    def tick(self, positions: Positions | None = None):
        delivery = self.source.deliver(
            self.positions if positions is None else positions, self.kinesis.now + 20
        )
        self.order.extend(ShardRange.of_key(obj.key) for obj in delivery.objects)
        return delivery

    def written(self) -> list[int]:
        """Every record's number in the bucket's objects, as often as it is there."""
        return sorted(
            json.loads(line)["n"]
            for body in self.s3.objects.values()
            for line in gzip.decompress(body).decode().splitlines()
        )


def test_each_record_once_through_a_split_and_a_merge_parents_first():
    # Fifteen records a shard a tick: a parent takes several ticks to read to its end.
    stream = Stream(shards=2, max_records_per_shard=15)
    stream.put(40)
    stream.tick()
    stream.put(30)
    first, second = stream.kinesis.split("shardId-000000000000")
    stream.put(30)
    stream.tick()
    merged = stream.kinesis.merge(first, second)
    stream.put(25)
    for _ in range(12):
        stream.tick()
    assert stream.written() == stream.sent
    # Each child was read after its parents had been read to the end.
    position = {str(taken): index for index, taken in enumerate(stream.order)}
    for child, parents in [
        (first, ["shardId-000000000000"]),
        (second, ["shardId-000000000000"]),
        (merged, [first, second]),
    ]:
        child_reads = [position[str(t)] for t in stream.order if t.shard == child]
        parent_reads = [position[str(t)] for t in stream.order if t.shard in parents]
        assert child_reads and max(parent_reads) < min(child_reads), (child, stream.order)
    assert stream.positions.drained == {"shardId-000000000000", first, second}


def test_a_tick_cut_short_or_a_lost_cursor_writes_no_record_twice():
    stream = Stream(shards=2)
    stream.put(50)
    stream.tick()
    before = copy.deepcopy(stream.positions)
    stream.put(20)
    written = {obj.key for obj in stream.tick().objects}
    puts = stream.s3.puts
    # The daemon died before it stored that tick's cursor: the next tick starts from the
    # positions before it, finds the objects it wrote and writes none of them again; they are
    # asked for again (the ledger skips what was ingested), and the records after them go in
    # new objects, one a shard.
    stream.put(10)
    again = stream.tick(before)
    assert stream.s3.puts == puts + 2 and written < {obj.key for obj in again.objects}, again
    stream.tick(before)
    assert stream.s3.puts == puts + 2
    # A sensor with no cursor at all (new, or reset) goes on from the objects too.
    stream.put(10)
    stream.tick(Positions())
    assert stream.written() == stream.sent


def segment_of(devices: int, events_each: int) -> list[Record]:
    """A spool segment's records: each device's events spread over several requests."""
    lines = [
        json.dumps(
            {
                "event_id": f"{device}-{n}",
                "eventName": "gameStart",
                "eventTime": 1_795_420_800_000,
                "eventParams": {"game_keyword": "g", "device_id": f"device-{device}"},
            }
        ).encode()
        + b"\n"
        for n in range(events_each)
        for device in range(devices)
    ]
    return [
        Record(1_795_420_800_000, b"".join(lines[i : i + 7]), b"", [], []) for i in range(0, len(lines), 7)
    ]


def test_the_service_puts_a_segment_once_on_each_devices_shard_whatever_fails_between_puts(tmp_path):
    kinesis = FakeKinesis(shards=3)
    # Fifteen hundred devices, a record each: PutRecords of 500. The first call has half its
    # records refused, the third fails whole, after 750 are in.
    kinesis.refusing_put_calls, kinesis.failing_put_calls = {1}, {3}
    records, segment = segment_of(devices=1500, events_each=3), "ingest-0a1b2c3d-00000000000000042"

    def sink() -> StreamSink:
        # As a restarted service makes it: the progress from the spool folder.
        return StreamSink(kinesis, "events", lambda segment_id: Progress(tmp_path / f"put-{segment_id}.json"))

    with pytest.raises(ClientError):
        sink().put(segment, "00000000000000042", records, NOBODY_ERASED)
    assert sink().put(segment, "00000000000000042", records, NOBODY_ERASED) == (1500, 4500)
    put = [
        (shard_id, partition_key, line)
        for shard_id, shard in kinesis.shards.items()
        for _, data, _, partition_key in shard["records"]
        for line in data.decode().splitlines()
    ]
    assert sorted(json.loads(line)["event_id"] for _, _, line in put) == sorted(
        f"{device}-{n}" for device in range(1500) for n in range(3)
    )
    assert {partition_key for _, partition_key, _ in put} == {segment}
    shards_of_device = {}
    for shard_id, _, line in put:
        shards_of_device.setdefault(json.loads(line)["eventParams"]["device_id"], set()).add(shard_id)
    assert all(len(shards) == 1 for shards in shards_of_device.values())
    assert len({shard for shards in shards_of_device.values() for shard in shards}) == 3
    # A player erased before the segment's delivery: their events are not put.
    erased = ErasedPlayers(b"k", frozenset([ErasedPlayers(b"k").player_id("device-7")]))
    assert sink().put(segment, "00000000000000043", segment_of(10, 2), erased) == (9, 18)
    # A segment half put by a service that made other records of it is parked, not put again.
    half_put = segment_of(10, 2)
    earlier = Progress(tmp_path / "put-00000000000000044.json")
    earlier.of("a digest of other records")
    earlier.add([0])
    with pytest.raises(SegmentUnreadable, match="duplicate or skip"):
        sink().put(segment, "00000000000000044", half_put, NOBODY_ERASED)


def test_erased_players_events_on_the_stream_never_reach_an_object():
    stream = Stream(shards=1)
    for device in ("d-1", "d-2", "d-1"):
        line = json.dumps({"eventName": "gameStart", "eventParams": {"device_id": device}}).encode()
        stream.kinesis.put("shardId-000000000000", line)
    stream.source.erased = ErasedPlayers(b"k", frozenset([ErasedPlayers(b"k").player_id("d-1")]))
    (obj,) = stream.tick().objects
    lines = gzip.decompress(stream.s3.objects[("landing", obj.key)]).decode().splitlines()
    assert [json.loads(line)["eventParams"]["device_id"] for line in lines] == ["d-2"]
    assert obj.key.endswith("/1-3.ndjson.gz")  # the position covers every record read


def test_each_object_names_the_service_segments_its_records_came_with():
    stream = Stream(shards=1)
    segments = [f"ingest-0a1b2c3d-{n:017d}" for n in range(MAX_SEGMENTS_PER_OBJECT + 5)]
    for segment in segments:
        stream.kinesis.put("shardId-000000000000", b'{"n": 1}', segment)
    stream.kinesis.put("shardId-000000000000", b'{"n": 2}', "a-producers-own-key")
    delivery = stream.tick()
    named = [
        stream.s3.metadata[("landing", obj.key)].get(SEGMENTS_METADATA, "").split()
        for obj in delivery.objects
    ]
    # One tick, two objects: S3 keeps 2 KB of metadata an object.
    assert [len(names) for names in named] == [MAX_SEGMENTS_PER_OBJECT, 5]
    assert [name for names in named for name in names] == segments
    objects = [("landing", obj.key) for obj in delivery.objects]
    assert (
        staged_segments(
            stream.s3, [*objects, ("landing", "kinesis/events/shardId-000000000000/7-9.ndjson.gz")]
        )
        == segments
    )


@pytest.mark.parametrize("fault", ["throttle_reads", "fail_reads"])
def test_a_busy_or_failing_shard_is_read_on_the_next_tick(fault):
    stream = Stream(shards=1)
    stream.put(30)
    setattr(stream.kinesis, fault, 1)
    busy = stream.tick()
    assert busy.throttled == ["shardId-000000000000"] and not busy.objects
    stream.tick()
    assert stream.written() == stream.sent


def test_records_trimmed_before_they_were_read_are_a_gap_not_a_silence():
    stream = Stream(shards=2, max_records_per_shard=5)
    stream.put(40)
    stream.tick()  # five records a shard: the rest wait
    stream.kinesis.now += 25 * 3600
    stream.kinesis.trim(stream.kinesis.now - 24 * 3600)
    stream.put(10)
    delivery = stream.tick()
    assert {gap.shard for gap in delivery.gaps} == {"shardId-000000000000", "shardId-000000000001"}
    for gap in delivery.gaps:
        assert gap.after is not None and gap.before is not None and int(gap.before) > int(gap.after)
        assert "trimmed by the stream's retention before they were read" in str(gap)
        assert gap.shard in str(gap) and gap.incident.startswith("kinesis-gap/events/")
    # It goes on from the oldest record left, and everything left is read.
    for _ in range(4):
        stream.tick()
    trimmed = sum(shard["trimmed"] for shard in stream.kinesis.shards.values())
    assert len(stream.written()) == len(set(stream.written())) == len(stream.sent) - trimmed + 10
    # Shards read to their end and idle past the retention, read on every tick, lost nothing.
    for _ in range(3):
        stream.kinesis.now += 12 * 3600
        stream.kinesis.trim(stream.kinesis.now - 24 * 3600)
        assert stream.tick().gaps == []


def test_a_gap_tick_repeated_after_more_was_trimmed_writes_no_record_twice():
    stream = Stream(shards=1, max_records_per_shard=5)
    stream.put(40)
    stream.tick()
    stream.kinesis.now += 25 * 3600
    stream.kinesis.trim(stream.kinesis.now - 24 * 3600)
    stream.put(10)
    before = copy.deepcopy(stream.positions)
    assert stream.tick().gaps
    # The daemon died before it stored that tick's cursor, and retention took one more record
    # meanwhile: the repeated tick starts from another first record, but not behind the objects.
    stream.kinesis.shards["shardId-000000000000"]["records"].pop(0)
    stream.tick(before)
    for _ in range(3):
        stream.tick(before)
    assert len(stream.written()) == len(set(stream.written()))


def test_a_parent_gone_before_it_was_read_to_its_end_is_a_gap():
    stream = Stream(shards=1, max_records_per_shard=5)
    stream.put(20)
    stream.tick()
    child, _ = stream.kinesis.split("shardId-000000000000")
    del stream.kinesis.shards["shardId-000000000000"]  # aged out of the stream
    (gap,) = stream.tick().gaps
    assert gap.shard == "shardId-000000000000" and gap.before is None


def test_a_deleted_stream_stops_the_source_with_what_to_do():
    stream = Stream(shards=1)
    stream.kinesis.gone = True
    with pytest.raises(StreamGone, match="GAMING_PIPELINE_KINESIS_STREAM"):
        stream.tick()


def put_in_every_form(kinesis, stream: str, events: list[dict]) -> int:
    """The events on the stream in the forms producers use, random partition keys, and three
    records that are no events; the number of records put."""
    rng = random.Random(5)
    records = []
    chunks = [events[i : i + 10] for i in range(0, len(events), 10)]
    for index, chunk in enumerate(chunks):
        form = index % 5
        if form == 0:  # the seed's Lambda: the API Gateway event, the client's event as its body
            records += [
                json.dumps({"httpMethod": "POST", "requestContext": {}, "body": json.dumps(e)}).encode()
                for e in chunk
            ]
        elif form == 1:
            records += [json.dumps(e).encode() for e in chunk]
        elif form == 2:
            records.append("\n".join(json.dumps(e) for e in chunk).encode())
        elif form == 3:
            records.append(gzip.compress("\n".join(json.dumps(e) for e in chunk).encode()))
        else:
            records.append(aggregate(chunk))
    records += [
        b"\x00\x9f garbage",
        b"not an event",
        json.dumps({"httpMethod": "POST", "body": "{cut"}).encode(),
    ]
    for start in range(0, len(records), 100):
        answer = kinesis.put_records(
            StreamName=stream,
            Records=[
                {"Data": data, "PartitionKey": str(rng.random())} for data in records[start : start + 100]
            ],
        )
        assert answer["FailedRecordCount"] == 0
    return len(records)


def tick(sensor, landing, warehouse, instance, cursor):
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={**resources(landing, warehouse), "alert_webhook": AlertWebhookResource()},
    ) as context:
        result = sensor(context)
    return list(result.run_requests or []), result.cursor


def test_kinesis_records_reach_every_table_exactly_once(local_aws, landing, spark, warehouse):
    kinesis = aws.client("kinesis")
    stream = f"events-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    end = datetime(2026, 11, 20, 12, tzinfo=UTC)
    events = list(generator.history(41, 400, end - timedelta(days=1), end))
    put_in_every_form(kinesis, stream, events[:300])

    sensor = build_kinesis_sensor(stream, batch_interval_seconds=0, alert_age_seconds=300)
    assert sensor.name == f"kinesis_{stream.replace('-', '_')}_sensor"
    instance = dg.DagsterInstance.ephemeral()
    requests, cursor = tick(sensor, landing, warehouse, instance, None)
    (request,) = requests
    assert request.tags["gaming_pipeline/origin"] == "kinesis"
    assert request.tags["gaming_pipeline/kinesis_stream"] == stream
    assert set(request.tags["gaming_pipeline/kinesis_shards"].split()) == {
        str(ShardRange.of_key(obj["key"]))
        for obj in request.run_config["ops"]["ingest_landed_objects"]["config"]["objects"]
    }
    ingest_only(request, landing, warehouse, instance)

    # The daemon lost that tick's cursor: the next tick finds the objects written and ingested.
    put_in_every_form(kinesis, stream, events[300:])
    again, _ = tick(sensor, landing, warehouse, instance, None)
    assert [
        obj["key"] for r in again for obj in r.run_config["ops"]["ingest_landed_objects"]["config"]["objects"]
    ]
    for late in again:
        ingest_only(late, landing, warehouse, instance)
    assert tick(sensor, landing, warehouse, instance, cursor)[0] == []  # nothing new since
    follow(warehouse, instance)

    raw = spark.read.format("delta").load(table_path(warehouse, RAW_TABLE))
    assert sorted(row.event_id for row in raw.select("event_id").collect()) == sorted(
        e["event_id"] for e in events
    )
    assert {
        row._source_object.split("/")[3] for row in raw.select("_source_object").distinct().collect()
    } == {"kinesis"}
    quarantined = spark.read.format("delta").load(table_path(warehouse, QUARANTINE_TABLE)).collect()
    assert len(quarantined) == 6  # three records that are no events, from each of the two puts
    assert all(row.reason.startswith("Kinesis record shardId-") for row in quarantined), quarantined

    days = sorted({datetime.fromtimestamp(e["eventTime"], UTC).date().isoformat() for e in events})
    # The follower run filled the per-game and activity tables: the KPIs are the refresh's.
    refresh(landing, warehouse, instance, days[0], days[-1], assets=[kpi_tables])
    assert actual_kpis(spark, warehouse) == expected_kpis(events)
    kinesis.delete_stream(StreamName=stream)
    with pytest.raises(StreamGone, match=stream):
        tick(sensor, landing, warehouse, instance, cursor)
