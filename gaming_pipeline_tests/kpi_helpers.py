"""Plain-Python KPIs to compare the tables with, and the refresh sensor as the daemon runs it."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import dagster as dg
import numpy
from PIL import Image

from gaming_pipeline.defs.refresh.sensors import raw_days_sensor
from gaming_pipeline.games import ALL_GAMES, GAMES
from gaming_pipeline.lib.kpis import ACTIVITY_TABLES, FOLLOW_EARLIER_DAYS, KPI_TABLES, RETURN_DAYS
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests import ingest_helpers
from gaming_pipeline_tests.ingest_helpers import covered

FOLLOWING_KEYS = [dg.AssetKey(table) for table in FOLLOW_EARLIER_DAYS]
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
        "active_users": expected_active_users(events),
        "payers": expected_payers(events),
        "cohort_revenue": expected_cohort_revenue(events),
        "concurrent_players": expected_concurrent_players(events),
        "hourly_slices": expected_hourly_slices(events),
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


def _day_of(event: dict) -> date:
    return datetime.fromtimestamp(event["eventTime"], UTC).date()


def _amount(event: dict) -> Decimal:
    purchase = event["eventName"] == "purchaseEvent"
    return Decimal(str(event["eventParams"]["amount"])) if purchase else Decimal(0)


def _share(part: int | Decimal, whole: int, places: str = "0.0001") -> Decimal:
    return (Decimal(part) / whole).quantize(Decimal(places), ROUND_HALF_UP)


def session_spans(events: list[dict]) -> dict:
    """Each device's sessions per day and game, the long way: its times split at pauses over
    30 minutes, as [first, last] epoch seconds."""
    times = defaultdict(list)
    for event in events:
        params = event["eventParams"]
        times[(_day_of(event), params["game_keyword"], params["device_id"])].append(event["eventTime"])
    spans = {}
    for key, stamps in times.items():
        stamps.sort()
        sessions = [[stamps[0], stamps[0]]]
        for at in stamps[1:]:
            if at - sessions[-1][1] > SESSION_GAP:
                sessions.append([at, at])
            sessions[-1][1] = at
        spans[key] = sessions
    return spans


def expected_sessions(events: list[dict]) -> dict:
    """Sessions per day and game: count, players, seconds and the average."""
    totals = defaultdict(lambda: [0, set(), 0])  # sessions, players, seconds
    for (day, game, device), sessions in session_spans(events).items():
        for key in ((day, game), (day, ALL_GAMES)):
            totals[key][0] += len(sessions)
            totals[key][1].add(device)
            totals[key][2] += sum(end - start for start, end in sessions)
    return {
        key: (count, len(players), Decimal(seconds), _share(seconds, count, "0.01"))
        for key, (count, players, seconds) in totals.items()
    }


def _days_played(events: list[dict]) -> dict:
    """(game, device) -> {day: bookings that day}, all games included."""
    played = defaultdict(lambda: defaultdict(Decimal))
    for event in events:
        for game in (event["eventParams"]["game_keyword"], ALL_GAMES):
            played[(game, event["eventParams"]["device_id"])][_day_of(event)] += _amount(event)
    return played


def _first_purchases(events: list[dict]) -> dict:
    """(game, device) -> the day of the first purchase, all games included."""
    first = {}
    for event in events:
        if event["eventName"] == "purchaseEvent":
            for game in (event["eventParams"]["game_keyword"], ALL_GAMES):
                key = (game, event["eventParams"]["device_id"])
                first[key] = min(first.get(key, _day_of(event)), _day_of(event))
    return first


def expected_retention(events: list[dict]) -> dict:
    """New players per first day, and how many came back exactly 1, 7 and 30 days later."""
    played = _days_played(events)
    days_with_events = {_day_of(event) for event in events}
    cohorts = defaultdict(lambda: [0] * (1 + len(RETURN_DAYS)))
    for (game, _), days in played.items():
        first = min(days)
        counts = cohorts[(first, game)]
        counts[0] += 1
        for i, n in enumerate(RETURN_DAYS, 1):
            counts[i] += first + timedelta(days=n) in days
    return {
        (day, game): (
            new,
            *(
                back if day + timedelta(days=n) in days_with_events else None
                for n, back in zip(RETURN_DAYS, returns, strict=True)
            ),
        )
        for (day, game), (new, *returns) in cohorts.items()
    }


def expected_cohort_revenue(events: list[dict]) -> dict:
    """Per first-seen cohort: its size and what it spent through 1, 7 and 30 days later."""
    played = _days_played(events)
    days_with_events = {_day_of(event) for event in events}
    cohorts = defaultdict(lambda: [0] + [Decimal(0)] * len(RETURN_DAYS))
    for (game, _), days in played.items():
        first = min(days)
        totals = cohorts[(first, game)]
        totals[0] += 1
        for i, n in enumerate(RETURN_DAYS, 1):
            totals[i] += sum(spent for day, spent in days.items() if (day - first).days <= n)
    return {
        (day, game): (
            new,
            *(
                spent.quantize(Decimal("0.01")) if day + timedelta(days=n) in days_with_events else None
                for n, spent in zip(RETURN_DAYS, spending, strict=True)
            ),
        )
        for (day, game), (new, *spending) in cohorts.items()
    }


def expected_active_users(events: list[dict]) -> dict:
    """Per day and game with events: DAU, WAU, MAU, stickiness, new and returning players."""
    played = _days_played(events)
    found = {}
    for day, game in {(day, game) for (game, _), days in played.items() for day in days}:
        within = [
            {
                device
                for (g, device), days in played.items()
                if g == game and any(0 <= (day - d).days < n for d in days)
            }
            for n in (1, 7, 30)
        ]
        dau, wau, mau = (len(devices) for devices in within)
        new = sum(min(days) == day for (g, _), days in played.items() if g == game)
        found[(day, game)] = (dau, wau, mau, _share(dau, mau), new, dau - new)
    return found


def expected_payers(events: list[dict]) -> dict:
    """Per day and game: DAU, paying users, conversion, bookings, ARPPU, first-time payers and
    their average days from first seen to first purchase."""
    played, first_purchase = _days_played(events), _first_purchases(events)
    payers, devices, bookings = defaultdict(set), defaultdict(set), defaultdict(Decimal)
    for event in events:
        for game in (event["eventParams"]["game_keyword"], ALL_GAMES):
            key, device = (_day_of(event), game), event["eventParams"]["device_id"]
            devices[key].add(device)
            bookings[key] += _amount(event)
            if event["eventName"] == "purchaseEvent":
                payers[key].add(device)
    found = {}
    for (day, game), active in devices.items():
        paying = len(payers[(day, game)])
        waits = [
            (day - min(played[(game, device)])).days
            for device in active
            if first_purchase.get((game, device)) == day
        ]
        found[(day, game)] = (
            len(active),
            paying,
            _share(paying, len(active)),
            bookings[(day, game)].quantize(Decimal("0.01")),
            _share(bookings[(day, game)], paying) if paying else None,
            len(waits),
            _share(sum(waits), len(waits), "0.01") if waits else None,
        )
    return found


def expected_concurrent_players(events: list[dict]) -> dict:
    """Per 5-minute window and game: the devices with a session overlapping it."""
    online = defaultdict(set)
    for (_, game, device), sessions in session_spans(events).items():
        for first, last in sessions:
            for window in range(int(first // 300) * 300, int(last // 300) * 300 + 1, 300):
                for key in ((window, game), (window, ALL_GAMES)):
                    online[key].add(device)
    return {
        (datetime.fromtimestamp(w, UTC).replace(tzinfo=None), game): len(d) for (w, game), d in online.items()
    }


def expected_hourly_slices(events: list[dict]) -> dict:
    """Per hour, game, platform and app version: events and bookings."""
    found = defaultdict(lambda: [0, Decimal(0)])
    for event in events:
        hour = datetime.fromtimestamp(event["eventTime"], UTC).replace(
            minute=0, second=0, microsecond=0, tzinfo=None
        )
        params = event["eventParams"]
        for game in (params["game_keyword"], ALL_GAMES):
            key = (hour, game, params["platform"], params["app_version"])
            found[key][0] += 1
            found[key][1] += _amount(event)
    return {key: (count, spent.quantize(Decimal("0.01"))) for key, (count, spent) in found.items()}


def expected_player_state(events: list[dict]) -> dict:
    """Per game and device: first and last seen, days active, sessions, purchases, bookings,
    the latest purchase (time, amount) and the platform and app version of the latest event
    (ties broken by the larger values, as the table breaks them)."""
    sessions = session_spans(events)
    state = {}
    for event in sorted(events, key=lambda e: e["eventTime"]):
        params = event["eventParams"]
        key = (params["game_keyword"], params["device_id"])
        at = datetime.fromtimestamp(event["eventTime"], UTC).replace(tzinfo=None)
        row = state.setdefault(
            key, {"first": at, "purchases": 0, "bookings": Decimal(0), "purchase": None, "latest": None}
        )
        row["last"] = at
        row["latest"] = max(filter(None, [row["latest"], (at, params["platform"], params["app_version"])]))
        if event["eventName"] == "purchaseEvent":
            row["purchases"] += 1
            row["bookings"] += _amount(event)
            row["purchase"] = max(filter(None, [row["purchase"], (at, _amount(event))]))
    return {
        (game, device): (
            row["first"],
            row["last"],
            sum(1 for (_, g, d) in sessions if (g, d) == (game, device)),
            sum(len(spans) for (_, g, d), spans in sessions.items() if (g, d) == (game, device)),
            row["purchases"],
            row["bookings"].quantize(Decimal("0.01")),
            *(row["purchase"] or (None, None)),
            *row["latest"][1:],
        )
        for (game, device), row in state.items()
    }


def player_row_by_delta_rs(warehouse: str, game: str, device: str) -> list[dict]:
    """One player's row of player_state as the README reads it with delta-rs, no Spark (its
    QueryBuilder applies the deletion vectors merges leave; to_pyarrow_dataset refuses them)."""
    import pyarrow
    from deltalake import DeltaTable, QueryBuilder

    state = DeltaTable(table_path(warehouse, PLAYER_STATE_TABLE))
    query = f"SELECT * FROM player_state WHERE game_keyword = '{game}' AND device_id = '{device}'"
    return pyarrow.table(QueryBuilder().register("player_state", state).execute(query).read_all()).to_pylist()


def actual_player_state(spark, warehouse: str) -> dict:
    return {
        (r.game_keyword, r.device_id): (
            r.first_seen,
            r.last_seen,
            r.days_active,
            r.sessions,
            r.purchases,
            r.bookings,
            r.last_purchase_at,
            r.last_purchase_amount,
            r.platform,
            r.app_version,
        )
        for r in spark.read.format("delta").load(table_path(warehouse, PLAYER_STATE_TABLE)).collect()
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
            (r.eventDate, r.game_keyword): (r.new_players, *(r[f"retained_d{n}"] for n in RETURN_DAYS))
            for r in load("kpi_retention")
        },
        "active_users": {
            (r.eventDate, r.game_keyword): (
                r.dau,
                r.wau,
                r.mau,
                r.stickiness,
                r.new_players,
                r.returning_players,
            )
            for r in load("kpi_active_users")
        },
        "payers": {
            (r.eventDate, r.game_keyword): (
                r.dau,
                r.paying_users,
                r.payer_conversion,
                r.bookings,
                r.arppu,
                r.first_time_payers,
                r.avg_days_to_first_purchase,
            )
            for r in load("kpi_payers")
        },
        "cohort_revenue": {
            (r.eventDate, r.game_keyword): (r.new_players, *(r[f"bookings_d{n}"] for n in RETURN_DAYS))
            for r in load("kpi_cohort_revenue")
        },
        "concurrent_players": {
            (r.window_start, r.game_keyword): r.players for r in load("kpi_concurrent_players")
        },
        "hourly_slices": {
            (r.window_start, r.game_keyword, r.platform, r.app_version): (r.events, r.bookings)
            for r in load("kpi_hourly_slices")
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
        spark,
        warehouse,
        [game.table_name for game in GAMES] + list(ACTIVITY_TABLES) + [PLAYER_STATE_TABLE] + list(KPI_TABLES),
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
    """(days whose KPIs all refresh, later days whose KPIs that follow earlier days alone
    refresh) of a refresh sensor tick that asked for no rebuild."""
    full = [request for request in requests if request.asset_selection != FOLLOWING_KEYS]
    later = [request for request in requests if request.asset_selection == FOLLOWING_KEYS]
    # Consecutive days share one run; all later days share one.
    assert len(full) <= 1, [request.tags for request in full]
    assert len(later) <= 1, [request.tags for request in later]
    return tuple(sorted(day for request in runs for day in covered(request)) for runs in (full, later))


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
