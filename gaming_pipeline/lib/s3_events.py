"""Turn SQS message bodies into the S3 objects they announce.

A body is an S3 event notification, either straight from S3 or wrapped in an SNS envelope
(when the subscription has no raw message delivery). Keys arrive URL-encoded
(`quote_plus`: `/` is `%2F`, a space is `+`, `+` is `%2B`). S3 sends an `s3:TestEvent`
when notifications are configured; it announces nothing.

Also what the ingest service names a delivered spool segment by: its landing objects and
its PII's object in the vault, so that one leads to the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

# Events of games the registry does not know, parked by the ingest service in the landing
# bucket: ingestion leaves them alone until the game is added and they are moved under
# another prefix (README: unknown games).
PARKED_PREFIX = "unknown-games/"
# Records of a Kinesis stream, written here by its sensor (lib/kinesis.py), which also asks
# for their ingestion: the queue sensor leaves them to it.
KINESIS_PREFIX = "kinesis/"
# The field of a landing line a producer wrote for something that is no event (a Kinesis
# record in none of the forms lib/kinesis.py reads), saying why: quarantine keeps the line
# with that reason.
REJECTED = "_rejected"
INGEST_OBJECT_SUFFIX = ".ndjson.gz"
# A spool's id is 8 hex digits, a segment's 17 decimal ones (ingest_service/spool.py).
_INGEST_SEGMENT = re.compile(r"ingest-[0-9a-f]{8}-[0-9]{17}")


def ingest_segment(spool_id: str, segment_id: str) -> str:
    """The name of a spool segment the ingest service delivered: each of its landing objects
    (one an hour and kind of event) is `<prefix><hour>/<name>.ndjson.gz`, and the PII vault
    holds its sealed PII under the name."""
    return f"ingest-{spool_id}-{segment_id}"


def is_ingest_segment(name: str) -> bool:
    """Whether the name is one ingest_segment gives."""
    return _INGEST_SEGMENT.fullmatch(name) is not None


def ingest_segments(objects: Iterable[tuple[str, str]]) -> list[str]:
    """The segments the ingest service delivered the landing objects (bucket, key) from,
    which the PII vault holds their PII under. Objects it did not land (a bulk load's) carry
    no PII and name none."""
    names = (key.rsplit("/", 1)[-1] for _, key in objects)
    return sorted(
        {
            name.removesuffix(INGEST_OBJECT_SUFFIX)
            for name in names
            if name.startswith("ingest-") and name.endswith(INGEST_OBJECT_SUFFIX)
        }
    )


@dataclass(frozen=True, order=True)
class LandedObject:
    bucket: str
    key: str
    etag: str = ""
    size: int = 0

    @property
    def parked(self) -> bool:
        return self.key.startswith(PARKED_PREFIX)

    @property
    def from_kinesis(self) -> bool:
        return self.key.startswith(KINESIS_PREFIX)

    @property
    def s3a_path(self) -> str:
        return f"s3a://{self.bucket}/{self.key}"


class NotAnS3Event(ValueError):
    """The body is not an S3 event notification: it belongs on the dead-letter queue."""


def parse_message(body: str) -> list[LandedObject]:
    """The objects created according to one SQS message body ([] for a test event).

    Raises NotAnS3Event for anything else, so the caller can leave it for the
    dead-letter queue instead of dropping it silently.
    """
    try:
        doc = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise NotAnS3Event(f"message body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise NotAnS3Event("message body is not a JSON object")
    if doc.get("Type") == "Notification" and "Message" in doc:
        return parse_message(doc["Message"])
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise NotAnS3Event("message has no S3 'Records' list")
    return [_created_object(record) for record in records if _is_object_created(record)]


def _is_object_created(record: object) -> bool:
    if not isinstance(record, dict):
        raise NotAnS3Event(f"S3 record is not a JSON object: {record!r:.100}")
    return str(record.get("eventName", "")).startswith("ObjectCreated")


def _created_object(record: dict) -> LandedObject:
    """The object one ObjectCreated record announces. Every field is checked for its type
    here, so that a malformed record is refused as a whole rather than failing later, far
    from its message."""
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        key = obj["key"]
    except (KeyError, TypeError) as exc:
        raise NotAnS3Event(f"S3 record lacks bucket or object key: {exc!r}") from exc
    etag = obj.get("eTag", obj.get("etag")) or ""
    size = obj.get("size") or 0
    if not (isinstance(bucket, str) and bucket):
        raise NotAnS3Event(f"S3 record's bucket name is not a name: {bucket!r:.100}")
    if not (isinstance(key, str) and key):
        raise NotAnS3Event(f"S3 record's object key is not a string: {key!r:.100}")
    if not isinstance(etag, str):
        raise NotAnS3Event(f"S3 record's eTag is not a string: {etag!r:.100}")
    # bool is an int to Python, never to S3.
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise NotAnS3Event(f"S3 record's object size is not a byte count: {size!r:.100}")
    return LandedObject(bucket=bucket, key=unquote_plus(key), etag=etag.strip('"'), size=size)
