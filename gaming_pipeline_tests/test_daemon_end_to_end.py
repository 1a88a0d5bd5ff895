"""The real Dagster daemon runs the sensors and launches ingestion runs in their own processes,
as `make demo` does; the rows reach the raw table without anyone pressing a button."""

from __future__ import annotations

import os
import time

import dagster as dg
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from gaming_pipeline.lib.processes import start_daemon_for, stop
from gaming_pipeline.lib.warehouse import RAW_TABLE, table_path
from gaming_pipeline_tests.ingest_helpers import load_history


def test_daemon_ingests_landed_objects(landing, tmp_path):
    daemon, env = start_daemon_for(tmp_path, landing.bucket, landing.queue_url)
    warehouse = env["GAMING_PIPELINE_WAREHOUSE"]
    saved = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        totals = load_history(landing.bucket, seed=31, events=2000, days=1.0)
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(3)
                runs = instance.get_runs(dg.RunsFilter(job_name="ingest_landed_objects_job"))
                if runs and all(run.is_finished for run in runs) and raw_rows(warehouse) == totals.events:
                    break
            assert raw_rows(warehouse) == totals.events, (tmp_path / "daemon.log").read_text()[-3000:]
            assert all(run.tags["gaming_pipeline/origin"] == "queue" for run in runs)
            assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
            assert instance.get_latest_materialization_event(dg.AssetKey(RAW_TABLE)) is not None
    finally:
        stop([daemon])
        if saved is None:
            os.environ.pop("DAGSTER_HOME")
        else:
            os.environ["DAGSTER_HOME"] = saved


def raw_rows(warehouse: str) -> int:
    try:
        return DeltaTable(table_path(warehouse, RAW_TABLE)).count()
    except TableNotFoundError:
        return 0
