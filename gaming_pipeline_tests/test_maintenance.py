"""Table care on real Delta tables filled by real ingestion of many small landing objects:
the daily pass compacts only closed days written since the last one and changes no row,
OPTIMIZE and ingestion commit side by side, VACUUM keeps its promise, and a rollback gives
back the exact earlier content and KPIs."""

from __future__ import annotations

import logging
import threading
import traceback
from datetime import date

import dagster as dg
import pyarrow
import pytest
from deltalake import DeltaTable as IndependentReader
from pyspark.sql import functions as F

from gaming_pipeline.defs.kpis.activity import activity_tables
from gaming_pipeline.defs.kpis.assets import kpi_tables
from gaming_pipeline.defs.maintenance.compaction import (
    DAILY_PASS,
    EVENT_TABLES,
    daily_compaction_job,
    vacuum_job,
)
from gaming_pipeline.defs.maintenance.recovery import rollback_job
from gaming_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG, REBUILD_DATES
from gaming_pipeline.defs.refresh.sensors import raw_days_sensor
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import checks, kpis, maintenance
from gaming_pipeline.lib.erasure import erase_rows
from gaming_pipeline.lib.follow import follow
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.kpis import ACTIVITY_TABLES, EVENTS_PER_HOUR, GAME_HOURS, PLAYER_DAYS
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import latest_version, table_path
from gaming_pipeline_tests.ingest_helpers import (
    CLOSED,
    TODAY,
    comparable_rows,
    content_checksum,
    events_on,
    land,
    own_session,
    resources,
)


def ingest(spark, bucket: str, warehouse: str, key: str, days: list[date], run_id: str, seed: int) -> int:
    """Land one small object with 30 events on each of `days`, ingest it as its own run and
    follow it (a follower pass)."""
    events = [event for n, day in enumerate(days) for event in events_on(day, 30, seed * 10 + n)]
    ingest_objects(spark, warehouse, [land(bucket, key, events)], run_id)
    follow(spark, warehouse, f"{run_id}-follower")
    return len(events)


def files_per_day(path: str) -> dict[date, int]:
    """Data files per eventDate partition, as an independent Delta reader (delta-rs) sees them."""
    actions = pyarrow.table(IndependentReader(path).get_add_actions(flatten=True)).to_pylist()
    counts: dict[date, int] = {}
    for action in actions:
        day = action["partition.eventDate"]
        day = day if isinstance(day, date) else date.fromisoformat(str(day))
        counts[day] = counts.get(day, 0) + 1
    return counts


def content(spark, path: str, version: int | None = None) -> tuple[int, int]:
    """Rows and an order-free checksum of every column of every row."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    df = reader.load(path)
    row = df.agg(F.count(F.lit(1)), content_checksum(df)).first()
    return row[0], row[1]


def daily_pass(instance: dg.DagsterInstance, warehouse: str) -> dict:
    result = daily_compaction_job.execute_in_process(instance=instance, resources=resources(None, warehouse))
    assert result.success
    observations = {
        event.event_specific_data.asset_observation.asset_key: event.event_specific_data.asset_observation
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    }
    # The raw table's pass; ingestion made per-game tables too, each with a pass of its own.
    assert set(observations) <= {dg.AssetKey(table) for table in EVENT_TABLES}
    return {key: value.value for key, value in observations[dg.AssetKey(RAW_TABLE)].metadata.items()}


@pytest.mark.slow
def test_daily_pass_compacts_closed_days_written_since_the_last_and_changes_no_row(spark, landing, warehouse):
    raw = table_path(warehouse, RAW_TABLE)
    for n in range(2):
        ingest(spark, landing.bucket, warehouse, f"small/{n}.ndjson.gz", [*CLOSED, TODAY], f"run-{n}", n)
    assert files_per_day(raw) == {CLOSED[0]: 2, CLOSED[1]: 2, TODAY: 2}
    before = content(spark, raw)

    with dg.DagsterInstance.ephemeral() as instance:
        first = daily_pass(instance, warehouse)
        assert first["maintenance"] == DAILY_PASS
        assert first["days"] == "every closed day"
        assert (first["files_before"], first["files_after"]) == (6, 4)
        assert first["bytes_after"] < first["bytes_before"]
        assert first["version_after"] == first["version_before"] + 1
        assert first["pending_days"] == [TODAY.isoformat()]
        # Closed days are one file each; today, still being written, is left alone.
        assert files_per_day(raw) == {CLOSED[0]: 1, CLOSED[1]: 1, TODAY: 2}
        assert content(spark, raw) == before

        second = daily_pass(instance, warehouse)
        assert second["days"] == [] and "files_before" not in second

        # Late events for the oldest day and more for today: only the oldest day is due.
        ingest(spark, landing.bucket, warehouse, "late/0.ndjson.gz", [CLOSED[0], TODAY], "run-late", 9)
        third = daily_pass(instance, warehouse)
        assert third["days"] == [CLOSED[0].isoformat()]
        assert files_per_day(raw) == {CLOSED[0]: 1, CLOSED[1]: 1, TODAY: 3}
        assert content(spark, raw)[0] == before[0] + 60


@pytest.mark.slow
def test_optimize_erasure_and_ingestion_at_once_all_commit_and_readers_see_whole_snapshots(
    spark, landing, warehouse
):
    """The daily pass compacts the raw and per-game tables and an erasure deletes a player
    from them and from the activity while ingestion and follower passes add late batches to
    all of them: every side commits, and the per-game and activity tables still hold exactly
    the raw rows."""
    raw = table_path(warehouse, RAW_TABLE)
    for n in range(4):
        ingest(spark, landing.bucket, warehouse, f"small/{n}.ndjson.gz", CLOSED, f"run-{n}", n)
    erased = spark.read.format("delta").load(raw).select(kpis.DEVICE).first()[0]
    erased_events = spark.read.format("delta").load(raw).where(F.col(kpis.DEVICE) == erased)
    erased_rows = erased_events.count()
    erased_counts = checks.by_day_and_game(
        erased_events.withColumn("game_keyword", F.col(kpis.GAME)), F.count(F.lit(1))
    )
    rows_before = content(spark, raw)[0]
    # Each late object adds to the day being compacted, so both sides touch its files. A
    # reader sees a whole number of ingestions, before or after the erasure.
    totals = {rows_before + 60 * k - gone for k in range(4) for gone in (0, erased_rows)}
    games = [game.table_name for game in GAMES]
    # Every table has small files to compact on each day (one per ingestion that had its
    # game), so its compaction commits an OPTIMIZE whatever the other sides do first.
    assert all(
        files_per_day(table_path(warehouse, table)).get(day, 0) >= 2
        for table in (RAW_TABLE, *games)
        for day in CLOSED
    )
    errors: list[str] = []
    seen: set[int] = set()
    done = threading.Event()
    start = threading.Barrier(4)

    def guarded(work):
        def run():
            start.wait()
            try:
                work()
            except BaseException:  # reported by the assertion below, with where it was raised
                errors.append(traceback.format_exc(limit=-8))

        return threading.Thread(target=run)

    def compaction():
        for table in (RAW_TABLE, *games):
            maintenance.compact(spark, table_path(warehouse, table), maintenance.days_in(CLOSED))

    def erasure():
        for table in (RAW_TABLE, *games, PLAYER_DAYS):
            erase_rows(spark, table_path(warehouse, table), table, erased, {"run_id": "erasure"})

    def ingestion():
        # Its own session, as its runs would have: a pass's transaction is a session setting.
        session = own_session(spark)
        try:
            for k in range(3):
                ingest(session, landing.bucket, warehouse, f"late/{k}.ndjson.gz", CLOSED, f"late-{k}", 20 + k)
        finally:
            done.set()

    def reading():
        while not done.is_set():
            seen.add(spark.read.format("delta").load(raw).count())

    threads = [guarded(compaction), guarded(erasure), guarded(ingestion), guarded(reading)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, "\n".join(errors)
    assert content(spark, raw)[0] == rows_before + 180 - erased_rows
    # Every count a reader saw is a whole number of ingestions: never a half-compacted table.
    assert seen <= totals, (seen, totals)
    for table in (RAW_TABLE, *games):
        assert "OPTIMIZE" in [
            commit["operation"] for commit in maintenance.history(spark, table_path(warehouse, table))
        ]
    raw_counts = checks.by_day_and_game(
        spark.read.format("delta").load(raw).withColumn("game_keyword", F.col(kpis.GAME)), F.count(F.lit(1))
    )
    per_game = {}
    for table in games:
        rows = (
            spark.read.format("delta")
            .load(table_path(warehouse, table))
            .withColumn("game_keyword", F.col(kpis.GAME))
        )
        per_game |= checks.by_day_and_game(rows, F.count(F.lit(1)))
    assert per_game == raw_counts
    # The player's activity rows are erased with them; the hourly sums name no player and
    # keep counting their events until the erasure's days are rebuilt (the days sensor asks).
    with_erased = {
        key: raw_counts.get(key, 0) + erased_counts.get(key, 0) for key in raw_counts | erased_counts
    }
    for table, expected in ((PLAYER_DAYS, raw_counts), (GAME_HOURS, with_erased)):
        activity = spark.read.format("delta").load(table_path(warehouse, table))
        assert checks.by_day_and_game(activity, F.sum("events")) == expected, table
    assert (
        spark.read.format("delta")
        .load(table_path(warehouse, PLAYER_DAYS))
        .where(F.col("device_id") == erased)
        .count()
        == 0
    )


def test_vacuum_refuses_a_short_retention_and_a_forced_one_says_why(spark, landing, warehouse):
    ingest(spark, landing.bucket, warehouse, "small/0.ndjson.gz", CLOSED, "run-0", 0)
    instance = dg.DagsterInstance.ephemeral()

    def vacuum(**config) -> dg.ExecuteInProcessResult:
        return vacuum_job.execute_in_process(
            run_config={"ops": {"vacuum_tables": {"config": config}}},
            resources=resources(None, warehouse),
            instance=instance,
            raise_on_error=False,
        )

    inside_window = vacuum(retention_hours=24, force_reason="disk full")
    assert not inside_window.success
    assert "rollback for 72 h" in str(inside_window.failure_data_for_node("vacuum_tables").error)

    unforced = vacuum(retention_hours=100)
    assert not unforced.success
    assert "needs force_reason" in str(unforced.failure_data_for_node("vacuum_tables").error)

    forced = vacuum(
        retention_hours=100, force_reason="storage budget exceeded, ticket OPS-42", tables=[RAW_TABLE]
    )
    assert forced.success
    warnings = [
        entry.user_message
        for entry in instance.all_logs(forced.run_id)
        if entry.level == logging.WARNING and "OPS-42" in entry.user_message
    ]
    assert warnings == ["VACUUM retention forced to 100 h: storage budget exceeded, ticket OPS-42"]
    (observation,) = [
        event.event_specific_data.asset_observation
        for event in forced.all_events
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    assert observation.metadata["force_reason"].value == "storage budget exceeded, ticket OPS-42"
    assert observation.metadata["retention_hours"].value == 100


def kpi_rows(spark, warehouse: str, day: date) -> list:
    path = table_path(warehouse, "kpi_events_per_hour")
    return sorted(spark.read.format("delta").load(path).where(F.col("eventDate") == F.lit(day)).collect())


def refresh_kpi(instance: dg.DagsterInstance, warehouse: str, day: date) -> None:
    """Rebuild the day's activity from the raw table, and its hourly events from that."""
    assert dg.materialize(
        [activity_tables, kpi_tables],
        selection=[*activity_tables.keys, dg.AssetKey(EVENTS_PER_HOUR)],
        partition_key=day.isoformat(),
        resources=resources(None, warehouse),
        instance=instance,
    ).success


@pytest.mark.slow
def test_rollback_of_a_bad_run_gives_back_the_exact_content_and_kpis(spark, landing, warehouse):
    raw = table_path(warehouse, RAW_TABLE)
    day = CLOSED[1]
    with dg.DagsterInstance.ephemeral() as instance:
        ingest(spark, landing.bucket, warehouse, "good/0.ndjson.gz", [day], "good", 1)
        good_version = latest_version(raw)
        good = comparable_rows(spark.read.format("delta").load(raw))
        refresh_kpi(instance, warehouse, day)
        good_kpis = kpi_rows(spark, warehouse, day)

        ingest(spark, landing.bucket, warehouse, "bad/0.ndjson.gz", [day, CLOSED[0]], "bad", 2)
        ingest(spark, landing.bucket, warehouse, "later/0.ndjson.gz", [day], "later", 3)
        refresh_kpi(instance, warehouse, day)
        assert kpi_rows(spark, warehouse, day) != good_kpis

        def rollback(**config) -> dg.ExecuteInProcessResult:
            return rollback_job.execute_in_process(
                run_config={"ops": {"restore_tables": {"config": config}}},
                resources=resources(None, warehouse),
                instance=instance,
                raise_on_error=False,
            )

        refused = rollback(run_id="bad")
        assert not refused.success
        assert "undo_later_commits" in str(refused.failure_data_for_node("restore_tables").error)
        assert latest_version(raw) > good_version

        restored = rollback(run_id="bad", undo_later_commits=True)
        assert restored.success
        assert comparable_rows(spark.read.format("delta").load(raw)) == good
        materialized = {
            event.asset_key: event.event_specific_data.materialization.metadata
            for event in restored.all_events
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        }
        assert dg.AssetKey(RAW_TABLE) in materialized
        raw_metadata = materialized[dg.AssetKey(RAW_TABLE)]
        assert raw_metadata["restored_to_version"].value == good_version
        assert raw_metadata[REBUILD_DATES].value == sorted({CLOSED[0].isoformat(), day.isoformat()})
        assert "| version |" in raw_metadata["history"].value
        # Every table the bad run wrote: the raw table and those its batch was added to.
        followers = [*ACTIVITY_TABLES, PLAYER_STATE_TABLE, *(game.table_name for game in GAMES)]
        assert set(materialized) <= {
            dg.AssetKey(table) for table in (RAW_TABLE, QUARANTINE_TABLE, *followers)
        }

        # The days sensor asks for the days the restore changed; refreshed, the KPIs are back.
        with dg.build_sensor_context(instance=instance) as context:
            (refresh, *retention_only) = raw_days_sensor(context).run_requests
        assert (refresh.tags[RANGE_START_TAG], refresh.tags[RANGE_END_TAG]) == (
            CLOSED[0].isoformat(),
            day.isoformat(),
        )
        refresh_kpi(instance, warehouse, day)
        assert kpi_rows(spark, warehouse, day) == good_kpis

        # One table to a time: the version current then, here the good one.
        good_at = next(
            c["timestamp"] for c in maintenance.history(spark, raw) if c["version"] == good_version
        )
        by_time = rollback(table=RAW_TABLE, timestamp=good_at)
        assert by_time.success
        (materialization,) = by_time.asset_materializations_for_node("restore_tables")
        assert materialization.metadata["restored_to_version"].value == good_version
        assert comparable_rows(spark.read.format("delta").load(raw)) == good

        # A restore to a version that does not exist is refused with the range that does.
        beyond = rollback(table=RAW_TABLE, version=10_000)
        assert not beyond.success
        assert "is not one of" in str(beyond.failure_data_for_node("restore_tables").error)
