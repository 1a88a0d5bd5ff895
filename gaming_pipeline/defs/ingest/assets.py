"""Landing objects in S3 become rows of mobile_events_delta_raw, exactly once."""

import time
from datetime import datetime

import dagster as dg
from pydantic import Field

from gaming_pipeline.defs.partitions import REBUILD_DATES
from gaming_pipeline.defs.pools import INGEST_POOL
from gaming_pipeline.defs.resources import (
    LandingBucketResource,
    PiiVaultResource,
    SparkResource,
    WarehouseResource,
)
from gaming_pipeline.lib.ingest import IngestResult, ingest_objects
from gaming_pipeline.lib.s3_events import LandedObject
from gaming_pipeline.lib.tables import INTENT_TABLE, LEDGER_TABLE, QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path

INGEST_GROUP = "ingest"
# The ingestion step, by which the sensors address its config in a run request.
INGEST_STEP = "ingest_landed_objects"


class LandedObjectConfig(dg.Config):
    bucket: str
    key: str
    etag: str = ""
    size: int = 0

    @classmethod
    def of(cls, obj: LandedObject) -> "LandedObjectConfig":
        return cls(bucket=obj.bucket, key=obj.key, etag=obj.etag, size=obj.size)

    def landed(self) -> LandedObject:
        return LandedObject(self.bucket, self.key, self.etag, self.size)


class IngestConfig(dg.Config):
    objects: list[LandedObjectConfig] = Field(
        default=[],
        description=(
            "Landing objects to ingest, as the sensors request them. Leave empty to ingest "
            "every object in the landing bucket that the ledger does not hold yet."
        ),
    )

    @classmethod
    def taking(cls, objects: list[LandedObject]) -> dg.RunConfig:
        """The run config of an ingestion run asked to take `objects`."""
        return dg.RunConfig(ops={INGEST_STEP: cls(objects=[LandedObjectConfig.of(obj) for obj in objects])})

    @classmethod
    def of_run(cls, run: dg.DagsterRun) -> "IngestConfig":
        """The config an ingestion run was started with."""
        return cls(**run.run_config.get("ops", {}).get(INGEST_STEP, {}).get("config", {}))


def objects_in_bucket(
    landing: LandingBucketResource, landed_before: datetime | None = None
) -> list[LandedObject]:
    """The objects in the landing bucket (those landed before a time, if given), with the
    ETag the ledger compares against. Folder markers are not objects to ingest."""
    # Here, not at the top: dagster_aws's package imports all its components (with SQLAlchemy,
    # Alembic and Dagster's test utilities), and only the runs and ticks that list the bucket need it.
    from dagster_aws.s3.sensor import get_objects

    return [
        LandedObject(landing.bucket, obj["Key"], obj["ETag"].strip('"'), obj["Size"])
        for obj in get_objects(bucket=landing.bucket, client=landing.s3())
        if not obj["Key"].endswith("/") and (landed_before is None or obj["LastModified"] <= landed_before)
    ]


def _table_metadata(warehouse: WarehouseResource, table: str) -> dict:
    return {"dagster/uri": table_path(warehouse.root, table), "dagster/table_name": table}


@dg.multi_asset(
    name=INGEST_STEP,
    specs=[
        dg.AssetSpec(
            RAW_TABLE,
            group_name=INGEST_GROUP,
            kinds={"spark", "delta", "s3"},
            description=(
                "Every game event as it landed: one row per event, partitioned by `eventDate` "
                "(the UTC day of `eventTime`). `eventParams` keeps the clients' struct "
                "(game_keyword, app_name, scoreAdjustment, platform, app_version, device_id, "
                "client_event_time, amount), so the seed's queries run unchanged, e.g. "
                "`select count (distinct eventParams.device_id) as DAU from "
                "mobile_events_delta_raw where to_date(eventTime) = current_date`. "
                "`_source_object` and `_ingested_at` say where and when each row came from. "
                "Refreshed by the landing sensors within seconds of an object landing; at a "
                "trickle, objects share one run every GAMING_PIPELINE_BATCH_INTERVAL_SECONDS. "
                "The per-game, activity and player tables follow it in runs of their own "
                "(follow_raw_job), which never hold its next batch."
            ),
        ),
        dg.AssetSpec(
            QUARANTINE_TABLE,
            group_name=INGEST_GROUP,
            kinds={"spark", "delta"},
            description=(
                "Landing lines that could not become events: not JSON, a required field "
                "missing (eventName, eventParams, eventTime), a field of the wrong type, or an "
                "eventTime that is not a time. Each keeps its line, `reason` and source object; "
                "nothing is dropped silently. Lines carrying PII keep only their reason."
            ),
        ),
        dg.AssetSpec(
            LEDGER_TABLE,
            group_name=INGEST_GROUP,
            kinds={"spark", "delta"},
            description=(
                "One row per landing object taken in: key, ETag, run, the Delta versions it "
                "was written in, and rows in / written / quarantined. An object in the ledger "
                "is never ingested twice."
            ),
        ),
        dg.AssetSpec(
            INTENT_TABLE,
            group_name=INGEST_GROUP,
            kinds={"spark", "delta"},
            description=(
                "Bookkeeping, not for analysis: the last-modified time of each landing object "
                "version whose rows a run began to write, noted before the write. A run killed "
                "between its write and the ledger leaves rows the ledger does not know; the "
                "retry finds and replaces them through this table, even if the object was "
                "overwritten meanwhile."
            ),
        ),
    ],
    pool=INGEST_POOL,
)
def ingest_landed_objects(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    landing: LandingBucketResource,
    warehouse: WarehouseResource,
    pii_vault: PiiVaultResource,
    pyspark: SparkResource,
):
    """Read the run's landing objects from S3, parse them with the event schema (leaving
    out the events of erased players), and commit
    their rows to the raw table and their bad lines to quarantine, then record them in the
    ledger."""
    objects = [obj.landed() for obj in config.objects] or objects_in_bucket(landing)
    foreign = sorted({obj.bucket for obj in objects} - {landing.bucket})
    if foreign:
        # Only the landing bucket's objects are ingested: a run must not become a way to
        # copy any readable bucket into the tables.
        raise dg.Failure(
            f"objects outside the landing bucket {landing.bucket} requested (buckets {foreign}): "
            "nothing ingested"
        )
    context.log.info(f"{len(objects)} landing object(s) requested")
    attaching = time.monotonic()
    spark = pyspark.spark_session
    # A Spark Connect client connects lazily: asking the version is the round trip that
    # makes "ready" mean ready.
    version = spark.version
    # How long a run waits for Spark: seconds for a fresh driver, less attached to a server.
    context.log.info(f"Spark session ready in {time.monotonic() - attaching:.1f} s (Spark {version})")
    result: IngestResult = ingest_objects(
        spark, warehouse.root, objects, context.run.run_id, pii_vault.erased_players()
    )
    context.log.info(
        f"{result.objects} object(s) ingested ({result.objects_already_ingested} already in the "
        f"ledger): {result.rows_in} lines -> {result.rows_written} rows, "
        f"{result.rows_quarantined} quarantined, in {result.seconds:.1f} s"
    )
    counts = {
        "objects": result.objects,
        "objects_already_ingested": result.objects_already_ingested,
        "rows_in": result.rows_in,
        "rows_written": result.rows_written,
        "rows_quarantined": result.rows_quarantined,
        "rows_missing_event_time": result.rows_missing_event_time,
        "seconds": round(result.seconds, 2),
        "seconds_by_stage": result.stages.rounded(),
    }
    yield dg.MaterializeResult(
        asset_key=RAW_TABLE,
        metadata={
            **counts,
            **_table_metadata(warehouse, RAW_TABLE),
            "delta_version": result.raw_version,
            REBUILD_DATES: [day.isoformat() for day in result.rebuild_dates],
            "rows_per_second": round(result.rows_in / result.seconds) if result.seconds else 0,
        },
    )
    yield dg.MaterializeResult(
        asset_key=QUARANTINE_TABLE,
        metadata={
            "rows_quarantined": result.rows_quarantined,
            "delta_version": result.quarantine_version,
            **_table_metadata(warehouse, QUARANTINE_TABLE),
        },
    )
    yield dg.MaterializeResult(
        asset_key=LEDGER_TABLE,
        metadata={"objects": result.objects, **_table_metadata(warehouse, LEDGER_TABLE)},
    )
    yield dg.MaterializeResult(asset_key=INTENT_TABLE, metadata=_table_metadata(warehouse, INTENT_TABLE))


ingest_job = dg.define_asset_job(
    "ingest_landed_objects_job",
    selection=dg.AssetSelection.assets(ingest_landed_objects),
    description="Ingest a batch of landing objects; the landing sensors launch it.",
)
