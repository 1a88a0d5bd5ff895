"""Spark on a cluster: a standalone master and two workers on 127.0.0.1, started with
pyspark's own spark-class, and a Spark Connect server whose driver runs its tasks there.
Raw ingestion and the per-game fan-out run on it, into a warehouse on the local S3 endpoint
with commits claimed in DynamoDB, and write exactly the tables that the local session
writes into a local folder from the same landed events."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest

from gaming_pipeline.defs.games.assets import game_tables
from gaming_pipeline.defs.ingest.assets import ingest_landed_objects
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import aws, processes
from gaming_pipeline.lib.aws import free_port
from gaming_pipeline.lib.processes import prepare_dagster_home
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_history, table_path
from gaming_pipeline_tests.ingest_helpers import fingerprints, load_history, own_driver_environ, resources
from gaming_pipeline_tests.test_delta_on_s3 import commit_claims, settled_claims

WORKERS = 2
# The fan-out runs the same code for each game: three of them keep the test within the
# suite's time budget (every table costs a few Delta commits on two cores).
FANNED_OUT = GAMES[:3]
TABLES = [RAW_TABLE, *(game.table_name for game in FANNED_OUT)]
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


def ingest_and_fan_out_locally(landing, warehouse: str) -> list[str]:
    """Both runs in this process on the test session's local Spark; the days they covered."""
    run_resources = resources(landing, warehouse)
    ingested = dg.materialize([ingest_landed_objects], resources=run_resources)
    days = ingested.asset_materializations_for_node("ingest_landed_objects")[0].metadata["event_dates"].value
    fanned = dg.materialize(
        [game_tables],
        selection=[game.table_name for game in FANNED_OUT],
        resources=run_resources,
        tags={
            "dagster/asset_partition_range_start": min(days),
            "dagster/asset_partition_range_end": max(days),
        },
    )
    assert ingested.success and fanned.success
    assert all(check.passed for check in fanned.get_asset_check_evaluations())
    return days


def ingest_and_fan_out_with_the_cli(
    landing, warehouse: str, days: list[str], address: str, work: Path
) -> None:
    """Both runs as a data engineer would start them from a shell, configured by the
    environment alone: the definitions' own resources attach to the cluster's server. (A
    process with a local Spark session cannot open a Spark Connect one too.)"""
    env = own_driver_environ(
        DAGSTER_HOME=str(prepare_dagster_home(work / "dagster")),
        GAMING_PIPELINE_HOME=str(work / "home"),
        GAMING_PIPELINE_WAREHOUSE=warehouse,
        GAMING_PIPELINE_LANDING_BUCKET=landing.bucket,
        GAMING_PIPELINE_QUEUE_URL=landing.queue_url,
        GAMING_PIPELINE_SPARK_MASTER=address,
    )
    materialize = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "gaming_pipeline.definitions",
    ]
    for arguments in (
        ["--select", ",".join(key.to_user_string() for key in ingest_landed_objects.keys)],
        [
            "--select",
            ",".join(game.table_name for game in FANNED_OUT),
            "--partition-range",
            f"{min(days)}...{max(days)}",
        ],
    ):
        with open(work / "materialize.log", "ab") as log:
            finished = subprocess.run(
                [*materialize, *arguments], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        assert finished.returncode == 0, (work / "materialize.log").read_text()[-3000:]


@pytest.mark.slow
def test_ingestion_and_fan_out_on_a_standalone_cluster_equal_local_mode(
    spark, cluster_address, landing, tmp_path
):
    totals = load_history(landing.bucket, seed=41, events=3000, days=2.0)
    lake = f"lake-{uuid.uuid4().hex[:10]}"
    aws.client("s3").create_bucket(Bucket=lake)
    # The cluster's warehouse is on S3: nothing it writes or reads is a path on the driver.
    local, cluster = str(tmp_path / "local"), f"s3a://{lake}/warehouse"
    days = ingest_and_fan_out_locally(landing, local)
    ingest_and_fan_out_with_the_cli(landing, cluster, days, cluster_address, tmp_path)

    on_cluster = fingerprints(spark, cluster, TABLES)
    assert on_cluster[RAW_TABLE][0] == totals.events
    assert on_cluster == fingerprints(spark, local, TABLES)
    for table in TABLES:
        path = table_path(cluster, table)
        versions = [entry.version for entry in table_history(spark, path).collect()]
        assert commit_claims(COMMIT_TABLE, path) == settled_claims(versions), table
