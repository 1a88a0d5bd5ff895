"""GDPR erasure of one player: their rows out of the event tables, their lines out of the
quarantine and out of the landing objects a replay would read again, the segments of the PII
vault that hold their records (found through those objects), and an audit record of what was
erased, where, and when its last copy is gone. The audit holds no PII: the player is named by
their pseudonymous id only.

Delta keeps every DELETE's predicate in the table's history, so rows are matched by the
SHA-256 of the device id (or of the quarantined line), never by the id itself.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.kinesis import staged_segments
from gaming_pipeline.lib.kpis import DEVICE, PLAYER_DAYS
from gaming_pipeline.lib.maintenance import DEFAULT_RETENTION_HOURS, days_in
from gaming_pipeline.lib.object_lines import read_object, rewrite_without
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.pseudonyms import ErasedPlayers, device_id_of_line
from gaming_pipeline.lib.s3_events import ingest_segments
from gaming_pipeline.lib.tables import AUDIT, AUDIT_SCHEMA, QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import (
    commits_tagged,
    delta_at,
    in_list,
    latest_version,
    replace_rows,
    retry_on_conflict,
    sql_string,
    version_tagged,
)

if TYPE_CHECKING:
    from gaming_pipeline.lib.pii import PiiVault, VaultErasure

ERASURE_TAG = "erasure"
# Delta's default delta.logRetentionDuration: the table logs (and their checkpoints) keep
# the statistics of removed files, a file's smallest and largest device id among them,
# until then.
LOG_RETENTION = timedelta(days=30)

# Where a table other than the event tables keeps the device id.
DEVICE_COLUMNS = {PLAYER_DAYS: "device_id", PLAYER_STATE_TABLE: "device_id"}


@dataclass(frozen=True)
class TableErasure:
    table: str
    rows_deleted: int
    version: int
    days: list[date] = field(default_factory=list)


@dataclass
class LandingErasure:
    """The player's lines taken out of one landing bucket's objects."""

    bucket: str
    lines_removed: int = 0
    objects_rewritten: int = 0
    objects_deleted: int = 0
    # Bucket versioning keeps the objects' earlier versions: then no copy is gone for sure.
    versioned: bool = False


@dataclass(frozen=True)
class Place:
    """One place the player was removed from, as the audit row lists it."""

    place: str
    removed: int
    detail: str
    last_copy_gone_after: datetime | None


def json_tokens(device_id: str) -> list[str]:
    """The device id as a JSON string, the two ways encoders write it (non-ASCII escaped or
    not). A line holding one holds the id as a whole value: "d-1" never matches "d-10"."""
    return sorted({json.dumps(device_id), json.dumps(device_id, ensure_ascii=False)})


# What may continue an id: in a line that is not JSON, the id counts only where none of
# these is beside it.
_ID_CHARACTERS = "A-Za-z0-9_.-"


def _bare_spellings(device_id: str) -> list[str]:
    return sorted({device_id, *(token[1:-1] for token in json_tokens(device_id))})


def _whole_word(alternatives: str) -> str:
    return f"(?<![{_ID_CHARACTERS}])(?:{alternatives})(?![{_ID_CHARACTERS}])"


def bare_id_pattern(device_id: str) -> str:
    """A Java regular expression (Spark's rlike) for the id as a whole word of free text."""
    quoted = "|".join(
        "\\Q" + text.replace("\\E", "\\E\\\\E\\Q") + "\\E" for text in _bare_spellings(device_id)
    )
    return _whole_word(quoted)


def device_in_tables(spark: SparkSession, tables: dict[str, str], player: ErasedPlayers) -> str | None:
    """The device id whose pseudonym the erased player is, from the first of the tables
    (name: path) that holds it: the players' days (one row a player and day), the raw
    events, the quarantine's lines that are JSON. The derived tables are searched first and
    emptied first, so a retry after a failure midway still finds the device in raw."""
    searched = [
        (table, column)
        for table, column in (
            (PLAYER_DAYS, F.col("device_id")),
            (RAW_TABLE, F.col(DEVICE)),
            (QUARANTINE_TABLE, line_device_id(F.col("line"))),
        )
        if table in tables
    ]
    wanted = sorted(player.player_ids)
    for table, column in searched:
        found = (
            spark.read.format("delta")
            .load(tables[table])
            .select(column.alias("device_id"))
            .where(player_id_column(F.col("device_id"), player.pseudonym_key).isin(wanted))
            .limit(1)
            .collect()
        )
        if found:
            return found[0].device_id
    return None


def device_in_objects(s3, objects: Iterable[tuple[str, str]], player: ErasedPlayers) -> str | None:
    """The erased player's device id from the landing objects' JSON lines (objects never
    ingested: parked, or still on the queue), if one of them holds it."""
    for bucket, key in sorted(set(objects)):
        read = read_object(s3, bucket, key)
        for line in read[1].split(b"\n") if read else []:
            device = device_id_of_line(line)
            if device is not None and player.holds(device):
                return device
    return None


def naming(device_id: str) -> Callable[[bytes], bool]:
    """Whether a landing line holds the device id: as a JSON string value, or, in a line that
    does not parse, as a whole word."""
    tokens = [token.encode() for token in json_tokens(device_id)]
    words = "|".join(re.escape(text) for text in _bare_spellings(device_id))
    word = re.compile(_whole_word(words).encode())

    def names(line: bytes) -> bool:
        if any(token in line for token in tokens):
            return True
        if not word.search(line):
            return False
        try:
            json.loads(line)
        except ValueError:
            return True
        return False

    return names


def player_id_column(device_id: Column, pseudonym_key: bytes) -> Column:
    """The player's pseudonymous id (ErasedPlayers.player_id: HMAC-SHA256 of the device id,
    hex) in Spark's own functions, so a batch is checked without a Python UDF: HMAC is
    SHA-256 over the key's outer pad and the digest of its inner pad and the message. The
    key is a literal of the query only; no table, log or commit keeps it."""
    block = pseudonym_key.ljust(64, b"\0")  # SHA-256's block; the key is 32 bytes
    inner = bytes(byte ^ 0x36 for byte in block)
    outer = bytes(byte ^ 0x5C for byte in block)
    digest = F.unhex(F.sha2(F.concat(F.lit(inner), F.encode(device_id, "UTF-8")), 256))
    return F.sha2(F.concat(F.lit(outer), digest), 256)


def line_device_id(line: Column) -> Column:
    """The device id of a landing line that is JSON (null for one that is not)."""
    return F.get_json_object(line, "$.eventParams.device_id")


def not_erased(line: Column, erased: ErasedPlayers) -> Column:
    """True for a landing line of no erased player (a line with no device id included)."""
    if not erased.player_ids:
        return F.lit(True)
    player = player_id_column(line_device_id(line), erased.pseudonym_key)
    return F.coalesce(~player.isin(sorted(erased.player_ids)), F.lit(True))


def sha256(text: str) -> str:
    """The hex SHA-256 of text's UTF-8 bytes, as Spark's sha2(column, 256) computes it."""
    return hashlib.sha256(text.encode()).hexdigest()


def _delete(spark: SparkSession, path: str, predicate: str, marker: dict) -> int:
    with commits_tagged(spark, marker):
        retry_on_conflict(lambda: spark.sql(f"DELETE FROM {delta_at(path)} WHERE {predicate}").collect())
    return version_tagged(path, marker, operation="DELETE")


def _names(device_id: str) -> Column:
    """The Spark condition a quarantined `line` meets when it holds the id (see `naming`)."""
    as_value = reduce(operator.or_, [F.col("line").contains(token) for token in json_tokens(device_id)])
    not_json = F.get_json_object("line", "$").isNull()
    return as_value | (not_json & F.col("line").rlike(bare_id_pattern(device_id)))


def _holding(spark: SparkSession, path: str, table: str, device_id: str) -> DataFrame:
    """The rows of a table that hold the device id: by its device column, or, in the
    quarantine, by the text of the line (a line that does not parse still names its player)."""
    rows = spark.read.format("delta").load(path)
    if table == QUARANTINE_TABLE:
        return rows.where(_names(device_id))
    return rows.where(F.col(DEVICE_COLUMNS.get(table, DEVICE)) == device_id)


def erase_rows(spark: SparkSession, path: str, table: str, device_id: str, marker: dict) -> TableErasure:
    """Delete every row of one device from an event table or one of DEVICE_COLUMNS, in one
    commit. Repeating it deletes nothing more, so a conflict with a concurrent writer is
    simply retried."""
    holding = _holding(spark, path, table, device_id)
    by_day = "eventDate" in holding.columns
    found = (holding.groupBy("eventDate") if by_day else holding.groupBy()).count().collect()
    if not found or not found[0]["count"]:
        return TableErasure(table, 0, latest_version(path))
    days = sorted(row.eventDate for row in found) if by_day else []
    column = DEVICE_COLUMNS.get(table, DEVICE)
    # Naming the days lets Delta rewrite only those partitions' files (player_state has none).
    where = days_in(days) if by_day else "true"
    version = _delete(spark, path, f"{where} AND sha2({column}, 256) = '{sha256(device_id)}'", marker)
    # A table with deletion vectors (the activity tables) only marks the rows deleted: their
    # files, still current, keep them, and no VACUUM would ever remove those. Purging
    # rewrites those files without them (nothing to do on a table without deletion vectors).
    with commits_tagged(spark, marker):
        retry_on_conflict(
            lambda: spark.sql(
                f"REORG TABLE {delta_at(path)}{f' WHERE {where}' if by_day else ''} APPLY (PURGE)"
            ).collect()
        )
    return TableErasure(table, sum(row["count"] for row in found), version, days)


def erase_lines(spark: SparkSession, path: str, device_id: str, marker: dict) -> TableErasure:
    """Delete the quarantined lines that hold the device id, in one commit, by their digest."""
    found = _holding(spark, path, QUARANTINE_TABLE, device_id).select(F.sha2("line", 256)).collect()
    if not found:
        return TableErasure(QUARANTINE_TABLE, 0, latest_version(path))
    version = _delete(spark, path, in_list("sha2(line, 256)", {row[0] for row in found}), marker)
    return TableErasure(QUARANTINE_TABLE, len(found), version)


def erase_from_table(
    spark: SparkSession, path: str, table: str, device_id: str, marker: dict
) -> TableErasure:
    if table == QUARANTINE_TABLE:
        return erase_lines(spark, path, device_id, marker)
    return erase_rows(spark, path, table, device_id, marker)


def export_player(
    spark: SparkSession,
    tables: dict[str, str],
    vault: PiiVault,
    device_id: str,
    untaken: Iterable[tuple[str, str]] = (),
) -> dict:
    """Every record held of a player (GDPR Art. 15, right of access): their PII decrypted
    from the vault, and their rows in each table (name: path) that holds players, the
    quarantine's lines naming them included. Their PII is found through the landing objects
    of their events: those the tables' lineage names, and the objects no run has taken in
    (bucket, key), whose PII is held already. Nothing held, for an erased player."""
    # Here, not at the top: the code location loads this module, and only this needs cryptography.
    from gaming_pipeline.lib.pii import PlayerErased

    try:
        # The vault's client reads the landing objects' metadata too: one account's S3.
        objects = [*source_objects(spark, tables, device_id), *untaken]
        pii = vault.read(device_id, pii_segments(vault.s3, objects))
    except PlayerErased:
        pii = []
    rows = {
        table: [
            json.loads(row[0])
            for row in _holding(spark, path, table, device_id).select(F.to_json(F.struct("*"))).collect()
        ]
        for table, path in tables.items()
    }
    return {
        "device_id": device_id,
        "player_id": vault.player_id(device_id),
        "pii": pii,
        "tables": {table: held for table, held in rows.items() if held},
    }


def pii_segments(s3, objects: Iterable[tuple[str, str]]) -> list[str]:
    """The PII vault's segments that hold the PII of the events in the landing objects
    (bucket, key): named by the key of an object the ingest service landed, and in the
    metadata of one read from Kinesis (the service's `--sink kinesis`)."""
    objects = list(objects)
    return sorted({*ingest_segments(objects), *staged_segments(s3, objects)})


def source_objects(spark: SparkSession, tables: dict[str, str], device_id: str) -> list[tuple[str, str]]:
    """The landing objects (bucket, key) the player's raw rows and quarantined lines came
    from, by the lineage column of those of the tables (name: path) given."""
    found = [
        row._source_object
        for table in (RAW_TABLE, QUARANTINE_TABLE)
        if table in tables
        for row in _holding(spark, tables[table], table, device_id)
        .select("_source_object")
        .distinct()
        .collect()
    ]
    return sorted({tuple(uri.removeprefix("s3://").split("/", 1)) for uri in found})


def erase_from_objects(s3, objects: Iterable[tuple[str, str]], device_id: str) -> list[LandingErasure]:
    """Take the player's lines out of landing objects (bucket, key), one bucket at a time.
    A rewritten object is announced as any new object is and ingested again, which replaces
    its rows as they now are; an object left with no line is deleted."""
    names = naming(device_id)
    by_bucket: dict[str, LandingErasure] = {}
    for bucket, key in sorted(set(objects)):
        if bucket not in by_bucket:
            by_bucket[bucket] = LandingErasure(bucket, versioned=aws.keeps_versions(s3, bucket))
        removed, outcome = rewrite_without(s3, bucket, key, names)
        erased = by_bucket[bucket]
        erased.lines_removed += removed
        erased.objects_rewritten += outcome == "rewritten"
        erased.objects_deleted += outcome == "deleted"
    return list(by_bucket.values())


STATS_COLUMNS = "delta.dataSkippingStatsColumns"


def keeps_statistics_of_players(spark: SparkSession, path: str) -> bool:
    """Whether the table's log may hold device ids as a file's smallest or largest value:
    a table made before its identifying columns were kept out of statistics."""
    properties = {row.key: row.value for row in spark.sql(f"SHOW TBLPROPERTIES {delta_at(path)}").collect()}
    return STATS_COLUMNS not in properties


def vault_place(erased_at: datetime, vault: VaultErasure) -> Place:
    """The PII vault: deleting the key made every copy unreadable; the sealed records deleted
    are the copies themselves, in the segments the player's events were delivered with."""
    key = "key shredded" if vault.key_shredded else "no key left to shred"
    return Place(
        f"pii vault s3://{vault.bucket}",
        vault.records_deleted,
        f"{key}: no copy of the player's PII can be opened; {vault.records_deleted} sealed record(s) "
        f"deleted: {vault.segments_rewritten} segment object(s) rewritten, {vault.segments_deleted} "
        f"deleted, {vault.player_objects_deleted} object(s) of the per-player layout deleted"
        + (
            "; bucket versioning keeps their earlier versions, sealed to the shredded key"
            if vault.versioned
            else ""
        ),
        None if vault.versioned else erased_at,
    )


def places(
    erased_at: datetime,
    landing: list[LandingErasure],
    tables: list[TableErasure],
    logs_with_statistics: list[str],
    vault: VaultErasure,
) -> list[Place]:
    """Where the player was, besides the tables' current versions, and when the last copy
    there is gone."""
    found = [
        Place(
            "ingestion",
            0,
            "on the erased-players list: events and PII of the player still in an ingest spool or "
            "on the queue, and any sent later, are dropped, not taken",
            erased_at,
        ),
        *[
            Place(
                f"landing s3://{erasure.bucket}",
                erasure.lines_removed,
                f"{erasure.objects_rewritten} object(s) rewritten, {erasure.objects_deleted} deleted"
                + ("; bucket versioning keeps their earlier versions" if erasure.versioned else ""),
                None if erasure.versioned else erased_at,
            )
            for erasure in landing
        ],
        vault_place(erased_at, vault),
    ]
    files = sum(table.rows_deleted for table in tables)
    found.append(
        Place(
            "table files",
            files,
            "older table versions hold the rows until VACUUM deletes their files",
            erased_at + timedelta(hours=DEFAULT_RETENTION_HOURS),
        )
    )
    if logs_with_statistics:
        logs = Place(
            "table logs",
            0,
            "statistics of the removed files (smallest and largest device id) stay in the Delta logs "
            f"and checkpoints of {', '.join(logs_with_statistics)} until log retention",
            erased_at + LOG_RETENTION,
        )
    else:
        logs = Place("table logs", 0, "the tables keep no statistics of device ids in their logs", erased_at)
    found.append(logs)
    return found


def record_audit(
    spark: SparkSession,
    warehouse: str,
    *,
    request_id: str,
    player_id: str,
    requested_by: str,
    reason: str,
    erased_at: datetime,
    run_id: str,
    tables: list[TableErasure],
    landing: list[LandingErasure],
    shredded: VaultErasure,
    logs_with_statistics: list[str],
) -> int:
    """Append the erasure run's audit row. Every run of a request keeps its own row (a
    repeated request finds nothing more to delete and says so); only a retry within the
    same run replaces its row."""
    row = (
        request_id,
        player_id,
        requested_by,
        reason,
        erased_at,
        run_id,
        [(t.table, t.rows_deleted, t.version, t.days) for t in tables],
        shredded.key_shredded,
        shredded.records_deleted,
        erased_at + timedelta(hours=DEFAULT_RETENTION_HOURS),
        [
            (p.place, p.removed, p.detail, p.last_copy_gone_after)
            for p in places(erased_at, landing, tables, logs_with_statistics, shredded)
        ],
    )
    path = AUDIT.ensure(spark, warehouse)
    return replace_rows(
        spark.createDataFrame([row], AUDIT_SCHEMA),
        path,
        f"request_id = {sql_string(request_id)} AND run_id = {sql_string(run_id)}",
        {"run_id": run_id, ERASURE_TAG: request_id},
        add_new_columns=True,
    ).version
