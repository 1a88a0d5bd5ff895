"""Landing objects -> S3 notification -> SNS -> SQS -> sensor -> Spark run -> Delta, on real parts."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from gaming_pipeline.defs.ingest.assets import objects_in_bucket
from gaming_pipeline.defs.ingest.sensors import build_reconcile_sensor, landing_queue_sensor
from gaming_pipeline.defs.resources import LandingBucketResource
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.s3_events import LandedObject
from gaming_pipeline.lib.tables import LEDGER_TABLE, QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests.ingest_helpers import (
    BAD_OBJECT_KEY,
    content_checksum,
    evaluate,
    load_history,
    put_bad_object,
    run,
)

pytestmark = pytest.mark.spark


def tap(landing: aws.LandingPath) -> str:
    """A second queue on the landing topic: the test's own copy of every notification."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=f"{landing.bucket}-tap")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.client("sns").subscribe(TopicArn=landing.topic_arn, Protocol="sqs", Endpoint=arn)
    return url


def drain(queue_url: str, expected: int) -> list[str]:
    sqs = aws.client("sqs")
    bodies: list[str] = []
    deadline = time.monotonic() + 30
    while len(bodies) < expected and time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        bodies.extend(message["Body"] for message in messages.get("Messages", []))
    return bodies


def raw_table(spark, warehouse):
    return spark.read.format("delta").load(table_path(warehouse, RAW_TABLE))


def content_fingerprint(df) -> tuple[int, int]:
    return df.count(), df.select(content_checksum(df)).first()[0]


@pytest.mark.slow
def test_landed_events_reach_the_raw_table_exactly_once(spark, landing, warehouse):
    copies = tap(landing)
    totals = load_history(landing.bucket)
    put_bad_object(landing.bucket)
    objects = totals.objects + 1
    bodies = drain(copies, objects)
    assert len(bodies) == objects

    (request,) = evaluate(landing_queue_sensor, landing, warehouse)
    requested = request.run_config["ops"]["ingest_landed_objects"]["config"]["objects"]
    assert len(requested) == objects
    assert BAD_OBJECT_KEY in {obj["key"] for obj in requested}
    result = run(request, landing, warehouse)

    raw = raw_table(spark, warehouse)
    # The bad object's one good line is a real event too.
    expected_per_day_game = {
        (day, game): count
        for day, games in totals.as_dict()["events_per_day_and_game"].items()
        for game, count in games.items()
    }
    expected_per_day_game[("2025-11-20", "ninja_run")] = 1
    actual = {
        (row.eventDate.isoformat(), row.game): row.n
        for row in raw.groupBy("eventDate", F.col("eventParams.game_keyword").alias("game"))
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    }
    assert actual == expected_per_day_game
    generated = raw.where(F.col("_source_object") != f"s3://{landing.bucket}/{BAD_OBJECT_KEY}")
    assert generated.select(F.count_distinct("eventParams.device_id")).first()[0] == len(totals.devices)
    purchases = generated.where("eventName = 'purchaseEvent'")
    assert purchases.count() == totals.purchases
    cents = purchases.select(F.sum(F.round(F.col("eventParams.amount") * 100).cast("long"))).first()[0]
    assert Decimal(cents) == totals.purchase_cents

    quarantine = spark.read.format("delta").load(table_path(warehouse, QUARANTINE_TABLE))
    assert sorted((row.line, row.reason) for row in quarantine.collect()) == sorted(
        [
            ("this line is not json", "not a JSON object"),
            (
                '{"eventName":"levelUp","eventTime":null,"eventParams":{"game_keyword":"ninja_run","device_id":"d-bad"}}',
                "missing eventTime",
            ),
        ]
    )

    metadata = result.asset_materializations_for_node("ingest_landed_objects")[0].metadata
    assert metadata["objects"].value == objects
    assert metadata["rows_in"].value == totals.events + 3
    assert metadata["rows_written"].value == totals.events + 1
    assert metadata["rows_quarantined"].value == 2
    assert metadata["rows_missing_event_time"].value == 1
    assert metadata["rows_in"].value == metadata["rows_written"].value + metadata["rows_quarantined"].value

    # An independent Delta reader sees the same table.
    assert DeltaTable(table_path(warehouse, RAW_TABLE)).count() == raw.count() == totals.events + 1
    ledger = DeltaTable(table_path(warehouse, LEDGER_TABLE)).to_pyarrow_table().to_pylist()
    assert len(ledger) == objects
    assert sum(row["rows_written"] for row in ledger) == totals.events + 1

    # The same notifications delivered again: the sensor finds nothing new ...
    before = content_fingerprint(raw_table(spark, warehouse))
    sqs = aws.client("sqs")
    for body in bodies:
        sqs.send_message(QueueUrl=landing.queue_url, MessageBody=body)
    assert evaluate(landing_queue_sensor, landing, warehouse) == []
    # ... and the same run, retried, adds nothing.
    run(request, landing, warehouse)
    assert content_fingerprint(raw_table(spark, warehouse)) == before
    assert DeltaTable(table_path(warehouse, QUARANTINE_TABLE)).count() == 2


def test_reconciler_catches_an_object_whose_notification_was_lost(spark, landing, warehouse):
    reconcile = build_reconcile_sensor(grace_seconds=0)
    totals = load_history(landing.bucket, seed=5, events=600, days=0.5)
    aws.client("sqs").purge_queue(QueueUrl=landing.queue_url)

    (request,) = evaluate(reconcile, landing, warehouse)
    assert len(request.run_config["ops"]["ingest_landed_objects"]["config"]["objects"]) == totals.objects
    assert request.run_key.startswith("reconcile:")
    run(request, landing, warehouse)
    assert raw_table(spark, warehouse).count() == totals.events
    assert evaluate(reconcile, landing, warehouse) == []


def test_reconciler_leaves_fresh_objects_to_the_queue(landing, warehouse):
    load_history(landing.bucket, seed=6, events=50, days=0.1)
    assert evaluate(build_reconcile_sensor(grace_seconds=600), landing, warehouse) == []


def test_a_message_that_is_not_an_s3_event_is_left_for_the_dead_letter_queue(landing, warehouse):
    sqs = aws.client("sqs")
    sqs.purge_queue(QueueUrl=landing.queue_url)
    sqs.send_message(QueueUrl=landing.queue_url, MessageBody="hello, not an event")
    assert evaluate(landing_queue_sensor, landing, warehouse) == []
    attributes = sqs.get_queue_attributes(
        QueueUrl=landing.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_a_broken_or_vanished_object_is_quarantined_and_stops_nothing(spark, landing, warehouse):
    totals = load_history(landing.bucket, seed=8, events=300, days=0.2)
    s3 = aws.client("s3")
    s3.put_object(Bucket=landing.bucket, Key="events/broken.ndjson.gz", Body=b"\x1f\x8b\x08 not really gzip")
    objects = objects_in_bucket(LandingBucketResource(bucket=landing.bucket))
    vanished = LandedObject(landing.bucket, "events/deleted-before-the-run.ndjson.gz", "0" * 32, 10)

    result = ingest_objects(spark, warehouse, [*objects, vanished], "run-with-faults")

    assert raw_table(spark, warehouse).count() == totals.events
    quarantine = spark.read.format("delta").load(table_path(warehouse, QUARANTINE_TABLE))
    reasons = {row._source_object.rsplit("/", 1)[1]: row.reason for row in quarantine.collect()}
    assert reasons["broken.ndjson.gz"].startswith("object could not be read: ")
    assert reasons["deleted-before-the-run.ndjson.gz"] == "object could not be read: PATH_NOT_FOUND"
    assert result.rows_in == result.rows_written + result.rows_quarantined == totals.events + 2
    # Both are in the ledger: a broken object is not retried forever.
    assert DeltaTable(table_path(warehouse, LEDGER_TABLE)).count() == len(objects) + 1
