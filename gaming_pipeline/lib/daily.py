"""Pure transforms from raw events to the per-game tables and the KPI tables.

Every KPI has one row per game and one for all games together (`game_keyword` =
`all_games`), so a dashboard can show a portfolio line beside each game's. Numbers are
exact: distinct counts are exact, money is summed as decimal(18,2).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from gaming_pipeline.games import ALL_GAMES

EVENTS_PER_HOUR = "kpi_events_per_hour"
BOOKINGS_PER_HOUR = "kpi_bookings_per_hour"
DAILY_ACTIVE_USERS = "kpi_daily_active_users"
DAILY_REVENUE = "kpi_daily_revenue"
REVENUE_BY_PLATFORM = "kpi_revenue_by_platform"
SESSIONS = "kpi_sessions"
RETENTION = "kpi_retention"
KPI_TABLES = (
    EVENTS_PER_HOUR,
    BOOKINGS_PER_HOUR,
    DAILY_ACTIVE_USERS,
    DAILY_REVENUE,
    REVENUE_BY_PLATFORM,
    SESSIONS,
    RETENTION,
)
PURCHASE = "purchaseEvent"
MONEY = "decimal(18,2)"
PER_USER = "decimal(18,4)"
SECONDS = "decimal(24,6)"
SHARE = "decimal(5,4)"
# A pause longer than this ends a session: the common mobile-analytics convention.
SESSION_GAP_MICROS = 30 * 60 * 1_000_000
RETURN_DAYS = (1, 7)
GAME = "eventParams.game_keyword"
DEVICE = "eventParams.device_id"


def for_each_game_and_all(
    events: DataFrame,
    keys: list[Column],
    aggregate: Callable[[DataFrame, list[Column]], DataFrame],
    game_column: str = GAME,
) -> DataFrame:
    """`aggregate` grouped by `keys` per game, plus the same over all games together."""
    game = F.col(game_column).alias("game_keyword")
    per_game = aggregate(events, [*keys, game])
    all_games = aggregate(events, [*keys, F.lit(ALL_GAMES).alias("game_keyword")])
    return per_game.unionByName(all_games)


def _hour(events: DataFrame) -> DataFrame:
    """The seed's `window("eventTime", "60 minute")`, flattened to columns SQL users can use."""
    window = F.window("eventTime", "60 minutes")
    return events.withColumn("window_start", window.start).withColumn("window_end", window.end)


def events_per_hour(events: DataFrame) -> DataFrame:
    return for_each_game_and_all(
        _hour(events),
        [F.col("eventDate"), F.col("window_start"), F.col("window_end")],
        lambda df, keys: df.groupBy(*keys).agg(F.count(F.lit(1)).alias("events")),
    )


def bookings_per_hour(events: DataFrame) -> DataFrame:
    """Purchase amounts summed per hour; an hour with events but no purchase books 0, so a
    drop to nothing is visible instead of a missing row."""

    def aggregate(df: DataFrame, keys: list[Column]) -> DataFrame:
        purchase, bookings = _purchases(df)
        return df.groupBy(*keys).agg(bookings.alias("bookings"), F.count_if(purchase).alias("purchases"))

    return for_each_game_and_all(
        _hour(events), [F.col("eventDate"), F.col("window_start"), F.col("window_end")], aggregate
    )


def daily_active_users(events: DataFrame) -> DataFrame:
    return for_each_game_and_all(
        events,
        [F.col("eventDate")],
        lambda df, keys: df.groupBy(*keys).agg(F.count_distinct(DEVICE).alias("dau")),
    )


def _purchases(df: DataFrame) -> tuple[Column, Column]:
    purchase = F.col("eventName") == PURCHASE
    bookings = F.coalesce(
        F.sum(F.when(purchase, F.col("eventParams.amount").cast(MONEY))), F.lit(0).cast(MONEY)
    )
    return purchase, bookings


def daily_revenue(events: DataFrame) -> DataFrame:
    """Per day: active users, paying users (distinct devices with a purchase), bookings and
    ARPDAU (bookings per daily active user, to 4 decimals)."""

    def aggregate(df: DataFrame, keys: list[Column]) -> DataFrame:
        purchase, bookings = _purchases(df)
        return (
            df.groupBy(*keys)
            .agg(
                F.count_distinct(DEVICE).alias("dau"),
                F.count_distinct(F.when(purchase, F.col(DEVICE))).alias("paying_users"),
                bookings.alias("bookings"),
            )
            .withColumn("arpdau", (F.col("bookings") / F.col("dau")).cast(PER_USER))
        )

    return for_each_game_and_all(events, [F.col("eventDate")], aggregate)


def revenue_by_platform(events: DataFrame) -> DataFrame:
    """Per day and platform (ios, android): bookings and purchases."""

    def aggregate(df: DataFrame, keys: list[Column]) -> DataFrame:
        purchase, bookings = _purchases(df)
        return df.groupBy(*keys).agg(bookings.alias("bookings"), F.count_if(purchase).alias("purchases"))

    return for_each_game_and_all(
        events, [F.col("eventDate"), F.col("eventParams.platform").alias("platform")], aggregate
    )


def sessions(events: DataFrame) -> DataFrame:
    """Sessions per day: a device's events in one game with no pause over 30 minutes make one
    session. Sessions are cut at midnight UTC, so each day is computed from its own events
    and a rebuild of any range gives the same numbers. Per day: `sessions`, `players`
    (devices with a session), `session_seconds` (first to last event of each session,
    summed, exact to the microsecond) and `avg_session_seconds`."""
    in_order = Window.partitionBy("eventDate", "game", "device").orderBy("at")
    starts = F.coalesce(F.col("at") - F.lag("at").over(in_order) > SESSION_GAP_MICROS, F.lit(True))
    numbered = (
        events.select(
            "eventDate",
            F.col(GAME).alias("game"),
            F.col(DEVICE).alias("device"),
            F.unix_micros("eventTime").alias("at"),
        )
        .withColumn(
            "session", F.sum(starts.cast("int")).over(in_order.rowsBetween(Window.unboundedPreceding, 0))
        )
        .groupBy("eventDate", "game", "device", "session")
        .agg((F.max("at") - F.min("at")).alias("micros"))
    )

    def aggregate(df: DataFrame, keys: list[Column]) -> DataFrame:
        return (
            df.groupBy(*keys)
            .agg(
                F.count(F.lit(1)).alias("sessions"),
                F.count_distinct("device").alias("players"),
                (F.sum("micros").cast(SECONDS) / 1_000_000).cast(SECONDS).alias("session_seconds"),
            )
            .withColumn("avg_session_seconds", (F.col("session_seconds") / F.col("sessions")).cast(MONEY))
        )

    return for_each_game_and_all(numbered, [F.col("eventDate")], aggregate, "game")


def retention_source(first_cohort: date, end_cohort: date) -> str:
    """The raw days retention of cohorts [first_cohort, end_cohort) needs: every day before
    them (to tell new players) and the return days after them."""
    return f"eventDate < DATE'{end_cohort + timedelta(days=max(RETURN_DAYS)):%Y-%m-%d}'"


def retention(events: DataFrame, first_cohort: date, end_cohort: date) -> DataFrame:
    """Day-1 and day-7 retention of new players. A day's cohort (`eventDate`) is the devices
    first seen in a game that day (`new_players`; for all games, first seen in any game);
    `retained_d1` / `retained_d7` count those that play again exactly 1 / 7 days later, and
    `d1_retention` / `d7_retention` are the shares. A return day with no events at all yet
    shows null, not 0. `events` must hold every day `retention_source` names."""
    played = events.select(
        "eventDate", F.col(GAME).alias("game_keyword"), F.col(DEVICE).alias("device")
    ).distinct()
    played = played.unionByName(played.withColumn("game_keyword", F.lit(ALL_GAMES)).distinct())
    cohorts = (
        played.groupBy("game_keyword", "device")
        .agg(F.min("eventDate").alias("eventDate"))
        .where(F.col("eventDate").between(F.lit(first_cohort), F.lit(end_cohort - timedelta(days=1))))
    )
    returns = played.select("game_keyword", "device", F.col("eventDate").alias("back_on"))
    came_back = {n: F.max(F.col("back_on") == F.date_add("eventDate", n)) for n in RETURN_DAYS}
    per_device = (
        cohorts.join(returns, ["game_keyword", "device"])
        .groupBy("eventDate", "game_keyword", "device")
        .agg(*(came_back[n].alias(f"d{n}") for n in RETURN_DAYS))
    )
    days_with_events = {
        n: events.select(F.date_sub("eventDate", n).alias("eventDate")).distinct() for n in RETURN_DAYS
    }
    result = per_device.groupBy("eventDate", "game_keyword").agg(
        F.count(F.lit(1)).alias("new_players"),
        *(F.count_if(f"d{n}").alias(f"retained_d{n}") for n in RETURN_DAYS),
    )
    for n in RETURN_DAYS:
        measured = days_with_events[n].withColumn(f"has_d{n}", F.lit(True))
        retained = F.when(F.col(f"has_d{n}"), F.col(f"retained_d{n}"))
        result = (
            result.join(measured, "eventDate", "left")
            .withColumn(f"retained_d{n}", retained)
            .withColumn(f"d{n}_retention", (F.col(f"retained_d{n}") / F.col("new_players")).cast(SHARE))
            .drop(f"has_d{n}")
        )
    return result
