"""S3 objects of lines (landing objects, the PII vault's segment objects) read whole, and
rewritten without some of their lines, never over what another writer put there meanwhile."""

from __future__ import annotations

import gzip
from collections.abc import Callable

from botocore.exceptions import ClientError

# Times an object is read again when someone else rewrote it meanwhile.
REWRITE_ATTEMPTS = 5


def read_object(s3, bucket: str, key: str) -> tuple[dict, bytes, bool] | None:
    """(the GetObject answer, the body inflated, whether it was gzip), or None if gone."""
    try:
        got = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    body = got["Body"].read()
    gzipped = key.endswith(".gz")
    if gzipped:
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            gzipped = False  # not gzip after all: ingestion could not read it either
    return got, body, gzipped


def _without_lines(body: bytes, drops: Callable[[bytes], bool]) -> tuple[bytes, int]:
    lines = body.split(b"\n")
    kept = [line for line in lines if not drops(line)]
    return b"\n".join(kept), len(lines) - len(kept)


def rewrite_without(s3, bucket: str, key: str, drops: Callable[[bytes], bool]) -> tuple[int, str]:
    """Take the lines `drops` picks out of one object: (lines removed, "rewritten" or
    "deleted" or ""). The object is replaced only if nobody changed it since it was read,
    so a concurrent upload is never overwritten with older lines; it is then read again.
    An object left with no line is deleted."""
    for _ in range(REWRITE_ATTEMPTS):
        read = read_object(s3, bucket, key)
        if read is None:
            return 0, ""
        got, body, gzipped = read
        kept, removed = _without_lines(body, drops)
        if not removed:
            return 0, ""
        try:
            if not kept.strip():
                s3.delete_object(Bucket=bucket, Key=key, IfMatch=got["ETag"])
                return removed, "deleted"
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=gzip.compress(kept, mtime=0) if gzipped else kept,
                ContentType=got.get("ContentType", "application/octet-stream"),
                # What the object says of itself (a Kinesis read's shard and segments) stays.
                Metadata=got.get("Metadata", {}),
                IfMatch=got["ETag"],
            )
            return removed, "rewritten"
        except ClientError as error:
            if error.response["Error"]["Code"] != "PreconditionFailed":
                raise
    raise RuntimeError(f"s3://{bucket}/{key} kept changing while the player's lines were taken out of it")
