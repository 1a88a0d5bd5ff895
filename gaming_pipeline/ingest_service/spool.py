"""The write-ahead spool: an accepted request is on disk, fsynced, before it is answered.

Requests append framed records (length, CRC-32, msgpack payload) to the open segment; one
writer thread writes whatever requests are waiting and fsyncs once for all of them (group
commit), so many small requests share a disk flush. A segment is sealed when it reaches the
flush size or age, as Firehose's buffer is; a flusher thread delivers each sealed segment
(to S3 and the PII vault) and only then removes it. Delivery is idempotent: a segment always
becomes the same objects under the same keys, so delivering it again after a crash (the
objects written, the segment not yet removed) overwrites them with the same bytes.

A request is acknowledged only once its bytes are fsynced in a live segment whose name is
durable too (the folder fsynced after the segment was made or renamed). Every step of the
writer changes the spool's state only after it succeeded on disk; after a failure the open
segment is cut back to its acknowledged bytes, or, if that fails, retired: never appended to
again, and sealed from its name once the disk lets it. Until the spool is consistent again it
refuses records (503) and retries; a segment once renamed to sealed is never written to.

After a crash the open segment is cut back to its last whole record (a torn tail was never
acknowledged: its fsync had not returned) and sealed, and delivery carries on. The client
event_ids of delivered segments are kept for the duplicate window in small `.ids` files.

A segment that can never be delivered (its records do not decode, its PII does not open with
the current pending key) is parked apart with its reason, and delivery goes on with the rest;
a segment that fails for a reason that may pass (S3 unreachable) is retried, oldest first.

Files in the spool folder:
- `instance`: this spool's id, part of every object key; `lock`: held by the running service.
- `open-<id>.wal`: the segment being written (at most one, and after a disk error, retired
  ones waiting to be sealed).
- `sealed-<id>.wal`: whole records waiting for delivery, removed once delivered.
- `parked-<id>.wal` and `parked-<id>.reason`: a segment delivery gave up on, and why; kept
  for an operator, never delivered or counted as waiting.
- `done-<id>.ids`: client event_ids of a delivered segment, for the duplicate window.
- `put-<id>.json`: the records of a segment a Kinesis stream acknowledged already, while its
  delivery is under way (Progress): a stream cannot be written twice harmlessly, as S3 can.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import queue
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from pathlib import Path

import msgspec

log = logging.getLogger("gaming_pipeline.ingest_service")

_FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload


class Record(msgspec.Struct, array_like=True):
    """One accepted request (or the accepted part of it)."""

    received_at_ms: int
    events: bytes  # landing lines, NDJSON
    parked: bytes  # lines of games the registry does not know, NDJSON
    pii: list[tuple[str, str, bytes]]  # (player id, event id, PII sealed with the spool key)
    client_ids: list[str]


_encode = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(Record).decode
_ids = msgspec.json.Decoder(list[tuple[str, int]])


class SpoolFull(RuntimeError):
    """The spool holds as much as it may: the client is told to retry (503)."""


class SpoolBusy(RuntimeError):
    """Another process holds this spool."""


class SegmentUnreadable(ValueError):
    """A segment that can never be delivered as it is (corrupt, another format, PII sealed
    under another pending key): it is parked, not retried."""


def frame(record: Record) -> bytes:
    payload = _encode(record)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> tuple[list[Record], int]:
    """The whole records of a segment, and the length they fill: a torn or corrupt tail
    (a write the crash interrupted) ends the segment. A whole record (its CRC right) that is
    not a Record is another format: SegmentUnreadable."""
    data = path.read_bytes()
    records, offset = [], 0
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        start, end = offset + _FRAME.size, offset + _FRAME.size + length
        if end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        try:
            records.append(_decode_record(data[start:end]))
        except msgspec.DecodeError as error:
            raise SegmentUnreadable(f"the record at byte {offset:,} does not decode: {error}") from None
        offset = end
    return records, offset


def read_sealed(path: Path) -> list[Record]:
    """The records of a sealed segment, which holds whole records only: any other byte is
    corruption, and delivering the records before it would drop the ones after it."""
    records, length = read_records(path)
    size = path.stat().st_size
    if length != size:
        raise SegmentUnreadable(f"bytes {length:,} to {size:,} of the segment are not whole records")
    return records


def _write_durably(path: Path, data: bytes) -> None:
    """Write a whole file or none of it: a partial file, fsynced, then renamed into place."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(partial, path)
    _fsync_dir(path.parent)


def _truncate_durably(path: Path, size: int) -> None:
    descriptor = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(descriptor, size)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _Put(msgspec.Struct):
    records: str  # digest of the records the segment was made into
    acknowledged: list[int]


_put = msgspec.json.Decoder(_Put)


class Progress:
    """What one segment's delivery to a Kinesis stream got in before it failed or the process
    stopped, durably: the indices of the records the stream acknowledged, and a digest of the
    records they index. Kinesis takes a record put twice twice, so the next delivery of the
    segment puts only the others."""

    def __init__(self, path: Path):
        self.path = path
        saved = _put.decode(path.read_bytes()) if path.exists() else None
        self.records = saved.records if saved else None
        self.done: set[int] = set(saved.acknowledged) if saved else set()

    def of(self, records: str) -> set[int]:
        """The indices acknowledged of the records whose digest is `records`. A delivery
        under way that made other records of the segment (a service of another version):
        SegmentUnreadable, as putting these could put some twice and leave others out."""
        if self.records is not None and self.records != records:
            raise SegmentUnreadable(
                f"it was partly put on the stream as other records than this service makes of it "
                f"({self.path.name} says which): putting it again could duplicate or skip events"
            )
        self.records = records
        return self.done

    def add(self, indices: list[int]) -> None:
        self.done.update(indices)
        _write_durably(self.path, msgspec.json.encode(_Put(self.records or "", sorted(self.done))))


class RecentIds:
    """Client event_ids accepted within the window, oldest forgotten first; bounded. An id
    whose request is still being written is held apart, with the write's future, so that a
    copy of it arriving meanwhile can wait for the outcome instead of being taken on trust."""

    def __init__(self, window_seconds: float, max_ids: int):
        self.window_ms = int(window_seconds * 1000)
        self.max_ids = max_ids
        self._expiry: dict[str, int] = {}
        # The ids in the order they came, and their expiry times: two deques, not one of
        # pairs, so that a request's ids are added without a Python loop or a tuple an id.
        self._order_ids: deque[str] = deque()
        self._order_expiry: deque[int] = deque()
        self._writing: dict[str, Future] = {}

    def _forget_expired(self, now_ms: int) -> None:
        ids, expiries, expiry = self._order_ids, self._order_expiry, self._expiry
        while expiries and (expiries[0] <= now_ms or len(expiry) > self.max_ids):
            at, event_id = expiries.popleft(), ids.popleft()
            if expiry.get(event_id) == at:
                del expiry[event_id]

    def seen(self, event_id: str, now_ms: int) -> bool:
        if event_id in self._writing:
            return True
        expires = self._expiry.get(event_id)
        return expires is not None and expires > now_ms

    def writing(self, event_id: str) -> Future | None:
        """The write of the request that has this id, while it is not settled."""
        return self._writing.get(event_id)

    def hold(self, event_ids: list[str], write: Future) -> None:
        self._writing.update(dict.fromkeys(event_ids, write))

    def settle(self, event_ids: list[str], accepted_at_ms: int, stored: bool) -> None:
        """The write ended: stored ids are remembered for the window, others let go."""
        for event_id in event_ids:
            self._writing.pop(event_id, None)
        if stored:
            self.add(event_ids, accepted_at_ms)

    def add(self, event_ids: list[str], accepted_at_ms: int) -> None:
        expires = accepted_at_ms + self.window_ms
        self._expiry.update(dict.fromkeys(event_ids, expires))
        self._order_ids.extend(event_ids)
        self._order_expiry.extend(itertools.repeat(expires, len(event_ids)))
        self._forget_expired(accepted_at_ms)

    def __len__(self) -> int:
        return len(self._expiry)


class Spool:
    """Segments on disk between the HTTP answer and the landing bucket."""

    def __init__(
        self,
        directory: Path,
        deliver: Callable[[str, list[Record]], None],
        flush_bytes: int,
        flush_seconds: float,
        max_bytes: int,
        recent: RecentIds,
    ):
        self.directory = directory
        self.deliver = deliver
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        self.max_bytes = max_bytes
        self.recent = recent
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(directory / "lock", "w")  # noqa: SIM115 - held for the spool's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolBusy(f"another ingest-server is using the spool {directory}") from None
        instance_file = directory / "instance"
        if not instance_file.exists():
            instance_file.write_text(secrets.token_hex(4))
        self.instance = instance_file.read_text().strip()

        self._pending: queue.Queue = queue.Queue()
        # Set when a segment is sealed; an Event, so that one sealed while the flusher is busy
        # is not missed (shutdown would wait for the flusher's poll).
        self._sealed = threading.Event()
        self._stopping = threading.Event()
        self._open: tuple[str, int] | None = None  # (segment id, file descriptor)
        self._open_since = 0.0
        self._open_hour = 0
        self._open_size = 0  # bytes of the open segment that are acknowledged (fsynced)
        # Segments closed for writing whose rename to sealed is still owed: (id, acknowledged bytes).
        self._retired: list[tuple[str, int]] = []
        self._folder_unsynced = False  # a segment was made or renamed since the folder's last fsync
        # Why the spool refuses records until the writer has made the disk consistent again.
        self.fault: str | None = None
        self._close_deadline = 0.0
        self._last_id = 0
        # Bytes accepted and not yet delivered; the request, writer and flusher threads all
        # change it.
        self._bytes_lock = threading.Lock()
        self.pending_bytes = 0
        self.last_failure: str | None = None
        self.recover()
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._flusher = threading.Thread(target=self._flush_loop, name="spool-flusher", daemon=True)

    # -- start-up ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Seal what a crash left open, and remember the ids of what is still held or was
        delivered within the window."""
        now_ms = int(time.time() * 1000)
        for path in sorted(self.directory.glob("open-*.wal")):
            try:
                records, length = read_records(path)
            except SegmentUnreadable as error:
                self._park(path, str(error))
                continue
            if length < path.stat().st_size:
                log.warning(
                    "spool segment %s: cut a torn tail of %d bytes", path.name, path.stat().st_size - length
                )
                with open(path, "r+b") as segment:
                    segment.truncate(length)
                    os.fsync(segment.fileno())
            if records:
                path.rename(path.with_name(path.name.replace("open-", "sealed-", 1)))
            else:
                path.unlink()
        _fsync_dir(self.directory)
        for path in self.sealed_segments():
            try:
                records = read_sealed(path)
            except SegmentUnreadable as error:
                self._park(path, str(error))
                continue
            self._count(path.stat().st_size)
            for record in records:
                self.recent.add(record.client_ids, record.received_at_ms)
        for path in self.directory.glob("*.partial"):
            path.unlink()
        for path in self.directory.glob("put-*.json"):
            segment_id = path.stem.split("-", 1)[1]
            if not any(
                (self.directory / f"{kind}-{segment_id}.wal").exists() for kind in ("sealed", "parked")
            ):
                path.unlink()
        for path in sorted(self.directory.glob("done-*.ids")):
            try:
                ids = _ids.decode(path.read_bytes())
            except msgspec.DecodeError:
                log.warning("spool: %s is unreadable; the duplicate window forgets its ids", path.name)
                ids = []
            remembered = [(i, at) for i, at in ids if at + self.recent.window_ms > now_ms]
            if not remembered:
                path.unlink()
            for event_id, at in remembered:
                self.recent.add([event_id], at)
        names = [p.name for p in self.directory.iterdir() if p.name.endswith((".wal", ".ids"))]
        self._last_id = max((int(n.split("-")[1].split(".")[0]) for n in names), default=0)

    def _count(self, size: int) -> None:
        with self._bytes_lock:
            self.pending_bytes += size

    def start(self) -> Spool:
        self._writer.start()
        self._flusher.start()
        return self

    # -- the request side -------------------------------------------------------------------

    def submit(self, record: Record) -> Future:
        """Queue a record for the next group commit; the future resolves once it is on disk."""
        framed = frame(record)
        if self.pending_bytes + len(framed) > self.max_bytes:
            raise SpoolFull(f"the spool holds {self.pending_bytes:,} of {self.max_bytes:,} bytes")
        if self._stopping.is_set():
            raise SpoolFull("the service is shutting down")
        if not self._writer.is_alive():
            raise SpoolFull("the spool writer has stopped: see the service's log")
        if self.fault is not None:
            raise SpoolFull(f"the spool is recovering from a disk error: {self.fault}")
        self._count(len(framed))
        done: Future = Future()
        self._pending.put((framed, record.received_at_ms, done))
        return done

    def can_accept(self, size: int) -> bool:
        writing = self._writer.is_alive() and not self._stopping.is_set() and self.fault is None
        return writing and self.pending_bytes + size <= self.max_bytes

    def _progress_file(self, segment_id: str) -> Path:
        return self.directory / f"put-{segment_id}.json"

    def progress(self, segment_id: str) -> Progress:
        return Progress(self._progress_file(segment_id))

    def sealed_segments(self) -> list[Path]:
        return sorted(self.directory.glob("sealed-*.wal"))

    def parked_segments(self) -> list[Path]:
        """Segments delivery gave up on, each with a `.reason` file beside it."""
        return sorted(self.directory.glob("parked-*.wal"))

    # -- the writer thread ------------------------------------------------------------------

    def _new_segment_id(self) -> str:
        # Time-ordered and never reused, so keys made from it are unique for this spool.
        self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
        return f"{self._last_id:017d}"

    def _open_segment(self, hour: int) -> None:
        segment_id = self._new_segment_id()
        # A raw descriptor: no buffer that could write a failed batch's bytes later.
        descriptor = os.open(
            self.directory / f"open-{segment_id}.wal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        self._open = (segment_id, descriptor)
        self._open_since = time.monotonic()
        self._open_hour = hour
        self._open_size = 0
        self._folder_unsynced = True

    def _sync_folder(self) -> None:
        """Make the folder's names durable; nothing is acknowledged while they may not be."""
        if self._folder_unsynced:
            _fsync_dir(self.directory)
            self._folder_unsynced = False

    def _write(self, batch: list[tuple[bytes, int, Future]]) -> None:
        """Append and fsync a batch, then acknowledge it; an OSError is raised to the loop,
        which fails the batch's requests (503) and puts the spool right."""
        live = []
        for framed, at, done in batch:
            # A request cancelled while it waited (its client gone at shutdown) is not written.
            if done.set_running_or_notify_cancel():
                live.append((framed, at, done))
            else:
                self._count(-len(framed))
        if not live:
            return
        if self._open is None:
            self._open_segment(live[0][1] // 3_600_000)
        descriptor = self._open[1]
        data = memoryview(b"".join(framed for framed, _, _ in live))
        while data:
            data = data[os.write(descriptor, data) :]
        os.fsync(descriptor)
        self._sync_folder()
        self._open_size += sum(len(framed) for framed, _, _ in live)
        for _, _, done in live:
            done.set_result(None)

    def _retire_open(self) -> None:
        """Close the open segment for good: whatever happens next, nothing is appended to it,
        and it is sealed from its name (now, or once the disk lets it)."""
        segment_id, descriptor = self._open
        self._open = None
        self._retired.append((segment_id, self._open_size))
        with suppress(OSError):  # its acknowledged bytes are fsynced already
            os.close(descriptor)

    def _seal_retired(self) -> None:
        """Cut each retired segment to its acknowledged bytes and rename it to sealed (an
        empty one is removed), then make the names durable."""
        while self._retired:
            segment_id, size = self._retired[0]
            path, sealed = (self.directory / f"{state}-{segment_id}.wal" for state in ("open", "sealed"))
            if size == 0:
                path.unlink(missing_ok=True)
            elif not sealed.exists():  # a rename reported failed may have happened all the same
                if path.stat().st_size != size:
                    _truncate_durably(path, size)
                os.rename(path, sealed)
            self._retired.pop(0)
            self._folder_unsynced = True
        self._sync_folder()
        self._sealed.set()

    def _seal(self) -> None:
        self._retire_open()
        self._seal_retired()

    def _seal_if_due(self, force: bool = False) -> None:
        if self._open is None:
            return
        hour_changed = int(time.time() * 1000) // 3_600_000 != self._open_hour
        if (
            force
            or hour_changed
            or self._open_size >= self.flush_bytes
            or time.monotonic() - self._open_since >= self.flush_seconds
        ):
            self._seal()

    def _repair(self) -> None:
        """Bring the disk back to the spool's state after a failed step: the open segment holds
        its acknowledged bytes and no more (or is retired if it cannot be cut back), retired
        segments are sealed, the folder's names are durable. Raises OSError while it cannot."""
        if self._open is not None:
            descriptor = self._open[1]
            try:
                os.ftruncate(descriptor, self._open_size)
                os.fsync(descriptor)
            except OSError as error:
                log.error("spool segment %s cannot be cut back (%s): it is retired", self._open[0], error)
                self._retire_open()
        self._seal_retired()

    def _restore(self) -> None:
        """Repair, and refuse records for as long as repairing fails."""
        try:
            self._repair()
        except OSError as error:
            if self.fault is None:
                log.error("spool: refusing events until the disk recovers: %s", error)
            self.fault = f"{type(error).__name__}: {error}"
            return
        if self.fault is not None:
            log.warning("spool: consistent again, taking events")
            self.fault = None

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            try:
                batch = [self._pending.get(timeout=0.05)]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in batch)
            batch = [item for item in batch if item is not None]
            if self.fault is not None:
                self._restore()
            try:
                if batch:
                    # Records of another hour start a new segment: an object never spans hours.
                    if self._open is not None and batch[0][1] // 3_600_000 != self._open_hour:
                        self._seal()
                    self._write(batch)
                self._seal_if_due(force=stop)
            except Exception as error:  # the thread every request waits on must not end
                log.warning("spool writer: %s: %s", type(error).__name__, error)
                for framed, _, done in batch:
                    if not done.done():
                        self._count(-len(framed))
                        done.set_exception(error)
                self._restore()
        # Stopping: a retired segment left unsealed is sealed by the next start's recovery.
        while self.fault is not None and time.monotonic() < self._close_deadline:
            time.sleep(0.1)
            self._restore()

    # -- the flusher thread -----------------------------------------------------------------

    def _deliver_one(self, path: Path) -> None:
        records = read_sealed(path)
        segment_id = path.stem.split("-", 1)[1]
        self.deliver(segment_id, records)
        ids = [(i, r.received_at_ms) for r in records for i in r.client_ids]
        if ids:
            _write_durably(self.directory / f"done-{segment_id}.ids", msgspec.json.encode(ids))
        size = path.stat().st_size
        path.unlink()
        self._count(-size)
        _fsync_dir(self.directory)
        # After the segment: a crash between the two leaves a progress file of no segment,
        # which recover() removes, never a segment without its progress.
        self._progress_file(segment_id).unlink(missing_ok=True)

    def deliver_pending(self) -> int:
        """Deliver every sealed segment, oldest first, parking those that can never be
        delivered; stops at the first other failure (raised: S3 may be back later)."""
        delivered = 0
        for path in self.sealed_segments():
            try:
                self._deliver_one(path)
            except SegmentUnreadable as error:
                size = path.stat().st_size
                self._park(path, str(error))
                self._count(-size)
                continue
            delivered += 1
        return delivered

    def _park(self, path: Path, reason: str) -> None:
        """Set a segment apart with its reason, durably; it is kept for an operator."""
        segment_id = path.stem.split("-", 1)[1]
        _write_durably(self.directory / f"parked-{segment_id}.reason", reason.encode() + b"\n")
        os.rename(path, self.directory / f"parked-{segment_id}.wal")
        _fsync_dir(self.directory)
        log.error(
            "spool segment %s cannot be delivered, parked as parked-%s.wal: %s", path.name, segment_id, reason
        )

    def _flush_loop(self) -> None:
        backoff = 0.5
        while not (self._stopping.is_set() and not self._writer.is_alive() and not self.sealed_segments()):
            self._sealed.clear()
            try:
                if self.deliver_pending():
                    self.last_failure = None
                    backoff = 0.5
            except Exception as error:  # S3 or the vault unreachable: the spool holds, retry later.
                self.last_failure = f"{type(error).__name__}: {error}"
                log.warning("delivery failed, retrying in %.1f s: %s", backoff, self.last_failure)
                if self._stopping.is_set() and not self._writer.is_alive():
                    return
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self._forget_old_ids()
            if not (self._stopping.is_set() and not self._writer.is_alive()):
                self._sealed.wait(timeout=0.5)

    def _forget_old_ids(self) -> None:
        # By the time the file was written, which is after its newest event was received.
        cutoff = time.time() - self.recent.window_ms / 1000
        for path in self.directory.glob("done-*.ids"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)

    # -- shutdown ---------------------------------------------------------------------------

    def close(self, timeout: float) -> None:
        """Stop taking records, seal the open segment and deliver what is sealed, for up to
        `timeout` seconds; what is left stays on disk for the next start."""
        self._close_deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._writer.ident is not None:  # started
            self._pending.put(None)
            self._writer.join()
            self._sealed.set()
            self._flusher.join(timeout)
        left = len(self.sealed_segments()) + len(list(self.directory.glob("open-*.wal")))
        if left:
            log.warning("stopped with %d segment(s) still in the spool", left)
        if self.parked_segments():
            log.error(
                "%d segment(s) are parked in the spool: see their .reason files", len(self.parked_segments())
            )
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
