"""What the asset checks compute, as plain functions (no Dagster here): of DataFrames for
tables of events, of rows already collected for the KPI tables (a few rows per day and
game, checked on the driver rather than with a Spark job each).

Each returns an Outcome: whether the check passed, and small, JSON-friendly facts for the UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import NamedTuple

from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.games import ALL_GAMES
from gaming_pipeline.lib.kpis import RETURN_DAYS


@dataclass(frozen=True)
class Outcome:
    """What a check found: whether it passed, the details shown beside it in the UI, and how
    much a failure matters (Dagster's check severities: "ERROR", or "WARN" for a signal to
    look at that leaves the data usable)."""

    passed: bool
    details: dict
    severity: str = "ERROR"


RAW_KEYS = ("eventDate", "eventTime", "eventName", "eventParams.game_keyword", "_source_object")
KPI_KEYS = ("eventDate", "game_keyword")


def schema_matches(actual: T.StructType, expected: T.StructType, kept: bool = False) -> Outcome:
    """Whether a table has exactly the expected columns and types; with `kept`, columns
    beyond them are allowed (those of parameters a game's catalog no longer declares)."""
    have = {field.name: field.dataType.simpleString() for field in actual.fields}
    want = {field.name: field.dataType.simpleString() for field in expected.fields}
    differences = {
        name: {"expected": want.get(name), "found": have.get(name)}
        for name in sorted(set(want) if kept else set(have) | set(want))
        if have.get(name) != want.get(name)
    }
    return Outcome(not differences, {"differences": differences})


def null_keys_by(df: DataFrame, keys: tuple[str, ...], group: Column) -> dict[str, Outcome]:
    """null_keys for each value of `group`, in one Spark job (the fan-out checks its 30 games
    this way rather than paying a job's fixed cost 30 times). Groups without rows are absent."""
    # Flags by position: a key such as eventParams.game_keyword is no plain column name.
    flags = [f"null_{position}" for position in range(len(keys))]
    counted = (
        df.select(
            group.alias("group"),
            *(F.col(key).isNull().alias(flag) for key, flag in zip(keys, flags, strict=True)),
        )
        .groupBy("group")
        .agg(F.count(F.lit(1)).alias("rows"), *(F.count_if(flag).alias(flag) for flag in flags))
        .collect()
    )
    return {
        row["group"]: _null_keys_found(keys, row["rows"], [row[flag] for flag in flags]) for row in counted
    }


def _null_keys_found(keys: tuple[str, ...], rows: int, nulls: list[int]) -> Outcome:
    by_key = dict(zip(keys, nulls, strict=True))
    return Outcome(not any(nulls), {"rows": rows, "null_rows_by_key": by_key})


def null_keys(df: DataFrame, keys: tuple[str, ...]) -> Outcome:
    """Rows lacking each key, and the rows looked at (in the same pass, for the caller's use)."""
    return null_keys_by(df, keys, F.lit("")).get("", no_rows(keys))


def no_rows(keys: tuple[str, ...]) -> Outcome:
    """null_keys of a table part with no rows at all."""
    return _null_keys_found(keys, 0, [0] * len(keys))


def by_day_and_game(df: DataFrame, value) -> dict:
    return {
        (row.eventDate.isoformat(), row.game_keyword): row.value
        for row in df.groupBy("eventDate", "game_keyword").agg(value.alias("value")).collect()
    }


def compare(found: dict, expected: dict) -> Outcome:
    """Figures by (day, game) against what they should be, the first mismatches named."""
    mismatches = {
        f"{day} {game}": {"found": str(found.get((day, game))), "expected": str(expected.get((day, game)))}
        for day, game in sorted(set(found) | set(expected))
        if found.get((day, game)) != expected.get((day, game))
    }
    return Outcome(
        not mismatches,
        {"checked": len(set(found) | set(expected)), "mismatches": dict(list(mismatches.items())[:20])},
    )


class DayTotals(NamedTuple):
    """What a day's players did in one game (or all games), from activity_player_days."""

    events: int
    bookings: Decimal
    devices: int


# Per (ISO day, game_keyword), all games included.
Totals = dict[tuple[str, str], DayTotals]


def activity_totals(players: DataFrame) -> Totals:
    """The players' events, bookings and distinct devices per day and game, and per day for
    all games (a device playing two games counts once there): what every KPI check compares
    its rows with, in one Spark job for all of them."""
    with_all_games = players.unionByName(players.withColumn("game_keyword", F.lit(ALL_GAMES)))
    rows = (
        with_all_games.groupBy("eventDate", "game_keyword")
        .agg(
            F.sum("events").alias("events"),
            F.sum("bookings").alias("bookings"),
            F.count_distinct("device_id").alias("devices"),
        )
        .collect()
    )
    return {
        (row.eventDate.isoformat(), row.game_keyword): DayTotals(row.events, row.bookings, row.devices)
        for row in rows
    }


def within(totals: Totals, first: date, end: date) -> Totals:
    """The totals of days [first, end)."""
    return {key: value for key, value in totals.items() if first.isoformat() <= key[0] < end.isoformat()}


def null_keys_in(rows: list[Row], keys: tuple[str, ...]) -> Outcome:
    """null_keys of rows already collected."""
    return _null_keys_found(keys, len(rows), [sum(row[key] is None for row in rows) for key in keys])


def _summed_by_day_and_game(rows: list[Row], column: str) -> dict:
    """SUM(column) GROUP BY eventDate, game_keyword, on the driver."""
    sums: dict = {}
    for row in rows:
        key = (row.eventDate.isoformat(), row.game_keyword)
        sums[key] = sums.get(key, 0) + (row[column] or 0)
    return sums


def hours_add_up_to_days(kpi: list[Row], totals: Totals) -> Outcome:
    """The hourly event counts of each day and game (from the hourly activity) add up to
    the events of that day's players (from the players' activity)."""
    return compare(
        _summed_by_day_and_game(kpi, "events"), {key: value.events for key, value in totals.items()}
    )


def bookings_add_up_to_days(kpi: list[Row], totals: Totals) -> Outcome:
    """The bookings of each day and game (over its hours or platforms) add up to what that
    day's players spent."""
    booked = {key: value for key, value in _summed_by_day_and_game(kpi, "bookings").items() if value}
    return compare(booked, {key: value.bookings for key, value in totals.items() if value.bookings})


def all_games_add_up(kpi: list[Row], keys: tuple[str, ...], figures: tuple[str, ...]) -> Outcome:
    """Each day's all-games row of a slice (`keys`: a level, an item) holds the sums of the
    games' rows of that slice, figure by figure."""
    games: dict[tuple, list] = {}
    all_games: dict[tuple, list] = {}
    for row in kpi:
        key = (row.eventDate.isoformat(), *(row[name] for name in keys))
        figures_of = [row[figure] for figure in figures]
        if row.game_keyword == ALL_GAMES:
            all_games[key] = figures_of
        else:
            summed = games.setdefault(key, [0] * len(figures))
            games[key] = [a + b for a, b in zip(summed, figures_of, strict=True)]
    mismatches = {
        " ".join(map(str, key)): {"all_games": str(all_games.get(key)), "games": str(games.get(key))}
        for key in sorted(set(games) | set(all_games), key=str)
        if games.get(key) != all_games.get(key)
    }
    return Outcome(
        not mismatches, {"checked": len(all_games), "mismatches": dict(list(mismatches.items())[:20])}
    )


def all_games_dau_is_bounded(kpi: list[Row]) -> Outcome:
    """A day's all-games DAU is at least its largest game's and at most the sum of all games'
    (one all-games row a day; a missing DAU is out of bounds)."""
    per_game: dict[date, list[int]] = {}
    all_games: dict[date, list[int]] = {}
    for row in kpi:
        (all_games if row.game_keyword == ALL_GAMES else per_game).setdefault(row.eventDate, []).append(
            row.dau
        )

    def bounded(games: list[int], overall: list[int]) -> bool:
        return (
            bool(games)
            and len(overall) == 1
            and None not in games + overall
            and max(games) <= overall[0] <= sum(games)
        )

    outside = [
        day.isoformat()
        for day in sorted(set(per_game) | set(all_games))
        if not bounded(per_game.get(day, []), all_games.get(day, []))
    ]
    return Outcome(not outside, {"days_out_of_bounds": outside})


def sessions_cover_players(kpi: list[Row], totals: Totals) -> Outcome:
    """Each day's players are its active devices, and no day has fewer sessions than players."""
    players = compare(
        _summed_by_day_and_game(kpi, "players"), {key: value.devices for key, value in totals.items()}
    )
    fewer = sum(row.sessions < row.players for row in kpi)
    return Outcome(
        players.passed and not fewer, {**players.details, "rows_with_fewer_sessions_than_players": fewer}
    )


def _devices_of(totals: Totals, row: Row) -> int:
    """The active devices of a KPI row's day and game."""
    day = totals.get((row.eventDate.isoformat(), row.game_keyword))
    return day.devices if day else 0


def _rows_that_fail(kpi: list[Row], holds, name: str, checked: int | None = None) -> Outcome:
    """Each KPI row must hold `holds`; the first rows that do not are named."""
    outside = [f"{row.eventDate} {row.game_keyword}" for row in kpi if not holds(row)]
    return Outcome(not outside, {name: outside[:20], "checked": len(kpi) if checked is None else checked})


def _ascending(*figures) -> bool:
    """Figures known so far (None: not yet) never decrease."""
    known = [figure for figure in figures if figure is not None]
    return all(a <= b for a, b in zip(known, known[1:], strict=False))


def cohorts_are_bounded(kpi: list[Row], totals: Totals) -> Outcome:
    """A cohort is at most its day's active devices, and its returns at most the cohort."""
    return _rows_that_fail(
        kpi,
        lambda row: (
            0 < row.new_players <= _devices_of(totals, row)
            and all(_ascending(0, row[f"retained_d{n}"], row.new_players) for n in RETURN_DAYS)
        ),
        "cohorts_out_of_bounds",
        checked=len(totals),
    )


def cohort_bookings_accumulate(kpi: list[Row], totals: Totals) -> Outcome:
    """A cohort is at most its day's active devices, and what it has spent by day 1, 7 and 30
    never shrinks from one to the next."""
    return _rows_that_fail(
        kpi,
        lambda row: (
            0 < row.new_players <= _devices_of(totals, row)
            and _ascending(0, *(row[f"bookings_d{n}"] for n in RETURN_DAYS))
        ),
        "cohorts_out_of_bounds",
    )


def active_users_add_up(kpi: list[Row], totals: Totals) -> Outcome:
    """Each day's DAU is its active devices; DAU <= WAU <= MAU; new and returning players
    make up the DAU."""
    return _rows_that_fail(
        kpi,
        lambda row: (
            row.dau == _devices_of(totals, row)
            and _ascending(1, row.dau, row.wau, row.mau)
            and row.new_players + row.returning_players == row.dau
            and row.returning_players >= 0
        ),
        "rows_not_adding_up",
    )


def payers_within_players(kpi: list[Row], totals: Totals) -> Outcome:
    """Each day's DAU is its active devices, and first-time payers <= paying users <= DAU."""
    return _rows_that_fail(
        kpi,
        lambda row: (
            row.dau == _devices_of(totals, row)
            and _ascending(0, row.first_time_payers, row.paying_users, row.dau)
        ),
        "rows_out_of_bounds",
    )


def windows_within_players(kpi: list[Row], totals: Totals) -> Outcome:
    """No 5-minute window has more players online than its day has active devices."""
    return _rows_that_fail(
        kpi, lambda row: 0 < row.players <= _devices_of(totals, row), "windows_out_of_bounds"
    )
