"""What the asset checks compute, as plain functions of DataFrames (no Dagster here).

Each returns (passed, details): details are small, JSON-friendly facts for the UI.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.games import ALL_GAMES

RAW_KEYS = ("eventDate", "eventTime", "eventName", "eventParams.game_keyword", "_source_object")
KPI_KEYS = ("eventDate", "game_keyword")


def schema_matches(actual: T.StructType, expected: T.StructType) -> tuple[bool, dict]:
    have = {field.name: field.dataType.simpleString() for field in actual.fields}
    want = {field.name: field.dataType.simpleString() for field in expected.fields}
    differences = {
        name: {"expected": want.get(name), "found": have.get(name)}
        for name in sorted(set(have) | set(want))
        if have.get(name) != want.get(name)
    }
    return not differences, {"differences": differences}


def null_keys_by(df: DataFrame, keys: tuple[str, ...], group: Column) -> dict[str, tuple[bool, dict]]:
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


def _null_keys_found(keys: tuple[str, ...], rows: int, nulls: list[int]) -> tuple[bool, dict]:
    by_key = dict(zip(keys, nulls, strict=True))
    return not any(nulls), {"rows": rows, "null_rows_by_key": by_key}


def null_keys(df: DataFrame, keys: tuple[str, ...]) -> tuple[bool, dict]:
    """Rows lacking each key, and the rows looked at (in the same pass, for the caller's use)."""
    return null_keys_by(df, keys, F.lit("")).get("", no_rows(keys))


def no_rows(keys: tuple[str, ...]) -> tuple[bool, dict]:
    """null_keys of a table part with no rows at all."""
    return _null_keys_found(keys, 0, [0] * len(keys))


def by_day_and_game(df: DataFrame, value) -> dict:
    return {
        (row.eventDate.isoformat(), row.game_keyword): row.value
        for row in df.groupBy("eventDate", "game_keyword").agg(value.alias("value")).collect()
    }


def compare(found: dict, expected: dict) -> tuple[bool, dict]:
    """Figures by (day, game) against what they should be, the first mismatches named."""
    mismatches = {
        f"{day} {game}": {"found": str(found.get((day, game))), "expected": str(expected.get((day, game)))}
        for day, game in sorted(set(found) | set(expected))
        if found.get((day, game)) != expected.get((day, game))
    }
    return not mismatches, {
        "checked": len(set(found) | set(expected)),
        "mismatches": dict(list(mismatches.items())[:20]),
    }


def _with_all_games(players: DataFrame) -> DataFrame:
    """Activity rows per game, and the same rows again as all games'."""
    return players.unionByName(players.withColumn("game_keyword", F.lit(ALL_GAMES)))


def hours_add_up_to_days(kpi: DataFrame, players: DataFrame) -> tuple[bool, dict]:
    """The hourly event counts of each day and game (from the hourly activity) add up to
    the events of that day's players (from the players' activity)."""
    return compare(
        by_day_and_game(kpi, F.sum("events")), by_day_and_game(_with_all_games(players), F.sum("events"))
    )


def bookings_add_up_to_days(kpi: DataFrame, players: DataFrame) -> tuple[bool, dict]:
    """The bookings of each day and game (over its hours or platforms) add up to what that
    day's players spent."""

    def booked(df: DataFrame) -> dict:
        return {key: value for key, value in by_day_and_game(df, F.sum("bookings")).items() if value}

    return compare(booked(kpi), booked(_with_all_games(players)))


def all_games_dau_is_bounded(kpi: DataFrame) -> tuple[bool, dict]:
    """A day's all-games DAU is at least its largest game's and at most the sum of all games'."""
    per_game = (
        kpi.where(F.col("game_keyword") != ALL_GAMES)
        .groupBy("eventDate")
        .agg(F.max("dau").alias("largest"), F.sum("dau").alias("total"))
    )
    all_games = kpi.where(F.col("game_keyword") == ALL_GAMES).select("eventDate", F.col("dau").alias("all"))
    outside = [
        row.eventDate.isoformat()
        for row in per_game.join(all_games, "eventDate", "full")
        .where(
            ~F.coalesce((F.col("all") >= F.col("largest")) & (F.col("all") <= F.col("total")), F.lit(False))
        )
        .collect()
    ]
    return not outside, {"days_out_of_bounds": outside}


def _devices_by_day_and_game(players: DataFrame) -> dict:
    return by_day_and_game(_with_all_games(players), F.count_distinct("device_id"))


def sessions_cover_players(kpi: DataFrame, players: DataFrame) -> tuple[bool, dict]:
    """Each day's players are its active devices, and no day has fewer sessions than players."""
    passed, details = compare(by_day_and_game(kpi, F.sum("players")), _devices_by_day_and_game(players))
    fewer = kpi.where(F.col("sessions") < F.col("players")).count()
    return passed and not fewer, {**details, "rows_with_fewer_sessions_than_players": fewer}


def cohorts_are_bounded(kpi: DataFrame, players: DataFrame) -> tuple[bool, dict]:
    """A cohort is at most its day's active devices, and its returns at most the cohort."""
    devices = _devices_by_day_and_game(players)
    outside = [
        f"{row.eventDate} {row.game_keyword}"
        for row in kpi.collect()
        if not (
            0 < row.new_players <= devices.get((row.eventDate.isoformat(), row.game_keyword), 0)
            and all(
                back is None or 0 <= back <= row.new_players for back in (row.retained_d1, row.retained_d7)
            )
        )
    ]
    return not outside, {"cohorts_out_of_bounds": outside[:20], "checked": len(devices)}
