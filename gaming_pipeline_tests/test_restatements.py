"""A KPI figure of a past day that changes after it was reported (late events, a rebuild, an
erasure) is recorded, old value and new, and shown on the asset; today's growing figures and
figures filled in for the first time are not restatements."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest
from pyspark.sql import Row

from gaming_pipeline.games import ALL_GAMES
from gaming_pipeline.lib import kpis
from gaming_pipeline.lib.tables import RESTATEMENTS_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests.ingest_helpers import CLOSED, TODAY, events_on, ingest_everything, land, refresh

DAY = date(2026, 11, 20)


def dau(day: date, game: str, value: int | None) -> Row:
    return Row(eventDate=day, game_keyword=game, dau=value)


def retention(day: date, d7: int | None) -> Row:
    share = None if d7 is None else Decimal(d7) / 10
    return Row(
        eventDate=day,
        game_keyword="g",
        new_players=10,
        retained_d1=4,
        retained_d7=d7,
        retained_d30=None,
        d1_retention=Decimal("0.4"),
        d7_retention=share,
        d30_retention=None,
    )


@pytest.mark.unit
def test_a_changed_figure_of_a_past_day_is_a_restatement_and_today_is_not():
    before = [dau(DAY, "g", 10), dau(DAY, ALL_GAMES, 12), dau(DAY + timedelta(days=1), "g", 3)]
    after = [dau(DAY, "g", 11), dau(DAY, ALL_GAMES, 12), dau(DAY + timedelta(days=1), "g", 5)]
    changed = kpis.restatements(
        kpis.DAILY_ACTIVE_USERS, before, after, settled_before=DAY + timedelta(days=1)
    )
    assert changed == [
        {
            "kpi": kpis.DAILY_ACTIVE_USERS,
            "eventDate": DAY,
            "game_keyword": "g",
            "slice": "",
            "figure": "dau",
            "reported": "10",
            "restated": "11",
        }
    ]


@pytest.mark.unit
def test_a_figure_filled_in_is_not_a_restatement_and_a_vanished_row_is():
    later = DAY + timedelta(days=30)
    assert kpis.restatements(kpis.RETENTION, [retention(DAY, None)], [retention(DAY, 3)], later) == []
    (gone,) = kpis.restatements(kpis.DAILY_ACTIVE_USERS, [dau(DAY, "g", 1)], [], later)
    assert (gone["reported"], gone["restated"]) == ("1", None)


@pytest.mark.unit
def test_an_hours_other_keys_name_its_slice():
    start = datetime(2026, 11, 20, 14)
    row = {
        "eventDate": DAY,
        "window_start": start,
        "window_end": start + timedelta(hours=1),
        "game_keyword": "g",
    }
    (changed,) = kpis.restatements(
        kpis.EVENTS_PER_HOUR, [Row(**row, events=5)], [Row(**row, events=6)], DAY + timedelta(days=1)
    )
    assert changed["slice"] == "window_start=2026-11-20 14:00:00; window_end=2026-11-20 15:00:00"


def expected_dau(events: list[dict]) -> dict[str, int]:
    devices = defaultdict(set)
    for event in events:
        params = event["eventParams"]
        devices[params["game_keyword"]].add(params["device_id"])
        devices[ALL_GAMES].add(params["device_id"])
    return {game: len(found) for game, found in devices.items()}


def restated_dau(spark, warehouse: str, day: date) -> dict[str, tuple[str, str]]:
    rows = (
        spark.read.format("delta")
        .load(table_path(warehouse, RESTATEMENTS_TABLE))
        .where(f"kpi = '{kpis.DAILY_ACTIVE_USERS}' AND figure = 'dau' AND eventDate = DATE'{day}'")
        .collect()
    )
    return {row.game_keyword: (row.reported, row.restated) for row in rows}


# The KPI whose restatements the test reads: refreshed alone, from the activity the
# ingestion runs keep, as the steady path refreshes every KPI.
DAU = [dg.AssetKey(kpis.DAILY_ACTIVE_USERS)]


def test_late_events_restate_a_reported_day_and_the_kpi_shows_it(spark, landing, warehouse):
    instance = dg.DagsterInstance.ephemeral()
    day = CLOSED[0]
    first = events_on(day, 120, seed=21)
    land(landing.bucket, f"events/{day}/first.ndjson.gz", first)
    ingest_everything(landing, warehouse, instance)
    refresh(landing, warehouse, instance, str(day), str(day), selection=DAU)
    # Today's figures grow with every batch: never a restatement.
    today = events_on(TODAY, 40, seed=22)
    land(landing.bucket, "events/today/first.ndjson.gz", today)
    ingest_everything(landing, warehouse, instance)
    refresh(landing, warehouse, instance, str(TODAY), str(TODAY), selection=DAU)

    late = events_on(day, 200, seed=23)
    land(landing.bucket, f"events/{day}/late.ndjson.gz", late)
    land(landing.bucket, "events/today/second.ndjson.gz", events_on(TODAY, 40, seed=24))
    ingest_everything(landing, warehouse, instance)
    result = refresh(landing, warehouse, instance, str(day), str(TODAY), selection=DAU)

    reported, now = expected_dau(first), expected_dau(first + late)
    changed = {game: (str(reported[game]), str(now[game])) for game in now if reported.get(game) != now[game]}
    assert changed, "the late events bring new players"
    assert {game: values for game, values in changed.items() if game in reported} == restated_dau(
        spark, warehouse, day
    )
    assert not restated_dau(spark, warehouse, TODAY)
    # A range run's materialization is reported for each of its days, with the same metadata.
    shown = [
        event.materialization.metadata
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(kpis.DAILY_ACTIVE_USERS)
    ][0]
    assert shown["restated_figures"].value == len(restated_dau(spark, warehouse, day))
    assert (
        f"| {day} | {ALL_GAMES} |  | dau | {reported[ALL_GAMES]} | {now[ALL_GAMES]} |"
        in shown["restatements"].value
    )

    # The same day refreshed again, unchanged, restates nothing more.
    recorded = spark.read.format("delta").load(table_path(warehouse, RESTATEMENTS_TABLE)).count()
    refresh(landing, warehouse, instance, str(day), str(day), selection=DAU)
    assert spark.read.format("delta").load(table_path(warehouse, RESTATEMENTS_TABLE)).count() == recorded
