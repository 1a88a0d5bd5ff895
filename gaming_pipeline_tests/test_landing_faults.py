"""Faults on the landing path, on the real queue: a malformed message is set aside alone, and
only the landing bucket's objects are ever requested or ingested."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from gaming_pipeline.defs.ingest.sensors import landing_queue_sensor
from gaming_pipeline.lib import aws
from gaming_pipeline_tests.ingest_helpers import evaluate, land, resources

pytestmark = pytest.mark.e2e


def s3_record_message(bucket: str, key: str, size: object = 10) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": "e"}},
                }
            ]
        }
    )


def requested_keys(requests: list[dg.RunRequest]) -> set[str]:
    return {
        obj["key"]
        for request in requests
        for obj in request.run_config["ops"]["ingest_landed_objects"]["config"]["objects"]
    }


def messages_on(queue_url: str) -> dict[str, str]:
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return {
        "waiting": attributes["ApproximateNumberOfMessages"],
        "in_flight": attributes["ApproximateNumberOfMessagesNotVisible"],
    }


def test_a_malformed_message_is_set_aside_alone(landing, warehouse):
    good = land(landing.bucket, "events/good.ndjson.gz", [{"eventName": "e"}])
    aws.client("sqs").send_message(
        QueueUrl=landing.queue_url, MessageBody=s3_record_message(landing.bucket, "events/bad.gz", size="abc")
    )

    assert requested_keys(evaluate(landing_queue_sensor, landing, warehouse)) == {good.key}
    # The good messages are deleted; the bad one alone stays in flight, and the queue's
    # redrive policy moves it to the dead-letter queue after a few receives.
    assert messages_on(landing.queue_url) == {"waiting": "0", "in_flight": "1"}


def test_a_message_for_another_bucket_is_dropped(landing, warehouse):
    good = land(landing.bucket, "events/ours.ndjson.gz", [{"eventName": "e"}])
    aws.client("sqs").send_message(
        QueueUrl=landing.queue_url, MessageBody=s3_record_message("someone-elses-bucket", "secrets.ndjson")
    )

    assert requested_keys(evaluate(landing_queue_sensor, landing, warehouse)) == {good.key}
    # Handled, not left to bounce into the dead-letter queue.
    assert messages_on(landing.queue_url) == {"waiting": "0", "in_flight": "0"}


def test_a_run_refuses_objects_outside_the_landing_bucket(landing, warehouse):
    from gaming_pipeline.defs.ingest.assets import ingest_landed_objects

    objects = [
        {"bucket": landing.bucket, "key": "events/ours.ndjson.gz"},
        {"bucket": "someone-elses-bucket", "key": "secrets.ndjson"},
    ]
    result = dg.materialize(
        [ingest_landed_objects],
        run_config={"ops": {"ingest_landed_objects": {"config": {"objects": objects}}}},
        resources=resources(landing, warehouse),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert "someone-elses-bucket" in str(failure.step_failure_data.error)
