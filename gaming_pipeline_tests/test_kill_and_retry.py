"""A run killed with SIGKILL after committing part of its work, then retried, leaves the
tables exactly as one clean run does: an ingestion run, and a follower pass."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from gaming_pipeline.defs.ingest.assets import objects_in_bucket
from gaming_pipeline.defs.resources import LandingBucketResource
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib.follow import follow, plan
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.kpis import ACTIVITY_TABLES, GAME_HOURS, PLAYER_DAYS
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import LEDGER_TABLE, QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests.ingest_helpers import (
    fingerprints,
    load_history,
    own_driver_environ,
    put_bad_object,
)
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


# A follower pass in its own process (its own JVM), like a follower run.
FOLLOW_SCRIPT = """
import sys
from gaming_pipeline.lib.follow import follow
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.spark import start_session
home, warehouse = sys.argv[1], sys.argv[2]
follow(start_session(Settings.from_env({"GAMING_PIPELINE_HOME": home})), warehouse, "doomed-follower")
"""


@pytest.mark.slow
def test_a_follower_pass_killed_midway_is_repeated_and_adds_each_batch_once(spark, landing, tmp_path):
    """Ingestion commits, then the follower pass that adds the batch to the derived tables is
    killed before its last write (player_state), every other table written: the next pass
    repeats it, the tables it had reached skip their writes, player_state takes the players'
    days from the killed pass's merge, and every derived table equals that of one clean pass."""
    load_history(landing.bucket, seed=23, events=2000, days=1.0)
    objects = objects_in_bucket(LandingBucketResource(bucket=landing.bucket))
    clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
    ingest_objects(spark, killed, objects, "ingest-run")
    # The same ingestion in both: a copy of the warehouse (Delta's log names its files
    # relative to the table) instead of ingesting the batch twice.
    shutil.copytree(killed, clean)
    follow(spark, clean, "clean-follower")

    # Version 0 is the table's creation; version 1 the pass's merge, its last write but one.
    merged = Path(table_path(killed, PLAYER_DAYS)) / "_delta_log" / "00000000000000000001.json"
    process = subprocess.Popen(
        [sys.executable, "-c", FOLLOW_SCRIPT, str(tmp_path / "home"), killed],
        env=own_driver_environ(),
        start_new_session=True,
    )
    try:
        wait_until(
            merged.exists, 240, "the pass's merge of the players' days", interval=0.02, alive=[process]
        )
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    step = plan(spark, killed)
    assert step.repeated and step.objects, "the kill came after the pass was whole"

    follow(spark, killed, "retry-follower")
    followers = [
        *(game.table_name for game in GAMES if Path(table_path(clean, game.table_name)).exists()),
        *ACTIVITY_TABLES,
        PLAYER_STATE_TABLE,
    ]
    assert fingerprints(spark, killed, followers) == fingerprints(spark, clean, followers)
    assert fingerprints(spark, killed, [GAME_HOURS])[GAME_HOURS][0] > 0
    # And a pass after them has nothing left to add.
    assert not follow(spark, killed, "idle-follower").added
