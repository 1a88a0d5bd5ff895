"""The landing-line transform on tiny DataFrames."""

import json
from datetime import UTC, date, datetime

import pytest
from pyspark.sql import Row
from pyspark.testing import assertDataFrameEqual

from gaming_pipeline.lib.events import (
    MISSING_EVENT_TIME,
    classify_lines,
    per_object_counts,
    quarantined_lines,
    raw_events,
    source_object,
)

SOURCE = "s3://landing/events/a.ndjson.gz"
MODIFIED = datetime(2026, 11, 23, 7, 59)
PARAMS = {"game_keyword": "galaxy_miners", "device_id": "d-1", "platform": "ios"}


def line(**fields) -> str:
    return json.dumps({"eventName": "gameStart", "eventParams": PARAMS, **fields})


def classify(spark, *lines: str):
    df = spark.createDataFrame(
        [(value, SOURCE, MODIFIED) for value in lines],
        "value string, _source_object string, _source_modified_at timestamp",
    )
    return classify_lines(df)


@pytest.mark.parametrize(
    "event_time, expected",
    [
        (1763884800, datetime(2025, 11, 23, 8, 0)),
        (1763884800123, datetime(2025, 11, 23, 8, 0, 0, 123000)),
        ("1763884800", datetime(2025, 11, 23, 8, 0)),
        # A JSON number with a fraction, which Spark reads into a string as 1.7638848005E9.
        (1763884800.5, datetime(2025, 11, 23, 8, 0, 0, 500000)),
        ("2026-11-23T08:15:02.123Z", datetime(2026, 11, 23, 8, 15, 2, 123000)),
        ("2026-11-23T10:15:02+02:00", datetime(2026, 11, 23, 8, 15, 2)),
    ],
)
def test_event_time_accepts_epoch_seconds_millis_and_iso(spark, event_time, expected):
    (row,) = classify(spark, line(eventTime=event_time)).collect()
    assert row.reason is None
    assert row.eventTime == expected


@pytest.mark.parametrize(
    "value, reason",
    [
        ("not json", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"eventTime": 1763884800, "eventParams": PARAMS}), "missing eventName"),
        (json.dumps({"eventName": "x", "eventTime": 1763884800}), "missing eventParams"),
        (line(), MISSING_EVENT_TIME),
        (line(eventTime=None), MISSING_EVENT_TIME),
        (
            line(eventTime="yesterday"),
            "eventTime is not epoch seconds, epoch milliseconds or ISO-8601: yesterday",
        ),
        (line(eventTime=5), "eventTime outside 2000-2099: 1970-01-01 00:00:05"),
        (
            json.dumps({"eventName": "x", "eventTime": 1763884800, "eventParams": {"amount": "lots"}}),
            "a field has the wrong type for the event schema",
        ),
    ],
)
def test_bad_lines_get_a_reason(spark, value, reason):
    (row,) = classify(spark, value).collect()
    assert row.reason == reason


def test_blank_lines_are_not_events(spark):
    assert classify(spark, "", "   ", line(eventTime=1763884800)).count() == 1


def test_raw_rows_keep_the_params_struct_and_derive_the_utc_day(spark):
    classified = classify(spark, line(eventTime="2026-11-23T23:59:59-01:00", event_id="e1"), "bad")
    ingested = datetime(2026, 11, 24, 1, 0)
    rows = raw_events(classified, ingested, "run-1").collect()
    assert len(rows) == 1
    row = rows[0]
    assert row.eventDate == date(2026, 11, 24)
    assert row.eventParams.game_keyword == "galaxy_miners"
    assert row.eventParams.device_id == "d-1"
    assert (row.event_id, row._source_object, row._source_modified_at, row._ingest_run_id) == (
        "e1",
        SOURCE,
        MODIFIED,
        "run-1",
    )


def test_quarantine_keeps_the_line_but_never_pii(spark):
    with_pii = json.dumps({"eventName": "x", "pii": {"email": "a@b.c"}})
    classified = classify(spark, "not json", with_pii, line(eventTime=1763884800))
    at = datetime(2026, 11, 23)
    expected = [
        Row(
            line="not json",
            reason="not a JSON object",
            _source_object=SOURCE,
            _quarantined_at=at,
            _ingest_run_id="r",
        ),
        Row(
            line=None,
            reason="missing eventParams (line withheld: it carries pii)",
            _source_object=SOURCE,
            _quarantined_at=at,
            _ingest_run_id="r",
        ),
    ]
    assertDataFrameEqual(quarantined_lines(classified, at, "r"), expected)


def test_counts_add_up_per_object(spark):
    classified = classify(spark, line(eventTime=1763884800), line(), "bad", line(eventTime=1763884801))
    (row,) = per_object_counts(classified).collect()
    assert (row.rows_in, row.rows_written, row.rows_quarantined, row.rows_missing_event_time) == (4, 2, 2, 1)
    assert row.source_modified_micros == int(MODIFIED.replace(tzinfo=UTC).timestamp() * 1_000_000)


@pytest.mark.parametrize(
    "spark_path, uri",
    [
        ("s3a://landing/events/a%20b+c.ndjson.gz", "s3://landing/events/a b+c.ndjson.gz"),
        ("s3a://landing/events/100%25.ndjson", "s3://landing/events/100%.ndjson"),
    ],
)
def test_source_object_decodes_spark_paths(spark, spark_path, uri):
    df = spark.createDataFrame([(spark_path,)], "p string")
    assert df.select(source_object(df["p"])).first()[0] == uri
