"""What a user might run instead of gaming_pipeline, on the same landing objects, writing the
same 31 tables (the raw table and one per game). Each runs as its own process, as it would
in production, and prints one JSON line: seconds in all, and seconds after its start-up.

    python bench/peers.py structured-streaming BUCKET WAREHOUSE HOME
    python bench/peers.py structured-streaming-long-running BUCKET WAREHOUSE HOME CONTROL
    python bench/peers.py polars BUCKET WAREHOUSE
    python bench/peers.py bare-spark BUCKET WAREHOUSE SPARK_ADDRESS

- structured-streaming: the seeds' own shape, written plainly: a Structured Streaming query
  over the landing prefix, Trigger.AvailableNow, foreachBatch appending the batch to the raw
  table and each game's rows to its table. A fresh local Spark, as a spark-submit'ed job has.
- structured-streaming-long-running: the same query left running as a streaming job is in
  production, taking the landing objects as they arrive: a micro-batch every
  STREAMING_TRIGGER (or as soon as the last one ends, when it took longer). It writes the
  file `ready` into the folder CONTROL once its query has gone through its first trigger,
  and stops when the file `stop` appears there, or on SIGTERM. (Not "continuous": that is
  the name of Spark's continuous-processing trigger, which foreachBatch does not support.)
- polars: a single-machine alternative: objects fetched with boto3, parsed by Polars with an
  explicit schema, written with the `deltalake` package (delta-rs).
- bare-spark: the floor for any Spark pipeline: parse and append the 31 tables, nothing else
  (no ledger, no quarantine, no exactly-once replace, no checks), on the same long-lived
  Spark Connect server our runs use.

The Spark peers parse with the pipeline's own event schema and eventTime rules
(lib/events.py), so every side writes the same rows and columns.
"""

from __future__ import annotations

import gzip
import io
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from gaming_pipeline.games import GAMES
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path

STARTED = time.monotonic()
# Landing keys are events/YYYY/MM/DD/HH/<object>: Spark's file sources do not descend on their own.
LANDING_GLOB = "events/*/*/*/*/*"
# The long-running query's micro-batch interval: what a streaming job over objects landed
# every few seconds would be given.
STREAMING_TRIGGER = "10 seconds"
STOP_GRACE_SECONDS = 60


def landing_lines(reader, bucket: str):
    """Every line of the landing objects with the lineage columns the pipeline keeps, read by
    `reader`: a batch reader (`spark.read`) or a stream's (`spark.readStream`)."""
    from pyspark.sql import functions as F

    from gaming_pipeline.lib.events import source_object

    return reader.text(f"s3a://{bucket}/{LANDING_GLOB}").select(
        "value",
        source_object(F.col("_metadata.file_path")).alias("_source_object"),
        F.col("_metadata.file_modification_time").alias("_source_modified_at"),
    )


def append_tables(batch, warehouse: str) -> None:
    """The seed's foreachBatch body: the batch to the raw table, then each game's rows to
    its own table."""
    from pyspark.sql import functions as F

    from gaming_pipeline.lib.events import classify_lines, raw_events

    rows = raw_events(classify_lines(batch), datetime.now(UTC), "peer").persist()
    rows.write.format("delta").mode("append").partitionBy("eventDate").save(table_path(warehouse, RAW_TABLE))
    for game in GAMES:
        (
            rows.where(F.col("eventParams.game_keyword") == game.keyword)
            .write.format("delta")
            .mode("append")
            .partitionBy("eventDate")
            .save(table_path(warehouse, game.table_name))
        )
    rows.unpersist()


def start_streaming_query(bucket: str, warehouse: str, home: str, **trigger):
    """The seeds' query on a fresh local Spark: the landing objects as a file stream, each
    micro-batch going through append_tables, its progress checkpointed in the warehouse;
    `trigger` as DataStreamWriter.trigger takes it. The query, and when Spark was ready."""
    from gaming_pipeline.lib.settings import Settings
    from gaming_pipeline.lib.spark import start_session

    spark = start_session(Settings.from_env({"GAMING_PIPELINE_HOME": home}))
    spark.sparkContext.setLogLevel("ERROR")
    ready = time.monotonic()
    query = (
        landing_lines(spark.readStream.option("maxFilesPerTrigger", 100), bucket)
        .writeStream.foreachBatch(lambda batch, _: append_tables(batch, warehouse))
        .option("checkpointLocation", f"{warehouse}/_checkpoints/events")
        .trigger(**trigger)
        .start()
    )
    return query, ready


def structured_streaming(bucket: str, warehouse: str, home: str) -> dict:
    query, ready = start_streaming_query(bucket, warehouse, home, availableNow=True)
    query.awaitTermination()
    return {"startup_seconds": ready - STARTED}


def structured_streaming_long_running(bucket: str, warehouse: str, home: str, control: str) -> dict:
    stopping = threading.Event()
    # A stop between triggers: the handler only marks it, the loop below stops the query.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    query, ready = start_streaming_query(bucket, warehouse, home, processingTime=STREAMING_TRIGGER)
    folder = Path(control)
    # Ready once a trigger has run: the stream's source has listed the landing prefix once,
    # so the first events posted do not wait for the query's own start-up.
    while query.lastProgress is None and query.isActive and not stopping.is_set():
        query.awaitTermination(0.5)
    (folder / "ready").write_text(json.dumps({"startup_seconds": ready - STARTED}))
    while query.isActive and not stopping.is_set() and not (folder / "stop").exists():
        query.awaitTermination(1)
    # Stopped between micro-batches where it can be: a stop amid a batch's 31 appends
    # interrupts them, with a stack of errors in the log.
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while query.isActive and query.status["isTriggerActive"] and time.monotonic() < deadline:
        time.sleep(0.2)
    batches = (query.lastProgress or {}).get("batchId", -1) + 1
    query.stop()
    return {"startup_seconds": ready - STARTED, "micro_batches": batches}


def bare_spark(bucket: str, warehouse: str, address: str) -> dict:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.config("spark.remote", address).getOrCreate()
    ready = time.monotonic()
    append_tables(landing_lines(spark.read, bucket), warehouse)
    return {"startup_seconds": ready - STARTED}


def polars(bucket: str, warehouse: str) -> dict:
    import boto3
    import polars as pl
    from deltalake import write_deltalake

    s3 = boto3.client("s3")
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="events/")
        for obj in page.get("Contents", [])
    ]
    ready = time.monotonic()
    params = pl.Struct(
        {
            "game_keyword": pl.String,
            "app_name": pl.String,
            "scoreAdjustment": pl.Int32,
            "platform": pl.String,
            "app_version": pl.String,
            "device_id": pl.String,
            "client_event_time": pl.String,
            "amount": pl.Float64,
        }
    )
    schema = {"event_id": pl.String, "eventName": pl.String, "eventTime": pl.Float64, "eventParams": params}

    def read(key: str):
        obj = s3.get_object(Bucket=bucket, Key=key)
        body = gzip.decompress(obj["Body"].read())
        frame = pl.read_ndjson(io.BytesIO(body), schema=schema)
        return frame.with_columns(
            pl.lit(f"s3://{bucket}/{key}").alias("_source_object"),
            pl.lit(obj["LastModified"].replace(tzinfo=None)).alias("_source_modified_at"),
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        frames = list(pool.map(read, keys))
    now = datetime.now(UTC).replace(tzinfo=None)
    # Epoch seconds or milliseconds, as the pipeline reads them (the workload's events carry
    # epoch seconds; ISO-8601 strings are the pipeline's third form, not generated here).
    seconds = (
        pl.when(pl.col("eventTime").abs() >= 100_000_000_000)
        .then(pl.col("eventTime") / 1000)
        .otherwise(pl.col("eventTime"))
    )
    events = pl.concat(frames).with_columns(
        (seconds * 1_000_000).cast(pl.Int64).cast(pl.Datetime("us")).alias("eventTime"),
        pl.col("eventParams").struct.with_fields(
            pl.field("client_event_time").str.to_datetime(time_unit="us", strict=False)
        ),
    )
    events = events.filter(
        pl.col("eventName").is_not_null()
        & pl.col("eventParams").is_not_null()
        & pl.col("eventTime").is_not_null()
    ).with_columns(
        pl.col("eventTime").dt.date().alias("eventDate"),
        pl.lit(now).alias("_ingested_at"),
        pl.lit("peer").alias("_ingest_run_id"),
    )
    columns = ["event_id", "eventName", "eventTime", "eventParams", "eventDate", "_source_object"]
    events = events.select(*columns, "_source_modified_at", "_ingested_at", "_ingest_run_id")
    write_deltalake(
        table_path(warehouse, RAW_TABLE), events.to_arrow(), partition_by=["eventDate"], mode="append"
    )
    keyed = events.with_columns(pl.col("eventParams").struct.field("game_keyword").alias("game"))
    by_game = keyed.partition_by("game", as_dict=True, include_key=False)
    for game in GAMES:
        rows = by_game.get((game.keyword,))
        if rows is not None:
            write_deltalake(
                table_path(warehouse, game.table_name),
                rows.to_arrow(),
                partition_by=["eventDate"],
                mode="append",
            )
    return {"startup_seconds": ready - STARTED}


def main() -> None:
    peer, *args = sys.argv[1:]
    run = {
        "structured-streaming": structured_streaming,
        "structured-streaming-long-running": structured_streaming_long_running,
        "polars": polars,
        "bare-spark": bare_spark,
    }[peer]
    figures = run(*args)
    figures["seconds"] = time.monotonic() - STARTED
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
