"""follow_raw_sensor: one follower run for however many ingestions, none while one waits to
start, and one after an ingestion that found its objects in the ledger already (the retry
of a run killed after its ledger write, whose batch still waits for a pass)."""

import dagster as dg
import pytest

from gaming_pipeline.defs.followers.runs import follow_raw_job, follow_raw_sensor
from gaming_pipeline.lib.tables import RAW_TABLE

pytestmark = pytest.mark.unit


class Ticks:
    """follow_raw_sensor evaluated tick after tick, its cursor carried as the daemon would."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None

    def requests(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor) as context:
            result = follow_raw_sensor(context)
        self.cursor = result.cursor or self.cursor
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
