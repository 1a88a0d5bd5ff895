"""The queue sensor neither piles up runs nor requests objects an unfinished run already took;
the reconciler asks again, later each time, for objects whose runs failed."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from gaming_pipeline.defs.ingest.sensors import (
    FAILING_AFTER,
    RAW_TRICKLE_SECONDS,
    TRICKLE_BYTES,
    build_queue_sensor,
    build_reconcile_sensor,
    coalescing,
    landing_queue_sensor,
    raw_interval,
)
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline_tests.ingest_helpers import evaluate, land, load_history, resources

pytestmark = pytest.mark.e2e


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, request: dg.RunRequest) -> None:
    instance.add_run(
        dg.DagsterRun(job_name="ingest_landed_objects_job", run_config=request.run_config, status=status)
    )


def test_objects_taken_by_a_started_run_are_not_requested_again(landing, warehouse):
    load_history(landing.bucket, seed=41, events=200, days=0.1)
    with dg.instance_for_test() as instance:
        (request,) = evaluate(build_reconcile_sensor(grace_seconds=0), landing, warehouse, instance)
        add_run(instance, dg.DagsterRunStatus.STARTED, request)
        assert evaluate(build_reconcile_sensor(grace_seconds=0), landing, warehouse, instance) == []
        assert evaluate(landing_queue_sensor, landing, warehouse, instance) == []


def test_while_a_run_waits_new_objects_stay_on_the_queue(landing, warehouse):
    load_history(landing.bucket, seed=42, events=200, days=0.1)
    with dg.instance_for_test() as instance:
        add_run(instance, dg.DagsterRunStatus.NOT_STARTED, dg.RunRequest(run_config={}))
        assert evaluate(landing_queue_sensor, landing, warehouse, instance) == []
        instance.delete_run(instance.get_runs()[0].run_id)
        (request,) = evaluate(landing_queue_sensor, landing, warehouse, instance)
        assert request.run_config["ops"]["ingest_landed_objects"]["config"]["objects"]


def tick(sensor: dg.SensorDefinition, landing, warehouse, instance, cursor=None) -> dg.SensorResult:
    """One evaluation of a sensor, with the cursor its previous tick left."""
    with dg.build_sensor_context(
        instance=instance, resources=resources(landing, warehouse), cursor=cursor
    ) as context:
        return sensor(context)


def taken(request: dg.RunRequest) -> set[str]:
    return {obj["key"] for obj in request.run_config["ops"]["ingest_landed_objects"]["config"]["objects"]}


def test_at_a_trickle_objects_are_held_for_the_next_batch(landing, warehouse):
    load_history(landing.bucket, seed=43, events=200, days=0.1)
    hourly = build_queue_sensor(batch_interval_seconds=3600)
    with dg.instance_for_test() as instance:
        # The first objects after a quiet spell start a run at once...
        (first,) = tick(hourly, landing, warehouse, instance).run_requests
        add_run(instance, dg.DagsterRunStatus.STARTED, first)
        # Nothing waiting is nothing held: said as such, not as a trickle of 0 bytes.
        assert tick(hourly, landing, warehouse, instance).skip_reason.skip_message.endswith("none new")
        # A line, seconds after that run was asked for: a batch would take hours to fill.
        time.sleep(2)
        land(landing.bucket, "events/slow.ndjson.gz", [{"eventName": "levelUp"}])
        # ...those landing slowly after it are held (off the queue, in the cursor), and the
        # reconciler holds them by the same rule...
        held = tick(hourly, landing, warehouse, instance)
        assert not held.run_requests and held.skip_reason.skip_message.startswith("a trickle")
        assert held.cursor
        reconciler = build_reconcile_sensor(grace_seconds=0, batch_interval_seconds=3600)
        assert not tick(reconciler, landing, warehouse, instance).run_requests
        # ...for the next run, which takes them all.
        (second,) = tick(build_queue_sensor(0), landing, warehouse, instance, held.cursor).run_requests
        assert taken(second) and not taken(second) & taken(first)


def test_a_steady_stream_of_small_objects_is_no_trickle(landing, warehouse):
    """Objects of a few kilobytes every few seconds (the demo's ingest service at 300 events/s)
    would fill a batch within the interval: the next run is asked for at once."""
    hourly = build_queue_sensor(batch_interval_seconds=3600)
    line = {"eventName": "levelUp", "eventParams": {"device_id": "d", "game_keyword": "g", "app_name": "a"}}
    with dg.instance_for_test() as instance:
        land(landing.bucket, "events/stream-0.ndjson.gz", [line])
        (first,) = tick(hourly, landing, warehouse, instance).run_requests
        add_run(instance, dg.DagsterRunStatus.SUCCESS, first)
        # Tens of kilobytes a second since that run was asked for: 2 MiB well within the hour.
        for n in range(1, 4):
            land(landing.bucket, f"events/stream-{n}.ndjson.gz", [{**line, "n": i} for i in range(4000)])
        (second,) = tick(hourly, landing, warehouse, instance).run_requests
        assert len(taken(second)) == 3


@pytest.mark.unit
def test_a_trickle_is_a_slow_arrival_rate_not_a_small_last_batch():
    full = TRICKLE_BYTES
    assert coalescing(None, 0, now=1000.0, interval_seconds=120) is None
    assert coalescing(900.0, 300_000, now=1000.0, interval_seconds=120) == (
        "a trickle: 300,000 bytes landed in the 100 s since the last ingestion run was asked for "
        "(3,000 bytes/s; a steady stream brings 17,476); they wait to join one batch, 120 s after "
        "the last"
    )
    # The interval is over, or a full batch is there: a run now.
    assert coalescing(880.0, 300_000, now=1000.0, interval_seconds=120) is None
    assert coalescing(999.0, full, now=1000.0, interval_seconds=120) is None
    assert coalescing(999.0, 10, now=1000.0, interval_seconds=0) is None
    # Small objects arriving fast (120 KB in the 10 s since the last run, at a 300 s interval:
    # 3.6 MB an interval) are a stream; the same bytes over a minute, a trickle.
    assert coalescing(990.0, 120_000, now=1000.0, interval_seconds=300) is None
    assert coalescing(940.0, 120_000, now=1000.0, interval_seconds=300).startswith("a trickle")
    # A trickle's ingestion runs are at most half a minute apart: the batch interval gathers
    # the derived work, not the raw table's.
    assert (
        (raw_interval(300), raw_interval(10), raw_interval(0)) == (RAW_TRICKLE_SECONDS, 10, 0) == (30, 10, 0)
    )


def fail(instance: dg.DagsterInstance, request: dg.RunRequest) -> None:
    """A run of the request that ended in failure, as the daemon records one."""
    run = instance.add_run(
        dg.DagsterRun(
            job_name="ingest_landed_objects_job",
            run_config=request.run_config,
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/run_key": request.run_key},
        )
    )
    instance.report_run_failed(run)


def test_a_failed_batch_is_requested_again_after_a_backoff_and_shown_while_it_keeps_failing(
    landing, warehouse
):
    obj = land(landing.bucket, "events/fails.ndjson.gz", [{"eventName": "e"}])
    patient = build_reconcile_sensor(grace_seconds=0)
    eager = build_reconcile_sensor(grace_seconds=0, retry_backoff_seconds=0)
    with dg.instance_for_test() as instance:
        (first,) = evaluate(patient, landing, warehouse, instance)
        fail(instance, first)
        # Within the backoff nothing is asked for; past it, the same objects under a new key:
        # the failed run's key would never run again.
        assert evaluate(patient, landing, warehouse, instance) == []
        keys = [first.run_key]
        for _ in range(FAILING_AFTER - 1):
            (again,) = evaluate(eager, landing, warehouse, instance)
            assert again.run_config == first.run_config
            assert again.run_key not in keys
            keys.append(again.run_key)
            fail(instance, again)

        result = tick(eager, landing, warehouse, instance)
        (observation,) = result.asset_events
        assert observation.asset_key == dg.AssetKey(RAW_TABLE)
        assert observation.metadata["failing_objects"].value == 1
        assert (
            f"| `s3://{landing.bucket}/{obj.key}` | {FAILING_AFTER} |"
            in observation.metadata["failing"].value
        )
        assert result.cursor == "1"

        # Once no object keeps failing, that is reported once too.
        aws.client("s3").delete_object(Bucket=landing.bucket, Key=obj.key)
        (cleared,) = tick(eager, landing, warehouse, instance, cursor=result.cursor).asset_events
        assert cleared.metadata["failing_objects"].value == 0
        assert tick(eager, landing, warehouse, instance, cursor="0").asset_events == []
