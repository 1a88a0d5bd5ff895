"""Landing objects into mobile_events_delta_raw and quarantine_events, exactly once.

Each object's rows are written with `replaceWhere` on their source object, so running the
same objects again (SQS redelivery, a retried or killed run, the reconciler) replaces rows
instead of adding them, whatever batches the objects arrive in. The ledger is written last;
a run killed before it is simply repeated, and finds the rows it left by the intent it noted
before writing them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import pyarrow as pa
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.lib.derived import FOLLOWED_BY
from gaming_pipeline.lib.erasure import not_erased
from gaming_pipeline.lib.events import (
    CLASSIFIED_SCHEMA,
    classify_lines,
    per_object_counts,
    quarantined_lines,
    raw_events,
    source_object,
)
from gaming_pipeline.lib.ledger import covers, delta_rs_table
from gaming_pipeline.lib.maintenance import days_changed
from gaming_pipeline.lib.pseudonyms import NOBODY_ERASED, ErasedPlayers
from gaming_pipeline.lib.s3_events import LandedObject
from gaming_pipeline.lib.stages import StageClock
from gaming_pipeline.lib.tables import (
    INTENT_SCHEMA,
    INTENT_TABLE,
    INTENTS,
    LEDGER,
    LEDGER_SCHEMA,
    LEDGER_TABLE,
    QUARANTINE,
    QUARANTINE_TABLE,
    RAW,
    RAW_TABLE,
)
from gaming_pipeline.lib.warehouse import (
    append_rows,
    in_list,
    latest_version,
    replace_rows,
    table_path,
    upsert,
    version_tagged,
)

# What a broken or vanished object looks like from Spark, as opposed to S3 being unreachable
# (which must fail the run, so it is retried, rather than quarantine good objects).
_CONTENT_FAULT = re.compile(
    r"gzip|zlib|inflat|EOFException|MalformedInputException|PATH_NOT_FOUND|FileNotFoundException",
    re.IGNORECASE,
)


@dataclass
class IngestResult:
    objects: int = 0
    objects_already_ingested: int = 0
    rows_in: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    rows_missing_event_time: int = 0
    raw_version: int | None = None
    quarantine_version: int | None = None
    # When the batch replaced rows written before, the days to rebuild from raw (a batch
    # appended for the first time is added to the followers by a follower pass, which
    # reports its days and games).
    rebuild_dates: list[date] = field(default_factory=list)
    seconds: float = 0.0
    stages: StageClock = field(default_factory=StageClock)


def object_uri(obj: LandedObject) -> str:
    return f"s3://{obj.bucket}/{obj.key}"


def ensure_ingest_tables(spark: SparkSession, warehouse: str) -> None:
    for table in (RAW, QUARANTINE, LEDGER, INTENTS):
        table.ensure(spark, warehouse)


def _rows_naming(path: str, uris: list[str], columns: list[str]) -> list[dict]:
    """The rows of a bookkeeping table (the ledger, the intents) that name these objects,
    with source_modified_at as epoch microseconds; read with delta-rs, as the sensors read
    the ledger: every run pays this, new objects or not, and a Spark job costs seconds."""
    table = delta_rs_table(path)
    if table is None or not uris:
        return []
    found = table.to_pyarrow_table(columns=columns, filters=[("object", "in", uris)])
    micros = found.column("source_modified_at").cast(pa.timestamp("us", "UTC")).cast(pa.int64())
    return found.set_column(columns.index("source_modified_at"), "source_modified_at", micros).to_pylist()


def pending(warehouse: str, objects: list[LandedObject]) -> tuple[list[LandedObject], list[int], bool]:
    """The objects the ledger does not hold at the same ETag; the last-modified times
    (epoch microseconds) of every version of them whose rows may be in the raw table: the
    one the ledger holds, and any a run noted before writing (a run killed after its raw
    write left rows the ledger does not know of); and whether the ledger or an intent names
    any of them at all. An object overwritten since is ingested again, and all those rows
    must be found to be replaced, whatever the timing."""
    uris = [object_uri(obj) for obj in objects]
    ledger = _rows_naming(LEDGER.path(warehouse), uris, ["object", "etag", "source_modified_at"])
    intents = _rows_naming(INTENTS.path(warehouse), uris, ["object", "source_modified_at"])
    recorded = {row["object"]: row["etag"] or "" for row in ledger}
    todo = [obj for obj in objects if not covers(recorded.get(object_uri(obj)), obj)]
    todo_uris = {object_uri(obj) for obj in todo}
    named = [row for row in (*ledger, *intents) if row["object"] in todo_uris]
    earlier = {row["source_modified_at"] for row in named if row["source_modified_at"] is not None}
    return todo, sorted(earlier), bool(named)


def note_intent(spark: SparkSession, warehouse: str, modified: dict[str, int], run_id: str) -> None:
    """Record, before any row of theirs is written, the objects' last-modified times
    (object URI -> epoch microseconds), for `pending` to find if this run dies midway."""
    now = datetime.now(UTC)
    rows = [(uri, _micros_datetime(micros), run_id, now) for uri, micros in sorted(modified.items())]
    append_rows(
        spark.createDataFrame(rows, INTENT_SCHEMA), table_path(warehouse, INTENT_TABLE), {"run_id": run_id}
    )


def record_in_ledger(rows: DataFrame, warehouse: str, run_id: str, first_time: bool) -> None:
    """The run's last write: the objects are ingested. Objects the ledger never held are
    appended; any other replaces its row."""
    path = table_path(warehouse, LEDGER_TABLE)
    if first_time:
        append_rows(rows, path, {"run_id": run_id})
    else:
        upsert(rows, path, keys=("object",), marker={"run_id": run_id})


def _micros_literal(micros: int) -> str:
    stamp = datetime.fromtimestamp(micros / 1_000_000, UTC)
    return f"TIMESTAMP '{stamp:%Y-%m-%d %H:%M:%S.%f}'"


def rows_of(uris: list[str], modified_micros: list[int]) -> str:
    """A replaceWhere predicate for the rows of these objects. The range on the objects'
    last-modified times is what lets Delta skip every file of earlier objects by its
    statistics; the list of URIs alone would not (strings are compared on a prefix)."""
    return (
        f"_source_modified_at BETWEEN {_micros_literal(min(modified_micros))} "
        f"AND {_micros_literal(max(modified_micros))} AND {in_list('_source_object', uris)}"
    )


# Spark hands every path to Hadoop's globber, which reads these as patterns: a key holding
# them could name other objects, or none. Escaped, each is read as the character it is.
_GLOB_METACHARACTERS = re.compile(r"([\\\[\]{}*?])")


def literal_path(obj: LandedObject) -> str:
    """The object's s3a path for Spark to read: its key literally, never as a glob."""
    return _GLOB_METACHARACTERS.sub(r"\\\1", obj.s3a_path)


def _lines(spark: SparkSession, objects: list[LandedObject], erased: ErasedPlayers) -> DataFrame:
    """The objects' lines, without those of erased players: an object that waited on the
    queue while its player was erased brings them back into no table."""
    return (
        spark.read.text([literal_path(obj) for obj in objects])
        .select(
            "value",
            source_object(F.col("_metadata.file_path")).alias("_source_object"),
            F.col("_metadata.file_modification_time").alias("_source_modified_at"),
        )
        .where(not_erased(F.col("value"), erased))
    )


def _content_fault(spark: SparkSession, obj: LandedObject) -> str | None:
    """Why this one object cannot be read (None if it can): a corrupt gzip, say, or an
    object deleted since it was announced."""
    try:
        spark.read.text(literal_path(obj)).count()
    except (PySparkException, Py4JJavaError) as exc:
        text = str(exc)
        fault = _CONTENT_FAULT.search(text)
        if fault is None:
            raise
        causes = re.findall(r"Caused by: ([^\n]+)", text)
        return f"object could not be read: {causes[-1].strip() if causes else fault.group(0)}"
    return None


def _counted(classified: DataFrame) -> tuple[DataFrame, dict]:
    classified = classified.persist()
    try:
        return classified, {row._source_object: row for row in per_object_counts(classified).collect()}
    except BaseException:
        classified.unpersist()
        raise


def classify_objects(
    spark: SparkSession, objects: list[LandedObject], erased: ErasedPlayers
) -> tuple[DataFrame, dict]:
    """The objects' lines, classified and cached, with counts per object.

    An object Spark cannot read is not allowed to stop the others: it becomes one
    quarantine row with the reason, and the rest are read without it.
    """
    try:
        return _counted(classify_lines(_lines(spark, objects, erased)))
    except (PySparkException, Py4JJavaError):
        pass
    faults = {obj: _content_fault(spark, obj) for obj in objects}
    readable = [obj for obj, fault in faults.items() if fault is None]
    # No VARIANT in the rows made here: a null one is added as a column.
    unparsed = T.StructType([field for field in CLASSIFIED_SCHEMA.fields if field.name != "customParams"])
    broken = spark.createDataFrame(
        [
            (None, object_uri(obj), None, None, None, None, None, fault)
            for obj, fault in faults.items()
            if fault
        ],
        unparsed,
    ).withColumn("customParams", F.lit(None).cast("variant"))
    if readable:
        return _counted(classify_lines(_lines(spark, readable, erased)).unionByName(broken))
    return _counted(broken)


def _micros_datetime(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, UTC)


def ingest_objects(
    spark: SparkSession,
    warehouse: str,
    objects: list[LandedObject],
    run_id: str,
    erased: ErasedPlayers = NOBODY_ERASED,
) -> IngestResult:
    """Take the objects into the raw table and the quarantine, leaving out the lines of the
    `erased` players, and record them in the ledger."""
    started = time.monotonic()
    clock = StageClock()
    with clock.stage("tables"):
        ensure_ingest_tables(spark, warehouse)
    unique = sorted(set(objects))
    with clock.stage("ledger_lookup"):
        todo, earlier_modified, seen_before = pending(warehouse, unique)
    result = IngestResult(objects=len(todo), objects_already_ingested=len(unique) - len(todo), stages=clock)
    if not todo:
        result.seconds = time.monotonic() - started
        return result

    now = datetime.now(UTC)
    with clock.stage("read_and_classify"):
        classified, counts = classify_objects(spark, todo, erased)
    try:
        rows = raw_events(classified, now, run_id)
        uris = [object_uri(obj) for obj in todo]
        marker = {"run_id": run_id, "objects": len(todo), FOLLOWED_BY: "follower passes"}
        modified_at = {
            uri: row.source_modified_micros
            for uri, row in counts.items()
            if row.source_modified_micros is not None
        }
        # Noted before any row of the objects is written anywhere, for `pending` to find if
        # this run dies midway.
        if modified_at:
            with clock.stage("intent"):
                note_intent(spark, warehouse, modified_at, run_id)
        # Neither the ledger nor an intent named them, and every one is noted now: no run has
        # written a row of theirs, so their rows are appended, with nothing to find and replace.
        first_time = not seen_before and len(modified_at) == len(uris)
        quarantine_path = table_path(warehouse, QUARANTINE_TABLE)
        quarantined = quarantined_lines(classified, now, run_id)
        with clock.stage("quarantine_write"):
            if not first_time:
                # Quarantine is small: finding an object's earlier lines by URI alone is cheap there.
                result.quarantine_version = replace_rows(
                    quarantined, quarantine_path, in_list("_source_object", uris), marker
                ).version
            elif any(row.rows_quarantined for row in counts.values()):
                append_rows(quarantined, quarantine_path, marker)
                result.quarantine_version = version_tagged(quarantine_path, marker)
            else:
                result.quarantine_version = latest_version(quarantine_path)
        writing = {uri: micros for uri, micros in modified_at.items() if counts[uri].rows_written}
        modified = earlier_modified + list(writing.values())
        raw_path = table_path(warehouse, RAW_TABLE)
        with clock.stage("raw_write"):
            if earlier_modified:
                # An earlier run wrote (some of) these objects: their rows are replaced, and the
                # days this commit changed are rebuilt in the derived tables, which is exact
                # whatever an earlier version of the objects left there.
                result.raw_version = replace_rows(rows, raw_path, rows_of(uris, modified), marker).version
                # The commit's removed and added files: the days of the old rows and the new.
                changed = days_changed(spark, raw_path, result.raw_version - 1, result.raw_version)
                if changed is None:
                    raise RuntimeError(
                        "the batch's raw commit is not in the raw table's log: its days are unknown"
                    )
                result.rebuild_dates = sorted(changed)
            elif writing:
                # No intent was noted for them before this run's, so no row of these objects can
                # be in the tables: a blind append, which compaction and erasure never conflict
                # with. A follower pass adds it to the derived tables once the ledger records it
                # (follow.py); a run killed before that is retried as a replacement.
                append_rows(rows, raw_path, marker)
                result.raw_version = version_tagged(raw_path, marker)
                if result.raw_version is None:
                    # The follower passes find the batch by the version the ledger records.
                    raise RuntimeError("the batch's raw commit is not among the raw table's recent commits")
            else:
                result.raw_version = latest_version(raw_path)
    finally:
        classified.unpersist()

    ledger_rows = []
    for obj, uri in zip(todo, uris, strict=True):
        row = counts.get(uri)
        ledger_rows.append(
            (
                uri,
                obj.etag,
                obj.size,
                _micros_datetime(row.source_modified_micros if row else None),
                run_id,
                result.raw_version,
                result.quarantine_version,
                row.rows_in if row else 0,
                row.rows_written if row else 0,
                row.rows_quarantined if row else 0,
                row.rows_missing_event_time if row else 0,
                now,
            )
        )
        if row:
            result.rows_in += row.rows_in
            result.rows_written += row.rows_written
            result.rows_quarantined += row.rows_quarantined
            result.rows_missing_event_time += row.rows_missing_event_time
    with clock.stage("ledger_write"):
        record_in_ledger(spark.createDataFrame(ledger_rows, LEDGER_SCHEMA), warehouse, run_id, first_time)
    result.seconds = time.monotonic() - started
    return result
