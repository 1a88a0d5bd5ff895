"""Per-game and KPI tables from ingested history: equal to a plain-Python count of the
generated events, rebuilt identically, and late events counted on their own day."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import dagster as dg

from gaming_pipeline.cli import main
from gaming_pipeline.defs.games.sensors import consecutive, raw_days_sensor
from gaming_pipeline.defs.kpis.assets import kpi_retention
from gaming_pipeline.defs.partitions import DAILY
from gaming_pipeline.games import ALL_GAMES, GAMES
from gaming_pipeline.lib import aws, generator
from gaming_pipeline.lib.daily import KPI_TABLES
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests import ingest_helpers
from gaming_pipeline_tests.ingest_helpers import HISTORY_END, ingest_everything, refresh

SEED, EVENTS = 17, 3000
SESSION_GAP = 30 * 60


def expected_kpis(events: list[dict]) -> dict:
    """The KPIs computed in plain Python, independently of the Spark code."""
    per_hour, bookings, devices = Counter(), defaultdict(Decimal), defaultdict(set)
    day_bookings, payers, platform_bookings = defaultdict(Decimal), defaultdict(set), defaultdict(Decimal)
    for event in events:
        at = datetime.fromtimestamp(event["eventTime"], UTC)
        hour = at.replace(minute=0, second=0, microsecond=0, tzinfo=None)
        params = event["eventParams"]
        purchase = event["eventName"] == "purchaseEvent"
        amount = Decimal(str(params["amount"])) if purchase else Decimal(0)
        for game in (params["game_keyword"], ALL_GAMES):
            per_hour[(hour, game)] += 1
            bookings[(hour, game)] += amount
            devices[(at.date(), game)].add(params["device_id"])
            day_bookings[(at.date(), game)] += amount
            platform_bookings[(at.date(), game, params["platform"])] += amount
            if purchase:
                payers[(at.date(), game)].add(params["device_id"])
    cents, per_user = Decimal("0.01"), Decimal("0.0001")
    return {
        "sessions": expected_sessions(events),
        "retention": expected_retention(events),
        "events_per_hour": dict(per_hour),
        "bookings_per_hour": {key: value.quantize(cents) for key, value in bookings.items()},
        "dau": {key: len(value) for key, value in devices.items()},
        "daily_revenue": {
            key: (
                len(devices[key]),
                len(payers[key]),
                day_bookings[key].quantize(cents),
                (day_bookings[key] / len(devices[key])).quantize(per_user, ROUND_HALF_UP),
            )
            for key in devices
        },
        "revenue_by_platform": {key: value.quantize(cents) for key, value in platform_bookings.items()},
    }


def expected_sessions(events: list[dict]) -> dict:
    """Sessions the long way: each device's times per day and game, split at pauses over 30 minutes."""
    times = defaultdict(list)
    for event in events:
        day = datetime.fromtimestamp(event["eventTime"], UTC).date()
        params = event["eventParams"]
        times[(day, params["game_keyword"], params["device_id"])].append(event["eventTime"])
    totals = defaultdict(lambda: [0, set(), 0])  # sessions, players, seconds
    for (day, game, device), stamps in times.items():
        stamps.sort()
        sessions = [[stamps[0], stamps[0]]]
        for at in stamps[1:]:
            if at - sessions[-1][1] > SESSION_GAP:
                sessions.append([at, at])
            sessions[-1][1] = at
        for key in ((day, game), (day, ALL_GAMES)):
            totals[key][0] += len(sessions)
            totals[key][1].add(device)
            totals[key][2] += sum(end - start for start, end in sessions)
    return {
        key: (
            count,
            len(players),
            Decimal(seconds),
            (Decimal(seconds) / count).quantize(Decimal("0.01"), ROUND_HALF_UP),
        )
        for key, (count, players, seconds) in totals.items()
    }


def expected_retention(events: list[dict]) -> dict:
    """New players per first day, and how many came back exactly 1 and 7 days later."""
    days_played = defaultdict(set)
    for event in events:
        day = datetime.fromtimestamp(event["eventTime"], UTC).date()
        for game in (event["eventParams"]["game_keyword"], ALL_GAMES):
            days_played[(game, event["eventParams"]["device_id"])].add(day)
    days_with_events = set().union(*days_played.values())
    cohorts = defaultdict(lambda: [0, 0, 0])
    for (game, _), days in days_played.items():
        first = min(days)
        counts = cohorts[(first, game)]
        counts[0] += 1
        counts[1] += first + timedelta(days=1) in days
        counts[2] += first + timedelta(days=7) in days
    return {
        (day, game): (
            new,
            d1 if day + timedelta(days=1) in days_with_events else None,
            d7 if day + timedelta(days=7) in days_with_events else None,
        )
        for (day, game), (new, d1, d7) in cohorts.items()
    }


def actual_kpis(spark, warehouse: str) -> dict:
    def load(table):
        return spark.read.format("delta").load(table_path(warehouse, table)).collect()

    return {
        "sessions": {
            (r.eventDate, r.game_keyword): (r.sessions, r.players, r.session_seconds, r.avg_session_seconds)
            for r in load("kpi_sessions")
        },
        "retention": {
            (r.eventDate, r.game_keyword): (r.new_players, r.retained_d1, r.retained_d7)
            for r in load("kpi_retention")
        },
        "events_per_hour": {(r.window_start, r.game_keyword): r.events for r in load("kpi_events_per_hour")},
        "bookings_per_hour": {
            (r.window_start, r.game_keyword): r.bookings for r in load("kpi_bookings_per_hour")
        },
        "dau": {(r.eventDate, r.game_keyword): r.dau for r in load("kpi_daily_active_users")},
        "daily_revenue": {
            (r.eventDate, r.game_keyword): (r.dau, r.paying_users, r.bookings, r.arpdau)
            for r in load("kpi_daily_revenue")
        },
        "revenue_by_platform": {
            (r.eventDate, r.game_keyword, r.platform): r.bookings for r in load("kpi_revenue_by_platform")
        },
    }


def fingerprints(spark, warehouse: str) -> dict:
    """Every per-game and KPI table's fingerprint."""
    return ingest_helpers.fingerprints(
        spark, warehouse, [game.table_name for game in GAMES] + list(KPI_TABLES)
    )


class DaysSensor:
    """raw_days_sensor evaluated tick after tick, its cursor carried as the daemon would."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None

    def requested(self) -> tuple[list[str], list[str]]:
        """(days whose tables all refresh, cohort days whose retention alone refreshes)."""
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor) as context:
            result = raw_days_sensor(context)
        self.cursor = result.cursor
        requests = result.run_requests or []
        full = [request for request in requests if request.asset_selection is None]
        # Consecutive days share one run.
        assert len(full) <= 1, [request.tags for request in full]
        return (
            sorted(day for request in full for day in covered(request)),
            sorted(
                day
                for request in requests
                if request.asset_selection == [kpi_retention.key]
                for day in covered(request)
            ),
        )


def covered(request: dg.RunRequest) -> list[str]:
    if request.partition_key:
        return [request.partition_key]
    keys = request.partition_key_range
    return DAILY.get_partition_keys_in_range(dg.PartitionKeyRange(keys.start, keys.end))


def days_before(days: list[str], *offsets: int) -> list[str]:
    return sorted(
        {(date.fromisoformat(day) - timedelta(days=n)).isoformat() for day in days for n in offsets}
    )


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
        assert sensor.requested() == (days, sorted(set(days_before(days, 1, 7)) - set(days)))

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
        assert (refreshed, cohorts) == ([days[1]], days_before([days[1]], 1, 7))
        refresh(landing, warehouse, instance, days[1], days[1])
        for cohort in cohorts:
            refresh(landing, warehouse, instance, cohort, cohort, [kpi_retention])
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
