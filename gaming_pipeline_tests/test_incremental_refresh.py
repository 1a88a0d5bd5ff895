"""The steady path and the rebuild give the same tables, and both equal Python's count.

Batches are ingested one after another, each followed by a follower run that adds its rows
to the per-game and activity tables, and the refresh sensor's requests are run as the daemon would run
them: then a late batch, an object written again with other events, and a redelivery. The
sensor asks for the KPIs of the days each batch touched and the retention of the cohorts it
can change, each in one run; the tables then equal the plain-Python KPIs and counts, late
events count on their own day, and a rebuild of every day from the raw table changes no row
of any per-game, activity or KPI table. A merge of two batches' activity equals the activity
of both at once, sessions spanning the two batches included."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest
from pyspark.sql import types as T

from gaming_pipeline.cli import main
from gaming_pipeline.defs.kpis.assets import KPIS, ActivityRead, reached_back
from gaming_pipeline.defs.partitions import EVENT_DATES, EVENTS_PER_GAME, REBUILD_DATES
from gaming_pipeline.defs.refresh.sensors import consecutive
from gaming_pipeline.defs.resources import WarehouseResource
from gaming_pipeline.games import ALL_GAMES, GAMES
from gaming_pipeline.lib import kpis
from gaming_pipeline.lib.events import classify_lines, raw_events
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import ACTIVITY, RAW_TABLE
from gaming_pipeline.lib.warehouse import ensure_table, merge_into, table_path
from gaming_pipeline.local import generator
from gaming_pipeline_tests.ingest_helpers import (
    HISTORY_END,
    evaluate_reconcile,
    events_on,
    follow,
    ingest_only,
    land,
    refresh,
    refresh_as_requested,
)
from gaming_pipeline_tests.kpi_helpers import (
    DaysSensor,
    actual_kpis,
    actual_player_state,
    differences,
    expected_kpis,
    expected_player_state,
    expected_retention,
    fingerprints,
    player_row_by_delta_rs,
    requested_days,
)

SEED = 29


def ingest(landing, warehouse, instance, request: dg.RunRequest | None = None) -> dict:
    """One ingestion run of every object not yet in the ledger (or the run `request` asks
    for), then the follower run after it: the raw table's metadata, with the days the
    follower run added events to and its events per game (EVENT_DATES, EVENTS_PER_GAME:
    none if it added nothing)."""
    if request is None:
        (request,) = evaluate_reconcile(landing, warehouse, instance)
    result = ingest_only(request, landing, warehouse, instance)
    (raw,) = [
        m
        for m in result.asset_materializations_for_node("ingest_landed_objects")
        if m.asset_key == dg.AssetKey(RAW_TABLE)
    ]
    followed = [
        m
        for m in follow(warehouse, instance).asset_materializations_for_node("follow_raw")
        if m.asset_key == dg.AssetKey(PLAYER_STATE_TABLE)
    ]
    return {key: value.value for key, value in raw.metadata.items()} | {
        key: followed[0].metadata[key].value if followed else nothing
        for key, nothing in ((EVENT_DATES, []), (EVENTS_PER_GAME, {}))
    }


def later_of(days: list[str]) -> list[str]:
    """The days a run of the KPIs that follow earlier days refreshes when events on `days`
    land: from the first to the last of the days after them through today (a player's first
    day can move to them, their trailing weeks and months hold the events), less the days
    themselves, which their own refresh rewrites."""
    today = datetime.now(UTC).date()
    added = {date.fromisoformat(day) for day in days}
    changed = {min(added) + timedelta(days=n) for n in range(1, (today - min(added)).days + 1)} - added
    if not changed:
        return []
    return [
        (min(changed) + timedelta(days=n)).isoformat() for n in range((max(changed) - min(changed)).days + 1)
    ]


@pytest.mark.unit
def test_a_batch_of_todays_events_costs_one_refresh_run_its_cohorts_returns_included():
    today = datetime.now(UTC).date()
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(PLAYER_STATE_TABLE, metadata={EVENT_DATES: [today.isoformat()]})
        )
        (request,) = DaysSensor(instance).requests()
    assert request.partition_key == today.isoformat()
    assert set(request.asset_selection) == {dg.AssetKey(table) for table in kpis.KPI_TABLES}
    # The cohorts whose returns and spending the day holds, 1 to 30 days back, are rewritten
    # by that run.
    for kpi in (kpis.RETENTION, kpis.COHORT_REVENUE):
        assert reached_back(today, kpis.REACHES_BACK[kpi]) == today - timedelta(days=30)


@pytest.mark.slow
def test_batches_late_events_and_a_rewritten_object_leave_the_tables_a_rebuild_gives(
    spark, landing, warehouse, monkeypatch, capsys
):
    start, end = generator.history_window(3.0, HISTORY_END.replace(hour=0))
    history = list(generator.history(SEED, 1500, start, end))
    first, second, third = history[:500], history[500:1000], history[1000:]
    days = [(start.date() + timedelta(days=n)).isoformat() for n in range(3)]
    with dg.instance_for_test() as instance:
        sensor = DaysSensor(instance)

        def steady(*batches: dict) -> None:
            """The refresh sensor's requests, run as the daemon would: one run for the KPIs of
            the days the batches added events to (and the retention of the cohorts whose
            returns they are), one for the retention of later cohorts they can change."""
            added = sorted({day for batch in batches for day in batch[EVENT_DATES]})
            requests = sensor.requests()
            assert requested_days(requests) == (added, later_of(added))
            refresh_as_requested(landing, warehouse, instance, requests)

        land(landing.bucket, "events/batch-1a.ndjson.gz", first[:250])
        land(landing.bucket, "events/batch-1b.ndjson.gz", first[250:])
        (first_run,) = evaluate_reconcile(landing, warehouse, instance)
        added = ingest(landing, warehouse, instance, first_run)
        assert added[REBUILD_DATES] == [] and added[EVENT_DATES]
        # What the alerts sensor tells a silent game by.
        assert added[EVENTS_PER_GAME] == Counter(event["eventParams"]["game_keyword"] for event in first)
        steady(added)
        # The same objects replayed (their notifications delivered again, the run re-executed):
        # nothing is added, and no table has anything to refresh.
        replayed = ingest(landing, warehouse, instance, first_run)
        assert (replayed["objects_already_ingested"], replayed["rows_written"]) == (2, 0)
        assert (replayed[EVENT_DATES], replayed[REBUILD_DATES]) == ([], [])
        assert sensor.requests() == []

        # Later events; then late ones of the middle day, some of them first-day players
        # coming back, so the first day's retention changes too.
        late_at = datetime.fromisoformat(days[1]).replace(hour=15, tzinfo=UTC).timestamp()
        late = [generator.EventFactory(99).event(late_at + n) for n in range(40)]
        for event, returning in zip(late[:20], first[::11], strict=False):
            event["eventParams"] |= {
                key: returning["eventParams"][key]
                for key in ("game_keyword", "app_name", "device_id", "platform")
            }
        assert expected_retention(history + late) != expected_retention(history)
        land(landing.bucket, "events/batch-2.ndjson.gz", second + third)
        later = ingest(landing, warehouse, instance)
        # A late batch of its own, ingested before the refresh: one refresh covers both.
        land(landing.bucket, "events/late.ndjson.gz", late)
        late_batch = ingest(landing, warehouse, instance)
        assert late_batch[EVENT_DATES] == [days[1]]
        steady(later, late_batch)
        # The player state merged batch by batch, late events and a replay included, is Python's.
        events_so_far = first + second + third + late
        player_state = {"player_state": actual_player_state(spark, warehouse)}
        assert differences(player_state, {"player_state": expected_player_state(events_so_far)}) == {}
        # Any Delta reader reads it: one player's row with delta-rs, as the README shows.
        (game, device), state = next(iter(player_state["player_state"].items()))
        (row,) = player_row_by_delta_rs(warehouse, game, device)
        assert (row["days_active"], row["sessions"], row["bookings"], row["platform"]) == (
            state[2],
            state[3],
            state[5],
            state[8],
        )

        # An object written again with other events: its old rows must go everywhere.
        rewritten = first[250:400] + [generator.EventFactory(7).event(late_at + 3600 + n) for n in range(25)]
        land(landing.bucket, "events/batch-1b.ndjson.gz", rewritten)
        replaced = ingest(landing, warehouse, instance)
        assert replaced[REBUILD_DATES], replaced
        requests = sensor.requests()
        assert any(request.asset_selection is None for request in requests), "a rebuild is requested"
        refresh_as_requested(landing, warehouse, instance, requests)

        events = first[:250] + rewritten + second + third + late
        assert differences(actual_kpis(spark, warehouse), expected_kpis(events)) == {}
        rebuilt_state = {"player_state": actual_player_state(spark, warehouse)}
        assert differences(rebuilt_state, {"player_state": expected_player_state(events)}) == {}
        per_game = {
            game.keyword: spark.read.format("delta").load(table_path(warehouse, game.table_name)).count()
            for game in GAMES
        }
        assert per_game == {
            game.keyword: sum(event["eventParams"]["game_keyword"] == game.keyword for event in events)
            for game in GAMES
        }
        steady_tables = fingerprints(spark, warehouse)
        refresh(landing, warehouse, instance, days[0], days[-1])
        assert fingerprints(spark, warehouse) == steady_tables

    # Every table answers to its name in SQL.
    monkeypatch.setenv("GAMING_PIPELINE_WAREHOUSE", warehouse)
    capsys.readouterr()
    query = "select sum(events) as n from kpi_events_per_hour where game_keyword = 'all_games'"
    assert main(["sql", query, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": len(events)}


def test_consecutive_days_share_a_run():
    first = date(2026, 11, 18)
    days = {first, first + timedelta(days=1), first + timedelta(days=2), first + timedelta(days=4)}
    assert consecutive(days) == [(first, first + timedelta(days=2)), (first + timedelta(days=4),) * 2]


@pytest.mark.parametrize("table", kpis.ACTIVITY_TABLES)
def test_batches_merged_into_activity_equal_the_activity_of_all_their_events(spark, tmp_path, table):
    """Two batches whose events interleave: alone, each batch's pauses are over 30 minutes;
    together, a player's events are 17.5 minutes apart, so the merged sessions must join
    across the batches (and split where the player paused 50 minutes)."""
    transform = kpis.ACTIVITY[table]
    factory = generator.EventFactory(5)
    at = datetime(2026, 11, 20, 8, tzinfo=UTC).timestamp()
    events = []
    # 300 events from 08:00: a player's last is before midnight.
    for n in range(300):
        event = factory.event(at + n * 150 + (3000 if n >= 150 else 0))
        # One game, so each player's events of the day are one series.
        event["eventParams"].update(events[0]["eventParams"] if events else {}, device_id=f"d-{n % 7}")
        events.append(event)
    batches = [raw_rows(spark, events[parity::2]) for parity in (0, 1)]
    path = ACTIVITY[table].ensure(spark, str(tmp_path))
    for batch in batches:
        merge_into(transform(batch), path, kpis.KEYS[table], kpis.ADDED[table], {"run_id": "test"})
    merged = spark.read.format("delta").load(path).collect()
    whole = transform(raw_rows(spark, events)).collect()
    # By text: a row may hold a null key (a purchase naming no item).
    assert sorted(merged, key=str) == sorted(whole, key=str)
    if table == kpis.PLAYER_DAYS:
        assert {len(row.sessions) for row in merged} == {2}


def test_a_refresh_checks_the_activity_it_read_while_a_batch_merges_in(spark, tmp_path):
    """Ingestion merges batches into the activity tables while a refresh runs: here a batch's
    first merge, into the hourly table, lands after the refresh opened them. The refresh
    computes its KPIs from the versions it opened, those the totals its checks compare with
    were summed from: the batch is the next refresh's, and fails no check of this one."""
    warehouse = WarehouseResource(root=str(tmp_path))
    day = date(2026, 11, 20)

    def merge(table: str, rows) -> None:
        path = ACTIVITY[table].ensure(spark, warehouse.root)
        merge_into(kpis.ACTIVITY[table](rows), path, kpis.KEYS[table], kpis.ADDED[table], {"run_id": "test"})

    opened = raw_rows(spark, events_on(day, 200, seed=1))
    for table in kpis.ACTIVITY_TABLES:
        merge(table, opened)
    read = ActivityRead.of(spark, warehouse, day, day + timedelta(days=1))
    merge(kpis.GAME_HOURS, raw_rows(spark, events_on(day, 200, seed=2)))
    (events_per_hour,) = [kpi for kpi in KPIS if kpi.name == kpis.EVENTS_PER_HOUR]
    result = events_per_hour.refresh(warehouse, read, "refresh")

    assert {check.check_name: check.passed for check in result.check_results}["hours_add_up_to_activity"]
    written = spark.read.format("delta").load(table_path(warehouse.root, kpis.EVENTS_PER_HOUR))
    assert written.where(f"game_keyword = '{ALL_GAMES}'").agg({"events": "sum"}).first()[0] == opened.count()


def raw_rows(spark, events: list[dict]):
    """The raw-table rows of events, through the ingestion's own parsing."""
    lines = spark.createDataFrame(
        [(json.dumps(event), "s3://bucket/events/test.ndjson.gz", datetime.now(UTC)) for event in events],
        "value string, _source_object string, _source_modified_at timestamp",
    )
    return raw_events(classify_lines(lines), datetime.now(UTC), "test-run")


def test_an_activity_table_made_before_app_version_gains_it_and_a_missing_platform_is_one_row(
    spark, tmp_path
):
    """A lake made by an earlier release: its hourly activity has no `app_version`. The next
    batch adds the column (old rows keep null) instead of failing, and events that leave out
    the platform merge into one row per hour, batch after batch, as a rebuild would make."""
    table = ACTIVITY[kpis.GAME_HOURS]
    path = table.path(str(tmp_path))
    old_schema = T.StructType([field for field in table.schema.fields if field.name != "app_version"])
    ensure_table(spark, path, old_schema, table.partition_by)
    at = datetime(2026, 11, 20, 8, tzinfo=UTC).timestamp()
    old = spark.createDataFrame(
        [
            (
                date(2026, 11, 19),
                datetime(2026, 11, 19, 8),
                datetime(2026, 11, 19, 9),
                "g",
                "ios",
                3,
                0,
                Decimal(0),
            )
        ],
        old_schema,
    )
    old.write.format("delta").mode("append").save(path)

    event = generator.EventFactory(3).event(at)
    event["eventParams"].pop("platform")
    table.ensure(spark, str(tmp_path))
    for _ in range(2):
        batch = kpis.game_hours(raw_rows(spark, [event]))
        merge_into(batch, path, kpis.KEYS[kpis.GAME_HOURS], kpis.ADDED[kpis.GAME_HOURS], {"run_id": "test"})
    rows = {row.eventDate: row for row in spark.read.format("delta").load(path).collect()}
    assert (rows[date(2026, 11, 19)].app_version, rows[date(2026, 11, 19)].events) == (None, 3)
    today = rows[date(2026, 11, 20)]
    assert (today.platform, today.app_version, today.events) == (None, event["eventParams"]["app_version"], 2)
