"""The queue sensor neither piles up runs nor requests objects an unfinished run already took."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun

from gaming_pipeline.defs.ingest.sensors import build_reconcile_sensor, landing_queue_sensor
from gaming_pipeline_tests.ingest_helpers import evaluate, load_history


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, request: dg.RunRequest) -> None:
    instance.add_run(
        DagsterRun(job_name="ingest_landed_objects_job", run_config=request.run_config, status=status)
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
