"""The ingest ledger: one row per landing object taken into the tables.

Runs write it with Spark after their data commits; sensors read it here with delta-rs,
which needs no JVM, so a sensor tick stays light.
"""

from __future__ import annotations

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.s3_events import LandedObject


def delta_rs_location(path: str, environ: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The URI and storage options delta-rs needs for a warehouse path Spark reads as s3a."""
    if not path.startswith("s3a://"):
        return path, {}
    options = {"AWS_REGION": aws.region(environ)}
    if endpoint := aws.endpoint("S3", environ):
        options.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"})
    return "s3://" + path.removeprefix("s3a://"), options


def delta_rs_table(path: str, with_files: bool = True):
    """The Delta table at a warehouse path, read with delta-rs; None if there is none.
    Without its files, only the log's version, schema and history are read: what a check
    costs, however many files the table has."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri, options = delta_rs_location(path)
    try:
        return DeltaTable(uri, storage_options=options, without_files=not with_files)
    except TableNotFoundError:
        return None


def ingested_objects(ledger_path: str) -> dict[str, str]:
    """object URI -> ETag of everything the ledger holds ({} before the first ingestion)."""
    table = delta_rs_table(ledger_path)
    if table is None:
        return {}
    rows = table.to_pyarrow_table(columns=["object", "etag"]).to_pylist()
    return {row["object"]: row["etag"] or "" for row in rows}


def covers(recorded_etag: str | None, obj: LandedObject) -> bool:
    """Whether the ledger's row for an object (the ETag it recorded; None: no row) covers this
    version of it, the one rule the sensors and the runs both apply. A new ETag is an object
    overwritten since, to ingest again; an object known without its ETag is taken as the
    version the ledger holds (S3's notifications and listings always carry one)."""
    return recorded_etag is not None and (not obj.etag or recorded_etag == obj.etag)
