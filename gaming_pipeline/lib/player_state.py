"""The player state an offers system reads: one row per player and game, as pure transforms.

Each follower pass merges its batches' players' facts in (derived.add_batch): first and last seen
take the earlier and the later, purchases and bookings add up, and the last purchase and
the current platform and app version are those of the latest event. Days active and
sessions are not the batch's own (its events may fall on a day, or join a session, already
counted): they change by what the batch changed in activity_player_days, read on the batch's
days before and after its merge. A rebuild recomputes the whole table from the raw events
with the same transforms, so a run of batches leaves the rows a rebuild writes.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.event_names import PURCHASE
from gaming_pipeline.lib import kpis

PLAYER_STATE_TABLE = "player_state"
KEYS = ("game_keyword", "device_id")

_TIME, _TEXT, _COUNT = T.TimestampType(), T.StringType(), T.LongType()
SCHEMA = T.StructType(
    [
        T.StructField("game_keyword", _TEXT),
        T.StructField("device_id", _TEXT),
        T.StructField("first_seen", _TIME),
        T.StructField("last_seen", _TIME),
        T.StructField("days_active", _COUNT),
        T.StructField("sessions", _COUNT),
        T.StructField("purchases", _COUNT),
        T.StructField("bookings", T.DecimalType(28, 2)),
        T.StructField("last_purchase_at", _TIME),
        T.StructField("last_purchase_amount", T.DecimalType(18, 2)),
        T.StructField("platform", _TEXT),
        T.StructField("app_version", _TEXT),
    ]
)


def _conformed(df: DataFrame) -> DataFrame:
    return df.select(*(F.col(field.name).cast(field.dataType) for field in SCHEMA.fields))


def _latest(*fields: tuple[str, Column]) -> Column:
    """The struct of `fields` of the latest event: the largest by time, then by the other
    fields, so that ties between events of the same time are broken the same way by a batch,
    a merge of batches and a rebuild."""
    return F.max(F.struct(*(column.alias(name) for name, column in fields)))


def event_facts(events: DataFrame) -> DataFrame:
    """Per game and player of raw events: first and last seen, purchases, bookings, the
    last purchase (time, amount) and the platform and app version of the latest event."""
    purchase = F.col("eventName") == PURCHASE
    amount = F.col("eventParams.amount").cast(kpis.MONEY)
    facts = events.groupBy(F.col(kpis.GAME).alias("game_keyword"), F.col(kpis.DEVICE).alias("device_id")).agg(
        F.min("eventTime").alias("first_seen"),
        F.max("eventTime").alias("last_seen"),
        F.count_if(purchase).alias("purchases"),
        F.coalesce(F.sum(F.when(purchase, amount)), F.lit(0)).alias("bookings"),
        F.max(F.when(purchase, F.struct(F.col("eventTime").alias("at"), amount.alias("amount")))).alias(
            "last_purchase"
        ),
        _latest(
            ("at", F.col("eventTime")),
            ("platform", F.col("eventParams.platform")),
            ("app_version", F.col("eventParams.app_version")),
        ).alias("latest"),
    )
    return facts.select(
        *KEYS,
        "first_seen",
        "last_seen",
        "purchases",
        "bookings",
        F.col("last_purchase.at").alias("last_purchase_at"),
        F.col("last_purchase.amount").alias("last_purchase_amount"),
        F.col("latest.platform").alias("platform"),
        F.col("latest.app_version").alias("app_version"),
    )


def days_and_sessions(player_days: DataFrame) -> DataFrame:
    """Per game and player of activity_player_days rows: the days and the sessions they hold."""
    return player_days.groupBy(*KEYS).agg(
        F.count(F.lit(1)).alias("days_active"), F.sum(F.size("sessions")).alias("sessions")
    )


def rebuilt(events: DataFrame) -> DataFrame:
    """The whole table from every raw event."""
    return _conformed(event_facts(events).join(days_and_sessions(kpis.player_days(events)), list(KEYS)))


def batch_changes(batch: DataFrame, days_before: DataFrame, days_after: DataFrame) -> DataFrame:
    """A batch's rows to merge: its players' facts, with the days and sessions by which the
    batch changed their rows of activity_player_days (`days_before` and `days_after`: those
    rows on the batch's days, before and after its merge). For a player new to a game these
    are the player's totals, so the row inserts as it is."""
    before, after = days_and_sessions(days_before), days_and_sessions(days_after)
    changed = after.join(
        before.select(*KEYS, *(F.col(c).alias(f"{c}_before") for c in before.columns[2:])), list(KEYS), "left"
    )
    changed = changed.select(
        *KEYS,
        *(
            (F.col(c) - F.coalesce(F.col(f"{c}_before"), F.lit(0))).alias(c)
            for c in ("days_active", "sessions")
        ),
    )
    return _conformed(event_facts(batch).join(changed, list(KEYS)))


def _latest_of(fields: tuple[str, ...], pick: str) -> str:
    """SQL for the table's or the batch's `fields`, whichever is the latest, as _latest
    orders them; its `pick`."""

    def struct(side: str) -> str:
        return "named_struct(" + ", ".join(f"'{name}', {side}.{name}" for name in fields) + ")"

    return f"greatest({struct('t')}, {struct('s')}).{pick}"


_CURRENT = ("last_seen", "platform", "app_version")
_PURCHASE = ("last_purchase_at", "last_purchase_amount")
# How a batch's row is merged into a player's row.
MERGED = {
    "first_seen": "least(t.first_seen, s.first_seen)",
    "last_seen": "greatest(t.last_seen, s.last_seen)",
    "days_active": "t.days_active + s.days_active",
    "sessions": "t.sessions + s.sessions",
    "purchases": "t.purchases + s.purchases",
    "bookings": "CAST(t.bookings + s.bookings AS decimal(28,2))",
    "last_purchase_at": _latest_of(_PURCHASE, "last_purchase_at"),
    "last_purchase_amount": _latest_of(_PURCHASE, "last_purchase_amount"),
    "platform": _latest_of(_CURRENT, "platform"),
    "app_version": _latest_of(_CURRENT, "app_version"),
}
