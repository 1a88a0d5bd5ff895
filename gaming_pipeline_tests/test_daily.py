"""The per-game and KPI transforms on tiny DataFrames."""

from datetime import date, datetime
from decimal import Decimal

from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from gaming_pipeline.lib import daily
from gaming_pipeline.lib.events import EVENT_PARAMS


def events(spark, *rows):
    """(eventName, 'HH:MM' on 2026-11-23, game, device, amount)."""
    return spark.createDataFrame(
        [
            (
                name,
                datetime(2026, 11, 23, *map(int, at.split(":"))),
                date(2026, 11, 23),
                (game, None, 0, "ios", "1.0", device, None, amount),
            )
            for name, at, game, device, amount in rows
        ],
        f"eventName string, eventTime timestamp, eventDate date, eventParams {EVENT_PARAMS.simpleString()}",
    )


SAMPLE = [
    ("gameStart", "08:05", "galaxy_miners", "d1", None),
    ("purchaseEvent", "08:10", "galaxy_miners", "d1", 4.99),
    ("purchaseEvent", "08:59", "galaxy_miners", "d2", 0.99),
    ("levelUp", "09:00", "galaxy_miners", "d2", None),
    ("purchaseEvent", "09:30", "ninja_run", "d1", 9.99),
]
H8, H9, H10 = (datetime(2026, 11, 23, hour) for hour in (8, 9, 10))
DAY = date(2026, 11, 23)


def test_events_per_hour_per_game_and_all_games(spark):
    expected = [
        Row(eventDate=DAY, window_start=H8, window_end=H9, game_keyword="galaxy_miners", events=3),
        Row(eventDate=DAY, window_start=H9, window_end=H10, game_keyword="galaxy_miners", events=1),
        Row(eventDate=DAY, window_start=H9, window_end=H10, game_keyword="ninja_run", events=1),
        Row(eventDate=DAY, window_start=H8, window_end=H9, game_keyword="all_games", events=3),
        Row(eventDate=DAY, window_start=H9, window_end=H10, game_keyword="all_games", events=2),
    ]
    assertDataFrameEqual(daily.events_per_hour(events(spark, *SAMPLE)), expected)


def test_bookings_are_exact_cents_and_an_hour_without_purchases_books_zero(spark):
    result = {
        (row.game_keyword, row.window_start.hour): (row.bookings, row.purchases)
        for row in daily.bookings_per_hour(events(spark, *SAMPLE)).collect()
    }
    assert result == {
        ("galaxy_miners", 8): (Decimal("5.98"), 2),
        ("galaxy_miners", 9): (Decimal("0.00"), 0),
        ("ninja_run", 9): (Decimal("9.99"), 1),
        ("all_games", 8): (Decimal("5.98"), 2),
        ("all_games", 9): (Decimal("9.99"), 1),
    }


def test_a_player_of_two_games_counts_once_for_all_games(spark):
    expected = [
        Row(eventDate=DAY, game_keyword="galaxy_miners", dau=2),
        Row(eventDate=DAY, game_keyword="ninja_run", dau=1),
        Row(eventDate=DAY, game_keyword="all_games", dau=2),
    ]
    assertDataFrameEqual(daily.daily_active_users(events(spark, *SAMPLE)), expected)


def test_daily_revenue_counts_payers_and_divides_bookings_by_dau(spark):
    result = {row.game_keyword: row for row in daily.daily_revenue(events(spark, *SAMPLE)).collect()}
    galaxy, ninja, everyone = result["galaxy_miners"], result["ninja_run"], result["all_games"]
    assert (galaxy.dau, galaxy.paying_users, galaxy.bookings, galaxy.arpdau) == (2, 2, Decimal("5.98"), Decimal("2.9900"))
    assert (ninja.dau, ninja.paying_users, ninja.bookings, ninja.arpdau) == (1, 1, Decimal("9.99"), Decimal("9.9900"))
    assert (everyone.dau, everyone.paying_users, everyone.bookings, everyone.arpdau) == (
        2,
        2,
        Decimal("15.97"),
        Decimal("7.9850"),
    )


def test_revenue_by_platform(spark):
    sample = [*SAMPLE, ("purchaseEvent", "10:00", "ninja_run", "d3", 1.99)]
    df = events(spark, *sample).withColumn(
        "eventParams",
        F.col("eventParams").withField(
            "platform", F.when(F.col("eventParams.device_id") == "d3", "android").otherwise("ios")
        ),
    )
    result = {
        (row.game_keyword, row.platform): (row.bookings, row.purchases)
        for row in daily.revenue_by_platform(df).collect()
    }
    assert result == {
        ("galaxy_miners", "ios"): (Decimal("5.98"), 2),
        ("ninja_run", "ios"): (Decimal("9.99"), 1),
        ("ninja_run", "android"): (Decimal("1.99"), 1),
        ("all_games", "ios"): (Decimal("15.97"), 3),
        ("all_games", "android"): (Decimal("1.99"), 1),
    }