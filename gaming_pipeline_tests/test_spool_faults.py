"""The spool under disk faults: a real Spool on a temporary folder, its writer's system calls
made to fail at each step. Whatever fails, every acknowledged record is delivered exactly
once, a sealed segment is never appended to, and the spool refuses records while it is not
consistent. Segments that can never be delivered are parked and the rest go on."""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from gaming_pipeline.ingest_service.delivery import pii_batches
from gaming_pipeline.ingest_service.spool import RecentIds, Record, Spool, SpoolFull, frame
from gaming_pipeline.lib.pii import LocalKeys, PiiVault, new_master_key
from gaming_pipeline_tests.service_helpers import wait_until

pytestmark = pytest.mark.unit

RECORD = len(frame(Record(0, b'{"n":0}\n', b"", [], ["e000"])))


@dataclass
class Fault:
    """The `nth` to `nth + times - 1`th calls of `syscall` by the spool's writer fail, before
    the call or after it did its work (`after`); `times=None` fails until released."""

    syscall: str
    nth: int
    times: int | None = 1
    after: bool = False
    calls: int = 0
    released: bool = False

    def failing(self) -> bool:
        self.calls += 1
        last = self.nth + self.times if self.times is not None else float("inf")
        return not self.released and self.nth <= self.calls < last


def inject(monkeypatch, *faults: Fault) -> None:
    for fault in faults:
        real = getattr(os, fault.syscall)
        code = errno.EMFILE if fault.syscall == "open" else errno.EIO

        def failing_call(*args, _real=real, _fault=fault, _code=code, **kwargs):
            if threading.current_thread().name != "spool-writer" or not _fault.failing():
                return _real(*args, **kwargs)
            if _fault.after:
                _real(*args, **kwargs)
            raise OSError(_code, f"injected {_fault.syscall} failure")

        monkeypatch.setattr(os, fault.syscall, failing_call)


@dataclass
class Run:
    """A started spool whose deliveries are recorded, and what it acknowledged."""

    directory: Path
    delivered: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    sealed_sizes: dict[str, int] = field(default_factory=dict)
    running: Spool | None = None

    def spool(self) -> Spool:
        def deliver(segment_id: str, records: list[Record]) -> None:
            self.delivered.extend(i for r in records for i in r.client_ids)

        # Two records to a segment, so that segments are sealed while records are written.
        recent = RecentIds(window_seconds=60, max_ids=1000)
        return Spool(self.directory, deliver, 2 * RECORD, 3600, 1 << 30, recent)

    def submit(self, spool: Spool, n: int) -> None:
        """Submit until the spool takes the record, then wait for its outcome."""
        event_id = f"e{n:03d}"
        record = Record(int(time.time() * 1000), b'{"n":%d}\n' % n, b"", [], [event_id])
        deadline = time.monotonic() + 10
        while True:
            try:
                written: Future = spool.submit(record)
                break
            except SpoolFull:
                assert spool.fault is not None and not spool.can_accept(RECORD)
                assert time.monotonic() < deadline, "the spool never took records again"
                time.sleep(0.02)
        try:
            written.result(timeout=10)
            self.acknowledged.append(event_id)
        except OSError:
            self.failed.append(event_id)
        self.check_sealed_never_grow()

    def check_sealed_never_grow(self) -> None:
        for path in self.directory.glob("sealed-*.wal"):
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # delivered meanwhile
                continue
            assert self.sealed_sizes.setdefault(path.name, size) == size, f"{path.name} was appended to"

    def finish(self) -> None:
        """Close, start again (which seals what the first run left open) and deliver all."""
        self.close()
        again = self.spool()
        again.deliver_pending()
        again.close(timeout=1)
        assert sorted(set(self.delivered)) == sorted(self.delivered), "a record was delivered twice"
        assert set(self.acknowledged) <= set(self.delivered), "an acknowledged record was lost"
        assert set(self.delivered) <= set(self.acknowledged) | set(self.failed)
        assert not list(self.directory.glob("*.wal")) and again.pending_bytes == 0

    def close(self) -> None:
        if self.running is not None:
            self.running.close(timeout=5)
            self.running = None

    def start(self) -> Spool:
        self.running = self.spool().start()
        return self.running

    def run(self, records: int) -> None:
        spool = self.start()
        for n in range(records):
            self.submit(spool, n)


@pytest.fixture
def run(tmp_path):
    run = Run(tmp_path)
    yield run
    run.close()  # if the test failed before it did


STEPS = [
    # A new segment cannot be made (no descriptor left).
    *(Fault("open", nth) for nth in (1, 2)),
    # The records cannot be written, or are written and reported failed (a torn write).
    *(Fault("write", nth, after=after) for nth in (1, 2) for after in (False, True)),
    # fsync: 1 the records of a new segment, 2 the folder after creating it, 3 records
    # appended, 4 the folder after the rename to sealed.
    *(Fault("fsync", nth, after=after) for nth in (1, 2, 3, 4) for after in (False, True)),
    *(Fault("rename", 1, after=after) for after in (False, True)),
    Fault("close", 1, after=True),
]


def _name(fault: Fault) -> str:
    return f"{fault.syscall}{fault.nth}{'-after' if fault.after else ''}"


@pytest.mark.parametrize("times", [1, 3])
@pytest.mark.parametrize("step", STEPS, ids=_name)
def test_a_fault_at_any_step_never_loses_an_acknowledged_record(run, monkeypatch, step, times):
    step.times = times
    inject(monkeypatch, step)
    run.run(records=9)
    assert step.calls >= step.nth, "the fault was never reached"
    monkeypatch.undo()
    run.finish()
    assert len(run.acknowledged) >= 9 - times


@pytest.mark.parametrize("times", [1, 3])
def test_a_segment_that_cannot_be_cut_back_after_a_torn_write_is_sealed_without_the_tail(
    run, monkeypatch, times
):
    torn, cut = Fault("write", 2, after=True), Fault("ftruncate", 1, times)
    inject(monkeypatch, torn, cut)
    run.run(records=6)
    assert cut.calls >= 1 and run.failed == ["e001"]
    monkeypatch.undo()
    run.finish()
    assert "e001" not in run.delivered


def test_the_spool_refuses_records_while_the_folder_cannot_be_synced_after_a_seal(run, monkeypatch):
    """The issue's case: the folder's fsync fails after the rename to sealed (no descriptor
    left to open it); the spool must neither append to the renamed file nor take records."""
    folder_sync = Fault("open", 3, times=None)  # 1, 2: the first segment and its folder fsync
    inject(monkeypatch, folder_sync)
    spool = run.start()
    run.submit(spool, 0)
    run.submit(spool, 1)  # fills the segment: sealing it fails after the rename
    wait_until(lambda: not spool.can_accept(RECORD), 5, "the spool to refuse records")
    with pytest.raises(SpoolFull):
        spool.submit(Record(0, b"{}\n", b"", [], ["e999"]))
    # Delivery goes on meanwhile: the sealed segment is delivered and removed.
    wait_until(lambda: not spool.sealed_segments(), 5, "the sealed segment to be delivered")
    folder_sync.released = True
    wait_until(lambda: spool.can_accept(RECORD), 5, "the spool to take records again")
    for n in range(2, 7):
        run.submit(spool, n)
    run.finish()
    assert run.acknowledged == [f"e{n:03d}" for n in range(7)]


# -- segments that cannot be delivered -------------------------------------------------------


def _segment(directory: Path, segment_id: int, *records: Record) -> Path:
    path = directory / f"sealed-{segment_id:017d}.wal"
    path.write_bytes(b"".join(frame(r) for r in records))
    return path


def test_a_segment_that_cannot_be_delivered_is_parked_and_the_rest_delivered(tmp_path):
    vault = PiiVault(None, "pii", LocalKeys(new_master_key()))
    other_key = PiiVault(None, "pii", LocalKeys(new_master_key()))

    def pii_record(event_id: str, sealer: PiiVault) -> Record:
        player = sealer.player_id(f"device-{event_id}")
        return Record(
            1000, b'{"e":1}\n', b"", [(player, event_id, sealer.seal_pending(player, {"ip": "x"}))], []
        )

    _segment(tmp_path, 1, pii_record("a", vault))
    _segment(tmp_path, 2, pii_record("b", other_key))  # the master key has changed since
    (tmp_path / f"sealed-{3:017d}.wal").write_bytes(b"\x00garbage, not framed records" * 3)
    # A whole record, its CRC right, of a format this version does not read.
    payload = msgspec.msgpack.encode({"a format": "of another version"})
    (tmp_path / f"sealed-{4:017d}.wal").write_bytes(
        struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    )
    _segment(tmp_path, 5, pii_record("c", vault))
    delivered: list[str] = []

    def deliver(segment_id: str, records: list[Record]) -> None:
        batches = pii_batches(vault, records)
        delivered.extend(e["event_id"] for batch in batches.values() for e in batch)

    spool = Spool(tmp_path, deliver, 1 << 20, 60, 1 << 30, RecentIds(60, 100))
    assert spool.deliver_pending() == 2 and delivered == ["a", "c"]
    assert spool.pending_bytes == 0 and not spool.sealed_segments()
    parked = {p.name: p.with_suffix(".reason").read_text() for p in spool.parked_segments()}
    assert sorted(parked) == [f"parked-{n:017d}.wal" for n in (2, 3, 4)]
    assert "pending key" in parked[f"parked-{2:017d}.wal"]
    assert "not whole records" in parked[f"parked-{3:017d}.wal"]
    assert "does not decode" in parked[f"parked-{4:017d}.wal"]
    spool.close(timeout=1)
    # Parked segments stay parked across a restart: not delivered, not waiting.
    again = Spool(tmp_path, deliver, 1 << 20, 60, 1 << 30, RecentIds(60, 100))
    assert again.pending_bytes == 0 and again.deliver_pending() == 0 and len(again.parked_segments()) == 3
    again.close(timeout=1)
