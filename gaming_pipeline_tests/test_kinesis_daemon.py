"""A Kinesis stream through the real daemon: its sensor reads four shards of records put with
random partition keys, in the forms producers write them, and every event reaches the raw
table exactly once, across a daemon stopped and started again while records kept coming."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline.local import generator
from gaming_pipeline.local.processes import start_daemon_for, stop
from gaming_pipeline_tests.service_helpers import wait_until
from gaming_pipeline_tests.test_kinesis_source import put_in_every_form

JOB = "ingest_landed_objects_job"


def raw_event_ids(warehouse: str) -> list[str]:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(table_path(warehouse, RAW_TABLE))
    except TableNotFoundError:
        return []
    return table.to_pyarrow_table(columns=["event_id"]).column("event_id").to_pylist()


@pytest.mark.slow
def test_the_daemon_reads_a_four_shard_stream_exactly_once_across_a_restart(
    spark_server, landing, tmp_path, monkeypatch
):
    stream = f"events-{uuid.uuid4().hex[:8]}"
    kinesis = aws.client("kinesis")
    aws.provision_stream(kinesis, stream, shards=4)
    monkeypatch.setenv("GAMING_PIPELINE_KINESIS_STREAM", stream)
    end = datetime.now(UTC)
    events = list(generator.history(77, 900, end - timedelta(hours=6), end))
    random.Random(3).shuffle(events)
    put_in_every_form(kinesis, stream, events[:500])

    daemon, env = start_daemon_for(tmp_path, landing.bucket, landing.queue_url, spark_server)
    warehouse = env["GAMING_PIPELINE_WAREHOUSE"]

    def diagnosis() -> str:
        return (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]

    def all_in(count: int):
        return lambda: (ids := raw_event_ids(warehouse)) and len(ids) >= count and ids

    try:
        wait_until(all_in(500), 240, "the stream's first events in the raw table", 2, [daemon], diagnosis)
        stop([daemon])
        # Records keep coming while the daemon is down; the sensor's cursor and the objects
        # it wrote are where it goes on from.
        put_in_every_form(kinesis, stream, events[500:])
        daemon, env = start_daemon_for(tmp_path, landing.bucket, landing.queue_url, spark_server)
        ids = wait_until(all_in(len(events)), 240, "every event in the raw table", 2, [daemon], diagnosis)
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name=JOB))
            assert runs and all(run.tags["gaming_pipeline/origin"] == "kinesis" for run in runs)
            shards = {
                span.split(":")[0]
                for run in runs
                for span in run.tags["gaming_pipeline/kinesis_shards"].split()
            }
            assert len(shards) == 4, shards
    finally:
        stop([daemon])
    assert sorted(ids) == sorted(event["event_id"] for event in events)
