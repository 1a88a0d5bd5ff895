"""A Kinesis Data Stream as a second way in: its records become landing objects, exactly once.

Each tick of a stream's sensor reads every readable shard from where it left off and writes
what it read as a landing object, `kinesis/<stream>/<shard>/<first>-<last>.ndjson.gz` (the
first and last sequence numbers it holds; several objects when the records name more of the
ingest service's segments than one object's metadata keeps), which ingestion then takes
like any landing object: the same raw table, quarantine, ledger and follower runs, and the
key is each row's lineage. The object is the shard's position: a read that starts where an object already
starts is one a tick did before it was cut short, and that object stands, so a record is
never written to two objects and none is skipped, whatever is killed or repeated.

Records are read as producers write them: the seed's Lambda form (an API Gateway event whose
`body` holds the event), a plain event object, a JSON array or NDJSON of events, gzipped or
not, and KPL aggregates (de-aggregated by aws-kinesis-agg). A record that is none of these
becomes a line that quarantine takes with its reason, shard and sequence number.

The producers' side is here too: PutRecords until every record is acknowledged
(put_entries), the ingest service's records (`--sink kinesis`, segment_entries) and the
seed's Lambda form (seed_lambda_record).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from gaming_pipeline.lib.pseudonyms import NOBODY_ERASED, ErasedPlayers, device_id_of_line
from gaming_pipeline.lib.s3_events import KINESIS_PREFIX, REJECTED, LandedObject, is_ingest_segment

GZIP_MAGIC = b"\x1f\x8b"
OBJECT_SUFFIX = ".ndjson.gz"
# Kinesis serves five GetRecords a second per shard, to every consumer together.
GET_RECORDS_INTERVAL_SECONDS = 0.2
RECORDS_PER_CALL = 10_000
# One tick takes at most this many records from a shard: a landing object of a few MB, and
# the rest wait for the next tick (a run is already on its way).
MAX_RECORDS_PER_SHARD = 50_000
# A position closer than this to the stream's retention is checked for trimmed records.
RETENTION_MARGIN_SECONDS = 600
# The errors Kinesis answers a busy shard with, after boto3's own retries with backoff.
_THROTTLED = {"ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"}
_EXPIRED_ITERATOR = "ExpiredIteratorException"


# PutRecords takes at most this many records, and this many bytes of data and keys, a call.
PUT_RECORDS_MAX = 500
PUT_RECORDS_MAX_BYTES = 5 * 1024 * 1024


class StreamRefused(RuntimeError):
    """Kinesis refused records for longer than the producer waits (a stream under-provisioned
    for the load, or a KMS key it may not use): they are put again later."""


def seed_lambda_record(event: dict, received_at: float) -> bytes:
    """What the seed's Lambda puts on the stream for a client's event: the API Gateway event,
    the client's event its body, stamped with `eventTime` (epoch seconds) as it is received.
    PII stays out of the stream."""
    body = {key: value for key, value in event.items() if key != "pii"} | {"eventTime": received_at}
    return json.dumps({"httpMethod": "POST", "requestContext": {}, "body": body}).encode()


def _entry_bytes(entry: dict) -> int:
    return len(entry["Data"]) + len(entry["PartitionKey"].encode())


def _one_call(entries: list[dict], pending: list[int]) -> list[int]:
    """The first of the pending entries (indices) that fit in one PutRecords."""
    call, size = [], 0
    for index in pending:
        size += _entry_bytes(entries[index])
        if len(call) == PUT_RECORDS_MAX or (call and size > PUT_RECORDS_MAX_BYTES):
            break
        call.append(index)
    return call


def put_entries(
    kinesis,
    stream: str,
    entries: list[dict],
    put_before: Iterable[int] = (),
    acknowledged: Callable[[list[int]], None] = lambda indices: None,
    patience: float = float("inf"),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """PutRecords until Kinesis has acknowledged every entry (PutRecords' own: Data,
    PartitionKey, and ExplicitHashKey if any) but those `put_before` (indices): those it
    refused (a shard busy) are put again, after a pause that grows while it refuses them all.
    `acknowledged` hears the indices each call got in, so that a producer that stops can go
    on without putting them twice. Nothing got in for `patience` seconds: StreamRefused."""
    done = set(put_before)
    pending = [index for index in range(len(entries)) if index not in done]
    pause, progressed = 0.025, clock()
    while pending:
        call = _one_call(entries, pending)
        answer = kinesis.put_records(**stream_ref(stream), Records=[entries[index] for index in call])
        errors = [put.get("ErrorCode") for put in answer["Records"]]
        taken = [index for index, error in zip(call, errors, strict=True) if error is None]
        refused = [index for index, error in zip(call, errors, strict=True) if error is not None]
        if taken:
            acknowledged(taken)
            progressed = clock()
        pending = refused + pending[len(call) :]
        if refused:
            if clock() - progressed > patience:
                codes = sorted({error for error in errors if error})
                raise StreamRefused(
                    f"Kinesis stream {stream!r} refused {len(pending):,} record(s) for over "
                    f"{patience:g} s ({', '.join(codes)}): they are put again later"
                )
            # Longer while nothing gets through; a call that took some starts over short.
            pause = min(pause * 2, 2.0) if not taken else 0.025
            sleep(pause)


def put_records(
    kinesis, stream: str, records: list[bytes], partition_key: Callable[[], str] = lambda: uuid.uuid4().hex
) -> None:
    """Put the records' data until Kinesis has taken them all (put_entries). Random partition
    keys, as the seed's Lambda's, spread them over the shards."""
    put_entries(kinesis, stream, [{"Data": data, "PartitionKey": partition_key()} for data in records])


# The ingest service's records name the spool segment their events' PII was delivered with
# (`--sink kinesis`, ingest_service/delivery.py); the landing object of a read keeps those
# names in this metadata entry, for erasure to find the PII in the vault, as a landing
# object's key names its segment.
SEGMENTS_METADATA = "ingest-segments"
# S3 keeps 2 KB of metadata an object: a read whose records name more segments (the service's
# spools were far behind, or many) is cut into several objects.
MAX_SEGMENTS_PER_OBJECT = 40
# The service's records: a device's events of one segment, up to this many bytes a record
# (Kinesis takes 1 MiB; the service's events are under 2 KB each).
SEGMENT_RECORD_BYTES = 256 * 1024


def _device_hash_key(device_id: str) -> str:
    """The hash key Kinesis gives a record whose partition key is the device id (the MD5 of
    the key as a 128-bit number): the device's shard, whatever key the record carries."""
    return str(int.from_bytes(hashlib.md5(device_id.encode()).digest(), "big"))


def segment_entries(segment: str, lines: Iterable[bytes]) -> list[dict]:
    """The PutRecords entries of an ingest segment's landing lines: each device's lines
    together as NDJSON, in records of at most SEGMENT_RECORD_BYTES, on the device's shard (so
    one device's events are read from one shard) and named by the segment (the partition key)."""
    by_device: dict[str, list[bytes]] = {}
    for line in lines:
        by_device.setdefault(device_id_of_line(line) or segment, []).append(line)
    return [
        {"Data": b"".join(chunk), "PartitionKey": segment, "ExplicitHashKey": _device_hash_key(device)}
        for device, device_lines in by_device.items()
        for chunk in _chunks(device_lines, SEGMENT_RECORD_BYTES)
    ]


def _chunks(lines: list[bytes], most_bytes: int) -> Iterable[list[bytes]]:
    """The lines in order, in runs of at most `most_bytes` (a longer line alone)."""
    chunk, size = [], 0
    for line in lines:
        if chunk and size + len(line) > most_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield chunk


def entries_digest(entries: list[dict]) -> str:
    """A digest of PutRecords entries, in order: which records a list of indices means."""
    digest = hashlib.sha256()
    for entry in entries:
        for part in (
            entry["PartitionKey"].encode(),
            entry.get("ExplicitHashKey", "").encode(),
            entry["Data"],
        ):
            digest.update(len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()


def segments_put(records: Iterable[dict]) -> list[str]:
    """The ingest segments GetRecords' records were put with (their partition keys)."""
    return sorted({record["PartitionKey"] for record in records if is_ingest_segment(record["PartitionKey"])})


def objects_holding(records: list[dict]) -> int:
    """How many of the records, from the first, one landing object may hold: those that name
    at most MAX_SEGMENTS_PER_OBJECT ingest segments (at least one record)."""
    named: set[str] = set()
    for count, record in enumerate(records):
        key = record["PartitionKey"]
        if is_ingest_segment(key) and key not in named:
            if len(named) == MAX_SEGMENTS_PER_OBJECT:
                return max(count, 1)
            named.add(key)
    return len(records)


def staged_segments(s3, objects: Iterable[tuple[str, str]]) -> list[str]:
    """The ingest segments whose events the landing objects (bucket, key) read from Kinesis
    hold, from their metadata; objects of other origins, or gone, name none."""
    names: set[str] = set()
    for bucket, key in objects:
        if ShardRange.of_key(key) is None:
            continue
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
                continue
            raise
        names.update(head.get("Metadata", {}).get(SEGMENTS_METADATA, "").split())
    return sorted(names)


def put_as_the_seed_does(
    kinesis, stream: str, events: Iterable[dict], stamp: Callable[[], float] = time.time
) -> int:
    """Each event put on the stream as the seed's Lambda puts a client's event, stamped by
    `stamp` (the time it is put); what a fifth of a second brings goes in one PutRecords, as a
    producer's batching does. How many were put."""
    batch, flushed, put = [], time.monotonic(), 0
    for event in events:
        batch.append(seed_lambda_record(event, stamp()))
        if len(batch) == PUT_RECORDS_MAX or time.monotonic() - flushed >= 0.2:
            put_records(kinesis, stream, batch)
            put, batch, flushed = put + len(batch), [], time.monotonic()
    put_records(kinesis, stream, batch)
    return put + len(batch)


def _passing(error: ClientError) -> bool:
    """A fault the next tick may not meet: a busy shard, an expired iterator, or Kinesis
    failing on its side (a 5xx, which Kinesis answers now and then, and moto's server when
    a read meets a concurrent put)."""
    code = error.response["Error"]["Code"]
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in _THROTTLED or code == _EXPIRED_ITERATOR or status >= 500


class StreamGone(RuntimeError):
    """The stream is not there (deleted, renamed, or another account's or region's)."""


def stream_name(stream: str) -> str:
    """The stream's name, from its name or ARN (arn:aws:kinesis:<region>:<account>:stream/<name>)."""
    return stream.rsplit(":stream/", 1)[-1] if stream.startswith("arn:") else stream


def stream_ref(stream: str) -> dict[str, str]:
    """How Kinesis calls name the stream: by ARN when given one (another account's stream), else by name."""
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


def shard_prefix(stream: str, shard: str) -> str:
    return f"{KINESIS_PREFIX}{stream_name(stream)}/{shard}/"


def object_key(stream: str, shard: str, first: str, last: str) -> str:
    return f"{shard_prefix(stream, shard)}{first}-{last}{OBJECT_SUFFIX}"


@dataclass(frozen=True)
class ShardRange:
    """The records of one shard a landing object holds: first and last sequence number."""

    stream: str
    shard: str
    first: str
    last: str

    @classmethod
    def of_key(cls, key: str) -> ShardRange | None:
        """The range a landing object's key names; None for an object not read from Kinesis."""
        if not key.startswith(KINESIS_PREFIX) or not key.endswith(OBJECT_SUFFIX):
            return None
        parts = key.removeprefix(KINESIS_PREFIX).removesuffix(OBJECT_SUFFIX).split("/")
        if len(parts) != 3 or parts[2].count("-") != 1:
            return None
        first, last = parts[2].split("-")
        return cls(parts[0], parts[1], first, last)

    def __str__(self) -> str:
        return f"{self.shard}:{self.first}-{self.last}"


def _rejected(where: str, reason: str, data: bytes) -> str:
    """The line quarantine takes for what is no event: why, and the data as text (base64 if
    binary), unless it carries PII, which no table may hold in clear."""
    if b'"pii"' in data:
        return json.dumps({REJECTED: f"Kinesis record {where}: {reason} (data withheld: it carries pii)"})
    try:
        shown = data.decode("utf-8")
    except UnicodeDecodeError:
        shown = "base64:" + base64.b64encode(data).decode()
    return json.dumps({REJECTED: f"Kinesis record {where}: {reason}", "data": shown[:10_000]})


def _event_lines(doc: object, where: str) -> list[str]:
    if isinstance(doc, list):
        if not doc:
            return [_rejected(where, "an empty JSON array", b"[]")]
        return [line for item in doc for line in _event_lines(item, where)]
    if not isinstance(doc, dict):
        return [_rejected(where, "a JSON value that is not an event object", json.dumps(doc).encode())]
    if "eventName" not in doc and "body" in doc:
        # The seed's Lambda puts the API Gateway event on the stream, the client's event in its
        # body: as the JSON text API Gateway gives, or already parsed (the seed's own code).
        body = doc["body"]
        if isinstance(body, str):
            try:
                body = json.loads(base64.b64decode(body) if doc.get("isBase64Encoded") else body)
            except ValueError:
                return [
                    _rejected(where, "an API Gateway event whose body is not JSON", json.dumps(doc).encode())
                ]
        if not isinstance(body, dict | list):
            return [
                _rejected(
                    where, "an API Gateway event whose body is not an event object", json.dumps(doc).encode()
                )
            ]
        return _event_lines(body, where)
    return [json.dumps(doc, separators=(",", ":"))]


def record_lines(data: bytes, where: str) -> list[str]:
    """The landing lines (one JSON event each) of one user record's data; `where` names the
    record (shard and sequence number) in the reason of a line quarantine will take."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return [_rejected(where, "gzip that does not decompress", data)]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [_rejected(where, "neither UTF-8 text, gzip nor a KPL aggregate", data)]
    if not text.strip():
        return [_rejected(where, "an empty record", data)]
    try:
        return _event_lines(json.loads(text), where)
    except ValueError:
        pass
    # Lines end at "\n" alone: JSON strings may hold U+2028 and the like, which
    # str.splitlines would also split at.
    lines = [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    if len(lines) > 1:
        # NDJSON: each line is an event, and a bad one is quarantined on its own.
        return [line for text_line in lines for line in _ndjson_line(text_line, where)]
    return [_rejected(where, "not JSON, NDJSON, gzip or a KPL aggregate", data)]


def _ndjson_line(line: str, where: str) -> list[str]:
    try:
        return _event_lines(json.loads(line), where)
    except ValueError:
        # Kept as it came: quarantine says why it does not parse.
        return [line]


def lines_of(records: Iterable[dict], shard: str) -> list[str]:
    """The landing lines of GetRecords' records, KPL aggregates unpacked into their user records."""
    # Here, not at the top: only the Kinesis sensor's ticks read records.
    from aws_kinesis_agg import MAGIC
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    lines: list[str] = []
    for record in records:
        data, sequence = record["Data"], record["SequenceNumber"]
        if not data.startswith(MAGIC):
            lines.extend(record_lines(data, f"{shard} {sequence}"))
            continue
        # A corrupt aggregate (its digest wrong) comes back whole, its data as it was, and is
        # rejected as binary; one whose records do not unpack yields none.
        users = list(iter_deaggregate_records([record], data_format="Boto3"))
        if not users:
            lines.append(_rejected(f"{shard} {sequence}", "a KPL aggregate that does not unpack", data))
        for user in users:
            unpacked = user["kinesis"]
            if unpacked.get("aggregated"):
                where = f"{shard} {sequence} sub-record {unpacked['subSequenceNumber']}"
                lines.extend(record_lines(base64.b64decode(unpacked["data"]), where))
            else:
                lines.extend(record_lines(unpacked["data"], f"{shard} {sequence}"))
    return lines


@dataclass
class ShardPosition:
    """Where a shard was read to: the last sequence number in a landing object (None before the
    first), and until when (epoch seconds) every record after it is known read: the last record's
    arrival, or a later read that found the shard's end."""

    after: str | None = None
    read_until: float = 0.0


@dataclass
class Positions:
    """Every shard's position, and the closed shards read to their end (their children may be read)."""

    shards: dict[str, ShardPosition] = field(default_factory=dict)
    drained: set[str] = field(default_factory=set)

    def to_json(self) -> dict:
        return {
            "shards": {shard: [p.after, p.read_until] for shard, p in sorted(self.shards.items())},
            "drained": sorted(self.drained),
        }

    @classmethod
    def from_json(cls, doc: dict | None) -> Positions:
        if not doc:
            return cls()
        return cls(
            {shard: ShardPosition(after, until) for shard, (after, until) in doc.get("shards", {}).items()},
            set(doc.get("drained", [])),
        )


@dataclass(frozen=True)
class Gap:
    """Records a shard may have lost to the stream's retention before they were read."""

    stream: str
    shard: str
    after: str | None  # the last sequence number read; None: the shard was never read
    before: str | None  # the oldest still there; None: the shard holds none
    since: float  # epoch seconds: records that arrived after this, and were trimmed, are lost

    @property
    def incident(self) -> str:
        return f"kinesis-gap/{stream_name(self.stream)}/{self.shard}/{self.after}"

    def __str__(self) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        after = f"after sequence number {self.after}" if self.after else "of a shard never read"
        oldest = f"the oldest left is {self.before}" if self.before else "it holds none now"
        return (
            f"{stream_name(self.stream)} {self.shard}: records {after} that arrived after {since} may "
            f"have been trimmed by the stream's retention before they were read ({oldest}): compare "
            "with what the producers sent"
        )


@dataclass
class Delivery:
    """What one tick read: the landing objects written (or found written by a tick cut short),
    each shard's iterator age, and the shards it could not read."""

    # Each names its shard and range (ShardRange.of_key).
    objects: list[LandedObject] = field(default_factory=list)
    iterator_age_ms: dict[str, int] = field(default_factory=dict)
    records: int = 0
    # Shards left for the next tick: busy (throttled), or failing on Kinesis's side.
    throttled: list[str] = field(default_factory=list)
    waiting_for_parents: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


class KinesisSource:
    """Reads a stream's shards into landing objects. `kinesis` and `s3` are boto3 clients."""

    def __init__(
        self,
        kinesis,
        s3,
        stream: str,
        bucket: str,
        max_records_per_shard: int = MAX_RECORDS_PER_SHARD,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        erased: ErasedPlayers = NOBODY_ERASED,
    ):
        self.kinesis, self.s3, self.stream, self.bucket = kinesis, s3, stream, bucket
        # Their events are left out of the objects (the records stay on the stream until its
        # retention trims them).
        self.erased = erased
        self.max_records_per_shard = max_records_per_shard
        self.clock, self.sleep = clock, sleep

    def _call(self, method: str, **kwargs) -> dict:
        try:
            return getattr(self.kinesis, method)(**stream_ref(self.stream), **kwargs)
        except ClientError as error:
            if error.response["Error"]["Code"] == "ResourceNotFoundException" and method != "get_records":
                raise StreamGone(
                    f"Kinesis stream {self.stream!r} is not there ({error.response['Error'].get('Message', '')}): "
                    "deleted or renamed? Point GAMING_PIPELINE_KINESIS_STREAM at the stream to read; its "
                    "positions are the objects under "
                    f"s3://{self.bucket}/{KINESIS_PREFIX}{stream_name(self.stream)}/"
                ) from error
            raise

    def shards(self) -> list[dict]:
        shards, token = [], None
        while True:
            page = self.kinesis.list_shards(NextToken=token) if token else self._call("list_shards")
            shards.extend(page["Shards"])
            token = page.get("NextToken")
            if not token:
                return sorted(shards, key=lambda shard: shard["ShardId"])

    def deliver(self, positions: Positions, deadline: float) -> Delivery:
        """Read every shard whose parents are read to their end, parents first, until the
        deadline (epoch seconds); `positions` moves on with each object written."""
        delivery = Delivery()
        shards = self.shards()
        listed = {shard["ShardId"] for shard in shards}
        retention = (
            self._call("describe_stream_summary")["StreamDescriptionSummary"]["RetentionPeriodHours"] * 3600
        )
        for shard in shards:
            shard_id = shard["ShardId"]
            if shard_id in positions.drained:
                continue
            parents = [shard.get("ParentShardId"), shard.get("AdjacentParentShardId")]
            # A parent no longer listed has aged out of the stream: nothing of it is left to
            # read, and what it held unread is lost.
            for parent in parents:
                if (
                    parent
                    and parent not in listed
                    and parent in positions.shards
                    and parent not in positions.drained
                ):
                    gone = positions.shards.pop(parent)
                    delivery.gaps.append(Gap(self.stream, parent, gone.after, None, gone.read_until))
            if any(parent in listed and parent not in positions.drained for parent in parents if parent):
                delivery.waiting_for_parents.append(shard_id)
                continue
            if self.clock() >= deadline:
                break
            self._read_shard(shard, positions, delivery, retention, deadline)
        # Closed shards aged out of the stream are no longer listed, nor remembered.
        positions.drained &= listed
        positions.shards = {shard: p for shard, p in positions.shards.items() if shard in listed}
        return delivery

    def _written(self, shard_id: str) -> ShardPosition:
        """A shard's position from the landing objects written of it: where a sensor whose
        cursor is new (or was reset) goes on from, rather than read the shard again."""
        last, written = None, 0.0
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=shard_prefix(self.stream, shard_id)
        ):
            for obj in page.get("Contents", []):
                taken = ShardRange.of_key(obj["Key"])
                if taken and (last is None or int(taken.last) > int(last)):
                    last, written = taken.last, obj["LastModified"].timestamp()
        return ShardPosition(last, written)

    def _oldest(self, shard_id: str) -> str | None:
        """The sequence number of the oldest record the shard still holds; None if it holds none
        (Kinesis may answer empty pages before the first record: they are paged through)."""
        iterator = self._call("get_shard_iterator", ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")
        iterator = iterator["ShardIterator"]
        while iterator:
            page = self.kinesis.get_records(ShardIterator=iterator, Limit=1)
            if page["Records"]:
                return page["Records"][0]["SequenceNumber"]
            if page.get("MillisBehindLatest", 0) == 0:
                return None
            iterator = page.get("NextShardIterator")
            self.sleep(GET_RECORDS_INTERVAL_SECONDS)
        return None

    def _trimmed(
        self, shard_id: str, position: ShardPosition, retention: float
    ) -> tuple[Gap | None, str | None]:
        """A gap, when records after the position may have aged out unread, and the oldest
        record left (to read on from). Only a position whose shard was not known read to its
        end for about the retention period can have one."""
        if (
            position.after is None
            or position.read_until > self.clock() - retention + RETENTION_MARGIN_SECONDS
        ):
            return None, None
        oldest = self._oldest(shard_id)
        if oldest is not None and int(oldest) <= int(position.after):
            return None, None
        return Gap(self.stream, shard_id, position.after, oldest, position.read_until), oldest

    def _read_shard(
        self, shard: dict, positions: Positions, delivery: Delivery, retention: float, deadline: float
    ) -> None:
        shard_id = shard["ShardId"]
        if shard_id not in positions.shards:
            positions.shards[shard_id] = self._written(shard_id)
        position = positions.shards[shard_id]
        sequence_range = shard.get("SequenceNumberRange", {})
        closed = "EndingSequenceNumber" in sequence_range
        records: list[dict] = []
        at_end = False  # the shard held nothing more when last read
        try:
            gap, oldest = self._trimmed(shard_id, position, retention)
            if gap:
                delivery.gaps.append(gap)
                # A tick cut short may have read past the gap already: the objects say how far.
                written = self._written(shard_id).after
                if written is not None and int(written) > int(position.after):
                    position.after = written
            start = (
                {"ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": oldest}
                if gap and oldest and int(oldest) > int(position.after)
                else {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": position.after}
                if position.after
                else {"ShardIteratorType": "TRIM_HORIZON"}
            )
            iterator: str | None = self._call("get_shard_iterator", ShardId=shard_id, **start)[
                "ShardIterator"
            ]
            while iterator and len(records) < self.max_records_per_shard and self.clock() < deadline:
                page = self.kinesis.get_records(
                    ShardIterator=iterator,
                    Limit=min(RECORDS_PER_CALL, self.max_records_per_shard - len(records)),
                )
                # Never behind the position: whatever the iterator, no record is taken twice.
                records.extend(
                    r
                    for r in page["Records"]
                    if position.after is None or int(r["SequenceNumber"]) > int(position.after)
                )
                delivery.iterator_age_ms[shard_id] = page.get("MillisBehindLatest", 0)
                iterator = page.get("NextShardIterator")
                at_end = iterator is None or (not page["Records"] and page.get("MillisBehindLatest", 0) == 0)
                if at_end:
                    break
                self.sleep(GET_RECORDS_INTERVAL_SECONDS)
        except ClientError as error:
            if not _passing(error):
                raise
            # boto3 has backed off and retried already: what was read is kept, the rest waits
            # for the next tick.
            delivery.throttled.append(shard_id)
            at_end = False
        self._stage_all(shard_id, records, position, delivery)
        if at_end:
            position.read_until = self.clock()
            if closed and (iterator is None or self._past_end(position, sequence_range)):
                positions.drained.add(shard_id)

    @staticmethod
    def _past_end(position: ShardPosition, sequence_range: dict) -> bool:
        """Whether a closed shard is read to its end though its iterator did not say so
        (Kinesis ends a closed shard's iterators; some emulators keep answering empty pages):
        the position at its last record, or the shard never held one."""
        ending = int(sequence_range["EndingSequenceNumber"])
        if position.after is not None:
            return int(position.after) >= ending
        return ending <= int(sequence_range.get("StartingSequenceNumber", ending))

    def _stage_all(
        self, shard_id: str, records: list[dict], position: ShardPosition, delivery: Delivery
    ) -> None:
        """Write the records read into landing objects, each naming at most
        MAX_SEGMENTS_PER_OBJECT ingest segments (objects_holding)."""
        while records:
            self._stage(shard_id, records[: objects_holding(records)], position, delivery)
            records = [record for record in records if int(record["SequenceNumber"]) > int(position.after)]

    def _stage(self, shard_id: str, records: list[dict], position: ShardPosition, delivery: Delivery) -> None:
        """Write the records into one landing object, unless a tick cut short wrote one from
        the same first record: that one stands, and the position moves to its last record."""
        first, last = records[0]["SequenceNumber"], records[-1]["SequenceNumber"]
        prefix = f"{shard_prefix(self.stream, shard_id)}{first}-"
        found = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1).get("Contents", [])
        if found:
            key, etag, size = found[0]["Key"], found[0]["ETag"], found[0]["Size"]
            last = ShardRange.of_key(key).last
            held = [record for record in records if int(record["SequenceNumber"]) <= int(last)]
        else:
            held = records
            lines = [line for line in lines_of(held, shard_id) if not self.erased.holds_line(line)]
            # Written even if every line was an erased player's: the object is the position.
            body = gzip.compress("".join(f"{line}\n" for line in lines).encode(), compresslevel=5)
            key = object_key(self.stream, shard_id, first, last)
            segments = segments_put(held)
            etag = self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                Metadata={
                    "kinesis-shard": shard_id,
                    "kinesis-records": str(len(held)),
                    **({SEGMENTS_METADATA: " ".join(segments)} if segments else {}),
                },
            )["ETag"]
            size = len(body)
        position.after = last
        position.read_until = max(position.read_until, held[-1]["ApproximateArrivalTimestamp"].timestamp())
        delivery.records += len(held)
        delivery.objects.append(LandedObject(self.bucket, key, etag.strip('"'), size))
