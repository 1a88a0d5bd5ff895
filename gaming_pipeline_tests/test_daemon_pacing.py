"""Pacing by arrival rate through the real daemon (issue 40): a steady stream of small objects
has its ingestion runs follow one another, none held as a trickle; a real trickle (small
objects soon after a run) is gathered into one run. The rule itself is unit-tested in
test_sensor_backpressure.py; here the daemon's own ticks and runs are read."""

from __future__ import annotations

import time

import dagster as dg
import pytest
from dagster._core.definitions.run_request import InstigatorType

from gaming_pipeline.defs.ingest.sensors import RAW_TRICKLE_SECONDS, TRICKLE_BYTES, requested_objects
from gaming_pipeline.local.processes import start_daemon_for, stop
from gaming_pipeline_tests.ingest_helpers import TODAY, events_on, land, raw_rows
from gaming_pipeline_tests.service_helpers import wait_until

JOB = "ingest_landed_objects_job"
QUEUE_SENSOR = "landing_queue_sensor"
# Long enough that the raw interval (RAW_TRICKLE_SECONDS) is the hold, and a stream is
# anything over TRICKLE_BYTES per interval: 2 MiB in 10 minutes, about 3.5 KB/s.
BATCH_INTERVAL_SECONDS = 600
STREAM_OBJECTS, STREAM_EVERY_SECONDS, STREAM_EVENTS = 12, 2.0, 400


def queue_sensor_ticks(instance: dg.DagsterInstance) -> list:
    """The queue sensor's ticks so far, oldest first."""
    (state,) = [
        state
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if state.instigator_name == QUEUE_SENSOR
    ] or [None]
    if state is None:
        return []
    return sorted(
        instance.get_ticks(state.instigator_origin_id, state.selector_id), key=lambda t: t.timestamp
    )


def held_as_trickle(ticks: list, after: float, before: float = float("inf")) -> list:
    return [
        t for t in ticks if after <= t.timestamp < before and (t.skip_reason or "").startswith("a trickle")
    ]


@pytest.mark.slow
def test_a_steady_stream_of_small_objects_is_never_held_and_a_trickle_is_gathered(
    spark_server, landing, tmp_path, monkeypatch
):
    monkeypatch.setenv("GAMING_PIPELINE_BATCH_INTERVAL_SECONDS", str(BATCH_INTERVAL_SECONDS))
    daemon, env = start_daemon_for(tmp_path, landing.bucket, landing.queue_url, spark_server)
    warehouse = env["GAMING_PIPELINE_WAREHOUSE"]

    def diagnosis() -> str:
        return (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]

    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            wait_until(
                lambda: queue_sensor_ticks(instance),
                120,
                "the queue sensor's first tick",
                1,
                [daemon],
                diagnosis,
            )
            # The stream: a small object every 2 s (each some 20 KB, several times the
            # trickle's rate of 3.5 KB/s), as the ingest service lands them under load.
            stream_began = time.time()
            landed = []
            for n in range(STREAM_OBJECTS):
                obj = land(
                    landing.bucket, f"stream/{n:03d}.ndjson.gz", events_on(TODAY, STREAM_EVENTS, seed=500 + n)
                )
                landed.append(obj)
                time.sleep(STREAM_EVERY_SECONDS)
            stream_landed = time.time()
            assert sum(obj.size for obj in landed) / (time.time() - stream_began) > (
                2 * TRICKLE_BYTES / BATCH_INTERVAL_SECONDS
            ), "the stream must arrive well above a trickle's rate"
            stream_rows = STREAM_OBJECTS * STREAM_EVENTS
            stream_keys = {obj.key for obj in landed}

            def stream_requested() -> list[dg.RunRecord]:
                records = instance.get_run_records(dg.RunsFilter(job_name=JOB))
                taken = {obj.key for r in records for obj in requested_objects(r.dagster_run)}
                return records if stream_keys <= taken else []

            stream_runs = wait_until(
                stream_requested, 120, "runs asked for the whole stream", 1, [daemon], diagnosis
            )
            # While it lands. Once it stops, its last object may wait: the rate fell to nothing.
            held = held_as_trickle(queue_sensor_ticks(instance), stream_began, stream_landed)
            assert held == [], [f"{t.timestamp - stream_began:.0f} s: {t.skip_reason}" for t in held]
            assert len(stream_runs) >= 2, "the stream's objects took several runs, one after another"

            # The trickle: two tiny objects landing soon after the stream's last run was asked
            # for are held, and one run takes both once the raw interval has passed since then.
            last_request = max(r.create_timestamp for r in stream_runs)
            trickle_began = time.time()
            for name in "ab":
                land(landing.bucket, f"trickle/{name}.ndjson.gz", events_on(TODAY, 3, seed=ord(name)))
                time.sleep(3)
            wait_until(
                lambda: raw_rows(warehouse) == stream_rows + 6,
                RAW_TRICKLE_SECONDS + 240,
                "the stream and the trickle in the raw table",
                2,
                [daemon],
                diagnosis,
            )
            assert held_as_trickle(queue_sensor_ticks(instance), trickle_began), "the trickle is held"
            (gathered,) = instance.get_run_records(dg.RunsFilter(job_name=JOB, created_after=last_request))
            assert gathered.dagster_run.tags["gaming_pipeline/objects"] == "2"
            assert (gathered.create_timestamp - last_request).total_seconds() >= RAW_TRICKLE_SECONDS
    finally:
        stop([daemon])
