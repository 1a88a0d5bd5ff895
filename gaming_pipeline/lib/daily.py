"""Pure transforms from raw events to the per-game tables and the KPI tables.

Every KPI has one row per game and one for all games together (`game_keyword` =
`all_games`), so a dashboard can show a portfolio line beside each game's. Numbers are
exact: distinct counts are exact, money is summed as decimal(18,2).
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from gaming_pipeline.games import ALL_GAMES

EVENTS_PER_HOUR = "kpi_events_per_hour"
BOOKINGS_PER_HOUR = "kpi_bookings_per_hour"
DAILY_ACTIVE_USERS = "kpi_daily_active_users"
DAILY_REVENUE = "kpi_daily_revenue"
REVENUE_BY_PLATFORM = "kpi_revenue_by_platform"
KPI_TABLES = (EVENTS_PER_HOUR, BOOKINGS_PER_HOUR, DAILY_ACTIVE_USERS, DAILY_REVENUE, REVENUE_BY_PLATFORM)
PURCHASE = "purchaseEvent"
MONEY = "decimal(18,2)"
PER_USER = "decimal(18,4)"


def for_each_game_and_all(
    events: DataFrame, keys: list[Column], aggregate: Callable[[DataFrame, list[Column]], DataFrame]
) -> DataFrame:
    """`aggregate` grouped by `keys` per game, plus the same over all games together."""
    game = F.col("eventParams.game_keyword").alias("game_keyword")
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
        lambda df, keys: df.groupBy(*keys).agg(F.count_distinct("eventParams.device_id").alias("dau")),
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
                F.count_distinct("eventParams.device_id").alias("dau"),
                F.count_distinct(F.when(purchase, F.col("eventParams.device_id"))).alias("paying_users"),
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
