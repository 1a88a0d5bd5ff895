"""The activity and KPI transforms on tiny DataFrames: raw events summed into the activity
tables, and the KPIs read from those."""

from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import reduce

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from gaming_pipeline.lib import kpis
from gaming_pipeline.lib.events import EVENT_PARAMS


def events(spark, *rows, day: date = date(2026, 11, 23)):
    """(eventName, 'HH:MM[:SS]' on `day`, game, device, amount)."""
    return spark.createDataFrame(
        [
            (
                name,
                datetime(day.year, day.month, day.day, *map(int, at.split(":"))),
                day,
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
    assertDataFrameEqual(kpis.events_per_hour(kpis.game_hours(events(spark, *SAMPLE))), expected)


def test_bookings_are_exact_cents_and_an_hour_without_purchases_books_zero(spark):
    result = {
        (row.game_keyword, row.window_start.hour): (row.bookings, row.purchases)
        for row in kpis.bookings_per_hour(kpis.game_hours(events(spark, *SAMPLE))).collect()
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
    assertDataFrameEqual(kpis.daily_active_users(kpis.player_days(events(spark, *SAMPLE))), expected)


def test_daily_revenue_counts_payers_and_divides_bookings_by_dau(spark):
    result = {
        row.game_keyword: row
        for row in kpis.daily_revenue(kpis.player_days(events(spark, *SAMPLE))).collect()
    }
    galaxy, ninja, everyone = result["galaxy_miners"], result["ninja_run"], result["all_games"]
    assert (galaxy.dau, galaxy.paying_users, galaxy.bookings, galaxy.arpdau) == (
        2,
        2,
        Decimal("5.98"),
        Decimal("2.9900"),
    )
    assert (ninja.dau, ninja.paying_users, ninja.bookings, ninja.arpdau) == (
        1,
        1,
        Decimal("9.99"),
        Decimal("9.9900"),
    )
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
        for row in kpis.revenue_by_platform(kpis.game_hours(df)).collect()
    }
    assert result == {
        ("galaxy_miners", "ios"): (Decimal("5.98"), 2),
        ("ninja_run", "ios"): (Decimal("9.99"), 1),
        ("ninja_run", "android"): (Decimal("1.99"), 1),
        ("all_games", "ios"): (Decimal("15.97"), 3),
        ("all_games", "android"): (Decimal("1.99"), 1),
    }


def test_sessions_end_after_a_30_minute_pause_and_at_midnight(spark):
    day = events(
        spark,
        ("gameStart", "08:00", "galaxy_miners", "d1", None),
        ("levelUp", "08:30", "galaxy_miners", "d1", None),  # a 30-minute pause keeps the session
        ("levelUp", "09:00:01", "galaxy_miners", "d1", None),  # just over 30 minutes: a new one
        ("gameStart", "08:10", "ninja_run", "d1", None),  # another game, another session
        ("gameEnd", "23:59", "ninja_run", "d2", None),
    )
    after_midnight = events(spark, ("gameEnd", "00:01", "ninja_run", "d2", None), day=DAY + timedelta(days=1))
    result = {
        (row.eventDate, row.game_keyword): (
            row.sessions,
            row.players,
            row.session_seconds,
            row.avg_session_seconds,
        )
        for row in kpis.sessions(kpis.player_days(day.unionByName(after_midnight))).collect()
    }
    tomorrow = DAY + timedelta(days=1)
    assert result == {
        (DAY, "galaxy_miners"): (2, 1, Decimal("1800.000000"), Decimal("900.00")),
        (DAY, "ninja_run"): (2, 2, Decimal("0E-6"), Decimal("0.00")),
        (DAY, "all_games"): (4, 2, Decimal("1800.000000"), Decimal("450.00")),
        (tomorrow, "ninja_run"): (1, 1, Decimal("0E-6"), Decimal("0.00")),
        (tomorrow, "all_games"): (1, 1, Decimal("0E-6"), Decimal("0.00")),
    }


def played(spark, *rows):
    """(days after DAY, game, device): one event at noon."""
    days = [
        events(spark, ("levelUp", "12:00", game, device, None), day=DAY + timedelta(days=n))
        for n, game, device in rows
    ]
    return reduce(DataFrame.unionByName, days)


def test_retention_counts_new_players_back_after_one_and_seven_days(spark):
    history = played(
        spark,
        (-1, "ninja_run", "veteran"),  # seen before DAY: not new on DAY in ninja_run
        (0, "ninja_run", "veteran"),
        (0, "ninja_run", "a"),
        (0, "ninja_run", "b"),
        (0, "galaxy_miners", "veteran"),  # new to this game, and to no other
        (1, "ninja_run", "a"),
        (1, "galaxy_miners", "veteran"),
        (2, "ninja_run", "b"),  # back after two days: neither day 1 nor day 7
        (7, "ninja_run", "b"),
    )
    result = {
        (row.eventDate - DAY).days: {
            row.game_keyword: (
                row.new_players,
                row.retained_d1,
                row.retained_d7,
                row.d1_retention,
                row.d7_retention,
            )
            for row in rows
        }
        for rows in [kpis.retention(kpis.player_days(history), DAY, DAY + timedelta(days=2)).collect()]
        for row in rows
    }
    assert result[0] == {
        "ninja_run": (2, 1, 1, Decimal("0.5000"), Decimal("0.5000")),
        "galaxy_miners": (1, 1, 0, Decimal("1.0000"), Decimal("0.0000")),
        "all_games": (2, 1, 1, Decimal("0.5000"), Decimal("0.5000")),
    }
    # Day 8 has no events yet, so day 1's day-7 retention is not known.
    assert set(result) == {0}, "day 1 has no new player"
    late = kpis.retention(kpis.player_days(history), DAY - timedelta(days=1), DAY).collect()
    assert {(row.game_keyword, row.retained_d1, row.retained_d7) for row in late} == {
        ("ninja_run", 1, None),
        ("all_games", 1, None),
    }


def test_retention_reads_every_day_before_its_cohorts_and_thirty_after():
    assert kpis.retention_source(DAY, DAY + timedelta(days=1)) == "eventDate < DATE'2026-12-24'"


def test_active_users_count_each_player_once_over_the_trailing_week_and_month(spark):
    history = played(
        spark,
        (-29, "ninja_run", "a"),  # in DAY's month, not its week
        (-6, "ninja_run", "b"),  # in DAY's week
        (-30, "ninja_run", "c"),  # just outside DAY's month
        (0, "ninja_run", "c"),
        (0, "ninja_run", "d"),  # new on DAY
        (0, "galaxy_miners", "a"),  # new to galaxy_miners, not to all games
    )
    rows = kpis.active_users(kpis.player_days(history), DAY, DAY + timedelta(days=1)).collect()
    result = {
        row.game_keyword: (row.dau, row.wau, row.mau, row.stickiness, row.new_players, row.returning_players)
        for row in rows
    }
    assert result == {
        "ninja_run": (2, 3, 4, Decimal("0.5000"), 1, 1),
        "galaxy_miners": (1, 1, 1, Decimal("1.0000"), 1, 0),
        "all_games": (3, 4, 4, Decimal("0.7500"), 1, 2),
    }


def test_payers_convert_and_first_purchases_wait_from_first_seen(spark):
    history = reduce(
        DataFrame.unionByName,
        [
            events(spark, ("gameStart", "08:00", "ninja_run", "a", None), day=DAY - timedelta(days=3)),
            events(
                spark,
                ("purchaseEvent", "08:00", "ninja_run", "a", 4.99),  # first purchase, 3 days in
                ("purchaseEvent", "09:00", "ninja_run", "b", 0.99),  # first purchase on first day
                ("purchaseEvent", "10:00", "ninja_run", "b", 1.00),
                ("levelUp", "10:00", "ninja_run", "c", None),
            ),
        ],
    )
    (ninja,) = [
        row
        for row in kpis.payers(kpis.player_days(history), DAY, DAY + timedelta(days=1)).collect()
        if row.game_keyword == "ninja_run"
    ]
    assert (
        ninja.dau,
        ninja.paying_users,
        ninja.payer_conversion,
        ninja.bookings,
        ninja.arppu,
        ninja.first_time_payers,
        ninja.avg_days_to_first_purchase,
    ) == (3, 2, Decimal("0.6667"), Decimal("6.98"), Decimal("3.4900"), 2, Decimal("1.50"))


def test_cohort_revenue_accumulates_what_a_cohort_spends_by_day_1_7_and_30(spark):
    def spent(n: int, device: str, amount: float):
        return events(
            spark, ("purchaseEvent", "12:00", "ninja_run", device, amount), day=DAY + timedelta(days=n)
        )

    history = reduce(
        DataFrame.unionByName,
        [
            spent(0, "a", 1.0),
            spent(0, "b", 2.0),
            spent(1, "a", 3.0),
            spent(5, "b", 4.0),
            spent(7, "a", 5.0),
            spent(8, "b", 6.0),
        ],
    )
    (ninja,) = [
        row
        for row in kpis.cohort_revenue(kpis.player_days(history), DAY, DAY + timedelta(days=1)).collect()
        if row.game_keyword == "ninja_run"
    ]
    # Day 30 has no events yet: its figure is not known.
    assert (ninja.new_players, ninja.bookings_d1, ninja.bookings_d7, ninja.bookings_d30) == (
        2,
        Decimal("6.00"),
        Decimal("15.00"),
        None,
    )
    assert (ninja.bookings_per_player_d1, ninja.bookings_per_player_d7) == (
        Decimal("3.0000"),
        Decimal("7.5000"),
    )


def test_concurrent_players_are_those_with_a_session_over_each_five_minutes(spark):
    day = events(
        spark,
        ("gameStart", "08:02", "ninja_run", "a", None),
        ("levelUp", "08:11", "ninja_run", "a", None),  # online 08:00 to 08:15
        ("gameStart", "08:05", "galaxy_miners", "a", None),  # the same player in another game
        ("gameStart", "08:09:59", "ninja_run", "b", None),
    )
    result = {
        (row.game_keyword, row.window_start.strftime("%H:%M")): row.players
        for row in kpis.concurrent_players(kpis.player_days(day)).collect()
    }
    assert result == {
        ("ninja_run", "08:00"): 1,
        ("ninja_run", "08:05"): 2,
        ("ninja_run", "08:10"): 1,
        ("galaxy_miners", "08:05"): 1,
        ("all_games", "08:00"): 1,
        ("all_games", "08:05"): 2,
        ("all_games", "08:10"): 1,
    }


def test_hourly_slices_split_a_game_by_platform_and_app_version(spark):
    df = events(spark, *SAMPLE).withColumn(
        "eventParams",
        F.col("eventParams").withField(
            "app_version", F.when(F.col("eventParams.device_id") == "d2", "2.4.1").otherwise("2.4.0")
        ),
    )
    result = {
        (row.game_keyword, row.window_start.hour, row.platform, row.app_version): (row.events, row.bookings)
        for row in kpis.hourly_slices(kpis.game_hours(df)).collect()
    }
    assert result[("galaxy_miners", 8, "ios", "2.4.0")] == (2, Decimal("4.99"))
    assert result[("galaxy_miners", 8, "ios", "2.4.1")] == (1, Decimal("0.99"))
    assert result[("all_games", 9, "ios", "2.4.0")] == (1, Decimal("9.99"))


def test_the_progression_funnel_and_revenue_by_item_count_each_level_and_item(spark):
    own = {
        "08:01": '{"level": 1}',
        "08:02": '{"level": 1}',
        "08:03": '{"level": 2}',
        "08:04": '{"level": 1, "stars": 3}',
        "08:05": '{"level": 2}',
        "08:06": '{"item_id": "gems"}',
        "08:07": '{"item_id": "gems"}',
        "08:09": '{"level": 1}',
    }
    rows = events(
        spark,
        ("levelStarted", "08:01", "galaxy_miners", "d1", None),
        ("levelStarted", "08:02", "ninja_run", "d2", None),
        ("levelStarted", "08:03", "galaxy_miners", "d1", None),
        ("levelCompleted", "08:04", "galaxy_miners", "d1", None),
        ("levelFailed", "08:05", "galaxy_miners", "d1", None),
        ("purchaseEvent", "08:06", "galaxy_miners", "d1", 4.99),
        ("purchaseEvent", "08:07", "ninja_run", "d2", 0.99),
        ("purchaseEvent", "08:08", "ninja_run", "d2", 1.99),
        # A level event of another name, and a progression event without a level: neither counts.
        ("levelUp", "08:09", "ninja_run", "d2", None),
        ("levelFailed", "08:10", "ninja_run", "d2", None),
    ).withColumn(
        "customParams",
        F.parse_json(
            F.create_map(*(F.lit(x) for kv in own.items() for x in kv))[F.date_format("eventTime", "HH:mm")]
        ),
    )
    params = kpis.game_params(rows)
    funnel = {
        (row.game_keyword, row.level): (row.started, row.completed, row.failed, row.completion_rate)
        for row in kpis.progression_funnel(params).collect()
    }
    assert funnel == {
        ("galaxy_miners", 1): (1, 1, 0, Decimal("1.0000")),
        ("galaxy_miners", 2): (1, 0, 1, Decimal("0.0000")),
        ("ninja_run", 1): (1, 0, 0, None),
        ("all_games", 1): (2, 1, 0, Decimal("1.0000")),
        ("all_games", 2): (1, 0, 1, Decimal("0.0000")),
    }
    items = {
        (row.game_keyword, row.item_id): (row.purchases, row.bookings)
        for row in kpis.revenue_by_item(params).collect()
    }
    assert items == {
        ("galaxy_miners", "gems"): (1, Decimal("4.99")),
        ("ninja_run", "gems"): (1, Decimal("0.99")),
        ("ninja_run", None): (1, Decimal("1.99")),
        ("all_games", "gems"): (2, Decimal("5.98")),
        ("all_games", None): (1, Decimal("1.99")),
    }
    assert {
        row.param: row.events
        for row in params.groupBy("param").agg(F.sum("events").alias("events")).collect()
    } == {
        "level": 5,
        "item_id": 3,
    }
