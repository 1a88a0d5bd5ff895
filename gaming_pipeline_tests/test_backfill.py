"""History landed under the real daemon is ingested and refreshed by the sensors into KPI
tables equal to the ones computed in Python from the same events; then a backfill of the
3-day range launched as the UI launches it (the GraphQL mutation `launchPartitionBackfill`
against the real webserver, executed by the real daemon) runs as one single-run backfill
whose checks all pass and, over days the sensors built already, changes no row. (That a
rebuild equals the steady path's tables and both equal Python's is test_incremental_refresh's
part. Every run attaches to the session's Spark Connect server, as the demo's runs do;
test_daemon_end_to_end covers runs that start a Spark driver of their own.)"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION

from gaming_pipeline.definitions import defs
from gaming_pipeline.defs.followers.runs import follow_raw_sensor
from gaming_pipeline.defs.ingest.assets import ingest_job
from gaming_pipeline.defs.ingest.sensors import IN_FLIGHT
from gaming_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from gaming_pipeline.defs.refresh.sensors import raw_days_sensor, refresh_days_job
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.local import generator
from gaming_pipeline.local.ports import free_port
from gaming_pipeline.local.processes import (
    prepare_dagster_home,
    start_daemon_for,
    start_dagster,
    stop,
    wait_until_serving,
)
from gaming_pipeline_tests.ingest_helpers import HISTORY_END, load_history, raw_rows
from gaming_pipeline_tests.kpi_helpers import actual_kpis, expected_kpis, fingerprints
from gaming_pipeline_tests.service_helpers import wait_until

# A backfill's status by its value: Dagster exports no name for the enum.
BACKFILL_UNFINISHED = {"REQUESTED", "CANCELING", "FAILING"}
LOGS = ("daemon.log", "webserver.log")


class Stack:
    """The daemon and webserver under test, their instance and what to say when it fails."""

    def __init__(self, work: Path, processes: list[subprocess.Popen], instance: dg.DagsterInstance):
        self.work, self.processes, self.instance = work, processes, instance

    def wait_until(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        wait_until(condition, seconds, what, interval=3, alive=self.processes, diagnosis=self.diagnosis)

    def diagnosis(self) -> str:
        """The failed runs' errors and the tail of each process's log."""
        parts = []
        for run in self.instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])):
            failures = self.instance.all_logs(
                run.run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
            )
            for record in failures:
                error = getattr(record.dagster_event.event_specific_data, "error", None)
                parts.append(f"run {run.run_id} ({run.job_name}): {error.to_string() if error else record}")
        for log in LOGS:
            path = self.work / log
            if path.exists():
                parts.append(f"--- tail of {log}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


@pytest.mark.slow
def test_sensor_refreshes_match_python_and_a_ui_backfill_changes_nothing(
    spark, spark_server, landing, tmp_path
):
    started = time.monotonic()
    repository = defs().get_repository_def()
    # The assets the sensor-driven refreshes cover, read from the definitions so that every
    # table added to those groups is backfilled and compared too.
    derived = refresh_days_job.selection.resolve(repository.asset_graph)
    derived_checks = {key for key in repository.asset_graph.asset_check_keys if key.asset_key in derived}

    home = prepare_dagster_home(tmp_path / "dagster")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        processes: list[subprocess.Popen] = []
        stack = Stack(tmp_path, processes, instance)
        try:
            # The runs attach to one long-lived Spark Connect server, as the demo's do.
            daemon, env = start_daemon_for(tmp_path, landing.bucket, landing.queue_url, spark_server)
            processes.append(daemon)
            assert env["DAGSTER_HOME"] == str(home)
            port = free_port()
            webserver = start_dagster(
                ["dagster-webserver", "-h", "127.0.0.1", "-p", str(port)], env, tmp_path / "webserver.log"
            )
            processes.append(webserver)
            # A day of history spans two days: a range to backfill, small enough for the suite.
            totals = load_history(landing.bucket, seed=53, events=2000, days=1.0)
            events = list(generator.history(53, 2000, *generator.history_window(1.0, HISTORY_END)))
            days = sorted({day for day, _ in totals.per_day_game})
            assert len(days) == 2, days

            warehouse = env["GAMING_PIPELINE_WAREHOUSE"]
            stack.wait_until(
                lambda: raw_rows(warehouse) == totals.events and ingestion_finished(instance),
                480,
                "the daemon ingests the landed history",
            )
            print(f"ingested after {time.monotonic() - started:.0f} s")

            stack.wait_until(
                lambda: days_sensor_caught_up(instance) and all_runs_finished(instance),
                900,
                "the days sensor sees every ingestion and the refreshes it requested end",
            )
            # A failed run the instance retried (run_retries in gaming_pipeline/local/dagster.yaml) counts by its retry.
            unretried = [run for run in instance.get_runs() if not succeeded_or_retried(run)]
            assert unretried == [], stack.diagnosis()
            unrefreshed = [
                key for key in derived if not set(days) <= instance.get_materialized_partitions(key)
            ]
            assert unrefreshed == [], stack.diagnosis()
            expected = fingerprints(spark, warehouse)
            # The player state too: rebuilt whole with any days of the activity tables.
            assert set(expected) == {key.to_user_string() for key in derived} | {PLAYER_STATE_TABLE}
            # Every partition is built already, so the backfill is a re-run that must change no
            # row. The KPIs are compared with Python's while it starts: whichever snapshot they
            # are read at, right tables equal Python's figures, and the suite saves half a minute.
            wait_until_serving(
                f"http://127.0.0.1:{port}/server_info", 120, webserver, tmp_path / "webserver.log"
            )
            backfill_id = launch_backfill(port, derived, days)
            assert actual_kpis(spark, warehouse) == expected_kpis(events), stack.diagnosis()
            print(
                f"refreshed by the sensors, equal to Python's KPIs, after {time.monotonic() - started:.0f} s"
            )

            assert_single_run_backfill(stack, backfill_id, derived, derived_checks, days)
            assert fingerprints(spark, warehouse) == expected, stack.diagnosis()
            print(f"backfill changed no row after {time.monotonic() - started:.0f} s")
        finally:
            stop(processes)


def days_sensor_caught_up(instance: dg.DagsterInstance) -> bool:
    """The follower sensor's cursor has reached the last ingestion, and raw_days_sensor's the
    last follower run (its state is saved after its runs are submitted): every run the
    ingestions call for has been requested."""

    def last(key: str) -> int:
        records = instance.fetch_materializations(dg.AssetKey(key), limit=1, ascending=False).records
        return records[0].storage_id if records else 0

    def cursor(sensor: str) -> int:
        states = [state for state in instance.all_instigator_state() if state.name == sensor]
        found = [
            int(state.instigator_data.cursor)
            for state in states
            if state.instigator_data and state.instigator_data.cursor
        ]
        return max(found, default=-1)

    return (
        last(RAW_TABLE) > 0
        and cursor(follow_raw_sensor.name) >= last(RAW_TABLE)
        and cursor(raw_days_sensor.name) >= max(last(RAW_TABLE), last(PLAYER_STATE_TABLE))
    )


def succeeded_or_retried(run: dg.DagsterRun) -> bool:
    return run.status == dg.DagsterRunStatus.SUCCESS or "dagster/auto_retry_run_id" in run.tags


def ingestion_finished(instance: dg.DagsterInstance) -> bool:
    return instance.get_runs_count(dg.RunsFilter(job_name=ingest_job.name, statuses=IN_FLIGHT)) == 0


def all_runs_finished(instance: dg.DagsterInstance) -> bool:
    return all(run.is_finished for run in instance.get_runs())


def launch_backfill(port: int, assets: set[dg.AssetKey], days: list[str]) -> str:
    """What the UI sends after Materialize on the selected assets with a range picked."""
    params = {
        "assetSelection": [{"path": key.path} for key in sorted(assets)],
        "partitionNames": days,
        "fromFailure": False,
        "title": f"backfill {days[0]}..{days[-1]}",
    }
    response = requests.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": LAUNCH_PARTITION_BACKFILL_MUTATION, "variables": {"backfillParams": params}},
        timeout=60,
    )
    response.raise_for_status()
    launched = (response.json().get("data") or {}).get("launchPartitionBackfill") or {}
    assert launched.get("__typename") == "LaunchBackfillSuccess", response.text
    return launched["backfillId"]


def assert_single_run_backfill(
    stack: Stack,
    backfill_id: str,
    assets: set[dg.AssetKey],
    checks: set[dg.AssetCheckKey],
    days: list[str],
) -> None:
    """The backfill ends successfully after one run over every asset and the whole range,
    in which every check of those assets passed once."""
    instance = stack.instance
    stack.wait_until(
        lambda: instance.get_backfill(backfill_id).status.value not in BACKFILL_UNFINISHED,
        600,
        f"backfill {backfill_id} ends",
    )
    assert instance.get_backfill(backfill_id).status.value == "COMPLETED_SUCCESS", stack.diagnosis()
    runs = instance.get_runs(dg.RunsFilter.for_backfill(backfill_id))
    assert len(runs) == 1, f"{[(run.run_id, run.asset_selection) for run in runs]}\n{stack.diagnosis()}"
    (run,) = runs
    assert run.status == dg.DagsterRunStatus.SUCCESS, stack.diagnosis()
    assert (run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)) == (days[0], days[-1])
    assert run.asset_selection == assets
    evaluations = [
        record.dagster_event.asset_check_evaluation_data
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert sorted(e.asset_check_key for e in evaluations) == sorted(checks)
    assert {e.asset_check_key.to_user_string(): e.metadata for e in evaluations if not e.passed} == {}
