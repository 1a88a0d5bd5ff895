import json

import pytest

from gaming_pipeline.lib.s3_events import LandedObject, NotAnS3Event, parse_message

pytestmark = pytest.mark.unit


def s3_event(*keys, event_name: str = "ObjectCreated:Put", **object_fields) -> dict:
    return {
        "Records": [
            {
                "eventName": event_name,
                "s3": {
                    "bucket": {"name": "landing"},
                    "object": {"key": key, "size": 42, "eTag": "abc123", **object_fields},
                },
            }
            for key in keys
        ]
    }


def sns_envelope(message: dict) -> str:
    return json.dumps({"Type": "Notification", "TopicArn": "arn:t", "Message": json.dumps(message)})


def test_raw_s3_event():
    assert parse_message(json.dumps(s3_event("events/a.ndjson.gz"))) == [
        LandedObject("landing", "events/a.ndjson.gz", "abc123", 42)
    ]


def test_sns_wrapped_event_is_unwrapped():
    assert parse_message(sns_envelope(s3_event("events/a.ndjson.gz", "events/b.ndjson.gz"))) == [
        LandedObject("landing", "events/a.ndjson.gz", "abc123", 42),
        LandedObject("landing", "events/b.ndjson.gz", "abc123", 42),
    ]


def test_keys_are_url_decoded_like_s3_encodes_them():
    (obj,) = parse_message(json.dumps(s3_event("events%2F2026%2Fa+b%2Bc%25d.ndjson.gz")))
    assert obj.key == "events/2026/a b+c%d.ndjson.gz"
    assert obj.s3a_path == "s3a://landing/events/2026/a b+c%d.ndjson.gz"


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "landing"}),
        sns_envelope({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "landing"}),
    ],
)
def test_test_events_announce_nothing(body):
    assert parse_message(body) == []


def test_other_event_types_are_skipped():
    assert parse_message(json.dumps(s3_event("k", event_name="ObjectRemoved:Delete"))) == []


@pytest.mark.parametrize(
    "body, why",
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"hello": "world"}), "no S3 'Records'"),
        (sns_envelope({"hello": "world"}), "no S3 'Records'"),
        (json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}), "lacks bucket"),
    ],
)
def test_garbage_is_refused_with_a_reason(body, why):
    with pytest.raises(NotAnS3Event, match=why):
        parse_message(body)


@pytest.mark.parametrize(
    "record, why",
    [
        ({"size": "abc"}, "size is not a byte count"),
        ({"size": -1}, "size is not a byte count"),
        ({"size": True}, "size is not a byte count"),
        ({"size": 4.5}, "size is not a byte count"),
        ({"key": 17}, "key is not a string"),
        ({"key": ""}, "key is not a string"),
        ({"key": ["a"]}, "key is not a string"),
        ({"eTag": 12}, "eTag is not a string"),
    ],
)
def test_a_malformed_record_refuses_the_whole_message(record, why):
    body = s3_event("events/a.ndjson.gz", **record)
    with pytest.raises(NotAnS3Event, match=why):
        parse_message(json.dumps(body))


@pytest.mark.parametrize(
    "bucket, why", [(None, "bucket name is not a name"), (5, "bucket name is not a name"), ("", "not a name")]
)
def test_a_record_with_no_bucket_name_is_refused(bucket, why):
    body = s3_event("events/a.ndjson.gz")
    body["Records"][0]["s3"]["bucket"]["name"] = bucket
    with pytest.raises(NotAnS3Event, match=why):
        parse_message(json.dumps(body))


@pytest.mark.parametrize("record", ["a string", 7, None, ["list"]])
def test_a_record_that_is_not_an_object_is_refused(record):
    with pytest.raises(NotAnS3Event, match="record is not a JSON object"):
        parse_message(json.dumps({"Records": [s3_event("k")["Records"][0], record]}))


def test_an_sns_envelope_whose_message_is_not_text_is_refused():
    with pytest.raises(NotAnS3Event, match="not JSON"):
        parse_message(json.dumps({"Type": "Notification", "Message": s3_event("k")}))


def test_a_record_without_size_or_etag_is_still_an_object():
    body = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}
        ]
    }
    assert parse_message(json.dumps(body)) == [LandedObject("b", "k", "", 0)]
