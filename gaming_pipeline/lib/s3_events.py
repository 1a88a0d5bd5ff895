"""Turn SQS message bodies into the S3 objects they announce.

A body is an S3 event notification, either straight from S3 or wrapped in an SNS envelope
(when the subscription has no raw message delivery). Keys arrive URL-encoded
(`quote_plus`: `/` is `%2F`, a space is `+`, `+` is `%2B`). S3 sends an `s3:TestEvent`
when notifications are configured; it announces nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import unquote_plus

# Events of games the registry does not know, parked by the ingest service in the landing
# bucket: ingestion leaves them alone until the game is added and they are moved under
# another prefix (README: unknown games).
PARKED_PREFIX = "unknown-games/"


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
    objects = []
    for record in records:
        if not isinstance(record, dict) or not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        try:
            bucket = record["s3"]["bucket"]["name"]
            obj = record["s3"]["object"]
            key = unquote_plus(obj["key"])
        except (KeyError, TypeError) as exc:
            raise NotAnS3Event(f"S3 record lacks bucket or object key: {exc!r}") from exc
        objects.append(
            LandedObject(
                bucket=bucket,
                key=key,
                etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
                size=int(obj.get("size") or 0),
            )
        )
    return objects
