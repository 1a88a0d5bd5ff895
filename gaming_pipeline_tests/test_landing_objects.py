"""Ingestion reads exactly the objects it is given, by their literal keys, and replaces an
object's earlier rows whatever happened to earlier runs, on real Spark and S3."""

from __future__ import annotations

import time

import pytest
from pyspark.sql import functions as F

from gaming_pipeline.lib import ingest
from gaming_pipeline.lib.ingest import ingest_objects, object_uri
from gaming_pipeline.lib.warehouse import LEDGER_TABLE, RAW_TABLE, table_path
from gaming_pipeline_tests.ingest_helpers import CLOSED, events_on, land

pytestmark = pytest.mark.spark


def rows_per_object(spark, warehouse: str) -> dict[str, int]:
    raw = spark.read.format("delta").load(table_path(warehouse, RAW_TABLE))
    return {row._source_object: row["count"] for row in raw.groupBy("_source_object").count().collect()}


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
        patch.setattr(ingest, "upsert", killed_before_the_ledger)
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
