"""What the ingestion tests share: loading generated history and running sensors and runs."""

from __future__ import annotations

import gzip
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.defs.followers.runs import follow_raw_job
from gaming_pipeline.defs.games.assets import game_tables
from gaming_pipeline.defs.ingest.assets import ingest_landed_objects
from gaming_pipeline.defs.ingest.sensors import build_reconcile_sensor
from gaming_pipeline.defs.kpis.activity import activity_tables
from gaming_pipeline.defs.kpis.assets import kpi_tables
from gaming_pipeline.defs.partitions import DAILY, RANGE_END_TAG, RANGE_START_TAG
from gaming_pipeline.defs.resources import (
    LandingBucketResource,
    PiiVaultResource,
    SparkResource,
    WarehouseResource,
)
from gaming_pipeline.lib import aws, charts
from gaming_pipeline.lib.s3_events import LandedObject
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline.local import generator

# Generated history ends yesterday at noon (UTC), so its days are closed. Relative to the clock,
# not a date: late events make the KPIs that follow earlier days refresh from their day
# through today, and from a fixed date those runs grew by a day every day.
HISTORY_END = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(12), UTC)
# What points this process at the test session's Spark Connect server (conftest.py), and
# what pyspark sets in it once it holds a Connect session (a child inheriting that cannot
# start a driver of its own).
SESSION_SPARK_VARIABLES = (
    "SPARK_REMOTE",
    "GAMING_PIPELINE_SPARK_MASTER",
    "SPARK_CONNECT_MODE_ENABLED",
    "SPARK_LOCAL_REMOTE",
)
BAD_OBJECT_KEY = "bulk/2026/11/20/hand made+broken.ndjson.gz"
BAD_LINES = [
    '{"eventName":"gameStart","eventTime":1763640000,"eventParams":{"game_keyword":"ninja_run","device_id":"d-bad"}}',
    "this line is not json",
    '{"eventName":"levelUp","eventTime":null,"eventParams":{"game_keyword":"ninja_run","device_id":"d-bad"}}',
]


def load_history(bucket: str, seed: int = 11, events: int = 4000, days: float = 2.0) -> generator.Totals:
    start, end = generator.history_window(days, HISTORY_END)
    s3 = aws.client("s3")
    objects = generator.landing_objects(generator.history(seed, events, start, end), seed, 700)
    return generator.write_objects(
        objects, lambda key, body: s3.put_object(Bucket=bucket, Key=key, Body=body), generator.Totals()
    )


def fingerprints(spark, warehouse: str, tables: list[str]) -> dict[str, tuple]:
    """Each table's row count and order-free content hash, lineage columns aside (they name
    the run, not the content): equal fingerprints mean equal tables."""

    def fingerprint(table: str) -> tuple:
        df = spark.read.format("delta").load(table_path(warehouse, table))
        df = df.drop(*(c for c in ("_ingested_at", "_ingest_run_id") if c in df.columns))
        return df.select(F.count(F.lit(1)), content_checksum(df)).first()[:]

    # A small job each, mostly Delta's log replay: a few at once.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(tables, pool.map(fingerprint, tables), strict=True))


def _variants_as_json(df) -> list[Column]:
    """The columns of `df`, a VARIANT as its JSON text: Spark cannot hash one, and PySpark's
    VariantVal has no equality."""
    return [
        F.to_json(field.name).alias(field.name)
        if isinstance(field.dataType, T.VariantType)
        else F.col(field.name)
        for field in df.schema.fields
    ]


def content_checksum(df) -> Column:
    """An order-free checksum of every column of every row."""
    return F.sum(F.xxhash64(*_variants_as_json(df)).cast("decimal(38,0)"))


def comparable_rows(df) -> list:
    """The rows of `df`, sorted, to compare with another table's."""
    return sorted(df.select(*_variants_as_json(df)).collect(), key=str)


def put_bad_object(bucket: str) -> None:
    body = gzip.compress(("\n".join(BAD_LINES) + "\n").encode())
    aws.client("s3").put_object(Bucket=bucket, Key=BAD_OBJECT_KEY, Body=body)


def resources(landing: aws.LandingPath | None, warehouse: str) -> dict:
    """What the tests' runs and sensor ticks get; runs of the tables alone need no landing path."""
    tables = {
        "warehouse": WarehouseResource(root=warehouse),
        # The session's own Spark: getOrCreate hands the test session to the run.
        "pyspark": SparkResource(),
    }
    if landing is None:
        return tables
    return {
        **tables,
        "landing": LandingBucketResource(bucket=landing.bucket, queue_url=landing.queue_url),
        "pii_vault": PiiVaultResource(bucket=f"{landing.bucket}-pii"),
    }


def evaluate(
    sensor: dg.SensorDefinition, landing, warehouse: str, instance: dg.DagsterInstance | None = None
) -> list[dg.RunRequest]:
    with dg.build_sensor_context(
        instance=instance or dg.DagsterInstance.ephemeral(), resources=resources(landing, warehouse)
    ) as context:
        result = sensor(context)
    return list(result.run_requests or [])


def run(
    request: dg.RunRequest, landing, warehouse: str, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """An ingestion run as requested, then the follower run the daemon starts after it; the
    ingestion's result."""
    result = ingest_only(request, landing, warehouse, instance)
    follow(warehouse, instance)
    return result


def ingest_only(
    request: dg.RunRequest, landing, warehouse: str, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """An ingestion run as requested, and no follower run after it."""
    result = dg.materialize(
        [ingest_landed_objects],
        run_config=request.run_config,
        resources=resources(landing, warehouse),
        tags=request.tags,
        instance=instance,
    )
    assert result.success
    return result


def follow(warehouse: str, instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    """A follower run (follow_raw_job), as follow_raw_sensor asks for after ingestion."""
    result = follow_raw_job.execute_in_process(resources=resources(None, warehouse), instance=instance)
    assert result.success
    return result


def own_session(spark):
    """A Spark session of its own for a thread that commits beside a follower pass, as each run
    has its own: a pass's transaction is a session setting (Delta's idempotent MERGE)."""
    if os.environ.get("SPARK_REMOTE"):
        from pyspark.sql import SparkSession

        return SparkSession.builder.remote(os.environ["SPARK_REMOTE"]).create()
    return spark.newSession()


DERIVED = [
    game_tables,
    activity_tables,
    kpi_tables,
]


def refresh(
    landing, warehouse, instance, first: str, last: str, assets=DERIVED, selection=None
) -> dg.ExecuteInProcessResult:
    """Materialize the derived tables (those of `selection`, if given) over days [first, last]
    as one run; every check passes and the charted KPIs carry their chart."""
    result = dg.materialize(
        assets,
        selection=selection,
        resources=resources(landing, warehouse),
        instance=instance,
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
    )
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    selected = {key for asset in assets for key in asset.keys if selection is None or key in selection}
    assert len(evaluations) == sum(
        1 for asset in assets for check in asset.check_keys if check.asset_key in selected
    )
    assert {e.check_name: e.metadata for e in evaluations if not e.passed} == {}
    for materialization in result.get_asset_materialization_events():
        chart = charts.CHARTS.get(materialization.asset_key.to_user_string())
        if chart:
            markdown = materialization.materialization.metadata["chart"].value
            assert markdown.startswith(f"![{chart.title}](data:image/png;base64,")
    return result


def covered(request: dg.RunRequest) -> list[str]:
    """The days a refresh run request is for."""
    if request.partition_key:
        return [request.partition_key]
    keys = request.partition_key_range
    return DAILY.get_partition_keys_in_range(dg.PartitionKeyRange(keys.start, keys.end))


def refresh_as_requested(landing, warehouse, instance, requests: list[dg.RunRequest]) -> None:
    """Run the refresh sensor's requests as the daemon would, one after the other."""
    for request in requests:
        days = covered(request)
        refresh(landing, warehouse, instance, days[0], days[-1], selection=request.asset_selection)


def ingest_everything(landing, warehouse, instance) -> None:
    for request in evaluate_reconcile(landing, warehouse, instance):
        run(request, landing, warehouse, instance)


def evaluate_reconcile(landing, warehouse, instance):
    """The reconciling sensor with no grace: every object in the bucket is due."""
    return evaluate(build_reconcile_sensor(grace_seconds=0), landing, warehouse, instance)


# Days relative to the real clock, for maintenance, which treats today as still open.
TODAY = datetime.now(UTC).date()
CLOSED = [TODAY - timedelta(days=2), TODAY - timedelta(days=1)]


def land(bucket: str, key: str, events: list[dict]) -> LandedObject:
    body = gzip.compress(("\n".join(json.dumps(event) for event in events) + "\n").encode())
    s3 = aws.client("s3")
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return LandedObject(bucket, key, s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"'), len(body))


def events_on(day: date, count: int, seed: int) -> list[dict]:
    """`count` generated events within `day` (today: up to a minute ago)."""
    start = datetime.combine(day, time(0, 5), UTC)
    end = min(start + timedelta(hours=23), datetime.now(UTC) - timedelta(minutes=1))
    return list(generator.history(seed, count, start, max(end, start + timedelta(seconds=1))))


def own_driver_environ(**overrides: str) -> dict[str, str]:
    """This process's environment, for a process that starts a Spark driver of its own
    rather than attach to the session's Spark Connect server."""
    kept = {key: value for key, value in os.environ.items() if key not in SESSION_SPARK_VARIABLES}
    return {**kept, **overrides}


def erase(
    player_id: str, resources_: dict, instance: dg.DagsterInstance, **config
) -> dg.ExecuteInProcessResult:
    """Run erase_player_job for a player's pseudonymous id, as the DPO's request."""
    from gaming_pipeline.defs.maintenance.recovery import erase_player_job

    return erase_player_job.execute_in_process(
        run_config={
            "ops": {
                "erase_player": {
                    "config": {"player_id": player_id, "requested_by": "dpo@studio.example", **config}
                }
            }
        },
        resources=resources_,
        instance=instance,
        raise_on_error=False,
    )


def raw_rows(warehouse: str) -> int:
    """The raw table's rows, read with delta-rs (no Spark), 0 before it exists."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_path(warehouse, RAW_TABLE)).count()
    except TableNotFoundError:
        return 0


def commit_claims(commit_table: str, table: str) -> dict[str, str]:
    """A Delta table's claims in the DynamoDB commit table: commit file name -> complete."""
    claims = aws.client("dynamodb").query(
        TableName=commit_table,
        KeyConditionExpression="tablePath = :table",
        ExpressionAttributeValues={":table": {"S": table}},
        ConsistentRead=True,
    )["Items"]
    return {claim["fileName"]["S"]: claim["complete"]["S"] for claim in claims}


def settled_claims(versions) -> dict[str, str]:
    """What commit_claims holds once every one of `versions` is committed."""
    return {f"{version:020d}.json": "true" for version in versions}
