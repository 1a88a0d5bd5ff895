"""The event schema and the pure transform from landing lines to raw rows and quarantine.

Landing objects are NDJSON (gzipped or not), one event per line, as the ingest service
writes them and any other producer may. Parsing uses an explicit schema: it is faster than
inference and a new client field cannot silently change a table's schema.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.lib.s3_events import REJECTED

EVENT_PARAMS = T.StructType(
    [
        T.StructField("game_keyword", T.StringType()),
        T.StructField("app_name", T.StringType()),
        T.StructField("scoreAdjustment", T.IntegerType()),
        T.StructField("platform", T.StringType()),
        T.StructField("app_version", T.StringType()),
        T.StructField("device_id", T.StringType()),
        T.StructField("client_event_time", T.TimestampType()),
        T.StructField("amount", T.DoubleType()),
    ]
)

_CORRUPT = "_corrupt_record"
# eventTime stays a string here: it may be epoch seconds, epoch milliseconds or ISO-8601,
# and only after parsing can we tell which. Unknown fields (a stray `pii` among them) are
# never read, so they cannot reach a table.
LANDING_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("eventName", T.StringType()),
        T.StructField("eventTime", T.StringType()),
        T.StructField("eventParams", EVENT_PARAMS),
        T.StructField(REJECTED, T.StringType()),
        T.StructField(_CORRUPT, T.StringType()),
    ]
)

RAW_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("eventName", T.StringType(), False),
        T.StructField("eventTime", T.TimestampType(), False),
        T.StructField("eventParams", EVENT_PARAMS, False),
        T.StructField("eventDate", T.DateType(), False),
        T.StructField("_source_object", T.StringType(), False),
        # The object's last-modified time: its rows are found by this (file statistics prune
        # on it) when they are replaced, since object keys share long common prefixes.
        T.StructField("_source_modified_at", T.TimestampType(), False),
        T.StructField("_ingested_at", T.TimestampType(), False),
        T.StructField("_ingest_run_id", T.StringType(), False),
    ]
)


# A landing line after parsing: `reason` is null for a good event, else why it is quarantined.
CLASSIFIED_SCHEMA = T.StructType(
    [
        T.StructField("value", T.StringType()),
        T.StructField("_source_object", T.StringType()),
        T.StructField("_source_modified_at", T.TimestampType()),
        T.StructField("event_id", T.StringType()),
        T.StructField("eventName", T.StringType()),
        T.StructField("eventTime", T.TimestampType()),
        T.StructField("eventParams", EVENT_PARAMS),
        T.StructField("reason", T.StringType()),
    ]
)

MISSING_EVENT_TIME = "missing eventTime"
# Bad lines are kept for diagnosis, but a runaway line must not bloat the table.
MAX_QUARANTINED_LINE_CHARS = 10_000
# Epoch values below this are seconds (until the year 5138), above it milliseconds.
_EPOCH_MILLIS_FROM = 100_000_000_000
_EARLIEST = "2000-01-01 00:00:00"
_LATEST = "2100-01-01 00:00:00"


def event_time(raw: Column) -> Column:
    """eventTime as a timestamp from epoch seconds, epoch milliseconds or ISO-8601; null when
    it is none of these. Spark's own cast would also take words such as 'yesterday', so a
    string must look like a date before it is cast."""
    number = raw.cast("double")
    return F.when(
        # A JSON number with a fraction reaches Spark's string as 1.7638848005E9.
        raw.rlike(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$"),
        F.when(F.abs(number) >= _EPOCH_MILLIS_FROM, F.timestamp_seconds(number / 1000)).otherwise(
            F.timestamp_seconds(number)
        ),
    ).when(raw.rlike(r"^\d{4}-\d{2}-\d{2}"), raw.try_cast("timestamp"))


def source_object(file_path: Column) -> Column:
    """The s3:// URI of the object a row was read from. Spark reports the path as a URI
    (a space is %20); a literal '+' in a key must survive the decoding."""
    decoded = F.url_decode(F.replace(file_path, F.lit("+"), F.lit("%2B")))
    return F.regexp_replace(decoded, r"^s3a://", "s3://")


def classify_lines(lines: DataFrame) -> DataFrame:
    """Parse each line (`value`, `_source_object`, `_source_modified_at`) and give it a
    `reason` to quarantine it, null for a good event. Blank lines are not events and are
    left out."""
    parsed = lines.where(F.trim("value") != "").select(
        "value",
        "_source_object",
        "_source_modified_at",
        F.from_json("value", LANDING_SCHEMA, {"columnNameOfCorruptRecord": _CORRUPT}).alias("e"),
    )
    e = parsed["e"]
    ts = event_time(e["eventTime"])
    unparsed = e["eventName"].isNull() & e["eventTime"].isNull() & e["eventParams"].isNull()
    reason = (
        F.when(e.isNull() | (e[_CORRUPT].isNotNull() & unparsed), "not a JSON object")
        .when(e[REJECTED].isNotNull(), e[REJECTED])
        .when(e[_CORRUPT].isNotNull(), "a field has the wrong type for the event schema")
        .when(e["eventName"].isNull(), "missing eventName")
        .when(e["eventParams"].isNull(), "missing eventParams")
        .when(e["eventTime"].isNull(), MISSING_EVENT_TIME)
        .when(
            ts.isNull(),
            F.concat(
                F.lit("eventTime is not epoch seconds, epoch milliseconds or ISO-8601: "),
                F.substring(e["eventTime"], 1, 100),
            ),
        )
        .when(
            (ts < F.lit(_EARLIEST).cast("timestamp")) | (ts >= F.lit(_LATEST).cast("timestamp")),
            F.concat(F.lit("eventTime outside 2000-2099: "), ts.cast("string")),
        )
    )
    return parsed.select(
        "value",
        "_source_object",
        "_source_modified_at",
        e["event_id"].alias("event_id"),
        e["eventName"].alias("eventName"),
        ts.alias("eventTime"),
        e["eventParams"].alias("eventParams"),
        reason.alias("reason"),
    )


def raw_events(classified: DataFrame, ingested_at: datetime, run_id: str) -> DataFrame:
    """Rows for mobile_events_delta_raw: the good lines, partitioned by their UTC day."""
    return classified.where(F.col("reason").isNull()).select(
        "event_id",
        "eventName",
        "eventTime",
        "eventParams",
        F.to_date("eventTime").alias("eventDate"),
        "_source_object",
        "_source_modified_at",
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
        F.lit(run_id).alias("_ingest_run_id"),
    )


def quarantined_lines(classified: DataFrame, quarantined_at: datetime, run_id: str) -> DataFrame:
    """Rows for quarantine_events. A line that carries a `pii` object is not stored: the
    quarantine table must never hold PII in clear, so only its reason and source remain."""
    has_pii = F.get_json_object("value", "$.pii").isNotNull()
    return classified.where(F.col("reason").isNotNull()).select(
        F.when(has_pii, F.lit(None))
        .otherwise(F.substring("value", 1, MAX_QUARANTINED_LINE_CHARS))
        .alias("line"),
        F.when(has_pii, F.concat("reason", F.lit(" (line withheld: it carries pii)")))
        .otherwise(F.col("reason"))
        .alias("reason"),
        "_source_object",
        F.lit(quarantined_at).cast("timestamp").alias("_quarantined_at"),
        F.lit(run_id).alias("_ingest_run_id"),
    )


def per_object_counts(classified: DataFrame) -> DataFrame:
    """Lines in, rows written and lines quarantined per source object (for the ledger), with
    the lines dropped for a missing eventTime counted apart, as the seed does."""
    reason = F.col("reason")
    return classified.groupBy("_source_object").agg(
        F.count(F.lit(1)).alias("rows_in"),
        F.count_if(reason.isNull()).alias("rows_written"),
        F.count_if(reason.isNotNull()).alias("rows_quarantined"),
        F.count_if(reason == MISSING_EVENT_TIME).alias("rows_missing_event_time"),
        F.max(F.unix_micros("_source_modified_at")).alias("source_modified_micros"),
    )
