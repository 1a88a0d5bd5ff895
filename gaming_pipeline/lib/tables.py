"""Every table the pipeline writes, declared once: its name, columns, partitioning, table
properties and the comment SQL users see (`DESCRIBE TABLE EXTENDED`). Writers create their
tables from here, and `gaming-pipeline tables` and the SQL prompt list them from here.

The columns of event rows (lib/events.py) and of the activity and KPI rows (lib/kpis.py) are
declared beside the transforms that make those rows; the bookkeeping tables' columns are here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from gaming_pipeline.games import GAMES, Game
from gaming_pipeline.lib import kpis, player_state
from gaming_pipeline.lib.events import PARAM_TYPES, RAW_SCHEMA
from gaming_pipeline.lib.warehouse import ensure_table, is_delta_table, latest_version, table_path

RAW_TABLE = "mobile_events_delta_raw"
QUARANTINE_TABLE = "quarantine_events"
LEDGER_TABLE = "ingest_ledger"
# Last-modified times of objects whose raw rows a run began to write (lib/ingest.py).
INTENT_TABLE = "ingest_intents"
# One row per GDPR erasure run (lib/erasure.py).
AUDIT_TABLE = "gdpr_erasure_audit"
# One row per KPI figure changed after it was reported (kpis.restatements).
RESTATEMENTS_TABLE = "kpi_restatements"

BY_DAY = ("eventDate",)
# Batches merge into today's activity rows all day: deletion vectors make a merge rewrite
# only the rows it changes, and auto compaction folds the small files merges leave, in the
# writing run itself, so no other writer of these tables ever conflicts with it.
ACTIVITY_PROPERTIES = {"delta.enableDeletionVectors": "true", "delta.autoOptimize.autoCompact": "true"}

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("line", T.StringType()),
        T.StructField("reason", T.StringType(), False),
        T.StructField("_source_object", T.StringType(), False),
        T.StructField("_quarantined_at", T.TimestampType(), False),
        T.StructField("_ingest_run_id", T.StringType(), False),
    ]
)

LEDGER_SCHEMA = T.StructType(
    [
        T.StructField("object", T.StringType(), False),
        T.StructField("etag", T.StringType()),
        T.StructField("size", T.LongType()),
        T.StructField("source_modified_at", T.TimestampType()),
        T.StructField("run_id", T.StringType(), False),
        T.StructField("raw_version", T.LongType()),
        T.StructField("quarantine_version", T.LongType()),
        T.StructField("rows_in", T.LongType(), False),
        T.StructField("rows_written", T.LongType(), False),
        T.StructField("rows_quarantined", T.LongType(), False),
        T.StructField("rows_missing_event_time", T.LongType(), False),
        T.StructField("ingested_at", T.TimestampType(), False),
    ]
)


# Before a run writes an object's raw rows it notes the object's last-modified time in the
# intents table (a blind append, no ledger read-modify-write): a run killed after that write
# leaves rows the ledger does not know of, and the next run must find them to replace them.
INTENT_SCHEMA = T.StructType(
    [
        T.StructField("object", T.StringType(), False),
        T.StructField("source_modified_at", T.TimestampType(), False),
        T.StructField("run_id", T.StringType(), False),
        T.StructField("recorded_at", T.TimestampType(), False),
    ]
)

RESTATEMENTS_SCHEMA = T.StructType(
    [
        T.StructField("kpi", T.StringType(), False),
        T.StructField("eventDate", T.DateType(), False),
        T.StructField("game_keyword", T.StringType(), False),
        # The row's other keys (an hour's window_start, a platform), "" when it has none.
        T.StructField("slice", T.StringType(), False),
        T.StructField("figure", T.StringType(), False),
        T.StructField("reported", T.StringType(), False),
        # Null: the row is gone.
        T.StructField("restated", T.StringType()),
        T.StructField("restated_at", T.TimestampType(), False),
        T.StructField("run_id", T.StringType(), False),
    ]
)

AUDIT_SCHEMA = T.StructType(
    [
        T.StructField("request_id", T.StringType(), False),
        T.StructField("player_id", T.StringType(), False),
        T.StructField("requested_by", T.StringType(), False),
        T.StructField("reason", T.StringType(), False),
        T.StructField("erased_at", T.TimestampType(), False),
        T.StructField("run_id", T.StringType(), False),
        T.StructField(
            "tables",
            T.ArrayType(
                T.StructType(
                    [
                        # Delta enforces NOT NULL only outside arrays.
                        T.StructField("table", T.StringType()),
                        T.StructField("rows_deleted", T.LongType()),
                        T.StructField("version", T.LongType()),
                        T.StructField("days", T.ArrayType(T.DateType())),
                    ]
                )
            ),
            False,
        ),
        T.StructField("pii_key_shredded", T.BooleanType(), False),
        T.StructField("pii_records_deleted", T.LongType(), False),
        # Until then older table versions still hold the rows: VACUUM at the default
        # retention deletes those files after this time.
        T.StructField("files_purged_after", T.TimestampType(), False),
        # Each place the player was removed from, and when its last copy is gone (null: not
        # for sure, e.g. a versioned bucket). Rows written before this column have none.
        T.StructField(
            "places",
            T.ArrayType(
                T.StructType(
                    [
                        T.StructField("place", T.StringType()),
                        T.StructField("removed", T.LongType()),
                        T.StructField("detail", T.StringType()),
                        T.StructField("last_copy_gone_after", T.TimestampType()),
                    ]
                )
            ),
        ),
    ]
)


# The types Delta keeps statistics of (its SkippingEligibleDataType).
_WITH_STATISTICS = (
    T.NumericType,
    T.StringType,
    T.DateType,
    T.TimestampType,
    T.TimestampNTZType,
)


def _columns_with_statistics(schema: T.StructType, prefix: str = "") -> list[str]:
    """The columns of the schema Delta can keep statistics of, a struct's fields by their
    dotted names."""
    found = []
    for column in schema.fields:
        if isinstance(column.dataType, T.StructType):
            found += _columns_with_statistics(column.dataType, f"{prefix}{column.name}.")
        elif isinstance(column.dataType, _WITH_STATISTICS):
            found.append(prefix + column.name)
    return found


@dataclass(frozen=True)
class Table:
    name: str
    schema: T.StructType
    comment: str
    partition_by: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    # Columns that name a player (a device id, or a line that may hold one). Delta keeps
    # each file's smallest and largest value of a column in its log and checkpoints, where
    # no DELETE or VACUUM reaches and which outlive an erasure by the 30 days of log
    # retention: these columns get no statistics.
    identifying: tuple[str, ...] = ()

    def path(self, warehouse: str) -> str:
        return table_path(warehouse, self.name)

    @property
    def table_properties(self) -> dict[str, str]:
        if not self.identifying:
            return self.properties
        # Partition columns are in every file's path, not in its statistics.
        unkept = {*self.identifying, *self.partition_by}
        kept = [column for column in _columns_with_statistics(self.schema) if column not in unkept]
        return {**self.properties, "delta.dataSkippingStatsColumns": ",".join(kept)}

    def ensure(self, spark: SparkSession, warehouse: str) -> str:
        """The table's path, the table created there first if it is not yet."""
        path = self.path(warehouse)
        ensure_table(spark, path, self.schema, self.partition_by, self.comment, self.table_properties)
        return path


# Where event rows hold the player, and the quarantine may (in the text of a line). Event
# ids are the client's own, and clients often make them of the device id and a counter.
EVENT_IDENTIFYING = ("event_id", "eventParams.device_id")

RAW = Table(
    RAW_TABLE,
    RAW_SCHEMA,
    "Game events as landed, one row per event, partitioned by UTC event day.",
    BY_DAY,
    identifying=EVENT_IDENTIFYING,
)
QUARANTINE = Table(
    QUARANTINE_TABLE,
    QUARANTINE_SCHEMA,
    "Landing lines that could not become events, with the reason.",
    identifying=("line",),
)
LEDGER = Table(
    LEDGER_TABLE, LEDGER_SCHEMA, "One row per landing object ingested: ETag, run, versions, row counts."
)
INTENTS = Table(
    INTENT_TABLE,
    INTENT_SCHEMA,
    "Last-modified times of landing objects whose raw rows a run began to write.",
)
AUDIT = Table(AUDIT_TABLE, AUDIT_SCHEMA, "One row per GDPR erasure: what was erased, never the PII.")
RESTATEMENTS = Table(
    RESTATEMENTS_TABLE,
    RESTATEMENTS_SCHEMA,
    "One row per KPI figure of a past day changed after it was reported: old value, new value, when.",
)


def game_schema(game: Game) -> T.StructType:
    """The raw table's columns, then the game's own parameters, each a column of its type."""
    return T.StructType(
        [
            *RAW_SCHEMA.fields,
            *(T.StructField(param.name, PARAM_TYPES[param.type]) for param in game.columns),
        ]
    )


def game_table(game: Game) -> Table:
    return Table(
        game.table_name,
        game_schema(game),
        f"Every event of {game.app_name}, as in the raw table, with its own parameters as columns.",
        BY_DAY,
        identifying=EVENT_IDENTIFYING,
    )


ACTIVITY = {
    name: Table(
        name,
        kpis.SCHEMAS[name],
        "Event sums the KPI tables are computed from.",
        BY_DAY,
        ACTIVITY_PROPERTIES,
        identifying=tuple(column for column in ("device_id",) if column in kpis.SCHEMAS[name].names),
    )
    for name in kpis.ACTIVITY_TABLES
}
KPIS = {
    name: Table(
        name, kpis.SCHEMAS[name], "A daily KPI per game and for all_games; see its asset in Dagster.", BY_DAY
    )
    for name in kpis.KPI_TABLES
}
PLAYER_STATE = Table(
    player_state.PLAYER_STATE_TABLE,
    player_state.SCHEMA,
    "One row per player and game: first and last seen, days active, sessions, lifetime bookings "
    "and purchases, last purchase, current platform and app version.",
    # Every batch merges its players in: deletion vectors and auto compaction, as for the
    # activity tables.
    properties=ACTIVITY_PROPERTIES,
    identifying=("device_id",),
)
ALL_TABLES = [
    RAW,
    *(game_table(game) for game in GAMES),
    *ACTIVITY.values(),
    PLAYER_STATE,
    *KPIS.values(),
    RESTATEMENTS,
    QUARANTINE,
    LEDGER,
    INTENTS,
    AUDIT,
]


def all_tables() -> list[str]:
    """Every table the pipeline writes, by name, in the order `tables` lists them."""
    return [table.name for table in ALL_TABLES]


def tables_named_in(query: str) -> list[str]:
    """The pipeline's tables a SQL text mentions by name (as a whole word, any case)."""
    return [table for table in all_tables() if re.search(rf"\b{table}\b", query, re.IGNORECASE)]


def register_views(spark: SparkSession, warehouse: str, tables: list[str] | None = None) -> list[str]:
    """Make the existing tables queryable by their names in this session's SQL: all of them,
    or just `tables`. Each one opened costs two Delta snapshot reads (about 0.5 s on the busy
    demo, 25 s for all of its tables), so the SQL prompt opens only those its query names."""
    registered = []
    for table in all_tables() if tables is None else tables:
        path = table_path(warehouse, table)
        if is_delta_table(spark, path):
            spark.read.format("delta").load(path).createOrReplaceTempView(table)
            registered.append(table)
    return registered


def describe_tables(spark: SparkSession, warehouse: str) -> list[dict]:
    """Name, location, current Delta version and row count of each existing table."""
    rows = []
    for table in all_tables():
        path = table_path(warehouse, table)
        if not is_delta_table(spark, path):
            continue
        rows.append(
            {
                "table": table,
                "location": path,
                "version": latest_version(path),
                "rows": spark.read.format("delta").load(path).count(),
            }
        )
    return rows
