"""The KPI tables and the activity tables they are computed from, as pure transforms.

Raw events are summed once into small activity tables, and every KPI is read from them:
- `activity_game_hours`: per hour, game and platform, the events, purchases and bookings.
  Sums add up, so a batch of new events is added to it as it is.
- `activity_player_days`: per day, game and player, the events, purchases, bookings and the
  player's sessions as (first, last) spans. A batch's spans merge into the day's (two
  sessions at most the session gap apart become one), so distinct players and sessions stay
  exact without reading the day's events again.
- `activity_game_params`: per day, game and value of a parameter of the games' own that the
  KPIs read (a `level` of the progression events, a purchase's `item_id`), the levels
  started, completed and failed and the purchases and bookings. Sums, added as they are.
A rebuild computes both from the raw table with the same transforms, so the rows a run of
batches leaves are the rows a rebuild writes.

Every KPI has one row per game and one for all games together (`game_keyword` =
`all_games`), so a dashboard can show a portfolio line beside each game's. Numbers are
exact: distinct counts are exact, money is summed as decimal.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import NamedTuple

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.event_names import (
    ITEM,
    LEVEL,
    LEVEL_COMPLETED,
    LEVEL_FAILED,
    LEVEL_STARTED,
    PROGRESSION,
    PURCHASE,
)
from gaming_pipeline.games import ALL_GAMES

GAME_HOURS = "activity_game_hours"
PLAYER_DAYS = "activity_player_days"
GAME_PARAMS = "activity_game_params"
ACTIVITY_TABLES = (GAME_HOURS, PLAYER_DAYS, GAME_PARAMS)

EVENTS_PER_HOUR = "kpi_events_per_hour"
BOOKINGS_PER_HOUR = "kpi_bookings_per_hour"
DAILY_ACTIVE_USERS = "kpi_daily_active_users"
DAILY_REVENUE = "kpi_daily_revenue"
REVENUE_BY_PLATFORM = "kpi_revenue_by_platform"
SESSIONS = "kpi_sessions"
RETENTION = "kpi_retention"
ACTIVE_USERS = "kpi_active_users"
PAYERS = "kpi_payers"
COHORT_REVENUE = "kpi_cohort_revenue"
CONCURRENT_PLAYERS = "kpi_concurrent_players"
HOURLY_SLICES = "kpi_hourly_slices"
PROGRESSION_FUNNEL = "kpi_progression_funnel"
REVENUE_BY_ITEM = "kpi_revenue_by_item"
KPI_TABLES = (
    EVENTS_PER_HOUR,
    BOOKINGS_PER_HOUR,
    DAILY_ACTIVE_USERS,
    DAILY_REVENUE,
    REVENUE_BY_PLATFORM,
    SESSIONS,
    RETENTION,
    ACTIVE_USERS,
    PAYERS,
    COHORT_REVENUE,
    CONCURRENT_PLAYERS,
    HOURLY_SLICES,
    PROGRESSION_FUNNEL,
    REVENUE_BY_ITEM,
)
# An amount as a client sends it, to the cent; BOOKINGS holds any sum of them.
MONEY = "decimal(18,2)"
BOOKINGS = "decimal(28,2)"
PER_USER = "decimal(18,4)"
SECONDS = "decimal(24,6)"
SHARE = "decimal(5,4)"
# A pause longer than this ends a session: the common mobile-analytics convention.
SESSION_GAP_MICROS = 30 * 60 * 1_000_000
# The days after a cohort's first day that retention and cohort revenue are measured at.
RETURN_DAYS = (1, 7, 30)
# The trailing days of weekly and monthly active users, the day itself included.
WEEK, MONTH = 7, 30
# How many days before a refresh's first day a KPI rewrites too. A day's events are the
# returns and the spending of the cohorts up to 30 days before it: a refresh takes those
# cohorts along (it reads every player's first day whatever the number of cohorts), so new
# events need no cohort run of their own.
REACHES_BACK = {RETENTION: max(RETURN_DAYS), COHORT_REVENUE: max(RETURN_DAYS)}
# The KPIs whose figures of a day follow from the days before it too: a player's first day
# (new players, cohorts, first purchases) and the trailing weeks and months. Events of a past
# day change these KPIs of every later day, which the refresh sensor refreshes in one run.
FOLLOW_EARLIER_DAYS = (RETENTION, ACTIVE_USERS, PAYERS, COHORT_REVENUE)
FIVE_MINUTES = 5 * 60
GAME = "eventParams.game_keyword"
DEVICE = "eventParams.device_id"


_DATE, _TIME, _TEXT, _COUNT = T.DateType(), T.TimestampType(), T.StringType(), T.LongType()
_BOOKINGS, _PER_USER, _SHARE = T.DecimalType(28, 2), T.DecimalType(18, 4), T.DecimalType(5, 4)
_SPAN = T.StructType([T.StructField("first_at", _TIME), T.StructField("last_at", _TIME)])
SPAN = _SPAN.simpleString()
_HOUR = [("eventDate", _DATE), ("window_start", _TIME), ("window_end", _TIME), ("game_keyword", _TEXT)]
_SLICE = [("platform", _TEXT), ("app_version", _TEXT)]
_DAY = [("eventDate", _DATE), ("game_keyword", _TEXT)]


def _columns(*columns: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(name, data_type) for name, data_type in columns])


# Each table's columns, declared once: the tables are created with these, and every
# transform's rows are cast to them, so a table's schema never depends on a transform.
SCHEMAS: dict[str, T.StructType] = {
    GAME_HOURS: _columns(*_HOUR, *_SLICE, ("events", _COUNT), ("purchases", _COUNT), ("bookings", _BOOKINGS)),
    PLAYER_DAYS: _columns(
        *_DAY,
        ("device_id", _TEXT),
        ("events", _COUNT),
        ("purchases", _COUNT),
        ("bookings", _BOOKINGS),
        ("sessions", T.ArrayType(_SPAN)),
    ),
    EVENTS_PER_HOUR: _columns(*_HOUR, ("events", _COUNT)),
    BOOKINGS_PER_HOUR: _columns(*_HOUR, ("bookings", _BOOKINGS), ("purchases", _COUNT)),
    DAILY_ACTIVE_USERS: _columns(*_DAY, ("dau", _COUNT)),
    DAILY_REVENUE: _columns(
        *_DAY,
        ("dau", _COUNT),
        ("paying_users", _COUNT),
        ("bookings", _BOOKINGS),
        ("arpdau", _PER_USER),
    ),
    REVENUE_BY_PLATFORM: _columns(
        ("eventDate", _DATE),
        ("platform", _TEXT),
        ("game_keyword", _TEXT),
        ("bookings", _BOOKINGS),
        ("purchases", _COUNT),
    ),
    SESSIONS: _columns(
        *_DAY,
        ("sessions", _COUNT),
        ("players", _COUNT),
        ("session_seconds", T.DecimalType(24, 6)),
        ("avg_session_seconds", T.DecimalType(18, 2)),
    ),
    RETENTION: _columns(
        *_DAY,
        ("new_players", _COUNT),
        *((f"retained_d{n}", _COUNT) for n in RETURN_DAYS),
        *((f"d{n}_retention", _SHARE) for n in RETURN_DAYS),
    ),
    ACTIVE_USERS: _columns(
        *_DAY,
        ("dau", _COUNT),
        ("wau", _COUNT),
        ("mau", _COUNT),
        ("stickiness", _SHARE),
        ("new_players", _COUNT),
        ("returning_players", _COUNT),
    ),
    PAYERS: _columns(
        *_DAY,
        ("dau", _COUNT),
        ("paying_users", _COUNT),
        ("payer_conversion", _SHARE),
        ("bookings", _BOOKINGS),
        ("arppu", _PER_USER),
        ("first_time_payers", _COUNT),
        ("avg_days_to_first_purchase", T.DecimalType(10, 2)),
    ),
    COHORT_REVENUE: _columns(
        *_DAY,
        ("new_players", _COUNT),
        *((f"bookings_d{n}", _BOOKINGS) for n in RETURN_DAYS),
        *((f"bookings_per_player_d{n}", _PER_USER) for n in RETURN_DAYS),
    ),
    CONCURRENT_PLAYERS: _columns(*_HOUR, ("players", _COUNT)),
    HOURLY_SLICES: _columns(
        *_HOUR, *_SLICE, ("events", _COUNT), ("purchases", _COUNT), ("bookings", _BOOKINGS)
    ),
    GAME_PARAMS: _columns(
        *_DAY,
        ("param", _TEXT),
        ("value", _TEXT),
        ("events", _COUNT),
        ("started", _COUNT),
        ("completed", _COUNT),
        ("failed", _COUNT),
        ("purchases", _COUNT),
        ("bookings", _BOOKINGS),
    ),
    PROGRESSION_FUNNEL: _columns(
        *_DAY,
        (LEVEL, _COUNT),
        ("started", _COUNT),
        ("completed", _COUNT),
        ("failed", _COUNT),
        ("completion_rate", _SHARE),
    ),
    REVENUE_BY_ITEM: _columns(*_DAY, (ITEM, _TEXT), ("purchases", _COUNT), ("bookings", _BOOKINGS)),
}
# The keys of a KPI's rows beyond their day, time and text columns (restatements name them).
NUMBERED_KEYS = {PROGRESSION_FUNNEL: (LEVEL,)}
# The activity tables' keys: a batch's row with the same key is added to the table's row.
KEYS = {
    GAME_HOURS: ("eventDate", "window_start", "game_keyword", "platform", "app_version"),
    PLAYER_DAYS: ("eventDate", "game_keyword", "device_id"),
    GAME_PARAMS: ("eventDate", "game_keyword", "param", "value"),
}


def merged_sessions(existing: str, added: str) -> str:
    """SQL for two lists of session spans of one player, game and day as one: sorted by
    start, a span that starts within the session gap of the one before joins it. Spans are
    whole sessions of their own events, so this gives the sessions of all the events."""
    last = "element_at(merged, -1)"
    return (
        f"aggregate(array_sort(concat({existing}, {added})), CAST(array() AS array<{SPAN}>), "
        f"(merged, span) -> CASE WHEN size(merged) > 0 AND "
        f"unix_micros(span.first_at) - unix_micros({last}.last_at) <= {SESSION_GAP_MICROS} "
        f"THEN concat(slice(merged, 1, size(merged) - 1), array(named_struct('first_at', {last}.first_at, "
        f"'last_at', greatest({last}.last_at, span.last_at)))) "
        "ELSE concat(merged, array(span)) END)"
    )


# How a batch's activity row is added to the table's row of the same key.
ADDED = {
    GAME_HOURS: {
        "events": "t.events + s.events",
        "purchases": "t.purchases + s.purchases",
        "bookings": f"CAST(t.bookings + s.bookings AS {BOOKINGS})",
    },
    PLAYER_DAYS: {
        "events": "t.events + s.events",
        "purchases": "t.purchases + s.purchases",
        "bookings": f"CAST(t.bookings + s.bookings AS {BOOKINGS})",
        "sessions": merged_sessions("t.sessions", "s.sessions"),
    },
    GAME_PARAMS: {
        **{c: f"t.{c} + s.{c}" for c in ("events", "started", "completed", "failed", "purchases")},
        "bookings": f"CAST(t.bookings + s.bookings AS {BOOKINGS})",
    },
}


def conformed(df: DataFrame, table: str) -> DataFrame:
    """The rows with exactly the table's declared columns, in order and type."""
    return df.select(*(F.col(field.name).cast(field.dataType) for field in SCHEMAS[table].fields))


def _purchase_sums() -> tuple[Column, Column]:
    purchase = F.col("eventName") == PURCHASE
    bookings = F.coalesce(F.sum(F.when(purchase, F.col("eventParams.amount").cast(MONEY))), F.lit(0))
    return F.count_if(purchase).alias("purchases"), bookings.cast(BOOKINGS).alias("bookings")


def game_hours(events: DataFrame) -> DataFrame:
    """Raw events summed per hour (the seed's `window("eventTime", "60 minute")`, flattened to
    columns SQL users can use), game, platform and app version."""
    window = F.window("eventTime", "60 minutes")
    return conformed(
        events.groupBy(
            "eventDate",
            window.start.alias("window_start"),
            window.end.alias("window_end"),
            F.col(GAME).alias("game_keyword"),
            F.col("eventParams.platform").alias("platform"),
            F.col("eventParams.app_version").alias("app_version"),
        ).agg(F.count(F.lit(1)).alias("events"), *_purchase_sums()),
        GAME_HOURS,
    )


def player_days(events: DataFrame) -> DataFrame:
    """Raw events summed per day, game and player, with the player's sessions: events with
    no pause over 30 minutes make one session, cut at midnight UTC."""
    in_order = Window.partitionBy("eventDate", "game_keyword", "device_id").orderBy("at")
    starts = F.coalesce(F.col("at") - F.lag("at").over(in_order) > SESSION_GAP_MICROS, F.lit(True))
    sessions = (
        events.select(
            "eventDate",
            "eventName",
            "eventTime",
            "eventParams",
            F.col(GAME).alias("game_keyword"),
            F.col(DEVICE).alias("device_id"),
            F.unix_micros("eventTime").alias("at"),
        )
        .withColumn(
            "session", F.sum(starts.cast("int")).over(in_order.rowsBetween(Window.unboundedPreceding, 0))
        )
        .groupBy("eventDate", "game_keyword", "device_id", "session")
        .agg(
            F.count(F.lit(1)).alias("events"),
            *_purchase_sums(),
            F.struct(F.min("eventTime").alias("first_at"), F.max("eventTime").alias("last_at")).alias("span"),
        )
    )
    return conformed(
        sessions.groupBy("eventDate", "game_keyword", "device_id").agg(
            F.sum("events").alias("events"),
            F.sum("purchases").alias("purchases"),
            F.sum("bookings").alias("bookings"),
            F.array_sort(F.collect_list("span")).alias("sessions"),
        ),
        PLAYER_DAYS,
    )


def _summarized_by_game_params(events: DataFrame) -> tuple[Column, Column, DataFrame]:
    """The events activity_game_params sums (progression events with a level, purchases),
    with whether each is one of the progression and its level."""
    level = F.try_variant_get("customParams", f"$.{LEVEL}", "bigint")
    progression = F.col("eventName").isin(*PROGRESSION)
    summed = events.where((progression & level.isNotNull()) | (F.col("eventName") == PURCHASE))
    return progression, level, summed


def game_params(events: DataFrame) -> DataFrame:
    """Raw events summed per day, game and value of a parameter the KPIs read: each level of
    the progression events (started, completed, failed) and each item_id of the purchases
    (purchases and their bookings; a null value for purchases without one)."""
    progression, level, summed = _summarized_by_game_params(events)
    name = F.col("eventName")
    value = F.when(progression, level.cast("string")).otherwise(
        F.try_variant_get("customParams", f"$.{ITEM}", "string")
    )
    purchases, bookings = _purchase_sums()
    return conformed(
        summed.groupBy(
            "eventDate",
            F.col(GAME).alias("game_keyword"),
            F.when(progression, F.lit(LEVEL)).otherwise(F.lit(ITEM)).alias("param"),
            value.alias("value"),
        ).agg(
            F.count(F.lit(1)).alias("events"),
            F.count_if(name == LEVEL_STARTED).alias("started"),
            F.count_if(name == LEVEL_COMPLETED).alias("completed"),
            F.count_if(name == LEVEL_FAILED).alias("failed"),
            purchases,
            bookings,
        ),
        GAME_PARAMS,
    )


def summarized_events(table: str, events: DataFrame) -> DataFrame:
    """The raw events an activity table sums (its `events` add up to their count)."""
    return _summarized_by_game_params(events)[2] if table == GAME_PARAMS else events


# Each activity table's rows from raw events: a batch's, or a rebuilt day's.
ACTIVITY: dict[str, Callable[[DataFrame], DataFrame]] = {
    GAME_HOURS: game_hours,
    PLAYER_DAYS: player_days,
    GAME_PARAMS: game_params,
}


def for_each_game_and_all(
    rows: DataFrame, keys: list[Column | str], aggregate: Callable[[DataFrame, list[Column | str]], DataFrame]
) -> DataFrame:
    """`aggregate` grouped by `keys` per game, plus the same over all games together."""
    per_game = aggregate(rows, [*keys, F.col("game_keyword")])
    all_games = aggregate(rows, [*keys, F.lit(ALL_GAMES).alias("game_keyword")])
    return per_game.unionByName(all_games)


HOUR = ["eventDate", "window_start", "window_end"]


def _summed(*columns: str) -> Callable[[DataFrame, list[Column]], DataFrame]:
    return lambda df, keys: df.groupBy(*keys).agg(*(F.sum(column).alias(column) for column in columns))


def events_per_hour(hours: DataFrame) -> DataFrame:
    return conformed(for_each_game_and_all(hours, HOUR, _summed("events")), EVENTS_PER_HOUR)


def bookings_per_hour(hours: DataFrame) -> DataFrame:
    """Purchase amounts summed per hour; an hour with events but no purchase books 0, so a
    drop to nothing is visible instead of a missing row."""
    return conformed(for_each_game_and_all(hours, HOUR, _summed("bookings", "purchases")), BOOKINGS_PER_HOUR)


def revenue_by_platform(hours: DataFrame) -> DataFrame:
    """Per day and platform (ios, android): bookings and purchases."""
    return conformed(
        for_each_game_and_all(
            hours, [F.col("eventDate"), F.col("platform")], _summed("bookings", "purchases")
        ),
        REVENUE_BY_PLATFORM,
    )


def daily_active_users(players: DataFrame) -> DataFrame:
    return conformed(
        for_each_game_and_all(
            players,
            [F.col("eventDate")],
            lambda df, keys: df.groupBy(*keys).agg(F.count_distinct("device_id").alias("dau")),
        ),
        DAILY_ACTIVE_USERS,
    )


def daily_revenue(players: DataFrame) -> DataFrame:
    """Per day: active users, paying users (distinct devices with a purchase), bookings and
    ARPDAU (bookings per daily active user, to 4 decimals)."""

    def aggregate(df: DataFrame, keys: list[Column]) -> DataFrame:
        return (
            df.groupBy(*keys)
            .agg(
                F.count_distinct("device_id").alias("dau"),
                F.count_distinct(F.when(F.col("purchases") > 0, F.col("device_id"))).alias("paying_users"),
                F.sum("bookings").alias("bookings"),
            )
            .withColumn("arpdau", (F.col("bookings") / F.col("dau")).cast(PER_USER))
        )

    return conformed(for_each_game_and_all(players, [F.col("eventDate")], aggregate), DAILY_REVENUE)


def sessions(players: DataFrame) -> DataFrame:
    """Sessions per day: `sessions`, `players` (devices with a session), `session_seconds`
    (first to last event of each session, summed, exact to the microsecond) and
    `avg_session_seconds`. Sessions are cut at midnight UTC, so each day stands alone."""
    micros = F.aggregate(
        "sessions",
        F.lit(0).cast("bigint"),
        lambda total, span: total + F.unix_micros(span["last_at"]) - F.unix_micros(span["first_at"]),
    )

    def aggregate(df: DataFrame, keys: list[Column]) -> DataFrame:
        return (
            df.groupBy(*keys)
            .agg(
                F.sum(F.size("sessions")).alias("sessions"),
                F.count_distinct("device_id").alias("players"),
                (F.sum(micros).cast(SECONDS) / 1_000_000).cast(SECONDS).alias("session_seconds"),
            )
            .withColumn("avg_session_seconds", (F.col("session_seconds") / F.col("sessions")).cast(MONEY))
        )

    return conformed(for_each_game_and_all(players, [F.col("eventDate")], aggregate), SESSIONS)


def retention_source(first_cohort: date, end_cohort: date) -> str:
    """The days the cohorts [first_cohort, end_cohort) need: every day before them (to tell
    new players) and the 30 days after them (their returns and spending)."""
    return f"eventDate < DATE'{end_cohort + timedelta(days=max(RETURN_DAYS)):%Y-%m-%d}'"


def per_game_and_all(players: DataFrame) -> DataFrame:
    """Each player's day in each game, and in all games together (`game_keyword` =
    `all_games`): events, purchases and bookings of the day summed over the games played."""
    columns = ["eventDate", "game_keyword", "device_id", "events", "purchases", "bookings"]
    all_games = players.groupBy("eventDate", "device_id").agg(
        *(F.sum(column).alias(column) for column in ("events", "purchases", "bookings")),
        F.lit(ALL_GAMES).alias("game_keyword"),
    )
    return players.select(*columns).unionByName(all_games.select(*columns))


def first_days(played: DataFrame) -> DataFrame:
    """Per game (all games included) and player of per_game_and_all rows: the first day
    played (`first_seen`) and the first day with a purchase (`first_purchase`, null: none)."""
    return played.groupBy("game_keyword", "device_id").agg(
        F.min("eventDate").alias("first_seen"),
        F.min(F.when(F.col("purchases") > 0, F.col("eventDate"))).alias("first_purchase"),
    )


def cohorts(played: DataFrame, first_cohort: date, end_cohort: date) -> DataFrame:
    """The players first seen on the days [first_cohort, end_cohort), by game (all games
    included): game_keyword, device_id and their cohort day `eventDate`."""
    return (
        first_days(played)
        .where(F.col("first_seen").between(F.lit(first_cohort), F.lit(end_cohort - timedelta(days=1))))
        .select("game_keyword", "device_id", F.col("first_seen").alias("eventDate"))
    )


def null_until_measured(result: DataFrame, players: DataFrame, columns: dict[int, list[str]]) -> DataFrame:
    """A cohort's figures at day N (`columns[N]`) as null while its day N has no events in any
    game yet: not yet known, rather than 0.

    The days with events are collected (one row a day) and named in the plan: a join with
    them per N made retention and cohort revenue cost 6 s instead of 1 s on a small table."""
    measured = [row.eventDate for row in players.select("eventDate").distinct().collect()]
    for n, named in columns.items():
        known = F.date_add("eventDate", n).isin(measured)
        result = result.select(
            *(F.when(known, F.col(c)).alias(c) if c in named else c for c in result.columns)
        )
    return result


def retention(players: DataFrame, first_cohort: date, end_cohort: date) -> DataFrame:
    """Day-1, day-7 and day-30 retention of new players. A day's cohort (`eventDate`) is the
    devices first seen in a game that day (`new_players`; for all games, first seen in any
    game); `retained_dN` counts those that play again exactly N days later, and
    `dN_retention` is the share. A return day with no events at all yet shows null, not 0.
    `players` must hold every day `retention_source` names."""
    played = per_game_and_all(players)
    returns = played.select("game_keyword", "device_id", F.col("eventDate").alias("back_on"))
    came_back = {n: F.max(F.col("back_on") == F.date_add("eventDate", n)) for n in RETURN_DAYS}
    per_device = (
        cohorts(played, first_cohort, end_cohort)
        .join(returns, ["game_keyword", "device_id"])
        .groupBy("eventDate", "game_keyword", "device_id")
        .agg(*(came_back[n].alias(f"d{n}") for n in RETURN_DAYS))
    )
    result = per_device.groupBy("eventDate", "game_keyword").agg(
        F.count(F.lit(1)).alias("new_players"),
        *(F.count_if(f"d{n}").alias(f"retained_d{n}") for n in RETURN_DAYS),
    )
    result = null_until_measured(result, players, {n: [f"retained_d{n}"] for n in RETURN_DAYS})
    return conformed(
        result.select(
            "*",
            *(
                (F.col(f"retained_d{n}") / F.col("new_players")).cast(SHARE).alias(f"d{n}_retention")
                for n in RETURN_DAYS
            ),
        ),
        RETENTION,
    )


def cohort_revenue(players: DataFrame, first_cohort: date, end_cohort: date) -> DataFrame:
    """The start of each cohort's LTV curve: `bookings_dN` is what the players first seen on
    a day (`eventDate`, as in retention) spent from that day through day N after it, and
    `bookings_per_player_dN` that divided by `new_players`. Null until day N has events.
    `players` must hold every day `retention_source` names."""
    played = per_game_and_all(players)
    spent = played.select("game_keyword", "device_id", F.col("eventDate").alias("spent_on"), "bookings")
    by_day = {
        n: F.coalesce(F.sum(F.when(F.datediff("spent_on", "eventDate") <= n, F.col("bookings"))), F.lit(0))
        for n in RETURN_DAYS
    }
    result = (
        cohorts(played, first_cohort, end_cohort)
        .join(spent, ["game_keyword", "device_id"])
        .groupBy("eventDate", "game_keyword")
        .agg(
            F.count_distinct("device_id").alias("new_players"),
            *(by_day[n].cast(BOOKINGS).alias(f"bookings_d{n}") for n in RETURN_DAYS),
        )
    )
    result = null_until_measured(result, players, {n: [f"bookings_d{n}"] for n in RETURN_DAYS})
    return conformed(
        result.select(
            "*",
            *(
                (F.col(f"bookings_d{n}") / F.col("new_players"))
                .cast(PER_USER)
                .alias(f"bookings_per_player_d{n}")
                for n in RETURN_DAYS
            ),
        ),
        COHORT_REVENUE,
    )


def active_users(players: DataFrame, first: date, end: date) -> DataFrame:
    """Per day with events: `dau`, `wau` and `mau` (distinct players over the 1, 7 and 30 days
    ending that day), `stickiness` (DAU / MAU), `new_players` (first seen that day, as in
    retention) and `returning_players` (the rest of the DAU). `players` must hold every day
    before `end`: a player's first day may be any of them."""
    played = per_game_and_all(players)
    last = end - timedelta(days=1)
    # A day's play counts toward the MAU of that day and the 29 after it.
    counted_on = F.explode(F.sequence("eventDate", F.least(F.date_add("eventDate", MONTH - 1), F.lit(last))))
    active = (
        played.where(F.col("eventDate") >= F.lit(first - timedelta(days=MONTH - 1)))
        .select("game_keyword", "device_id", "eventDate", counted_on.alias("day"))
        .where(F.col("day") >= F.lit(first))
        .groupBy("day", "game_keyword", "device_id")
        .agg(F.max("eventDate").alias("last_played"))
        .join(first_days(played), ["game_keyword", "device_id"])
    )
    return conformed(
        active.groupBy(F.col("day").alias("eventDate"), "game_keyword")
        .agg(
            F.count_if(F.col("last_played") == F.col("day")).alias("dau"),
            F.count_if(F.datediff("day", "last_played") < WEEK).alias("wau"),
            F.count(F.lit(1)).alias("mau"),
            F.count_if(F.col("first_seen") == F.col("day")).alias("new_players"),
        )
        .where(F.col("dau") > 0)
        .select(
            "*",
            (F.col("dau") / F.col("mau")).cast(SHARE).alias("stickiness"),
            (F.col("dau") - F.col("new_players")).alias("returning_players"),
        ),
        ACTIVE_USERS,
    )


def payers(players: DataFrame, first: date, end: date) -> DataFrame:
    """Per day: `dau`, `paying_users` (players with a purchase that day), `payer_conversion`
    (paying users / DAU), `bookings`, `arppu` (bookings per paying user; null with none),
    `first_time_payers` (players whose first purchase in the game, or in any game for all
    games, was that day) and `avg_days_to_first_purchase` (their days from first seen to
    it). `players` must hold every day before `end`."""
    played = per_game_and_all(players)
    first_purchase = F.col("first_purchase") == F.col("eventDate")
    waited = F.when(first_purchase, F.datediff("eventDate", "first_seen"))
    result = (
        _days(played, first, end)
        .join(first_days(played), ["game_keyword", "device_id"])
        .groupBy("eventDate", "game_keyword")
        .agg(
            F.count(F.lit(1)).alias("dau"),
            F.count_if(F.col("purchases") > 0).alias("paying_users"),
            F.sum("bookings").alias("bookings"),
            F.count_if(first_purchase).alias("first_time_payers"),
            (F.sum(waited).cast("decimal(20,0)") / F.count(waited)).alias("avg_days_to_first_purchase"),
        )
    )
    return conformed(
        result.select(
            "*",
            (F.col("paying_users") / F.col("dau")).cast(SHARE).alias("payer_conversion"),
            F.when(F.col("paying_users") > 0, F.col("bookings") / F.col("paying_users"))
            .cast(PER_USER)
            .alias("arppu"),
        ),
        PAYERS,
    )


def _five_minutes(at: Column) -> Column:
    return F.timestamp_seconds(F.floor(F.unix_seconds(at) / FIVE_MINUTES) * FIVE_MINUTES)


def concurrent_players(players: DataFrame) -> DataFrame:
    """Players online in each 5-minute window (`window_start`, `window_end`) of the day: those
    with a session (activity_player_days' spans) overlapping it, per game and for all games
    (a player of two games at once counts once). The day's peak is the largest window, its
    average the windows' sum over 288."""
    span = F.explode("sessions")
    step = F.expr(f"INTERVAL {FIVE_MINUTES} SECONDS")
    windows = (
        players.select("eventDate", "game_keyword", "device_id", span.alias("span"))
        .select(
            "eventDate",
            "game_keyword",
            "device_id",
            F.explode(
                F.sequence(_five_minutes(F.col("span.first_at")), _five_minutes(F.col("span.last_at")), step)
            ).alias("window_start"),
        )
        .withColumn("window_end", F.col("window_start") + step)
    )
    return conformed(
        for_each_game_and_all(
            windows,
            ["eventDate", "window_start", "window_end"],
            lambda df, keys: df.groupBy(*keys).agg(F.count_distinct("device_id").alias("players")),
        ),
        CONCURRENT_PLAYERS,
    )


def hourly_slices(hours: DataFrame) -> DataFrame:
    """Events, purchases and bookings per hour, game, `platform` and `app_version`: a bad patch
    on one platform shows in its own slice while the others hold the totals up."""
    return conformed(
        for_each_game_and_all(
            hours, [*HOUR, "platform", "app_version"], _summed("events", "purchases", "bookings")
        ),
        HOURLY_SLICES,
    )


def progression_funnel(params: DataFrame) -> DataFrame:
    """Per day and `level`: levels `started`, `completed` and `failed`, and the
    `completion_rate` of the attempts that ended (completed / (completed + failed))."""
    levels = params.where(F.col("param") == LEVEL).withColumn(LEVEL, F.col("value").cast("bigint"))
    counted = for_each_game_and_all(levels, ["eventDate", LEVEL], _summed("started", "completed", "failed"))
    ended = F.col("completed") + F.col("failed")
    return conformed(
        counted.withColumn("completion_rate", F.when(ended > 0, F.col("completed") / ended)),
        PROGRESSION_FUNNEL,
    )


def revenue_by_item(params: DataFrame) -> DataFrame:
    """Per day and `item_id` (null: purchases that named no item): purchases and bookings."""
    items = params.where(F.col("param") == ITEM).withColumn(ITEM, F.col("value"))
    return conformed(
        for_each_game_and_all(items, ["eventDate", ITEM], _summed("purchases", "bookings")), REVENUE_BY_ITEM
    )


def restatements(table: str, before: list, after: list, settled_before: date) -> list[dict]:
    """The figures of a KPI table a refresh changed after they were reported: for each row of a
    day before `settled_before` (today's figures still grow with its events) that `before`
    held, each figure that had a value and now has another (None: the row is gone). Late
    events, a rebuild, a rollback or an erasure restate a day this way; a figure filled in for
    the first time (a cohort's D7 once its return day has events) is not a restatement."""
    fields = SCHEMAS[table].fields
    keys = [
        f.name
        for f in fields
        if isinstance(f.dataType, (T.DateType, T.TimestampType, T.StringType))
        or f.name in NUMBERED_KEYS.get(table, ())
    ]
    figures = [f.name for f in fields if f.name not in keys]
    now = {tuple(row[key] for key in keys): row for row in after}
    changed = []
    for row in before:
        if row.eventDate >= settled_before:
            continue
        key = tuple(row[name] for name in keys)
        later = now.get(key)
        for figure in figures:
            reported, restated = row[figure], later[figure] if later else None
            if reported is not None and reported != restated:
                changed.append(
                    {
                        "kpi": table,
                        "eventDate": row.eventDate,
                        "game_keyword": row.game_keyword,
                        "slice": "; ".join(
                            f"{name}={row[name]}"
                            for name in keys
                            if name not in ("eventDate", "game_keyword")
                        ),
                        "figure": figure,
                        "reported": str(reported),
                        "restated": None if restated is None else str(restated),
                    }
                )
    return changed


class Activity(NamedTuple):
    """The activity tables, as a KPI transform reads them."""

    hours: DataFrame
    players: DataFrame
    params: DataFrame


# Each KPI from the activity tables, for cohort or event days [first, end).
Transform = Callable[[Activity, date, date], DataFrame]


def _days(rows: DataFrame, first: date, end: date) -> DataFrame:
    return rows.where(F.col("eventDate").between(F.lit(first), F.lit(end - timedelta(days=1))))


def _before(rows: DataFrame, end: date) -> DataFrame:
    return rows.where(F.col("eventDate") < F.lit(end))


TRANSFORMS: dict[str, Transform] = {
    EVENTS_PER_HOUR: lambda a, first, end: events_per_hour(_days(a.hours, first, end)),
    BOOKINGS_PER_HOUR: lambda a, first, end: bookings_per_hour(_days(a.hours, first, end)),
    REVENUE_BY_PLATFORM: lambda a, first, end: revenue_by_platform(_days(a.hours, first, end)),
    DAILY_ACTIVE_USERS: lambda a, first, end: daily_active_users(_days(a.players, first, end)),
    DAILY_REVENUE: lambda a, first, end: daily_revenue(_days(a.players, first, end)),
    SESSIONS: lambda a, first, end: sessions(_days(a.players, first, end)),
    RETENTION: lambda a, first, end: retention(a.players.where(retention_source(first, end)), first, end),
    COHORT_REVENUE: lambda a, first, end: cohort_revenue(
        a.players.where(retention_source(first, end)), first, end
    ),
    ACTIVE_USERS: lambda a, first, end: active_users(_before(a.players, end), first, end),
    PAYERS: lambda a, first, end: payers(_before(a.players, end), first, end),
    CONCURRENT_PLAYERS: lambda a, first, end: concurrent_players(_days(a.players, first, end)),
    HOURLY_SLICES: lambda a, first, end: hourly_slices(_days(a.hours, first, end)),
    PROGRESSION_FUNNEL: lambda a, first, end: progression_funnel(_days(a.params, first, end)),
    REVENUE_BY_ITEM: lambda a, first, end: revenue_by_item(_days(a.params, first, end)),
}
