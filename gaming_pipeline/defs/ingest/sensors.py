"""Sensors that turn new landing objects into ingestion runs.

The queue sensor follows S3's notifications (S3 -> SNS -> SQS) for low latency; the
reconciling sensor lists the bucket now and then and catches any object a notification
missed. Both are light: they never start Spark, and they read the ledger with delta-rs.
Requesting an object twice is harmless: ingestion skips what the ledger holds and replaces,
never appends, an object's rows. An object whose run failed is asked for again by the
reconciler, later after each failure, and one that keeps failing is shown on the raw table.
"""

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from gaming_pipeline.defs.ingest.assets import IngestConfig, ingest_job, objects_in_bucket
from gaming_pipeline.defs.resources import LandingBucketResource, WarehouseResource
from gaming_pipeline.lib.ingest import object_uri
from gaming_pipeline.lib.ledger import covers, ingested_objects
from gaming_pipeline.lib.s3_events import LandedObject, parse_message
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.tables import LEDGER_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path

# A run of this many objects is minutes of Firehose output: large enough to amortise a
# Spark job, small enough to retry cheaply.
MAX_OBJECTS_PER_RUN = 500
# A batch smaller than this (about 50,000 events, gzipped NDJSON) is a trickle's: the next
# run waits for the batch interval rather than pay a run's fixed cost for a few objects.
TRICKLE_BYTES = 2 * 1024 * 1024
# At a trickle, the longest a landed object waits for its ingestion run (less if the batch
# interval is shorter): a raw-only run is cheap, and the raw table stays fresh within a
# minute; the derived work is gathered per GAMING_PIPELINE_BATCH_INTERVAL_SECONDS instead
# (defs/followers/runs.py).
RAW_TRICKLE_SECONDS = 30
# Sensor ticks must stay well under Dagster's 60 s limit.
TICK_BUDGET_SECONDS = 20
RECONCILE_GRACE_SECONDS = 120
# After its n-th failed run an object waits base * 2**(n-1) seconds, at most the cap, before
# the reconciler asks for it again: a passing fault heals soon, a lasting one costs little.
RETRY_BACKOFF_SECONDS = 120
MAX_RETRY_BACKOFF_SECONDS = 6 * 3600
# Failed runs read per reconcile tick to count failures: recent enough to keep the tick light.
FAILED_RUNS_LOOKBACK = 50
# Failed this many times, an object is listed on the raw table's page in the UI.
FAILING_AFTER = 3


WAITING = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED]
IN_FLIGHT = [*WAITING, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def requested_objects(run: dg.DagsterRun) -> list[LandedObject]:
    """The objects an ingestion run was asked to take."""
    return [obj.landed() for obj in IngestConfig.of_run(run).objects]


def in_flight(instance: dg.DagsterInstance) -> set[LandedObject]:
    """Objects that ingestion runs not yet finished were asked to take."""
    runs = instance.get_runs(dg.RunsFilter(job_name=ingest_job.name, statuses=IN_FLIGHT))
    return {obj for run in runs for obj in requested_objects(run)}


@dataclass(frozen=True)
class Failures:
    count: int
    # Epoch seconds: when the latest failed run that held the object ended.
    last_failed_at: float

    def retry_due(self, now: float, backoff_seconds: float = RETRY_BACKOFF_SECONDS) -> bool:
        wait = min(backoff_seconds * 2 ** (self.count - 1), MAX_RETRY_BACKOFF_SECONDS)
        return now >= self.last_failed_at + wait


def failures(
    instance: dg.DagsterInstance, lookback: int = FAILED_RUNS_LOOKBACK
) -> dict[LandedObject, Failures]:
    """Per object, the recent failed ingestion runs that held it."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=ingest_job.name, statuses=[dg.DagsterRunStatus.FAILURE]), limit=lookback
    )
    found: dict[LandedObject, Failures] = {}
    for record in records:
        ended = record.end_time or record.update_timestamp.timestamp()
        for obj in requested_objects(record.dagster_run):
            earlier = found.get(obj, Failures(0, ended))
            found[obj] = Failures(earlier.count + 1, max(earlier.last_failed_at, ended))
    return found


def not_yet_ingested(
    objects: list[LandedObject], warehouse: WarehouseResource, instance: dg.DagsterInstance
) -> list[LandedObject]:
    """The objects neither in the ledger (at the same ETag) nor taken by an unfinished run,
    parked objects of unknown games left out."""
    if not objects:
        # A quiet tick reads neither the ledger nor the runs.
        return []
    ledger = ingested_objects(table_path(warehouse.root, LEDGER_TABLE))
    taken = in_flight(instance)
    return sorted(
        obj for obj in set(objects) - taken if not obj.parked and not covers(ledger.get(object_uri(obj)), obj)
    )


def _attempt(obj: LandedObject, failed: Mapping[LandedObject, int]) -> str:
    return f"\t{failed[obj]}" if failed.get(obj) else ""


def run_requests(
    objects: list[LandedObject],
    origin: str,
    failed: Mapping[LandedObject, int] | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[dg.RunRequest]:
    """One run per batch, keyed by the batch's objects and ETags: the same batch asked for
    again (a repeated tick or message) is the same run_key, which Dagster runs only once.
    An object's failed runs so far (`failed`) are part of the key, so a batch asked for again
    after a failure is a new run rather than the failed one's key, never to run again."""
    failed = failed or {}
    requests = []
    for start in range(0, len(objects), MAX_OBJECTS_PER_RUN):
        batch = objects[start : start + MAX_OBJECTS_PER_RUN]
        digest = hashlib.sha256(
            "\n".join(f"{object_uri(obj)}\t{obj.etag}{_attempt(obj, failed)}" for obj in batch).encode()
        ).hexdigest()[:24]
        requests.append(
            dg.RunRequest(
                run_key=f"{origin}:{digest}",
                run_config=IngestConfig.taking(batch),
                tags={
                    "gaming_pipeline/origin": origin,
                    "gaming_pipeline/objects": str(len(batch)),
                    **(tags or {}),
                },
            )
        )
    return requests


def coalescing(
    last_run_created: float | None,
    pending: int,
    now: float,
    interval_seconds: float,
    batch: int = TRICKLE_BYTES,
    what: str = "bytes landed",
    run: str = "ingestion",
) -> str | None:
    """Why the work waiting for a run (`pending` of it: bytes of landing objects by default,
    arrived since the last `run` was asked for at `last_run_created`) should wait for a later
    batch; None: start a run now. The one pacing rule of every sensor that requests runs.

    A trickle is a slow arrival rate, not a small last batch: work that, at the rate it came
    since the last run, would not fill a batch (`batch`) within the interval is gathered into
    one run per `interval_seconds` instead of each piece paying a run's fixed cost. A steady
    stream of small objects (Firehose lands one every few seconds) fills batches faster than
    that, so its runs follow one another; so does the first object after a quiet spell, and a
    full batch."""
    if last_run_created is None or interval_seconds <= 0:
        return None
    elapsed = max(now - last_run_created, 0.0)
    if elapsed >= interval_seconds or pending >= batch:
        return None
    # At this rate, a batch's worth would arrive within the interval: a stream, not a trickle.
    if pending * interval_seconds >= batch * elapsed:
        return None
    rate = pending / elapsed if elapsed else 0.0
    unit = what.split()[0]
    return (
        f"a trickle: {pending:,} {what} in the {elapsed:.0f} s since the last {run} "
        f"run was asked for ({rate:,.0f} {unit}/s; a steady stream brings "
        f"{batch / interval_seconds:,.0f}); they wait to join one batch, "
        f"{interval_seconds:.0f} s after the last"
    )


def raw_interval(batch_interval_seconds: float) -> float:
    """How far apart a trickle's ingestion runs start: RAW_TRICKLE_SECONDS, or the batch
    interval if that is shorter."""
    return min(batch_interval_seconds, RAW_TRICKLE_SECONDS)


def latest_request(instance: dg.DagsterInstance, job_name: str) -> float | None:
    """When the latest run of the job was asked for (epoch seconds); None before the first."""
    latest = instance.get_run_records(dg.RunsFilter(job_name=job_name), limit=1)
    return latest[0].create_timestamp.timestamp() if latest else None


def pacing(
    instance: dg.DagsterInstance, waiting: list[LandedObject], batch_interval_seconds: float
) -> str | None:
    """coalescing's answer for the objects `waiting` to be asked for, after the latest
    ingestion run: why they wait, or None (none wait: nothing to hold). A trickle is an
    arrival rate under TRICKLE_BYTES per batch interval; its objects wait at most the raw
    interval, by when they are that interval's share of a batch."""
    if not waiting:
        return None
    hold = raw_interval(batch_interval_seconds)
    batch = (
        round(TRICKLE_BYTES * hold / batch_interval_seconds) if batch_interval_seconds > 0 else TRICKLE_BYTES
    )
    return coalescing(
        latest_request(instance, ingest_job.name), sum(obj.size for obj in waiting), time.time(), hold, batch
    )


def build_queue_sensor(batch_interval_seconds: float) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_queue_sensor",
        job=ingest_job,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Reads the landing queue (S3 ObjectCreated notifications, through SNS or direct) and "
            "requests an ingestion run for each batch of new objects; at a trickle (objects "
            "arriving slower than a batch per GAMING_PIPELINE_BATCH_INTERVAL_SECONDS), one batch every "
            f"{raw_interval(batch_interval_seconds):.0f} s, the objects held in its cursor meanwhile."
        ),
    )
    def landing_queue_sensor(
        context: dg.SensorEvaluationContext,
        landing: LandingBucketResource,
        warehouse: WarehouseResource,
    ) -> dg.SensorResult:
        return take_queue(context, landing, warehouse, batch_interval_seconds)

    return landing_queue_sensor


def held_objects(cursor: str | None) -> list[LandedObject]:
    """The objects a trickle's tick took off the queue to join a later batch (the cursor)."""
    return [LandedObject(*held) for held in json.loads(cursor)] if cursor else []


def holding(objects: list[LandedObject]) -> str:
    return json.dumps([[obj.bucket, obj.key, obj.etag, obj.size] for obj in objects]) if objects else ""


def take_queue(
    context: dg.SensorEvaluationContext,
    landing: LandingBucketResource,
    warehouse: WarehouseResource,
    batch_interval_seconds: float,
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
                context.log.warning(
                    f"message {message.get('MessageId')} left for the dead-letter queue: {exc!r}"
                )
                continue
            for obj in objects:
                if obj.from_kinesis:
                    continue  # the Kinesis sensor that wrote it asks for it
                if obj.bucket == landing.bucket:
                    announced.append(obj)
                else:
                    context.log.warning(
                        f"message {message.get('MessageId')} announces s3://{obj.bucket}/{obj.key}, "
                        f"outside the landing bucket {landing.bucket}: dropped"
                    )
            handled.append(message)

    new = not_yet_ingested([*held_objects(context.cursor), *announced], warehouse, context.instance)
    wait = pacing(context.instance, new, batch_interval_seconds)
    requests = [] if wait else run_requests(new, origin="queue")
    # Deleted only once the objects are in run requests or held in the cursor: a message
    # lost after this point (the daemon dying before it stores the tick) is still caught by
    # the reconciling sensor, so nothing that landed is missed.
    for start in range(0, len(handled), 10):
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]}
                for i, message in enumerate(handled[start : start + 10])
            ],
        )
    if wait:
        return dg.SensorResult(skip_reason=wait, cursor=holding(new))
    if not requests:
        return dg.SensorResult(
            skip_reason=f"{len(handled)} message(s), {len(announced)} object(s), none new", cursor=""
        )
    context.log.info(f"{len(new)} new object(s) from {len(handled)} message(s) and earlier ticks")
    return dg.SensorResult(run_requests=requests, cursor="")


landing_queue_sensor = build_queue_sensor(Settings.from_env().batch_interval_seconds)


def failing_objects_observation(failing: dict[LandedObject, Failures]) -> dg.AssetObservation:
    """An observation on the raw table: its page in the UI lists the objects that keep
    failing, and plots how many there are over time."""
    rows = "\n".join(
        f"| `{object_uri(obj)}` | {failed.count} | {datetime.fromtimestamp(failed.last_failed_at, UTC):%Y-%m-%d %H:%M:%S} |"
        for obj, failed in sorted(failing.items(), key=lambda item: -item[1].count)
    )
    return dg.AssetObservation(
        asset_key=RAW_TABLE,
        description=f"landing objects whose ingestion failed {FAILING_AFTER} times or more",
        metadata={
            "failing_objects": len(failing),
            "failing": dg.MetadataValue.md(
                "| object | failed runs | last failure (UTC) |\n| --- | --- | --- |\n" + rows
                if failing
                else "none"
            ),
        },
    )


def build_reconcile_sensor(
    grace_seconds: float = RECONCILE_GRACE_SECONDS,
    minimum_interval_seconds: int = 300,
    retry_backoff_seconds: float = RETRY_BACKOFF_SECONDS,
    batch_interval_seconds: float = 0,
) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_reconcile_sensor",
        job=ingest_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Lists the landing bucket and requests ingestion of any object the ledger lacks "
            f"{grace_seconds + raw_interval(batch_interval_seconds):.0f} s after it landed (the queue sensor's "
            "batch interval and a grace): the safety net for lost notifications. "
            "Objects whose run failed are requested again after a backoff that doubles with "
            f"each failure; those failed {FAILING_AFTER} times or more are listed on "
            f"{RAW_TABLE} as an observation."
        ),
    )
    def landing_reconcile_sensor(
        context: dg.SensorEvaluationContext,
        landing: LandingBucketResource,
        warehouse: WarehouseResource,
    ) -> dg.SensorResult:
        # The grace leaves fresh objects to the queue sensor, which is usually seconds behind,
        # and holds a trickle's objects for up to the batch interval: asked for here too at
        # the interval's end, they would be requested twice.
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds + raw_interval(batch_interval_seconds))
        listed = objects_in_bucket(landing, landed_before=cutoff)
        missing = not_yet_ingested(listed, warehouse, context.instance)
        # Failed runs matter only for objects still missing: a tick with none reads no run.
        recent = failures(context.instance) if missing else {}
        failed = {obj: recent[obj] for obj in missing if obj in recent}
        now = time.time()
        due = [
            obj for obj in missing if obj not in failed or failed[obj].retry_due(now, retry_backoff_seconds)
        ]
        # The queue sensor's pacing holds a trickle's objects for up to the batch interval:
        # the same rule here, or the safety net would start the runs the pacing spares.
        wait = pacing(context.instance, due, batch_interval_seconds)
        requests = (
            []
            if wait
            else run_requests(due, origin="reconcile", failed={obj: f.count for obj, f in failed.items()})
        )

        failing = {obj: found for obj, found in failed.items() if found.count >= FAILING_AFTER}
        # Reported while any object keeps failing, and once more when none does any longer.
        reported = bool(failing) or context.cursor not in (None, "", "0")
        events = [failing_objects_observation(failing)] if reported else []
        if failing:
            context.log.warning(
                f"{len(failing)} landing object(s) failed ingestion {FAILING_AFTER} times or more: "
                + ", ".join(object_uri(obj) for obj in sorted(failing)[:10])
            )
        waiting = len(missing) - len(due)
        if not requests:
            return dg.SensorResult(
                skip_reason=wait
                or (
                    f"all {len(listed)} object(s) are in the ledger"
                    if not missing
                    else f"{waiting} object(s) wait to be retried after failed runs"
                ),
                asset_events=events,
                cursor=str(len(failing)),
            )
        context.log.warning(
            f"{len(missing)} landed object(s) missing from the ledger"
            + (f", {waiting} of them waiting to be retried after failed runs" if waiting else "")
        )
        return dg.SensorResult(run_requests=requests, asset_events=events, cursor=str(len(failing)))

    return landing_reconcile_sensor


landing_reconcile_sensor = build_reconcile_sensor(
    batch_interval_seconds=Settings.from_env().batch_interval_seconds
)
