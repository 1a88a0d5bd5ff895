"""Ingestion reads exactly the objects it is given, by their literal keys, and replaces an
object's earlier rows whatever happened to earlier runs, on real Spark and S3."""

from __future__ import annotations

import time

import pytest
from pyspark.sql import functions as F

from gaming_pipeline.lib import ingest
from gaming_pipeline.lib.ingest import ingest_objects, object_uri
from gaming_pipeline.lib.tables import LEDGER_TABLE, QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_history, table_path
from gaming_pipeline_tests.ingest_helpers import CLOSED, events_on, land

pytestmark = pytest.mark.spark


def rows_per_object(spark, warehouse: str, table: str = RAW_TABLE) -> dict[str, int]:
    rows = spark.read.format("delta").load(table_path(warehouse, table))
    return {row._source_object: row["count"] for row in rows.groupBy("_source_object").count().collect()}


def test_keys_are_read_literally_never_as_globs(spark, landing, warehouse):
    # Read as a glob, this key would match its neighbour below ([ab] -> a, * -> -, ? -> !,
    # {c,d} -> c) and not itself.
    literal = land(landing.bucket, "events/odd [ab]*?{c,d} 100% x+y.ndjson.gz", events_on(CLOSED[0], 3, 1))
    neighbour = land(landing.bucket, "events/odd a-!c 100% x+y.ndjson.gz", events_on(CLOSED[0], 5, 2))

    ingest_objects(spark, warehouse, [literal], "literal-run")

    # Spark's file path comes back as the same URI the ledger and replaceWhere use.
    assert rows_per_object(spark, warehouse) == {object_uri(literal): 3}
    ledger = spark.read.format("delta").load(table_path(warehouse, LEDGER_TABLE))
    assert [tuple(row) for row in ledger.select("object", "rows_written").collect()] == [
        (object_uri(literal), 3)
    ]

    # Ingested again, its rows are found and replaced by that URI, and the neighbour reads alone.
    ingest_objects(spark, warehouse, [literal, neighbour], "both-run")
    assert rows_per_object(spark, warehouse) == {object_uri(literal): 3, object_uri(neighbour): 5}
    assert ledger.where(F.col("rows_written") > 0).count() == 2


def test_an_object_overwritten_between_a_killed_run_and_its_retry_keeps_only_its_new_rows(
    spark, landing, warehouse, monkeypatch
):
    key = "events/overwritten.ndjson.gz"
    first = land(landing.bucket, key, events_on(CLOSED[0], 4, 3))

    def killed_before_the_ledger(*args, **kwargs):
        raise KeyboardInterrupt("killed after the raw write, before the ledger")

    with monkeypatch.context() as patch:
        patch.setattr(ingest, "record_in_ledger", killed_before_the_ledger)
        with pytest.raises(KeyboardInterrupt):
            ingest_objects(spark, warehouse, [first], "killed-run")
    assert rows_per_object(spark, warehouse) == {object_uri(first): 4}

    # S3's last-modified times have a resolution of a second: the new version must be later.
    time.sleep(1.1)
    second = land(landing.bucket, key, events_on(CLOSED[1], 2, 4))
    assert second.etag != first.etag
    ingest_objects(spark, warehouse, [second], "retry-run")

    raw = spark.read.format("delta").load(table_path(warehouse, RAW_TABLE))
    assert sorted(raw.select("eventDate", "_ingest_run_id").distinct().collect()) == [
        (CLOSED[1], "retry-run")
    ]
    assert raw.count() == 2


def test_new_objects_are_appended_and_a_run_killed_after_its_quarantine_write_is_retried_exactly_once(
    spark, landing, warehouse, monkeypatch
):
    """Objects no run has written are appended to the quarantine, raw and ledger tables
    (blind appends: nothing read first, no conflict with compaction or erasure); their
    intents are noted before any of those writes, so a retry of a run killed between them
    replaces what it left instead of adding it twice."""
    no_event_time = {"eventName": "levelUp", "eventParams": {"game_keyword": "ninja_run"}}
    first = land(landing.bucket, "events/first.ndjson.gz", [*events_on(CLOSED[0], 4, 5), no_event_time])
    ingest_objects(spark, warehouse, [first], "first-run")
    for table in (QUARANTINE_TABLE, RAW_TABLE, LEDGER_TABLE):
        (last,) = table_history(spark, table_path(warehouse, table), 1).collect()
        assert (last.operation, last.isBlindAppend) == ("WRITE", True), table

    second = land(landing.bucket, "events/second.ndjson.gz", [*events_on(CLOSED[1], 3, 6), no_event_time])
    appended = ingest.append_rows

    def killed_at_the_raw_write(df, path, marker, partition_by=()):
        if path == table_path(warehouse, RAW_TABLE):
            raise KeyboardInterrupt("killed after the quarantine write, before the raw write")
        appended(df, path, marker, partition_by)

    with monkeypatch.context() as patch:
        patch.setattr(ingest, "append_rows", killed_at_the_raw_write)
        with pytest.raises(KeyboardInterrupt):
            ingest_objects(spark, warehouse, [second], "killed-run")
    ingest_objects(spark, warehouse, [second], "retry-run")

    assert rows_per_object(spark, warehouse, QUARANTINE_TABLE) == {
        object_uri(first): 1,
        object_uri(second): 1,
    }
    assert rows_per_object(spark, warehouse) == {object_uri(first): 4, object_uri(second): 3}
    ledger = spark.read.format("delta").load(table_path(warehouse, LEDGER_TABLE))
    assert sorted(
        tuple(row) for row in ledger.select("object", "rows_written", "rows_quarantined").collect()
    ) == [
        (object_uri(first), 4, 1),
        (object_uri(second), 3, 1),
    ]
