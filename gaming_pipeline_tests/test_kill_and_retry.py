"""A run killed with SIGKILL after committing part of its work, then retried, leaves the
tables exactly as one clean run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from gaming_pipeline.defs.ingest.assets import objects_in_bucket
from gaming_pipeline.defs.resources import LandingBucketResource
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.tables import LEDGER_TABLE, QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests.ingest_helpers import load_history, own_driver_environ, put_bad_object
from gaming_pipeline_tests.service_helpers import wait_until

# Runs the ingestion in its own process (its own JVM), like a Dagster run would.
INGEST_SCRIPT = """
import json, sys
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.s3_events import LandedObject
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.spark import start_session
home, warehouse, objects = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spark = start_session(Settings.from_env({"GAMING_PIPELINE_HOME": home}))
ingest_objects(spark, warehouse, [LandedObject(*obj) for obj in objects], "doomed-run")
"""
LINEAGE = ("_ingested_at", "_ingest_run_id", "_quarantined_at")

pytestmark = pytest.mark.spark


def content(spark, warehouse: str, table: str):
    df = spark.read.format("delta").load(table_path(warehouse, table))
    return df.drop(*[column for column in LINEAGE if column in df.columns])


@pytest.mark.slow
def test_killed_run_retried_equals_a_clean_run(spark, landing, tmp_path):
    load_history(landing.bucket, seed=21, events=3000, days=1.0)
    put_bad_object(landing.bucket)
    objects = objects_in_bucket(LandingBucketResource(bucket=landing.bucket))

    clean = str(tmp_path / "clean")
    ingest_objects(spark, clean, objects, "clean-run")

    killed = str(tmp_path / "killed")
    raw_log = Path(table_path(killed, RAW_TABLE)) / "_delta_log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            INGEST_SCRIPT,
            str(tmp_path / "home"),
            killed,
            json.dumps([[o.bucket, o.key, o.etag, o.size] for o in objects]),
        ],
        env=own_driver_environ(),
        start_new_session=True,
    )
    # Version 0 creates the table; version 1 is the run's data. Kill right after it lands,
    # before the ledger records anything.
    wait_until(
        (raw_log / "00000000000000000001.json").exists,
        240,
        "the run's data commit",
        interval=0.02,
        alive=[process],
    )
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    ingest_objects(spark, killed, objects, "retry-run")

    for table in (RAW_TABLE, QUARANTINE_TABLE):
        assertDataFrameEqual(content(spark, killed, table), content(spark, clean, table))
    ledger = content(spark, killed, LEDGER_TABLE).select("object", "etag", "rows_in", "rows_written")
    assertDataFrameEqual(
        ledger, content(spark, clean, LEDGER_TABLE).select("object", "etag", "rows_in", "rows_written")
    )
    assert ledger.agg(F.sum("rows_in")).first()[0] == 3003
