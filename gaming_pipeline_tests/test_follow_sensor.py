"""follow_raw_sensor: one follower run for however many ingestions, none while one waits to
start, and one after an ingestion that found its objects in the ledger already (the retry
of a run killed after its ledger write, whose batch still waits for a pass). At a trickle the
passes are gathered per batch interval; a stream's are not."""

import time

import dagster as dg
import pytest

from gaming_pipeline.defs.followers.runs import (
    TRICKLE_ROWS,
    build_follow_sensor,
    follow_raw_job,
    follow_raw_sensor,
)
from gaming_pipeline.lib.tables import RAW_TABLE

pytestmark = pytest.mark.unit


class Ticks:
    """follow_raw_sensor evaluated tick after tick, its cursor carried as the daemon would."""

    def __init__(self, instance: dg.DagsterInstance, sensor: dg.SensorDefinition = follow_raw_sensor):
        self.instance, self.sensor, self.cursor, self.skipped = instance, sensor, None, ""

    def requests(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor) as context:
            result = self.sensor(context)
        self.cursor = result.cursor or self.cursor
        self.skipped = result.skip_reason.skip_message if result.skip_reason else ""
        return list(result.run_requests or [])


def ingested(instance: dg.DagsterInstance, rows_written: int, already_ingested: int = 0) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            RAW_TABLE, metadata={"rows_written": rows_written, "objects_already_ingested": already_ingested}
        )
    )


def test_one_follower_run_for_many_ingestions_none_while_one_waits_and_one_after_a_retry():
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance)
        assert ticks.requests() == []
        ingested(instance, 500)
        ingested(instance, 700)
        (request,) = ticks.requests()
        assert ticks.requests() == []
        # While that run waits to start, it will take the next batches too.
        instance.add_run(dg.DagsterRun(job_name=follow_raw_job.name, status=dg.DagsterRunStatus.NOT_STARTED))
        ingested(instance, 300)
        assert ticks.requests() == []
        instance.delete_run(instance.get_runs()[0].run_id)
        # An ingestion of nothing new asks for nothing...
        ingested(instance, 0)
        assert ticks.requests() == []
        # ...but the retry of one killed after its ledger write does.
        ingested(instance, 0, already_ingested=3)
        (retry,) = ticks.requests()
        assert retry.run_key != request.run_key


def test_at_a_trickle_passes_are_gathered_and_a_pass_worth_of_rows_is_not():
    hourly = build_follow_sensor(batch_interval_seconds=3600)
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance, hourly)
        # The first batch after a quiet spell gets its pass at once...
        ingested(instance, 500)
        (first,) = ticks.requests()
        instance.add_run(dg.DagsterRun(job_name=follow_raw_job.name, status=dg.DagsterRunStatus.SUCCESS))
        # ...ten rows seconds later (a pass's worth would take hours at that rate) wait to join
        # the next one...
        time.sleep(2)
        ingested(instance, 10)
        assert ticks.requests() == [] and ticks.skipped.startswith("a trickle: 10 rows ingested")
        # ...until a pass's worth has come, counted with the rows held.
        ingested(instance, TRICKLE_ROWS)
        (second,) = ticks.requests()
        assert second.run_key != first.run_key
