"""Per-game and KPI tables from ingested history: equal to a plain-Python count of the
generated events, rebuilt identically, and late events counted on their own day."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from gaming_pipeline.cli import main
from gaming_pipeline.defs.kpis.assets import kpi_tables
from gaming_pipeline.defs.refresh.sensors import consecutive
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import aws, generator
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests.ingest_helpers import HISTORY_END, ingest_everything, refresh
from gaming_pipeline_tests.kpi_helpers import (
    RETENTION_KEY,
    DaysSensor,
    actual_kpis,
    expected_kpis,
    expected_retention,
    fingerprints,
)

SEED, EVENTS = 17, 3000


def days_before(days: list[str], *offsets: int) -> list[str]:
    return sorted(
        {(date.fromisoformat(day) - timedelta(days=n)).isoformat() for day in days for n in offsets}
    )


def cohorts_of(days: list[str]) -> list[str]:
    """The cohorts whose retention events on `days` can change, the days themselves aside:
    1 and 7 days before (returns) and every later day through today (first days move)."""
    today = datetime.now(UTC).date()
    first = date.fromisoformat(min(days))
    later = [(first + timedelta(days=n)).isoformat() for n in range(1, (today - first).days + 1)]
    return sorted(set(days_before(days, 1, 7) + later) - set(days))


def test_kpis_match_python_and_backfills_equal_rebuilds_and_late_events_count_on_their_day(
    spark, landing, warehouse, monkeypatch, capsys
):
    # Whole days: history that stops at noon would look like an outage to the live-ops checks.
    start, end = generator.history_window(3.0, HISTORY_END.replace(hour=0))
    events = list(generator.history(SEED, EVENTS, start, end))
    s3 = aws.client("s3")
    generator.write_objects(
        generator.landing_objects(iter(events), SEED, 500),
        lambda key, body: s3.put_object(Bucket=landing.bucket, Key=key, Body=body),
        generator.Totals(),
    )
    with dg.instance_for_test() as instance:
        ingest_everything(landing, warehouse, instance)
        days = [(start.date() + timedelta(days=n)).isoformat() for n in range(3)]
        sensor = DaysSensor(instance)
        assert sensor.requested() == (days, cohorts_of(days))

        refresh(landing, warehouse, instance, days[0], days[-1])
        assert actual_kpis(spark, warehouse) == expected_kpis(events)
        per_game = {
            game.keyword: spark.read.format("delta").load(table_path(warehouse, game.table_name)).count()
            for game in GAMES
        }
        assert per_game == {
            game.keyword: sum(e["eventParams"]["game_keyword"] == game.keyword for e in events)
            for game in GAMES
        }

        # Rebuilding the same range changes no row.
        before = fingerprints(spark, warehouse)
        refresh(landing, warehouse, instance, days[0], days[-1])
        assert fingerprints(spark, warehouse) == before

        # Late events: they happened on the second day and land now.
        late_day = datetime.fromisoformat(days[1]).replace(hour=15, tzinfo=UTC)
        late = [generator.EventFactory(99).event(late_day.timestamp() + n) for n in range(40)]
        late[0]["eventName"], late[0]["eventParams"]["amount"] = "purchaseEvent", 19.99
        # Some late players are first-day players coming back: the first day's retention changes.
        first_day = [
            event for event in events if event["eventTime"] < datetime.fromisoformat(days[1]).timestamp()
        ]
        for event, returning in zip(late[1:21], first_day[::7], strict=False):
            event["eventParams"] = {
                **event["eventParams"],
                **{
                    key: returning["eventParams"][key]
                    for key in ("game_keyword", "app_name", "device_id", "platform")
                },
            }
        body = gzip.compress("".join(json.dumps(event) + "\n" for event in late).encode())
        s3.put_object(Bucket=landing.bucket, Key="events/late/arrivals.ndjson.gz", Body=body)
        ingest_everything(landing, warehouse, instance)
        assert expected_retention(events + late) != expected_retention(events)
        refreshed, cohorts = sensor.requested()
        assert (refreshed, cohorts) == ([days[1]], cohorts_of([days[1]]))
        refresh(landing, warehouse, instance, days[1], days[1])
        for first, last in consecutive({date.fromisoformat(cohort) for cohort in cohorts}):
            refresh(landing, warehouse, instance, str(first), str(last), [kpi_tables], [RETENTION_KEY])
        assert actual_kpis(spark, warehouse) == expected_kpis(events + late)

        # Every table answers to its name in SQL.
        monkeypatch.setenv("GAMING_PIPELINE_WAREHOUSE", warehouse)
        capsys.readouterr()
        query = "select sum(events) as n from kpi_events_per_hour where game_keyword = 'all_games'"
        assert main(["sql", query, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"n": EVENTS + len(late)}


def test_consecutive_days_share_a_run():
    first = date(2026, 11, 18)
    days = {first, first + timedelta(days=1), first + timedelta(days=2), first + timedelta(days=4)}
    assert consecutive(days) == [(first, first + timedelta(days=2)), (first + timedelta(days=4),) * 2]
