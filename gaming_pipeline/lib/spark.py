"""One Spark configuration for runs, the CLI and tests: Delta, s3a, UTC, small-data defaults."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.jars import LOG_STORE_CLASS, require_log_store, runtime_jars
from gaming_pipeline.lib.settings import Settings


def s3a_config(environ: dict[str, str] | None = None) -> dict[str, str]:
    """s3a settings that follow boto3's: the same AWS_ENDPOINT_URL and region.

    With no endpoint set, s3a keeps its defaults and talks to AWS with the usual
    credential chain, exactly as boto3 does.
    """
    endpoint = aws.endpoint("S3", environ)
    region = aws.region(environ)
    conf = {"spark.hadoop.fs.s3a.endpoint.region": region}
    if endpoint:
        conf.update(
            {
                "spark.hadoop.fs.s3a.endpoint": endpoint,
                # Local S3 stand-ins serve buckets by path, not by virtual host.
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": str(
                    urlparse(endpoint).scheme == "https"
                ).lower(),
                # Newer AWS SDKs add checksum headers some non-AWS stores reject.
                "spark.hadoop.fs.s3a.checksum.generation": "false",
                "spark.hadoop.fs.s3a.change.detection.mode": "none",
            }
        )
    return conf


def commit_log_config(table: str, jars: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Delta commits to s3a through the DynamoDB log store, on boto3's endpoint and region.

    S3 alone cannot stop two drivers writing the same commit; a conditional put in the
    DynamoDB table can (see gaming_pipeline/jvm/DynamoDBLogStore.java).
    """
    require_log_store(jars)
    conf = {
        "spark.delta.logStore.s3a.impl": LOG_STORE_CLASS,
        "spark.hadoop.gaming_pipeline.commits.table": table,
        "spark.hadoop.gaming_pipeline.commits.region": aws.region(environ),
    }
    if endpoint := aws.endpoint("DYNAMODB", environ):
        conf["spark.hadoop.gaming_pipeline.commits.endpoint"] = endpoint
    return conf


def is_connect_address(master: str) -> bool:
    """A Spark Connect server's address (`sc://host:port`) rather than a master URL."""
    return master.startswith("sc://")


def spark_config(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """What a run's session is built with: the address of a Spark Connect server to attach
    to, or everything a driver of its own needs (jars, Delta, s3a, small-data defaults)."""
    if is_connect_address(settings.spark_master):
        # The server was started with driver_config; a client only says where it is.
        return {"spark.remote": settings.spark_master}
    return driver_config(settings, environ)


def driver_config(
    settings: Settings, environ: dict[str, str] | None = None, master: str | None = None
) -> dict[str, str]:
    """The configuration of a Spark driver: a run's own, or a Spark Connect server's."""
    jars = runtime_jars()
    conf = {
        "spark.master": master or settings.spark_master,
        "spark.app.name": "gaming_pipeline",
        "spark.jars": ",".join(jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        # eventDate and the hourly KPI windows are UTC days and hours, whatever the host says.
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # At INFO, Spark logs every query's filters and plans with their literals: the device
        # id an erasure looks for, the pseudonym key's pads of ingestion's check.
        "spark.log.level": "WARN",
        # Batches are minutes of events, not terabytes: a few partitions beat the default 200.
        "spark.sql.shuffle.partitions": "4",
        "spark.databricks.delta.snapshotPartitions": "2",
        # VACUUM lists a table's folders in one task per folder up to this many (default
        # 10,000 tasks, most of them empty, even for a small table).
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "8",
        "spark.driver.memory": "4g",
        "spark.sql.warehouse.dir": os.path.join(str(settings.home), "spark-warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={settings.home / 'derby'}",
    }
    if conf["spark.master"].startswith("local"):
        # A local driver serves nobody else: keep its ports on the loopback interface.
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf["spark.driver.host"] = "127.0.0.1"
    conf.update(s3a_config(environ))
    if settings.delta_commit_table:
        conf.update(commit_log_config(settings.delta_commit_table, jars, environ))
    return conf


CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def connect_server_command(settings: Settings, host: str, port: int, master: str) -> list[str]:
    """spark-submit of the Spark Connect server that Spark 4 ships, configured as a run's own
    driver would be. Runs attach to it in a second instead of starting a JVM each and warming
    it up again."""
    import pyspark

    conf = {
        **driver_config(settings, master=master),
        "spark.app.name": "gaming_pipeline Spark Connect server",
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(port),
        # Runs of every pool share the server: their jobs take turns for its task slots, so
        # a batch's raw commit does not wait for a whole follower pass or KPI refresh job.
        "spark.scheduler.mode": "FAIR",
        "spark.scheduler.allocation.file": str(Path(__file__).parent.parent / "jvm" / "fairscheduler.xml"),
    }
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    options = [part for key, value in conf.items() for part in ("--conf", f"{key}={value}")]
    return [submit, "--class", CONNECT_SERVER_CLASS, *options, "spark-internal"]


def start_session(settings: Settings):
    """A SparkSession with the project's configuration (the CLI's and the tests' entry point;
    Dagster runs get theirs from the pyspark resource with the same configuration)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in spark_config(settings).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
