"""The real Dagster daemon runs the sensors and launches ingestion runs in their own processes,
each with a Spark driver of its own; the rows reach the raw table without anyone pressing a
button. The instance is the production one (deploy/dagster.production.yaml) on a real
PostgreSQL server; test_backfill runs the daemon on the embedded SQLite instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.local.processes import start_daemon_for, stop
from gaming_pipeline_tests.ingest_helpers import SESSION_SPARK_VARIABLES, load_history, raw_rows
from gaming_pipeline_tests.postgres_helpers import postgres_server, successful_runs
from gaming_pipeline_tests.service_helpers import wait_until

JOB = "ingest_landed_objects_job"
PRODUCTION_INSTANCE_CONFIG = Path(__file__).parents[1] / "deploy" / "dagster.production.yaml"


@pytest.fixture
def postgres(monkeypatch):
    with postgres_server() as environ:
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        yield environ


@pytest.mark.slow
def test_daemon_on_postgres_ingests_landed_objects(landing, tmp_path, postgres, monkeypatch):
    # Its runs start a Spark driver of their own, as runs with no Spark Connect server do.
    for variable in SESSION_SPARK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    daemon, env = start_daemon_for(
        tmp_path, landing.bucket, landing.queue_url, instance_config=PRODUCTION_INSTANCE_CONFIG
    )
    warehouse = env["GAMING_PIPELINE_WAREHOUSE"]
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    try:
        totals = load_history(landing.bucket, seed=31, events=2000, days=1.0)
        with dg.DagsterInstance.get() as instance:

            def ingested() -> list[dg.DagsterRun]:
                runs = instance.get_runs(dg.RunsFilter(job_name=JOB))
                finished = (
                    runs and all(run.is_finished for run in runs) and raw_rows(warehouse) == totals.events
                )
                return runs if finished else []

            runs = wait_until(
                ingested,
                300,
                "the landed events in the raw table",
                interval=3,
                alive=[daemon],
                diagnosis=lambda: (tmp_path / "daemon.log").read_text()[-3000:],
            )
            assert all(run.tags["gaming_pipeline/origin"] == "queue" for run in runs)
            assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
            assert instance.get_latest_materialization_event(dg.AssetKey(RAW_TABLE)) is not None
    finally:
        stop([daemon])
    # The run history is in Postgres, and nothing fell back to SQLite files.
    assert successful_runs(postgres, JOB) == len(runs)
    assert not list((tmp_path / "dagster").rglob("*.db"))
