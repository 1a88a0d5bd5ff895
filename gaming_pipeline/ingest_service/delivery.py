"""A sealed spool segment becomes landing objects and PII vault records.

The same segment always gives the same objects under the same keys, byte for byte (gzip
without a timestamp), so a segment delivered twice, after a crash between writing its
objects and removing it, lands once: the second write replaces the first with the same
ETag, and ingestion's ledger skips an object it already holds at that ETag.

Keys follow Firehose's layout, by the UTC hour events were received:
`events/YYYY/MM/DD/HH/ingest-<spool>-<segment>.ndjson.gz`; events of a game the registry
does not know go under `unknown-games/` instead, which ingestion leaves alone. The segment's
PII goes to the vault as one object named as they are (`ingest-<spool>-<segment>`), however
many players it holds, so a player's PII is found from the objects their events landed in.

With `--sink kinesis` the events go on a Kinesis stream instead (StreamSink), as the seed's
Lambda puts them, named by the segment in every record's partition key; the PII still goes to
the vault first, and events of unknown games still land under `unknown-games/`.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from cryptography.exceptions import InvalidTag

from gaming_pipeline.ingest_service.spool import Progress, Record, SegmentUnreadable
from gaming_pipeline.lib.aws import ensure_bucket
from gaming_pipeline.lib.kinesis import entries_digest, put_entries, segment_entries
from gaming_pipeline.lib.pii import PiiVault
from gaming_pipeline.lib.pseudonyms import ErasedPlayers
from gaming_pipeline.lib.s3_events import INGEST_OBJECT_SUFFIX, PARKED_PREFIX, ingest_segment

EVENTS_PREFIX = "events/"
# Fast enough to keep up with the spool on one core; landing objects are read once.
GZIP_LEVEL = 6


def landing_objects(spool_id: str, segment_id: str, records: list[Record]) -> list[tuple[str, bytes, int]]:
    """(key, gzip NDJSON body, events) for each hour and kind of event in the segment."""
    lines: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for record in records:
        hour = datetime.fromtimestamp(record.received_at_ms / 1000, UTC).strftime("%Y/%m/%d/%H")
        if record.events:
            lines[(EVENTS_PREFIX, hour)].append(record.events)
        if record.parked:
            lines[(PARKED_PREFIX, hour)].append(record.parked)
    objects = []
    for (prefix, hour), chunks in sorted(lines.items()):
        body = b"".join(chunks)
        key = f"{prefix}{hour}/{ingest_segment(spool_id, segment_id)}{INGEST_OBJECT_SUFFIX}"
        objects.append((key, gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0), body.count(b"\n")))
    return objects


def pii_batches(vault: PiiVault, records: list[Record]) -> dict[str, list[dict]]:
    """Each player's PII records of the segment, opened from their spool sealing. A sealing
    that does not open was made under another pending key (another KMS MAC key or master key), or altered: SegmentUnreadable."""
    batches: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        received = datetime.fromtimestamp(record.received_at_ms / 1000, UTC).isoformat(
            timespec="milliseconds"
        )
        for player, event_id, sealed in record.pii:
            try:
                pii = vault.open_pending(player, sealed)
            except InvalidTag:
                raise SegmentUnreadable(
                    f"the PII of event {event_id} does not open with the current pending key"
                ) from None
            batches[player].append({"event_id": event_id, "received_at": received, "pii": pii})
    return batches


def _lines_kept(lines: bytes, erased: ErasedPlayers) -> tuple[bytes, int]:
    """NDJSON lines without those of erased players, and how many those were."""
    kept = [line for line in lines.splitlines(keepends=True) if not erased.holds_line(line)]
    return b"".join(kept), lines.count(b"\n") - len(kept)


def without_erased(records: list[Record], erased: ErasedPlayers) -> tuple[list[Record], int]:
    """The records without the events and PII of players erased since they were accepted
    (the service refuses an erased player's events from the delivery after the erasure on,
    and these were in the spool by then); and how many events that took out."""
    if not erased.player_ids:
        return records, 0
    kept, dropped = [], 0
    for record in records:
        events, dropped_events = _lines_kept(record.events, erased)
        parked, dropped_parked = _lines_kept(record.parked, erased)
        pii = [entry for entry in record.pii if entry[0] not in erased.player_ids]
        dropped += dropped_events + dropped_parked
        kept.append(msgspec.structs.replace(record, events=events, parked=parked, pii=pii))
    return kept, dropped


@dataclass
class Delivered:
    objects: int
    events: int
    players: int
    # Events of players erased while they waited in the spool: dropped, not delivered.
    events_of_erased: int = 0
    # Records a Kinesis stream acknowledged (`--sink kinesis`).
    stream_records: int = 0


@dataclass
class StreamSink:
    """`--sink kinesis`: a segment's events go on the stream, PutRecords, a record for each
    device's events (lib/kinesis.segment_entries), each put once: what the stream acknowledged
    is kept in the spool (Progress), and a delivery that failed goes on from there."""

    kinesis: object
    stream: str
    progress: Callable[[str], Progress]
    # Records refused this long (a stream under-provisioned for the load, a key it may not
    # use): the delivery fails, and the spool holds the segment and tries again later.
    patience_seconds: float = 20.0

    def put(
        self, segment: str, segment_id: str, records: list[Record], erased: ErasedPlayers
    ) -> tuple[int, int]:
        """(records put, events in them). The records are made from the segment as it was
        spooled, so they are the same at every attempt; those of players erased since are
        left out."""
        lines = [line for record in records for line in record.events.splitlines(keepends=True)]
        entries = segment_entries(segment, lines)
        # An entry is one device's lines: its first line says whose.
        left_out = {
            index
            for index, entry in enumerate(entries)
            if erased.holds_line(entry["Data"].split(b"\n", 1)[0])
        }
        progress = self.progress(segment_id)
        put_entries(
            self.kinesis,
            self.stream,
            entries,
            put_before=progress.of(entries_digest(entries)) | left_out,
            acknowledged=progress.add,
            patience=self.patience_seconds,
        )
        put = [entry for index, entry in enumerate(entries) if index not in left_out]
        return len(put), sum(entry["Data"].count(b"\n") for entry in put)


@dataclass
class Delivery:
    """Writes a segment to the landing bucket (or its events to a stream) and its PII to the vault."""

    s3: object
    landing_bucket: str
    vault: PiiVault
    spool_id: str
    sink: StreamSink | None = None
    # The vault's bucket is created on first use, not at start: S3 may be down then.
    vault_ready: bool = False
    # The erased-players list as the last delivery read it; requests are checked against it.
    erased: ErasedPlayers | None = None

    def __call__(self, segment_id: str, records: list[Record]) -> Delivered:
        # Read for every segment: what reaches the landing bucket is checked against the
        # list as it is now, whatever the requests were checked against.
        self.erased = self.vault.erased()
        carries_pii = any(record.pii for record in records)
        kept, events_of_erased = without_erased(records, self.erased)
        # PII first: an event in the landing bucket always has its PII in the vault.
        batches = pii_batches(self.vault, kept)
        # Stored even when every player with PII was erased meanwhile: an earlier delivery of
        # the segment (before a crash) may have sealed theirs.
        segment = ingest_segment(self.spool_id, segment_id)
        if carries_pii:
            if not self.vault_ready:
                ensure_bucket(self.s3, self.vault.bucket)
                self.vault_ready = True
            self.vault.store(segment, batches)
        stream_records = streamed = 0
        if self.sink is not None:
            stream_records, streamed = self.sink.put(segment, segment_id, records, self.erased)
            # What is left to land: the events of games the registry does not know yet.
            kept = [msgspec.structs.replace(record, events=b"") for record in kept]
        objects = landing_objects(self.spool_id, segment_id, kept)
        for key, body, _ in objects:
            self.s3.put_object(Bucket=self.landing_bucket, Key=key, Body=body)
        return Delivered(
            len(objects),
            streamed + sum(events for _, _, events in objects),
            len(batches),
            events_of_erased,
            stream_records,
        )
