"""The check computations catch what they are for."""

from datetime import date, datetime
from decimal import Decimal

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
    assert checks.schema_matches(expected, expected) == (True, {"differences": {}})
    passed, details = checks.schema_matches(actual, expected)
    assert not passed and details["differences"] == {"b": {"expected": "bigint", "found": "int"}}


def test_null_keys_are_counted_per_key(spark):
    df = spark.createDataFrame([(DAY, "g"), (None, "g"), (DAY, None)], "eventDate date, game_keyword string")
    assert checks.null_keys(df, checks.KPI_KEYS) == (
        False,
        {"rows": 3, "null_rows_by_key": {"eventDate": 1, "game_keyword": 1}},
    )


def test_null_keys_are_counted_per_group_in_one_pass(spark):
    df = spark.createDataFrame([(DAY, "a"), (None, "a"), (DAY, "b")], "eventDate date, game_keyword string")
    by_game = checks.null_keys_by(df, checks.KPI_KEYS, F.col("game_keyword"))
    assert by_game == {
        "a": (False, {"rows": 2, "null_rows_by_key": {"eventDate": 1, "game_keyword": 0}}),
        "b": (True, {"rows": 1, "null_rows_by_key": {"eventDate": 0, "game_keyword": 0}}),
    }
    assert checks.null_keys(df.limit(0), checks.KPI_KEYS) == checks.no_rows(checks.KPI_KEYS)


def test_hourly_counts_that_do_not_add_up_fail(spark):
    events = activity(spark, ("gameStart", "g", None), ("levelUp", "g", None))
    kpi = spark.createDataFrame(
        [(DAY, "g", 2), (DAY, "all_games", 1)], "eventDate date, game_keyword string, events long"
    )
    passed, details = checks.hours_add_up_to_days(kpi, events)
    assert not passed and list(details["mismatches"]) == ["2026-11-23 all_games"]


def test_bookings_that_do_not_add_up_fail(spark):
    events = activity(spark, ("purchaseEvent", "g", 4.99), ("purchaseEvent", "g", 0.99))
    good = spark.createDataFrame(
        [(DAY, "g", Decimal("5.98")), (DAY, "all_games", Decimal("5.98"))],
        "eventDate date, game_keyword string, bookings decimal(18,2)",
    )
    assert checks.bookings_add_up_to_days(good, events)[0]
    short = good.where("game_keyword = 'g'")
    assert not checks.bookings_add_up_to_days(short, events)[0]


def test_all_games_dau_outside_its_bounds_fails(spark):
    schema = "eventDate date, game_keyword string, dau long"
    ok = spark.createDataFrame([(DAY, "a", 3), (DAY, "b", 2), (DAY, "all_games", 4)], schema)
    too_many = spark.createDataFrame([(DAY, "a", 3), (DAY, "b", 2), (DAY, "all_games", 6)], schema)
    assert checks.all_games_dau_is_bounded(ok) == (True, {"days_out_of_bounds": []})
    assert checks.all_games_dau_is_bounded(too_many) == (False, {"days_out_of_bounds": ["2026-11-23"]})
