"""Spark on a cluster: a standalone master and two workers on 127.0.0.1, started with
pyspark's own spark-class, and a Spark Connect server whose driver runs its tasks there.
Ingestion and the follower run after it run on it (the raw table, then the batch's fan-out
to the per-game and activity tables), into a warehouse on the local S3 endpoint with commits claimed in DynamoDB, and
writes exactly the tables that the local session writes into a local folder from the same
landed events."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from gaming_pipeline.defs.ingest.assets import ingest_landed_objects
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.kpis import ACTIVITY_TABLES
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_history, table_path
from gaming_pipeline.local import processes
from gaming_pipeline.local.ports import free_port
from gaming_pipeline.local.processes import prepare_dagster_home
from gaming_pipeline_tests.ingest_helpers import (
    commit_claims,
    fingerprints,
    follow,
    load_history,
    own_driver_environ,
    resources,
    settled_claims,
)

WORKERS = 2
# What an ingestion run writes from the events themselves (the ledger and intents name the run).
TABLES = [RAW_TABLE, *(game.table_name for game in GAMES), *ACTIVITY_TABLES]
COMMIT_TABLE = f"delta-commits-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def cluster_address(local_aws, session_home, tmp_path_factory):
    """A Spark Connect server whose driver's master is a standalone cluster of two workers,
    committing to s3a through the DynamoDB log store."""
    work = tmp_path_factory.mktemp("standalone")
    # Everything on loopback, and executors run this interpreter for any Python they need.
    env = own_driver_environ(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    master_url = f"spark://127.0.0.1:{free_port()}"
    started = [
        processes.start(
            [
                "spark-class",
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                master_url.rsplit(":", 1)[1],
                "--webui-port",
                str(free_port()),
            ],
            env,
            work / "master.log",
        )
    ]
    try:
        processes.wait_until_serving(master_url, 120, started[0], work / "master.log")
        for worker in range(WORKERS):
            started.append(
                processes.start(
                    [
                        "spark-class",
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "1",
                        "--memory",
                        "2g",
                        "--webui-port",
                        str(free_port()),
                        "--work-dir",
                        str(work / f"worker-{worker}"),
                        master_url,
                    ],
                    env,
                    work / f"worker-{worker}.log",
                )
            )
        server, address = processes.start_spark_server(
            {
                **env,
                "GAMING_PIPELINE_HOME": str(session_home),
                "GAMING_PIPELINE_DELTA_COMMIT_TABLE": COMMIT_TABLE,
            },
            work / "server.log",
            master=master_url,
        )
        started.append(server)
        processes.wait_until_serving(address, 180, server, work / "server.log")
        yield address
    finally:
        processes.stop(started)


def ingest_locally(landing, warehouse: str) -> None:
    """The ingestion run and the follower run in this process, on the test session's Spark."""
    assert dg.materialize([ingest_landed_objects], resources=resources(landing, warehouse)).success
    follow(warehouse)


def ingest_with_the_cli(landing, warehouse: str, address: str, work: Path) -> None:
    """The ingestion run and the follower run as a data engineer would start them from a
    shell, configured by the environment alone: the definitions' own resources attach to the cluster's server. (A
    process with a local Spark session cannot open a Spark Connect one too.)"""
    env = own_driver_environ(
        DAGSTER_HOME=str(prepare_dagster_home(work / "dagster")),
        GAMING_PIPELINE_HOME=str(work / "home"),
        GAMING_PIPELINE_WAREHOUSE=warehouse,
        GAMING_PIPELINE_LANDING_BUCKET=landing.bucket,
        GAMING_PIPELINE_QUEUE_URL=landing.queue_url,
        GAMING_PIPELINE_SPARK_MASTER=address,
    )
    selection = ",".join(key.to_user_string() for key in ingest_landed_objects.keys)
    dagster = str(Path(sys.executable).parent / "dagster")
    for command in (
        [dagster, "asset", "materialize", "-m", "gaming_pipeline.definitions", "--select", selection],
        [dagster, "job", "execute", "-m", "gaming_pipeline.definitions", "-j", "follow_raw_job"],
    ):
        with open(work / "materialize.log", "ab") as log:
            finished = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        assert finished.returncode == 0, (work / "materialize.log").read_text()[-3000:]


@pytest.mark.slow
def test_ingestion_and_fan_out_on_a_standalone_cluster_equal_local_mode(
    spark, cluster_address, landing, tmp_path
):
    totals = load_history(landing.bucket, seed=41, events=1500, days=1.0)
    lake = f"lake-{uuid.uuid4().hex[:10]}"
    aws.client("s3").create_bucket(Bucket=lake)
    # The cluster's warehouse is on S3: nothing it writes or reads is a path on the driver.
    local, cluster = str(tmp_path / "local"), f"s3a://{lake}/warehouse"
    ingest_locally(landing, local)
    ingest_with_the_cli(landing, cluster, cluster_address, tmp_path)

    on_cluster = fingerprints(spark, cluster, TABLES)
    assert on_cluster[RAW_TABLE][0] == totals.events
    assert on_cluster == fingerprints(spark, local, TABLES)
    for table in TABLES:
        path = table_path(cluster, table)
        versions = [entry.version for entry in table_history(spark, path).collect()]
        assert commit_claims(COMMIT_TABLE, path) == settled_claims(versions), table
