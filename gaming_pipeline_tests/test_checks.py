"""The check computations catch what they are for."""

from datetime import date, datetime
from decimal import Decimal

from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.lib import checks, kpis
from gaming_pipeline.lib.events import EVENT_PARAMS

DAY = date(2026, 11, 23)
EVENTS_SCHEMA = (
    f"eventName string, eventTime timestamp, eventDate date, eventParams {EVENT_PARAMS.simpleString()}"
)


def activity(spark, *rows):
    """The players' activity of raw events (eventName, game, amount), one device at 08:00."""
    return kpis.player_days(raw(spark, *rows))


def raw(spark, *rows):
    return spark.createDataFrame(
        [
            (name, datetime(2026, 11, 23, 8), DAY, (game, None, 0, "ios", "1", "d1", None, amount))
            for name, game, amount in rows
        ],
        EVENTS_SCHEMA,
    )


def test_schema_differences_are_named():
    expected = T.StructType([T.StructField("a", T.StringType()), T.StructField("b", T.LongType())])
    actual = T.StructType([T.StructField("a", T.StringType()), T.StructField("b", T.IntegerType())])
    assert checks.schema_matches(expected, expected) == checks.Outcome(True, {"differences": {}})
    outcome = checks.schema_matches(actual, expected)
    assert not outcome.passed and outcome.details["differences"] == {
        "b": {"expected": "bigint", "found": "int"}
    }


def test_null_keys_are_counted_per_key(spark):
    df = spark.createDataFrame([(DAY, "g"), (None, "g"), (DAY, None)], "eventDate date, game_keyword string")
    assert checks.null_keys(df, checks.KPI_KEYS) == checks.Outcome(
        False,
        {"rows": 3, "null_rows_by_key": {"eventDate": 1, "game_keyword": 1}},
    )


def test_null_keys_are_counted_per_group_in_one_pass(spark):
    df = spark.createDataFrame([(DAY, "a"), (None, "a"), (DAY, "b")], "eventDate date, game_keyword string")
    by_game = checks.null_keys_by(df, checks.KPI_KEYS, F.col("game_keyword"))
    assert by_game == {
        "a": checks.Outcome(False, {"rows": 2, "null_rows_by_key": {"eventDate": 1, "game_keyword": 0}}),
        "b": checks.Outcome(True, {"rows": 1, "null_rows_by_key": {"eventDate": 0, "game_keyword": 0}}),
    }
    assert checks.null_keys(df.limit(0), checks.KPI_KEYS) == checks.no_rows(checks.KPI_KEYS)


def test_hourly_counts_that_do_not_add_up_fail(spark):
    totals = checks.activity_totals(activity(spark, ("gameStart", "g", None), ("levelUp", "g", None)))
    kpi = [
        Row(eventDate=DAY, game_keyword="g", events=2),
        Row(eventDate=DAY, game_keyword="all_games", events=1),
    ]
    outcome = checks.hours_add_up_to_days(kpi, totals)
    assert not outcome.passed and list(outcome.details["mismatches"]) == ["2026-11-23 all_games"]


def test_bookings_that_do_not_add_up_fail(spark):
    totals = checks.activity_totals(
        activity(spark, ("purchaseEvent", "g", 4.99), ("purchaseEvent", "g", 0.99))
    )
    good = [
        Row(eventDate=DAY, game_keyword="g", bookings=Decimal("5.98")),
        Row(eventDate=DAY, game_keyword="all_games", bookings=Decimal("5.98")),
    ]
    assert checks.bookings_add_up_to_days(good, totals).passed
    short = good[:1]
    assert not checks.bookings_add_up_to_days(short, totals).passed


def test_totals_count_a_player_of_two_games_once_for_all_games(spark):
    totals = checks.activity_totals(activity(spark, ("gameStart", "a", None), ("purchaseEvent", "b", 1.5)))
    assert totals == {
        ("2026-11-23", "a"): checks.DayTotals(1, Decimal("0.00"), 1),
        ("2026-11-23", "b"): checks.DayTotals(1, Decimal("1.50"), 1),
        ("2026-11-23", "all_games"): checks.DayTotals(2, Decimal("1.50"), 1),
    }
    assert checks.within(totals, DAY, DAY) == {}


def test_all_games_dau_outside_its_bounds_fails():
    def kpi(all_games: int | None) -> list[Row]:
        dau = {"a": 3, "b": 2, "all_games": all_games}
        return [Row(eventDate=DAY, game_keyword=game, dau=value) for game, value in dau.items()]

    assert checks.all_games_dau_is_bounded(kpi(4)) == checks.Outcome(True, {"days_out_of_bounds": []})
    assert checks.all_games_dau_is_bounded(kpi(6)) == checks.Outcome(
        False, {"days_out_of_bounds": ["2026-11-23"]}
    )
    assert checks.all_games_dau_is_bounded(kpi(4)[:2]) == checks.Outcome(
        False, {"days_out_of_bounds": ["2026-11-23"]}
    )
    # A second all-games row of the day is checked too, and a missing DAU is never in bounds.
    assert checks.all_games_dau_is_bounded(kpi(9) + kpi(4)[2:]) == checks.Outcome(
        False,
        {"days_out_of_bounds": ["2026-11-23"]},
    )
    assert checks.all_games_dau_is_bounded(kpi(None)) == checks.Outcome(
        False, {"days_out_of_bounds": ["2026-11-23"]}
    )


def test_null_keys_of_collected_rows_are_counted_per_key():
    rows = [Row(eventDate=DAY, game_keyword="g"), Row(eventDate=None, game_keyword=None)]
    assert checks.null_keys_in(rows, checks.KPI_KEYS) == checks.Outcome(
        False,
        {"rows": 2, "null_rows_by_key": {"eventDate": 1, "game_keyword": 1}},
    )
    assert checks.null_keys_in([], checks.KPI_KEYS) == checks.no_rows(checks.KPI_KEYS)


def test_sessions_fewer_than_players_or_players_not_the_devices_fail():
    totals = {("2026-11-23", "g"): checks.DayTotals(5, Decimal(0), 2)}
    good = [Row(eventDate=DAY, game_keyword="g", sessions=3, players=2)]
    assert checks.sessions_cover_players(good, totals).passed
    fewer = [Row(eventDate=DAY, game_keyword="g", sessions=1, players=2)]
    assert checks.sessions_cover_players(fewer, totals).details["rows_with_fewer_sessions_than_players"] == 1
    missing = [Row(eventDate=DAY, game_keyword="g", sessions=3, players=1)]
    assert list(checks.sessions_cover_players(missing, totals).details["mismatches"]) == ["2026-11-23 g"]


def test_cohorts_larger_than_their_day_or_with_more_returns_fail():
    totals = {("2026-11-23", "g"): checks.DayTotals(9, Decimal(0), 4)}

    def cohort(new: int, d1: int | None, game: str = "g") -> Row:
        return Row(
            eventDate=DAY,
            game_keyword=game,
            new_players=new,
            retained_d1=d1,
            retained_d7=None,
            retained_d30=None,
        )

    assert checks.cohorts_are_bounded([cohort(4, 2)], totals) == checks.Outcome(
        True,
        {"cohorts_out_of_bounds": [], "checked": 1},
    )
    outside = [cohort(5, 1), cohort(3, 4), cohort(1, 0, game="unknown")]
    assert checks.cohorts_are_bounded(outside, totals).details["cohorts_out_of_bounds"] == [
        "2026-11-23 g",
        "2026-11-23 g",
        "2026-11-23 unknown",
    ]


def test_active_users_must_add_up_to_the_days_devices():
    totals = {("2026-11-23", "g"): checks.DayTotals(9, Decimal(0), 4)}

    def day(dau: int, wau: int, mau: int, new: int) -> Row:
        return Row(
            eventDate=DAY,
            game_keyword="g",
            dau=dau,
            wau=wau,
            mau=mau,
            new_players=new,
            returning_players=dau - new,
        )

    assert checks.active_users_add_up([day(4, 6, 9, 1)], totals).passed
    for wrong in (day(3, 6, 9, 1), day(4, 3, 9, 1), day(4, 6, 5, 1), day(4, 6, 9, 5)):
        assert not checks.active_users_add_up([wrong], totals).passed, wrong


def test_payers_and_cohort_spending_are_bounded():
    totals = {("2026-11-23", "g"): checks.DayTotals(9, Decimal(0), 4)}

    def payers(dau: int, paying: int, first_time: int) -> Row:
        return Row(
            eventDate=DAY, game_keyword="g", dau=dau, paying_users=paying, first_time_payers=first_time
        )

    assert checks.payers_within_players([payers(4, 2, 1)], totals).passed
    assert not checks.payers_within_players([payers(4, 1, 2)], totals).passed
    assert not checks.payers_within_players([payers(4, 5, 1)], totals).passed

    def cohort(d1, d7, d30) -> Row:
        return Row(
            eventDate=DAY, game_keyword="g", new_players=2, bookings_d1=d1, bookings_d7=d7, bookings_d30=d30
        )

    assert checks.cohort_bookings_accumulate([cohort(Decimal(1), Decimal(3), None)], totals).passed
    assert not checks.cohort_bookings_accumulate([cohort(Decimal(3), Decimal(1), None)], totals).passed
