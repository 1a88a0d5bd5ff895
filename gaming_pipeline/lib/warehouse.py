"""Where the tables live and the Delta writes every asset shares.

All tables sit under one warehouse root (a path or `s3a://bucket/prefix`), one folder per
table, named as analysts query them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

from delta.exceptions import base as delta_errors
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from gaming_pipeline.lib.ledger import delta_rs_table


def table_path(warehouse: str, table: str) -> str:
    return f"{warehouse.rstrip('/')}/{table}"


def delta_at(path: str) -> str:
    """The SQL name of the Delta table at a path.

    Tables are reached through SQL rather than delta-spark's DeltaTable API so that the same
    code runs on a local session and on a Spark Connect server (whose Delta plugin for the
    Python API is not published for Spark 4.2).
    """
    return "delta." + _quoted(path)


def sql_string(value: str) -> str:
    """A Spark SQL string literal for any text (keys may hold quotes and backslashes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def in_list(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_string(value) for value in sorted(set(values)))})"


_Result = TypeVar("_Result")


# Every way a commit can lose to a concurrent writer. Delta's Python classes for them are
# siblings (ConcurrentAppendException is no DeltaConcurrentModificationException there, unlike
# in Scala), so each is named: catching the parent alone retried none of the others.
COMMIT_CONFLICTS = (
    delta_errors.DeltaConcurrentModificationException,
    delta_errors.ConcurrentWriteException,
    delta_errors.MetadataChangedException,
    delta_errors.ProtocolChangedException,
    delta_errors.ConcurrentAppendException,
    delta_errors.ConcurrentDeleteReadException,
    delta_errors.ConcurrentDeleteDeleteException,
    delta_errors.ConcurrentTransactionException,
)


def retry_on_conflict(
    commit: Callable[[], _Result], attempts: int = 5, backoff_seconds: float = 1.0
) -> _Result:
    """Run one idempotent Delta commit, again if a concurrent writer won the race.

    Only idempotent writes (replaceWhere, MERGE, DELETE) go through here: repeating them
    after a conflict gives the same table as a single success.
    """
    # Imported for its side effect: Spark Connect errors for commit conflicts become the same
    # Delta exceptions the classic client raises. Here, not at the top: it loads the Spark
    # Connect client (pandas, pyarrow, grpc), which only a run that commits needs.
    import delta.connect.exceptions  # noqa: F401

    for attempt in range(1, attempts + 1):
        try:
            return commit()
        except COMMIT_CONFLICTS:
            if attempt == attempts:
                raise
            time.sleep(backoff_seconds * attempt)
    raise AssertionError("unreachable")


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _ddl_type(data_type: T.DataType) -> str:
    if isinstance(data_type, T.StructType):
        return f"struct<{_ddl_fields(data_type, ': ')}>"
    if isinstance(data_type, T.ArrayType):
        return f"array<{_ddl_type(data_type.elementType)}>"
    if isinstance(data_type, T.MapType):
        return f"map<{_ddl_type(data_type.keyType)}, {_ddl_type(data_type.valueType)}>"
    return data_type.simpleString()


def _ddl_fields(schema: T.StructType, separator: str = " ") -> str:
    """A schema as SQL column definitions, written here rather than by StructType.toDDL,
    which needs the calling thread's own active session."""
    return ", ".join(
        f"{_quoted(field.name)}{separator}{_ddl_type(field.dataType)}{'' if field.nullable else ' NOT NULL'}"
        for field in schema.fields
    )


def ensure_table(
    spark: SparkSession,
    path: str,
    schema: T.StructType,
    partition_by: tuple[str, ...] = (),
    comment: str = "",
    properties: dict[str, str] | None = None,
) -> None:
    # Read from the log with delta-rs: an existing table costs a run no Spark round trip,
    # and every run of every job checks its tables first.
    existing = delta_rs_table(path, with_files=False)
    if existing is not None and set(schema.names) <= {f.name for f in existing.schema().fields}:
        return
    partitioned = f" PARTITIONED BY ({', '.join(partition_by)})" if partition_by else ""
    described = f" COMMENT {sql_string(comment)}" if comment else ""
    settings = ", ".join(
        f"{sql_string(key)} = {sql_string(value)}" for key, value in (properties or {}).items()
    )
    statement = (
        f"CREATE TABLE IF NOT EXISTS {delta_at(path)} ({_ddl_fields(schema)}) USING delta"
        f"{partitioned}{described}{f' TBLPROPERTIES ({settings})' if settings else ''}"
    )
    retry_on_conflict(lambda: spark.sql(statement))
    _add_missing_columns(spark, path, schema)


# The tables (and the columns) this process has already brought up to their declaration.
_COLUMNS_CHECKED: set[tuple[str, tuple[str, ...]]] = set()


def _add_missing_columns(spark: SparkSession, path: str, schema: T.StructType) -> None:
    """Add the declared columns a table made by an earlier release lacks (null in its old
    rows), once per table and process: a new column never needs a table dropped and made."""
    checked = (path, tuple(schema.names))
    if checked in _COLUMNS_CHECKED:
        return
    present = set(spark.read.format("delta").load(path).schema.names)
    # Nullable: the table's old rows have no value.
    missing = T.StructType(
        [T.StructField(f.name, f.dataType) for f in schema.fields if f.name not in present]
    )
    if missing.fields:
        retry_on_conflict(
            lambda: spark.sql(f"ALTER TABLE {delta_at(path)} ADD COLUMNS ({_ddl_fields(missing)})")
        )
    _COLUMNS_CHECKED.add(checked)


def is_delta_table(spark: SparkSession, path: str) -> bool:
    try:
        spark.sql(f"DESCRIBE DETAIL {delta_at(path)}").collect()
    except AnalysisException as error:
        # Only "no Delta table there" means absent: a table Spark cannot read (a broken log,
        # no access) must fail loudly rather than be skipped as missing.
        if error.getCondition() != "DELTA_MISSING_DELTA_TABLE":
            raise
        return False
    return True


def table_history(spark: SparkSession, path: str, limit: int | None = None) -> DataFrame:
    """The table's commits, newest first (DESCRIBE HISTORY)."""
    return spark.sql(f"DESCRIBE HISTORY {delta_at(path)}" + (f" LIMIT {int(limit)}" if limit else ""))


def latest_version(path: str) -> int:
    """The table's newest version, read from its log with delta-rs (no Spark job)."""
    return delta_rs_table(path, with_files=False).version()


def at_version(spark: SparkSession, path: str, version: int) -> DataFrame:
    """The table as one commit left it: a DataFrame read several times (over Spark Connect
    each action reads the newest snapshot) sees the same rows while other runs write."""
    return spark.read.format("delta").option("versionAsOf", version).load(path)


class Txn(NamedTuple):
    """A Delta transaction id (SetTransaction): a writer's `app_id` and the `version` of its
    work a commit applies. A table keeps the latest version of each app id, and a write of a
    version it already has commits nothing: what makes a retried write idempotent."""

    app_id: str
    version: int


class Commit(NamedTuple):
    version: int
    # From the commit's own operation metrics, so nobody has to read the rows back to know.
    rows_written: int


def _tag(marker: dict) -> str:
    return json.dumps(marker, sort_keys=True)


def _commit_where(
    path: str, metadata_matches: Callable[[str], bool], operation: str = "", recent: int = 50
) -> Commit | None:
    """The newest of the table's `recent` commits whose user metadata matches (and of that
    operation, if given), read from its log with delta-rs (no Spark job)."""
    for commit in delta_rs_table(path, with_files=False).history(recent):
        if metadata_matches(commit.get("userMetadata") or "") and operation in ("", commit.get("operation")):
            metrics = commit.get("operationMetrics") or {}
            return Commit(int(commit["version"]), int(metrics.get("numOutputRows", 0)))
    return None


def _commit_tagged(path: str, marker: dict, operation: str = "") -> Commit | None:
    tag = _tag(marker)
    return _commit_where(path, lambda metadata: metadata == tag, operation)


def version_tagged(path: str, marker: dict, operation: str = "") -> int | None:
    """The newest of the table's recent versions committed with this marker (and
    operation, if given): found by its tag, not as "the latest", since another writer may
    have committed since."""
    commit = _commit_tagged(path, marker, operation)
    return None if commit is None else commit.version


def version_marked(path: str, key: str, value, operation: str = "") -> int | None:
    """The newest of the table's recent versions whose commit metadata holds `key`: `value`
    (and of that operation, if given), whichever run committed it."""

    def holds(metadata: str) -> bool:
        try:
            return json.loads(metadata or "{}").get(key) == value
        except (ValueError, AttributeError):
            return False

    commit = _commit_where(path, holds, operation)
    return None if commit is None else commit.version


def replace_rows(
    df: DataFrame, path: str, predicate: str, marker: dict, add_new_columns: bool = False
) -> Commit:
    """Replace the rows matching `predicate` with `df` in one commit and return that commit.

    This is what makes ingestion exactly-once: re-running the same work replaces its own
    earlier rows instead of adding to them. Every row of `df` must match `predicate`.
    When there is nothing to remove or add, Delta commits nothing: the version returned is
    then the latest one, with no rows written. With `add_new_columns`, columns of `df` the
    table lacks are added to it (a table made before they were declared).
    """

    def commit() -> Commit:
        (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", predicate)
            .option("userMetadata", _tag(marker))
            .option("mergeSchema", str(add_new_columns).lower())
            .save(path)
        )
        return _commit_tagged(path, marker) or Commit(latest_version(path), 0)

    return retry_on_conflict(commit)


def append_rows(
    df: DataFrame,
    path: str,
    marker: dict,
    partition_by: tuple[str, ...] = (),
    properties: dict[str, str] | None = None,
    txn: Txn | None = None,
    add_new_columns: bool = False,
) -> None:
    """Append `df` in one commit tagged with `marker`. A blind append reads nothing first,
    so it never conflicts with a concurrent writer: compaction, DELETE and MERGE on the same
    days all commit beside it (at Delta's default WriteSerializable isolation). It is only
    for rows the table cannot hold yet; the caller knows that (ingestion: from the intents;
    the followers of the raw table: from `txn`, with which Delta skips the append if the
    table has taken that transaction already).
    Partitioned like the table and with its properties, it makes the table on its first write.
    With `add_new_columns`, columns of `df` the table lacks are added to it in the same commit
    (a metadata change: no file is rewritten, the older rows read null)."""
    writer = (
        df.write.format("delta")
        .mode("append")
        .option("userMetadata", _tag(marker))
        .option("mergeSchema", str(add_new_columns).lower())
    )
    if txn:
        writer = writer.option("txnAppId", txn.app_id).option("txnVersion", txn.version)
    writer.options(**(properties or {})).partitionBy(*partition_by).save(path)


@contextmanager
def commits_tagged(spark: SparkSession, marker: dict, txn: Txn | None = None):
    """Tag this session's Delta commits (DELETE and MERGE take no per-call metadata) so the
    table history says which run made them; with `txn`, make them idempotent too (Delta
    skips a commit whose transaction the table has taken already)."""
    confs = {"spark.databricks.delta.commitInfo.userMetadata": _tag(marker)}
    if txn:
        confs |= {
            "spark.databricks.delta.write.txnAppId": txn.app_id,
            "spark.databricks.delta.write.txnVersion": str(txn.version),
        }
    for key, value in confs.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key in confs:
            spark.conf.unset(key)


def merge_into(
    df: DataFrame,
    path: str,
    keys: tuple[str, ...],
    updates: dict[str, str],
    marker: dict,
    scope: str = "",
    txn: Txn | None = None,
) -> None:
    """MERGE `df` into the table on `keys`: a matched row gets `updates` (column -> SQL over
    the table's row `t` and the new row `s`), an unmatched one is inserted. `scope`, a
    predicate on `t`, lets Delta read only the partitions the rows can match.

    A conflict with a concurrent writer is retried: the losing commit changed nothing, so
    even an update that adds to a row is applied once."""
    # Null-safe: a key a client left out (a platform) is still one row, not a new one per batch.
    condition = " AND ".join([f"t.{key} <=> s.{key}" for key in keys] + ([scope] if scope else []))
    assignments = ", ".join(f"{column} = {value}" for column, value in updates.items())
    # A view name of this call's own: concurrent merges in one session must not swap rows.
    source = f"merge_source_{uuid.uuid4().hex}"
    df.createOrReplaceTempView(source)
    statement = (
        f"MERGE INTO {delta_at(path)} AS t USING {source} AS s ON {condition} "
        f"WHEN MATCHED THEN UPDATE SET {assignments} WHEN NOT MATCHED THEN INSERT *"
    )
    try:
        with commits_tagged(df.sparkSession, marker, txn):
            retry_on_conflict(lambda: df.sparkSession.sql(statement).collect())
    finally:
        df.sparkSession.catalog.dropTempView(source)


def upsert(df: DataFrame, path: str, keys: tuple[str, ...], marker: dict) -> None:
    """Insert the rows, or replace the table's rows with the same keys."""
    merge_into(df, path, keys, {column: f"s.{_quoted(column)}" for column in df.columns}, marker)
