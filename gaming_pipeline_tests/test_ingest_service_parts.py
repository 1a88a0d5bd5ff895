"""The ingest service's pure parts: validation, the spool's framing and recovery, landing
objects made from a segment, the duplicate window."""

from __future__ import annotations

import gzip
import json
import os
from concurrent.futures import Future

import msgspec
import pytest

from gaming_pipeline.ingest_service.delivery import landing_objects, without_erased
from gaming_pipeline.ingest_service.schema import (
    ERASED_PLAYER,
    BodyNotJson,
    encode_lines,
    sort_events,
    split_body,
    window_key,
)
from gaming_pipeline.ingest_service.spool import RecentIds, Record, Spool, frame, read_records
from gaming_pipeline.lib import pii
from gaming_pipeline.lib.pseudonyms import ErasedPlayers
from gaming_pipeline.lib.s3_events import LandedObject, ingest_segment, ingest_segments

HOUR_MS = 3_600_000
# 2026-11-23 08:00 UTC
AT = 1_795_420_800_000


def client(n: int, **params) -> dict:
    return {
        "event_id": f"e{n}",
        "eventName": "levelUp",
        "eventParams": {"game_keyword": "ninja_run", "device_id": f"d{n}", **params},
    }


def test_a_body_is_one_object_an_array_or_lines():
    one = msgspec.json.encode(client(1))
    assert len(split_body(one, ndjson=False)) == 1
    assert len(split_body(b"[" + one + b"," + one + b"]", ndjson=False)) == 2
    assert len(split_body(one + b"\n\n" + one + b"\nnot json\n", ndjson=True)) == 3
    with pytest.raises(BodyNotJson):
        split_body(b"[" + one, ndjson=False)


def test_events_are_stamped_and_their_pii_taken_out():
    with_pii = {**client(1), "pii": {"email": "a@b.c"}, "eventTime": 5}
    sorted_ = sort_events(split_body(msgspec.json.encode([with_pii]), False), AT, lambda _: False, "app")
    (event,) = sorted_.events
    assert (event.event_id, event.eventTime) == ("e1", AT)
    assert b"a@b.c" not in msgspec.json.encode(event) and b"pii" not in msgspec.json.encode(event)
    assert sorted_.pii == [("e1", "d1", {"email": "a@b.c"})]
    # Absent optional fields stay absent in the landing line, as the client sent them.
    assert json.loads(msgspec.json.encode(event))["eventParams"] == {
        "game_keyword": "ninja_run",
        "device_id": "d1",
    }


NOBODY = ErasedPlayers(b"k" * 32)
# d2's player is erased.
ERASED = ErasedPlayers(NOBODY.pseudonym_key, frozenset([NOBODY.player_id("d2")]))


def test_an_erased_players_events_are_refused_with_the_reason():
    items = [msgspec.json.encode({**client(n), "pii": {"email": f"{n}@b.c"}}) for n in (1, 2, 3)]
    result = sort_events(items, AT, lambda _: False, "app", ERASED.holds)
    assert [e.event_id for e in result.events] == ["e1", "e3"]
    assert result.rejected == [{"index": 1, "event_id": "e2", "reason": ERASED_PLAYER}]
    assert [device for _, device, _ in result.pii] == ["d1", "d3"]


def test_a_delivery_drops_what_the_spool_held_of_a_player_erased_meanwhile():
    accepted = sort_events([msgspec.json.encode(client(n)) for n in (1, 2, 3)], AT, lambda _: False, "app")
    parked = sort_events(
        [msgspec.json.encode(client(n, game_keyword="not_a_game")) for n in (2, 4)],
        AT,
        lambda _: False,
        "app",
    )
    pii = [(ERASED.player_id(f"d{n}"), f"e{n}", b"sealed") for n in (1, 2)]
    records = [Record(AT, encode_lines(accepted.events), encode_lines(parked.parked), pii, [])]
    (kept,), dropped = without_erased(records, ERASED)
    assert dropped == 2
    assert [json.loads(line)["event_id"] for line in kept.events.splitlines()] == ["e1", "e3"]
    assert [json.loads(line)["event_id"] for line in kept.parked.splitlines()] == ["e4"]
    assert [event_id for _, event_id, _ in kept.pii] == ["e1"]
    # Nobody erased: the records as they were, not even parsed.
    assert without_erased(records, NOBODY) == (records, 0)


def test_client_event_time_must_be_a_zoned_iso_instant_spark_reads():
    good = ["2026-11-23T08:15:02Z", "2026-11-23T08:15:02.123456+05:30"]
    bad = ["2026-11-23 08:15:02", "2026-11-23T08:15:02", "1795420800", "2026-11-23T08:15:02.1234567Z"]
    items = [msgspec.json.encode(client(n, client_event_time=t)) for n, t in enumerate(good + bad)]
    result = sort_events(items, AT, lambda _: False, "app")
    assert len(result.events) == 2
    assert [r["index"] for r in result.rejected] == [2, 3, 4, 5]


def test_duplicates_are_judged_against_the_window_and_the_request_itself():
    items = [msgspec.json.encode(client(n)) for n in (1, 2, 2, 3)]
    result = sort_events(items, AT, lambda key: key == window_key("app", "e3"), "app")
    assert [e.event_id for e in result.events] == ["e1", "e2"]
    assert result.duplicates == [{"index": 2, "event_id": "e2"}, {"index": 3, "event_id": "e3"}]
    assert result.client_ids == [window_key("app", "e1"), window_key("app", "e2")]
    # Another app's e3 is its own: the window is per app.
    other = sort_events(items[3:], AT, lambda key: key == window_key("app", "e3"), "other-app")
    assert [e.event_id for e in other.events] == ["e3"] and not other.duplicates


def test_window_keys_are_per_app_and_of_one_size_whatever_the_id():
    assert window_key("a", "e1") != window_key("b", "e1")
    # The separator keeps an app and an id from running into each other.
    assert window_key("ab", "c") != window_key("a", "bc")
    assert len(window_key("a", "x" * 128)) == len(window_key("a", "x")) == 32


def test_a_window_key_never_holds_the_id_and_is_the_same_in_every_process():
    # Ids are often made of the device id, and the spool keeps the keys on disk across
    # restarts: a digest, and no per-process hash() in it.
    assert "d-42" not in window_key("app", "d-42-0001")
    assert window_key("bench", "e1") == "8f7bfdd1dffb0691b4da022759f49cfa"


def test_pending_pii_gets_fresh_nonces_drawn_many_at_a_time(monkeypatch):
    draws = []
    draw = os.urandom
    monkeypatch.setattr(pii.os, "urandom", lambda size: draws.append(size) or draw(size))
    vault = pii.PiiVault(None, "vault", pii.LocalKeys(pii.new_master_key()))
    sealed = [vault.seal_pending("p", {"email": f"{n}@b.c"}) for n in range(300)]
    assert len({box[: pii.NONCE_BYTES] for box in sealed}) == 300
    # One draw from the OS for 256 nonces: each draw lets go of the GIL.
    assert draws == [pii.NONCE_BYTES * pii.NONCES_PER_DRAW] * 2
    assert [vault.open_pending("p", box) for box in sealed] == [{"email": f"{n}@b.c"} for n in range(300)]


def test_recent_ids_expire_and_stay_bounded():
    recent = RecentIds(window_seconds=60, max_ids=3)
    recent.add(["a", "b"], AT)
    assert recent.seen("a", AT + 59_000) and not recent.seen("a", AT + 60_000)
    write = Future()
    recent.hold(["c", "d"], write)
    assert recent.seen("c", AT) and recent.writing("c") is write
    recent.settle(["c"], AT, stored=True)
    recent.settle(["d"], AT, stored=False)
    assert recent.seen("c", AT + 1) and recent.writing("c") is None and not recent.seen("d", AT + 1)
    fresh = RecentIds(window_seconds=3600, max_ids=2)
    now = 2**62  # far future: nothing expired by time, only by the bound
    fresh.add(["x", "y", "z"], now)
    assert len(fresh) == 2 and not fresh.seen("x", now)


def test_a_torn_tail_ends_a_segment_at_its_last_whole_record(tmp_path):
    records = [Record(AT + n, b'{"n":%d}\n' % n, b"", [], [f"e{n}"]) for n in range(3)]
    data = b"".join(frame(r) for r in records)
    segment = tmp_path / "open-1.wal"
    segment.write_bytes(data[:-5])
    read, length = read_records(segment)
    assert read == records[:2] and length == len(frame(records[0])) * 2
    corrupt = bytearray(data)
    corrupt[len(frame(records[0])) + 10] ^= 0xFF
    segment.write_bytes(bytes(corrupt))
    assert read_records(segment)[0] == records[:1]


def test_a_segment_becomes_the_same_objects_every_time_split_by_hour_and_game_knowledge():
    records = [
        Record(AT + 1000, b'{"a":1}\n{"a":2}\n', b'{"unknown":1}\n', [], []),
        Record(AT + HOUR_MS + 5, b'{"a":3}\n', b"", [], []),
    ]
    objects = landing_objects("spool1", "0042", records)
    assert [(key, events) for key, _, events in objects] == [
        ("events/2026/11/23/08/ingest-spool1-0042.ndjson.gz", 2),
        ("events/2026/11/23/09/ingest-spool1-0042.ndjson.gz", 1),
        ("unknown-games/2026/11/23/08/ingest-spool1-0042.ndjson.gz", 1),
    ]
    assert gzip.decompress(objects[0][1]) == b'{"a":1}\n{"a":2}\n'
    assert landing_objects("spool1", "0042", records) == objects
    assert LandedObject("b", objects[2][0]).parked and not LandedObject("b", objects[0][0]).parked
    # Each of them leads to the segment's PII in the vault; a bulk load's object to none.
    keys = [("b", key) for key, _, _ in objects] + [("b", "events/2026/11/23/bulk-0001.ndjson.gz")]
    assert ingest_segments(keys) == [ingest_segment("spool1", "0042")]


def test_a_restart_recovers_open_segments_and_survives_a_torn_ids_file(tmp_path):
    records = [Record(AT + n, b'{"n":%d}\n' % n, b"", [], [f"e{n}"]) for n in range(2)]
    (tmp_path / "open-00000000000000001.wal").write_bytes(b"".join(frame(r) for r in records) + b"\x07torn")
    (tmp_path / "done-00000000000000000.ids").write_bytes(b'[["e9", 17')
    delivered = []
    recent = RecentIds(window_seconds=10**9, max_ids=100)
    spool = Spool(
        tmp_path, lambda segment, got: delivered.append((segment, got)), 1 << 20, 60, 1 << 30, recent
    )
    assert [p.name for p in spool.sealed_segments()] == ["sealed-00000000000000001.wal"]
    assert recent.seen("e1", AT) and not recent.seen("e9", AT)
    assert spool.deliver_pending() == 1 and delivered == [("00000000000000001", records)]
    spool.close(timeout=1)
