"""Plain-Python KPIs to compare the tables with, and the refresh sensor as the daemon runs it."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import dagster as dg
import numpy
from PIL import Image

from gaming_pipeline.defs.refresh.sensors import raw_days_sensor
from gaming_pipeline.games import ALL_GAMES, GAMES
from gaming_pipeline.lib.kpis import ACTIVITY_TABLES, KPI_TABLES, RETENTION
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests import ingest_helpers
from gaming_pipeline_tests.ingest_helpers import covered

RETENTION_KEY = dg.AssetKey(RETENTION)
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
    """Every per-game, activity and KPI table's fingerprint."""
    return ingest_helpers.fingerprints(
        spark, warehouse, [game.table_name for game in GAMES] + list(ACTIVITY_TABLES) + list(KPI_TABLES)
    )


class DaysSensor:
    """raw_days_sensor evaluated tick after tick, its cursor carried as the daemon would."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None

    def requests(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor) as context:
            result = raw_days_sensor(context)
        self.cursor = result.cursor
        return list(result.run_requests or [])


def requested_days(requests: list[dg.RunRequest]) -> tuple[list[str], list[str]]:
    """(days whose KPIs all refresh, cohort days whose retention alone refreshes) of a refresh
    sensor tick that asked for no rebuild."""
    full = [request for request in requests if request.asset_selection != [RETENTION_KEY]]
    cohorts = [request for request in requests if request.asset_selection == [RETENTION_KEY]]
    # Consecutive days share one run; all changed cohorts share one.
    assert len(full) <= 1, [request.tags for request in full]
    assert len(cohorts) <= 1, [request.tags for request in cohorts]
    return tuple(sorted(day for request in runs for day in covered(request)) for runs in (full, cohorts))


def differences(actual: dict, expected: dict) -> dict:
    """Per KPI, the keys whose values differ, as (actual, expected): a short failure message
    where a whole-dict comparison would print thousands of rows."""
    found = {}
    for kpi in sorted(set(actual) | set(expected)):
        have, want = actual.get(kpi, {}), expected.get(kpi, {})
        wrong = {
            key: (have.get(key), want.get(key))
            for key in set(have) | set(want)
            if have.get(key) != want.get(key)
        }
        if wrong:
            found[kpi] = dict(sorted(wrong.items(), key=str)[:10]) | {"count": len(wrong)}
    return found


def colored_pixels(image: Image.Image) -> int:
    """Pixels clearly coloured, as the charts' series are; text, axes and grid are grey."""
    rgb = numpy.asarray(image.convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())
