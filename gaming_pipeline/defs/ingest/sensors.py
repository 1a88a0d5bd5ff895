"""Sensors that turn new landing objects into ingestion runs.

The queue sensor follows S3's notifications (S3 -> SNS -> SQS) for low latency; the
reconciling sensor lists the bucket now and then and catches any object a notification
missed. Both are light: they never start Spark, and they read the ledger with delta-rs.
Requesting an object twice is harmless: ingestion skips what the ledger holds and replaces,
never appends, an object's rows.
"""

import hashlib
import time
from datetime import UTC, datetime, timedelta

import dagster as dg

from gaming_pipeline.defs.ingest.assets import ingest_job, objects_in_bucket
from gaming_pipeline.defs.resources import LandingBucketResource, WarehouseResource
from gaming_pipeline.lib.ingest import object_uri
from gaming_pipeline.lib.ledger import ingested_objects
from gaming_pipeline.lib.s3_events import LandedObject, parse_message
from gaming_pipeline.lib.warehouse import LEDGER_TABLE, table_path

# A run of this many objects is minutes of Firehose output: large enough to amortise a
# Spark job, small enough to retry cheaply.
MAX_OBJECTS_PER_RUN = 500
# Sensor ticks must stay well under Dagster's 60 s limit.
TICK_BUDGET_SECONDS = 20
RECONCILE_GRACE_SECONDS = 120


WAITING = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED]
IN_FLIGHT = [*WAITING, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def in_flight(instance: dg.DagsterInstance) -> set[LandedObject]:
    """Objects that ingestion runs not yet finished were asked to take."""
    runs = instance.get_runs(dg.RunsFilter(job_name=ingest_job.name, statuses=IN_FLIGHT))
    return {
        LandedObject(**obj)
        for run in runs
        for obj in run.run_config.get("ops", {})
        .get("ingest_landed_objects", {})
        .get("config", {})
        .get("objects", [])
    }


def not_yet_ingested(
    objects: list[LandedObject], warehouse: WarehouseResource, instance: dg.DagsterInstance
) -> list[LandedObject]:
    """The objects neither in the ledger (at the same ETag) nor taken by an unfinished run,
    parked objects of unknown games left out."""
    ledger = ingested_objects(table_path(warehouse.root, LEDGER_TABLE))
    taken = in_flight(instance)
    return sorted(
        obj
        for obj in set(objects) - taken
        if not obj.parked and (ledger.get(object_uri(obj)) != obj.etag or not obj.etag)
    )


def run_requests(objects: list[LandedObject], origin: str) -> list[dg.RunRequest]:
    """One run per batch, keyed by the batch's objects and ETags: the same batch asked for
    again (a repeated tick or message) is the same run_key, which Dagster runs only once."""
    requests = []
    for start in range(0, len(objects), MAX_OBJECTS_PER_RUN):
        batch = objects[start : start + MAX_OBJECTS_PER_RUN]
        digest = hashlib.sha256(
            "\n".join(f"{object_uri(obj)}\t{obj.etag}" for obj in batch).encode()
        ).hexdigest()[:24]
        requests.append(
            dg.RunRequest(
                run_key=f"{origin}:{digest}",
                run_config={
                    "ops": {
                        "ingest_landed_objects": {
                            "config": {
                                "objects": [
                                    {"bucket": o.bucket, "key": o.key, "etag": o.etag, "size": o.size}
                                    for o in batch
                                ]
                            }
                        }
                    }
                },
                tags={"gaming_pipeline/origin": origin, "gaming_pipeline/objects": str(len(batch))},
            )
        )
    return requests


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Reads the landing queue (S3 ObjectCreated notifications, through SNS or direct) and "
        "requests an ingestion run for each batch of new objects."
    ),
)
def landing_queue_sensor(
    context: dg.SensorEvaluationContext,
    landing: LandingBucketResource,
    warehouse: WarehouseResource,
) -> dg.SensorResult:
    waiting = context.instance.get_runs_count(dg.RunsFilter(job_name=ingest_job.name, statuses=WAITING))
    if waiting:
        # Backpressure: while a run waits for the Spark slot, new objects stay on the queue
        # and join one larger batch, instead of piling up runs faster than they finish.
        return dg.SensorResult(skip_reason="an ingestion run is already waiting to start")
    sqs = landing.sqs()
    queue_url = landing.resolved_queue_url()
    deadline = time.monotonic() + TICK_BUDGET_SECONDS
    announced: list[LandedObject] = []
    handled: list[dict] = []
    while len(announced) < MAX_OBJECTS_PER_RUN * 4 and time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        if not messages:
            break
        for message in messages:
            try:
                objects = parse_message(message["Body"])
            except Exception as exc:
                # One bad message must not hold back the good ones received with it: it is
                # left on the queue alone, and after a few receives SQS moves it to the
                # dead-letter queue.
                context.log.warning(f"message {message.get('MessageId')} left for the dead-letter queue: {exc!r}")
                continue
            for obj in objects:
                if obj.bucket == landing.bucket:
                    announced.append(obj)
                else:
                    context.log.warning(
                        f"message {message.get('MessageId')} announces s3://{obj.bucket}/{obj.key}, "
                        f"outside the landing bucket {landing.bucket}: dropped"
                    )
            handled.append(message)

    new = not_yet_ingested(announced, warehouse, context.instance)
    requests = run_requests(new, origin="queue")
    # Deleted only once the run requests exist; a message lost after this point is still
    # caught by the reconciling sensor, so nothing that landed is missed.
    for start in range(0, len(handled), 10):
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]}
                for i, message in enumerate(handled[start : start + 10])
            ],
        )
    if not requests:
        return dg.SensorResult(skip_reason=f"{len(handled)} message(s), {len(announced)} object(s), none new")
    context.log.info(f"{len(new)} new object(s) from {len(handled)} message(s)")
    return dg.SensorResult(run_requests=requests)


def build_reconcile_sensor(
    grace_seconds: float = RECONCILE_GRACE_SECONDS, minimum_interval_seconds: int = 300
) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_reconcile_sensor",
        job=ingest_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Lists the landing bucket and requests ingestion of any object the ledger lacks "
            f"{grace_seconds:.0f} s after it landed: the safety net for lost notifications."
        ),
    )
    def landing_reconcile_sensor(
        context: dg.SensorEvaluationContext,
        landing: LandingBucketResource,
        warehouse: WarehouseResource,
    ) -> dg.SensorResult:
        # The grace leaves fresh objects to the queue sensor, which is usually seconds behind.
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
        listed = objects_in_bucket(landing, landed_before=cutoff)
        missing = not_yet_ingested(listed, warehouse, context.instance)
        requests = run_requests(missing, origin="reconcile")
        if not requests:
            return dg.SensorResult(skip_reason=f"all {len(listed)} object(s) are in the ledger")
        context.log.warning(f"{len(missing)} landed object(s) missing from the ledger")
        return dg.SensorResult(run_requests=requests)

    return landing_reconcile_sensor


landing_reconcile_sensor = build_reconcile_sensor()
