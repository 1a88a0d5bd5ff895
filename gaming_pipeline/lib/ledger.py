"""The ingest ledger: one row per landing object taken into the tables.

Runs write it with Spark after their data commits; sensors read it here with delta-rs,
which needs no JVM, so a sensor tick stays light.
"""

from __future__ import annotations

from pyspark.sql import types as T

from gaming_pipeline.lib import aws

LEDGER_SCHEMA = T.StructType(
    [
        T.StructField("object", T.StringType(), False),
        T.StructField("etag", T.StringType()),
        T.StructField("size", T.LongType()),
        T.StructField("source_modified_at", T.TimestampType()),
        T.StructField("run_id", T.StringType(), False),
        T.StructField("raw_version", T.LongType()),
        T.StructField("quarantine_version", T.LongType()),
        T.StructField("rows_in", T.LongType(), False),
        T.StructField("rows_written", T.LongType(), False),
        T.StructField("rows_quarantined", T.LongType(), False),
        T.StructField("rows_missing_event_time", T.LongType(), False),
        T.StructField("ingested_at", T.TimestampType(), False),
    ]
)


# Before a run writes an object's raw rows it notes the object's last-modified time in the
# intents table (a blind append, no ledger read-modify-write): a run killed after that write
# leaves rows the ledger does not know of, and the next run must find them to replace them.
INTENT_SCHEMA = T.StructType(
    [
        T.StructField("object", T.StringType(), False),
        T.StructField("source_modified_at", T.TimestampType(), False),
        T.StructField("run_id", T.StringType(), False),
        T.StructField("recorded_at", T.TimestampType(), False),
    ]
)


def delta_rs_location(path: str, environ: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The URI and storage options delta-rs needs for a warehouse path Spark reads as s3a."""
    if not path.startswith("s3a://"):
        return path, {}
    options = {"AWS_REGION": aws.region(environ)}
    if endpoint := aws.endpoint("S3", environ):
        options.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"})
    return "s3://" + path.removeprefix("s3a://"), options


def ingested_objects(ledger_path: str) -> dict[str, str]:
    """object URI -> ETag of everything the ledger holds ({} before the first ingestion)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri, options = delta_rs_location(ledger_path)
    try:
        table = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return {}
    rows = table.to_pyarrow_table(columns=["object", "etag"]).to_pylist()
    return {row["object"]: row["etag"] or "" for row in rows}
