"""The event schema and the pure transform from landing lines to raw rows and quarantine.

Landing objects are NDJSON (gzipped or not), one event per line, as the ingest service
writes them and any other producer may. Parsing uses an explicit schema: it is faster than
inference and a new client field cannot silently change a table's schema. A game's own
parameters (its event catalog, catalog.py) are read only for the events its catalog gives
parameters, checked as the ingest service checks them, and kept in `customParams`, a VARIANT.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline import catalog
from gaming_pipeline.catalog import EventSpec
from gaming_pipeline.event_names import SEED_PARAMS
from gaming_pipeline.games import GAMES, Game
from gaming_pipeline.lib.s3_events import REJECTED

EVENT_PARAMS = T.StructType(
    [
        T.StructField("game_keyword", T.StringType()),
        T.StructField("app_name", T.StringType()),
        T.StructField("scoreAdjustment", T.IntegerType()),
        T.StructField("platform", T.StringType()),
        T.StructField("app_version", T.StringType()),
        T.StructField("device_id", T.StringType()),
        T.StructField("client_event_time", T.TimestampType()),
        T.StructField("amount", T.DoubleType()),
    ]
)

# Each catalog type's column type: money to the cent, as the KPIs sum `amount`.
PARAM_TYPES = {
    "string": T.StringType(),
    "integer": T.LongType(),
    "float": T.DoubleType(),
    "boolean": T.BooleanType(),
    "timestamp": T.TimestampType(),
    "money": T.DecimalType(18, 2),
}

_CORRUPT = "_corrupt_record"
# eventTime stays a string here: it may be epoch seconds, epoch milliseconds or ISO-8601,
# and only after parsing can we tell which. Unknown fields (a stray `pii` among them) are
# never read, so they cannot reach a table.
LANDING_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("eventName", T.StringType()),
        T.StructField("eventTime", T.StringType()),
        T.StructField("eventParams", EVENT_PARAMS),
        T.StructField(REJECTED, T.StringType()),
        T.StructField(_CORRUPT, T.StringType()),
    ]
)

RAW_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("eventName", T.StringType(), False),
        T.StructField("eventTime", T.TimestampType(), False),
        T.StructField("eventParams", EVENT_PARAMS, False),
        # The game's own parameters (its catalog's), typed as JSON types them; null: none.
        T.StructField("customParams", T.VariantType()),
        T.StructField("eventDate", T.DateType(), False),
        T.StructField("_source_object", T.StringType(), False),
        # The object's last-modified time: its rows are found by this (file statistics prune
        # on it) when they are replaced, since object keys share long common prefixes.
        T.StructField("_source_modified_at", T.TimestampType(), False),
        T.StructField("_ingested_at", T.TimestampType(), False),
        T.StructField("_ingest_run_id", T.StringType(), False),
    ]
)


# A landing line after parsing: `reason` is null for a good event, else why it is quarantined.
CLASSIFIED_SCHEMA = T.StructType(
    [
        T.StructField("value", T.StringType()),
        T.StructField("_source_object", T.StringType()),
        T.StructField("_source_modified_at", T.TimestampType()),
        T.StructField("event_id", T.StringType()),
        T.StructField("eventName", T.StringType()),
        T.StructField("eventTime", T.TimestampType()),
        T.StructField("eventParams", EVENT_PARAMS),
        T.StructField("customParams", T.VariantType()),
        T.StructField("reason", T.StringType()),
    ]
)

MISSING_EVENT_TIME = "missing eventTime"
REPEATED_PARAMETER = "eventParams names a parameter twice"
# Bad lines are kept for diagnosis, but a runaway line must not bloat the table.
MAX_QUARANTINED_LINE_CHARS = 10_000
# Epoch values below this are seconds (until the year 5138), above it milliseconds.
_EPOCH_MILLIS_FROM = 100_000_000_000
_EARLIEST = "2000-01-01 00:00:00"
_LATEST = "2100-01-01 00:00:00"


def event_time(raw: Column) -> Column:
    """eventTime as a timestamp from epoch seconds, epoch milliseconds or ISO-8601; null when
    it is none of these. Spark's own cast would also take words such as 'yesterday', so a
    string must look like a date before it is cast."""
    number = raw.cast("double")
    return F.when(
        # A JSON number with a fraction reaches Spark's string as 1.7638848005E9.
        raw.rlike(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$"),
        F.when(F.abs(number) >= _EPOCH_MILLIS_FROM, F.timestamp_seconds(number / 1000)).otherwise(
            F.timestamp_seconds(number)
        ),
    ).when(raw.rlike(r"^\d{4}-\d{2}-\d{2}"), raw.try_cast("timestamp"))


def source_object(file_path: Column) -> Column:
    """The s3:// URI of the object a row was read from. Spark reports the path as a URI
    (a space is %20); a literal '+' in a key must survive the decoding."""
    decoded = F.url_decode(F.replace(file_path, F.lit("+"), F.lit("%2B")))
    return F.regexp_replace(decoded, r"^s3a://", "s3://")


def _entries_in_use(games: tuple[Game, ...]) -> dict[EventSpec, list[str]]:
    """The catalog entries with parameters of their own, each with the `game:event` keys of
    the events it judges (an entry every game shares is one)."""
    keys: dict[EventSpec, list[str]] = defaultdict(list)
    for game in games:
        for spec in game.events.values():
            if spec.checked:
                keys[spec].append(f"{game.keyword}:{spec.name}")
    return keys


def _fits(value: Column, kind: str) -> Column:
    """Whether a parameter's value (a VARIANT, present and not null) is of its catalog type:
    the ingest service's rule (ingest_service/schema.py), on the JSON types the value has."""
    shape = F.schema_of_variant(value)
    if kind == "integer":
        return shape == "BIGINT"
    if kind == "boolean":
        return shape == "BOOLEAN"
    text = F.try_variant_get(value, "$", "string")
    if kind == "string":
        return (shape == "STRING") & (F.length(text) <= catalog.MAX_TEXT)
    if kind == "timestamp":
        instant = text.try_cast("timestamp")
        in_span = (instant >= F.lit(_EARLIEST).cast("timestamp")) & (
            instant < F.lit(_LATEST).cast("timestamp")
        )
        # Java's `$` matches before a final line break and the cast trims: no whitespace at all.
        exact = text.rlike(catalog.ISO_INSTANT) & ~text.rlike(r"\s")
        return (shape == "STRING") & exact & F.coalesce(in_span, F.lit(False))
    double = F.try_variant_get(value, "$", "double")
    # A number too large for a double reads as infinite: not a float.
    number = ((shape == "BIGINT") | shape.startswith("DECIMAL") | (shape == "DOUBLE")) & (
        F.abs(double) <= F.lit(sys.float_info.max)
    )
    if kind == "float":
        return number
    return number & (F.abs(double) <= catalog.MAX_MONEY)  # money


def _entry_reason(own: Column, spec: EventSpec) -> Column:
    """Why an event's own parameters `own` (a map of VARIANTs) do not fit its catalog entry,
    in the order the ingest service judges them; null when they do."""
    reasons: list[tuple[Column, Column | str]] = []
    if not spec.open:
        declared = [param.name for param in spec.params]
        strays = F.filter(F.map_keys(own), lambda key: ~key.isin(*declared)) if declared else F.map_keys(own)
        before, after = catalog.undeclared(spec.name, "\x00").split("\x00")
        reasons.append(
            (
                F.size(strays) > 0,
                F.concat(F.lit(before), F.array_join(F.array_sort(strays), ", "), F.lit(after)),
            )
        )
    for param in spec.params:
        value = own[param.name]
        absent = value.isNull() | F.is_variant_null(value)
        if param.required:
            reasons.append((absent, catalog.missing(spec.name, param.name)))
        reasons.append((~absent & ~_fits(value, param.type), catalog.wrong_type(param)))
    if not reasons:
        return F.lit(None).cast("string")
    chained = F.when(*reasons[0])
    for condition, reason in reasons[1:]:
        chained = chained.when(condition, reason)
    return chained


_OWN = "_own_params"
_PARAMS_AS_VARIANTS = "eventParams map<string, variant>"


def _own_params(value: Column, key: Column, entries: dict[EventSpec, list[str]]) -> Column:
    """The parameters beside the seed's fields, for the events whose catalog entry has its
    own: a second parse of those lines only."""
    in_use = [key for keys in entries.values() for key in keys]
    if not in_use:
        return F.lit(None).cast("map<string, variant>")
    parsed = F.from_json(value, _PARAMS_AS_VARIANTS)["eventParams"]
    return F.when(key.isin(*in_use), F.map_filter(parsed, lambda name, _: ~name.isin(*SEED_PARAMS)))


def _catalog_reason(key: Column, own: Column, entries: dict[EventSpec, list[str]]) -> Column:
    reason = None
    for spec, keys in entries.items():
        condition, because = key.isin(*keys), _entry_reason(own, spec)
        reason = F.when(condition, because) if reason is None else reason.when(condition, because)
    return reason if reason is not None else F.lit(None).cast("string")


def classify_lines(lines: DataFrame, games: tuple[Game, ...] = GAMES) -> DataFrame:
    """Parse each line (`value`, `_source_object`, `_source_modified_at`) and give it a
    `reason` to quarantine it, null for a good event. Blank lines are not events and are
    left out. The events of `games` are checked against their catalogs."""
    entries = _entries_in_use(games)
    e = F.col("e")
    key = F.concat(e["eventParams"]["game_keyword"], F.lit(":"), e["eventName"])
    parsed = (
        lines.where(F.trim("value") != "")
        .select(
            "value",
            "_source_object",
            "_source_modified_at",
            F.from_json("value", LANDING_SCHEMA, {"columnNameOfCorruptRecord": _CORRUPT}).alias("e"),
        )
        .withColumn(_OWN, _own_params(F.col("value"), key, entries))
    )
    e = parsed["e"]
    own = parsed[_OWN]
    # JSON allows a key twice; the map keeps both, where a VARIANT can hold one.
    repeated = F.size(F.map_keys(own)) != F.size(F.array_distinct(F.map_keys(own)))
    ts = event_time(e["eventTime"])
    unparsed = e["eventName"].isNull() & e["eventTime"].isNull() & e["eventParams"].isNull()
    reason = (
        F.when(e.isNull() | (e[_CORRUPT].isNotNull() & unparsed), "not a JSON object")
        .when(e[REJECTED].isNotNull(), e[REJECTED])
        .when(e[_CORRUPT].isNotNull(), "a field has the wrong type for the event schema")
        .when(e["eventName"].isNull(), "missing eventName")
        .when(e["eventParams"].isNull(), "missing eventParams")
        .when(e["eventTime"].isNull(), MISSING_EVENT_TIME)
        .when(
            ts.isNull(),
            F.concat(
                F.lit("eventTime is not epoch seconds, epoch milliseconds or ISO-8601: "),
                F.substring(e["eventTime"], 1, 100),
            ),
        )
        .when(
            (ts < F.lit(_EARLIEST).cast("timestamp")) | (ts >= F.lit(_LATEST).cast("timestamp")),
            F.concat(F.lit("eventTime outside 2000-2099: "), ts.cast("string")),
        )
        .when(repeated, REPEATED_PARAMETER)
        .otherwise(_catalog_reason(key, own, entries))
    )
    return parsed.select(
        "value",
        "_source_object",
        "_source_modified_at",
        e["event_id"].alias("event_id"),
        e["eventName"].alias("eventName"),
        ts.alias("eventTime"),
        e["eventParams"].alias("eventParams"),
        F.when((F.size(own) > 0) & ~repeated, F.to_variant_object(own)).alias("customParams"),
        reason.alias("reason"),
    )


def typed_params(rows: DataFrame, columns: dict[str, T.DataType]) -> DataFrame:
    """Event rows with a game's parameters as columns (name: type), each read from
    `customParams` (null where an event has none, or a value its type cannot hold)."""
    return rows.select(
        *rows.columns,
        *(
            F.try_variant_get("customParams", f"$.{name}", data_type.simpleString()).alias(name)
            for name, data_type in columns.items()
        ),
    )


def raw_events(classified: DataFrame, ingested_at: datetime, run_id: str) -> DataFrame:
    """Rows for mobile_events_delta_raw: the good lines, partitioned by their UTC day."""
    return classified.where(F.col("reason").isNull()).select(
        "event_id",
        "eventName",
        "eventTime",
        "eventParams",
        "customParams",
        F.to_date("eventTime").alias("eventDate"),
        "_source_object",
        "_source_modified_at",
        F.lit(ingested_at).cast("timestamp").alias("_ingested_at"),
        F.lit(run_id).alias("_ingest_run_id"),
    )


def quarantined_lines(classified: DataFrame, quarantined_at: datetime, run_id: str) -> DataFrame:
    """Rows for quarantine_events. A line that carries a `pii` object is not stored: the
    quarantine table must never hold PII in clear, so only its reason and source remain."""
    has_pii = F.get_json_object("value", "$.pii").isNotNull()
    return classified.where(F.col("reason").isNotNull()).select(
        F.when(has_pii, F.lit(None))
        .otherwise(F.substring("value", 1, MAX_QUARANTINED_LINE_CHARS))
        .alias("line"),
        F.when(has_pii, F.concat("reason", F.lit(" (line withheld: it carries pii)")))
        .otherwise(F.col("reason"))
        .alias("reason"),
        "_source_object",
        F.lit(quarantined_at).cast("timestamp").alias("_quarantined_at"),
        F.lit(run_id).alias("_ingest_run_id"),
    )


def per_object_counts(classified: DataFrame) -> DataFrame:
    """Lines in, rows written and lines quarantined per source object (for the ledger), with
    the lines dropped for a missing eventTime counted apart, as the seed does."""
    reason = F.col("reason")
    return classified.groupBy("_source_object").agg(
        F.count(F.lit(1)).alias("rows_in"),
        F.count_if(reason.isNull()).alias("rows_written"),
        F.count_if(reason.isNotNull()).alias("rows_quarantined"),
        F.count_if(reason == MISSING_EVENT_TIME).alias("rows_missing_event_time"),
        F.max(F.unix_micros("_source_modified_at")).alias("source_modified_micros"),
    )
