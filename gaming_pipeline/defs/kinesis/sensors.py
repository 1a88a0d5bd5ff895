"""The Kinesis stream named by GAMING_PIPELINE_KINESIS_STREAM, read by a sensor of its own.

Each tick writes what the shards hold past their positions as landing objects (lib/kinesis.py)
and asks for their ingestion, the run tagged with the shards and sequence ranges it takes.
While an ingestion run waits to start, the tick reads nothing: the stream is the buffer, and
the next run takes a larger batch. Unset, there is no such sensor and nothing else changes.
"""

import json
import re
import time

import dagster as dg

from gaming_pipeline.defs.alerts.sensors import deliver
from gaming_pipeline.defs.ingest.assets import ingest_job
from gaming_pipeline.defs.ingest.sensors import (
    TICK_BUDGET_SECONDS,
    WAITING,
    held_objects,
    holding,
    not_yet_ingested,
    pacing,
    run_requests,
)
from gaming_pipeline.defs.resources import (
    AlertWebhookResource,
    LandingBucketResource,
    PiiVaultResource,
    WarehouseResource,
)
from gaming_pipeline.lib.alerts import AlertState, kinesis_alerts
from gaming_pipeline.lib.kinesis import KinesisSource, Positions, ShardRange, stream_name
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.tables import RAW_TABLE

ORIGIN = "kinesis"


def shard_tags(stream: str, ranges: list[ShardRange], iterator_age_ms: dict[str, int]) -> dict[str, str]:
    """The run's tags: the stream, each shard's sequence range, and how far behind the
    stream's newest record the read ended (seconds, the largest of its shards)."""
    shards: dict[str, list[str]] = {}
    for taken in ranges:
        shards.setdefault(taken.shard, []).append(f"{taken.first}-{taken.last}")
    return {
        "gaming_pipeline/kinesis_stream": stream_name(stream),
        "gaming_pipeline/kinesis_shards": " ".join(
            f"{shard}:{','.join(spans)}" for shard, spans in sorted(shards.items())
        )[:4000],
        "gaming_pipeline/kinesis_iterator_age_seconds": f"{max(iterator_age_ms.values(), default=0) / 1000:.1f}",
    }


def shards_observation(
    stream: str, iterator_age_ms: dict[str, int], waiting: list[str]
) -> dg.AssetObservation:
    """On the raw table's page: each shard's iterator age, plotted over time by its largest."""
    rows = "\n".join(f"| {shard} | {age / 1000:.1f} |" for shard, age in sorted(iterator_age_ms.items()))
    return dg.AssetObservation(
        asset_key=RAW_TABLE,
        description=f"Kinesis stream {stream_name(stream)}: how far each shard's read is behind its newest record",
        metadata={
            "kinesis_stream": stream_name(stream),
            "kinesis_iterator_age_seconds": max(iterator_age_ms.values(), default=0) / 1000,
            "kinesis_shards": dg.MetadataValue.md(
                "| shard | iterator age (s) |\n| --- | --- |\n"
                + rows
                + (
                    f"\n\nwaiting for their parents to be read to the end: {', '.join(waiting)}"
                    if waiting
                    else ""
                )
            ),
        },
    )


def build_kinesis_sensor(
    stream: str, batch_interval_seconds: float, alert_age_seconds: float
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"kinesis_{re.sub(r'[^A-Za-z0-9_]', '_', stream_name(stream))}_sensor",
        job=ingest_job,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Reads Kinesis stream {stream_name(stream)} (GAMING_PIPELINE_KINESIS_STREAM) shard by shard, a "
            "parent shard to its end before its children, into landing objects under kinesis/, and requests "
            "their ingestion tagged with shards and sequence ranges. Alerts when records were trimmed "
            f"before they were read, or a shard is more than {alert_age_seconds:.0f} s behind "
            "(GAMING_PIPELINE_KINESIS_ALERT_AGE_SECONDS)."
        ),
    )
    def kinesis_sensor(
        context: dg.SensorEvaluationContext,
        landing: LandingBucketResource,
        warehouse: WarehouseResource,
        pii_vault: PiiVaultResource,
        alert_webhook: AlertWebhookResource,
    ) -> dg.SensorResult:
        return read_stream(
            context,
            stream,
            landing,
            warehouse,
            pii_vault,
            alert_webhook,
            batch_interval_seconds,
            alert_age_seconds,
        )

    return kinesis_sensor


def read_stream(
    context: dg.SensorEvaluationContext,
    stream: str,
    landing: LandingBucketResource,
    warehouse: WarehouseResource,
    pii_vault: PiiVaultResource,
    alert_webhook: AlertWebhookResource,
    batch_interval_seconds: float,
    alert_age_seconds: float,
) -> dg.SensorResult:
    # Only this sensor's ticks need requests: runs, which load this module too, skip importing it.
    import requests as http

    saved = json.loads(context.cursor) if context.cursor else {}
    positions = Positions.from_json(saved.get("positions"))
    alerts = AlertState(said=saved.get("said", []))
    # Erased players' events still on the stream never reach an object: an erasure that ran
    # before they were read could not take them out of one.
    source = KinesisSource(
        landing.kinesis(), landing.s3(), stream, landing.bucket, erased=pii_vault.erased_players()
    )
    # Read on while a run waits for Spark: the objects are a durable buffer, and the shards'
    # iterator ages and alerts stay current. A stream gone (StreamGone) fails the tick with
    # what to do, every tick until it is back.
    delivery = source.deliver(positions, deadline=time.time() + TICK_BUDGET_SECONDS)

    now, ages = time.time(), delivery.iterator_age_ms
    # A shard not read this tick (busy) keeps its spell; one read to its end or gone ends it.
    behind_since = {
        shard: since
        for shard, since in saved.get("behind_since", {}).items()
        if shard not in ages and shard in positions.shards and shard not in positions.drained
    } | {
        shard: saved.get("behind_since", {}).get(shard, now)
        for shard, age in ages.items()
        if age >= alert_age_seconds * 1000
    }
    behind = {shard: (since, ages[shard] / 1000) for shard, since in behind_since.items() if shard in ages}
    try:
        for alert in kinesis_alerts(stream_name(stream), delivery.gaps, behind, alert_age_seconds, alerts):
            deliver(context, alert_webhook, alert, alerts)
    except http.RequestException as error:  # the webhook is down: said again on a later tick
        context.log.error(f"alert delivery failed, will retry: {error}")
    for shard in delivery.throttled:
        context.log.info(
            f"{shard} is busy or failing on Kinesis's side, after retries: read on the next tick"
        )

    new = not_yet_ingested([*held_objects(saved.get("held")), *delivery.objects], warehouse, context.instance)
    wait = (
        "an ingestion run is already waiting to start: the objects read wait to join the next batch"
        if new and context.instance.get_runs_count(dg.RunsFilter(job_name=ingest_job.name, statuses=WAITING))
        else pacing(context.instance, new, batch_interval_seconds)
    )
    requests = (
        []
        if wait
        else run_requests(
            new, origin=ORIGIN, tags=shard_tags(stream, [ShardRange.of_key(obj.key) for obj in new], ages)
        )
    )
    cursor = json.dumps(
        {
            "positions": positions.to_json(),
            "held": holding(new) if wait else "",
            "behind_since": behind_since,
            "said": alerts.said[-200:],
        }
    )
    events = (
        [shards_observation(stream, ages, delivery.waiting_for_parents)] if requests or behind_since else []
    )
    if not requests:
        return dg.SensorResult(
            skip_reason=wait or f"no new records in {len(ages)} shard(s)", cursor=cursor, asset_events=events
        )
    context.log.info(
        f"{delivery.records} record(s) from {len(delivery.objects)} shard read(s) into {len(new)} object(s)"
    )
    return dg.SensorResult(run_requests=requests, cursor=cursor, asset_events=events)


_settings = Settings.from_env()
if _settings.kinesis_stream:
    kinesis_sensor = build_kinesis_sensor(
        _settings.kinesis_stream, _settings.batch_interval_seconds, _settings.kinesis_alert_age_seconds
    )
