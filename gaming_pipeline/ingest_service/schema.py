"""What a game client may send (README: The ingest service), checked event by event.

Pure functions, no I/O: a request body becomes the events to land, the PII to keep apart
and a reason for every event turned away, so one bad event never costs the good ones
beside it. Decoding and validation run in msgspec's C code: the service's hot path.

An event accepted here is one the pipeline's landing parser (lib/events.py) will take and
no KPI can fail on: the same field names and types, and these limits at the door:
- `amount` (purchases only): a finite number from 0 to MAX_AMOUNT (1,000,000.00). The KPIs
  sum amounts as decimal(18,2) (lib/kpis.py), rounded to the cent; at this cap a game's day
  would need 10 billion purchases to overflow it.
- `client_event_time`: ISO-8601 with a zone, as Spark reads it, naming a real calendar
  instant (no month 13, no 24:00, no second 60), with an offset Java accepts (at most
  18:00), between 2000-01-01 and 2100-01-01 UTC: the landing rule's span for eventTime.
- `scoreAdjustment`: an int32. Strings: valid UTF-8 (msgspec refuses lone surrogates);
  limited lengths. JSON has no NaN or Infinity, and a number past a float's range is out of
  range, so no value is infinite.
- the event's name and the parameters beside the seed's fields: as the game's event catalog
  (catalog.py) declares them, which ingestion checks alike for lines of other producers.
"""

from __future__ import annotations

import hashlib
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from gaming_pipeline import catalog
from gaming_pipeline.catalog import ISO_INSTANT, MAX_MONEY, EventSpec
from gaming_pipeline.event_names import PURCHASE, SEED_PARAMS
from gaming_pipeline.games import GAMES_BY_KEYWORD, events_of

EARLIEST_CLIENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_CLIENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)
# java.time.ZoneOffset's range: Spark fails on an offset beyond it.
MAX_UTC_OFFSET = timedelta(hours=18)
MAX_AMOUNT = MAX_MONEY
INT32 = Meta(ge=-(2**31), le=2**31 - 1)
Text = Annotated[str, Meta(max_length=256)]
Id = Annotated[str, Meta(min_length=1, max_length=128)]


# The seed's fields, typed. The parameters beside them are the game's catalog's to judge.
class EventParams(msgspec.Struct, omit_defaults=True):
    game_keyword: Annotated[str, Meta(min_length=1, max_length=64)]
    device_id: Id
    app_name: Text | None = None
    scoreAdjustment: Annotated[int, INT32] | None = None
    platform: Annotated[str, Meta(max_length=32)] | None = None
    app_version: Annotated[str, Meta(max_length=64)] | None = None
    client_event_time: Annotated[str, Meta(pattern=ISO_INSTANT)] | None = None
    amount: Annotated[float, Meta(ge=0, le=MAX_AMOUNT)] | None = None


class ClientEvent(msgspec.Struct, forbid_unknown_fields=True):
    eventName: Annotated[str, Meta(pattern=catalog.EVENT_NAME)]
    eventParams: EventParams
    event_id: Id | None = None
    # Anything the client says about the event's time goes in client_event_time: like the
    # seed's Lambda, the service stamps eventTime itself, so a client's value is replaced.
    eventTime: Any = None
    pii: dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=1024)]] | None = None


class _SentParams(msgspec.Struct):
    """An event's eventParams as sent: the seed's fields and the game's own parameters."""

    eventParams: dict[str, Any]


class LandingEvent(msgspec.Struct):
    """One line of a landing object: no `pii`, `eventTime` in epoch milliseconds, the
    eventParams as sent (the seed's fields and the game's own parameters)."""

    event_id: str
    eventName: str
    eventTime: int
    eventParams: dict[str, Any]


NESTED_TOO_DEEP = "the JSON is nested deeper than the decoder's limit"


class BodyNotJson(ValueError):
    """The body as a whole is not JSON (or not one JSON value per line): answered with 400."""


@dataclass
class Sorted:
    """A request's events sorted out: what lands, what is parked, what is turned away."""

    events: list[LandingEvent] = field(default_factory=list)
    # Events of games the registry does not know: kept, under their own prefix, until the
    # game is added (README: unknown games).
    parked: list[LandingEvent] = field(default_factory=list)
    # (event_id, device_id, pii) for each accepted event that carried PII.
    pii: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    # The window keys (window_key) of the client event_ids accepted here.
    client_ids: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    # How many of the rejected were not JSON at all (an NDJSON body of only these is a 400).
    not_json: int = 0
    duplicates: list[dict] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.events) + len(self.parked)


_as_items = msgspec.json.Decoder(list[msgspec.Raw])
_as_item = msgspec.json.Decoder(msgspec.Raw)
_as_event = msgspec.json.Decoder(ClientEvent)
_as_sent_params = msgspec.json.Decoder(_SentParams)


def split_body(body: bytes, ndjson: bool) -> list[msgspec.Raw | bytes]:
    """The body's events, still encoded: an array's items, one object, or NDJSON's lines
    (a line that is not JSON stays as bytes, to be rejected on its own)."""
    if ndjson:
        return [line for line in body.split(b"\n") if line.strip()]
    try:
        stripped = body.lstrip()
        if stripped.startswith(b"["):
            return _as_items.decode(body)
        return [_as_item.decode(body)]
    except msgspec.DecodeError as error:
        raise BodyNotJson(f"the body is not JSON: {error}") from None
    except RecursionError:
        raise BodyNotJson(NESTED_TOO_DEEP) from None


def _not_json(error: Exception) -> str:
    """Why an event could not be read. msgspec checks UTF-8 only in the strings it decodes,
    and nests by recursion: invalid text and runaway nesting surface as Python errors."""
    if isinstance(error, UnicodeDecodeError):
        return f"not JSON: a string is not UTF-8: {error.reason} at byte {error.start} of the string"
    if isinstance(error, RecursionError):
        return f"not JSON: {NESTED_TOO_DEEP}"
    return f"not JSON: {error}"


def client_time_reason(text: str) -> str | None:
    """Why a `client_event_time` of the ISO_INSTANT form is not an instant the pipeline keeps."""
    try:
        instant = datetime.fromisoformat(text)
    except ValueError as error:
        return f"eventParams.client_event_time is not a calendar time: {error}"
    if abs(instant.utcoffset()) > MAX_UTC_OFFSET:
        return "eventParams.client_event_time has a UTC offset beyond 18:00"
    # A year from 2001 to 2098 is in the span whatever its offset (18 h at most): comparing
    # zoned times, a microsecond an event, is left to the span's first and last years.
    in_inner_years = "2000" < text[:4] < "2099"
    if not in_inner_years and not EARLIEST_CLIENT_TIME <= instant < LATEST_CLIENT_TIME:
        return "eventParams.client_event_time is outside 2000-2099 (UTC)"
    return None


def _seed_reason(name: str, params: EventParams) -> str | None:
    """The rules msgspec's types cannot say: an amount belongs to purchases, and to all;
    a client's time is a real instant within the pipeline's span."""
    if name == PURCHASE and params.amount is None:
        return f"a {PURCHASE} needs eventParams.amount"
    if name != PURCHASE and params.amount is not None:
        return f"eventParams.amount is for {PURCHASE} only, not {name}"
    if params.client_event_time is not None:
        return client_time_reason(params.client_event_time)
    return None


_SEED_PARAMS = frozenset(SEED_PARAMS)
_INT64 = range(-(2**63), 2**63)
_ISO_INSTANT = re.compile(ISO_INSTANT)
_LARGEST_DOUBLE = sys.float_info.max


def _fits(kind: str, value: Any) -> bool:
    """Whether a parameter's JSON value is of its catalog type (lib/events.py checks the same
    in ingestion, for the lines other producers land)."""
    if kind == "string":
        return isinstance(value, str) and len(value) <= catalog.MAX_TEXT
    if kind == "integer":
        return type(value) is int and value in _INT64
    if kind in ("float", "money"):
        # An integer of 400 digits is a JSON number too, but no finite double.
        return type(value) in (int, float) and abs(value) <= (
            MAX_MONEY if kind == "money" else _LARGEST_DOUBLE
        )
    if kind == "boolean":
        return type(value) is bool
    return isinstance(value, str) and _ISO_INSTANT.match(value) is not None and not client_time_reason(value)


def catalog_reason(name: str, params: dict[str, Any], spec: EventSpec | None) -> str | None:
    """Why an event's own parameters do not fit its entry `spec` in the game's catalog
    (None: its name is not in the catalog)."""
    if spec is None:
        return catalog.unknown_event(name)
    strays = params.keys() - _SEED_PARAMS
    if strays and not spec.open:
        undeclared = sorted(key for key in strays if spec.param(key) is None)
        if undeclared:
            return catalog.undeclared(name, ", ".join(undeclared))
    for param in spec.params:
        value = params.get(param.name)
        if value is None:
            if param.required:
                return catalog.missing(name, param.name)
        elif not _fits(param.type, value):
            return catalog.wrong_type(param)
    return None


def window_key(app: str, event_id: str) -> str:
    """A client event_id as the duplicate window knows it: scoped to the app that sent it (two
    apps may well choose the same ids), and of a fixed size whatever the id's length, so the
    window's memory per id is bounded (ServiceConfig.dedup_max_ids). A digest, never the id
    itself, though that would be cheaper: clients often make ids of the device id, and the
    spool keeps the window on disk (test_pii_isolation scans it)."""
    scoped = f"{app}\x00{event_id}".encode()
    return hashlib.blake2b(scoped, digest_size=16).hexdigest()


ERASED_PLAYER = "the player of this device_id has been erased (GDPR); their events are no longer taken"


def sort_events(
    items: list[msgspec.Raw | bytes],
    received_at_ms: int,
    seen_before,
    app: str,
    erased=lambda device_id: False,
) -> Sorted:
    """Validate and stamp each event of `app`. `seen_before(key)` says whether a client id's
    window_key was accepted within the duplicate window; ids repeated inside this request
    count too. `erased(device_id)` says whether the device's player was erased."""
    result = Sorted()
    in_this_request: set[str] = set()
    for index, item in enumerate(items):
        try:
            event = _as_event.decode(item)
            # Decoded a second time for the parameters beside the seed's: a microsecond.
            sent = _as_sent_params.decode(item).eventParams
        except msgspec.ValidationError as error:
            result.rejected.append({"index": index, "reason": str(error)})
            continue
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
            result.rejected.append({"index": index, "reason": _not_json(error)})
            result.not_json += 1
            continue
        name, params = event.eventName, event.eventParams
        reason = (
            _seed_reason(name, params)
            or catalog_reason(name, sent, events_of(params.game_keyword).get(name))
            or (ERASED_PLAYER if erased(params.device_id) else None)
        )
        if reason:
            result.rejected.append({"index": index, "event_id": event.event_id, "reason": reason})
            continue
        event_id = event.event_id
        if event_id is not None:
            key = window_key(app, event_id)
            if key in in_this_request or seen_before(key):
                result.duplicates.append({"index": index, "event_id": event_id})
                continue
            in_this_request.add(key)
            result.client_ids.append(key)
        else:
            event_id = uuid.uuid4().hex
        landing = LandingEvent(event_id, name, received_at_ms, sent)
        known = params.game_keyword in GAMES_BY_KEYWORD
        (result.events if known else result.parked).append(landing)
        if event.pii:
            result.pii.append((event_id, params.device_id, event.pii))
    return result


encode_lines = msgspec.json.Encoder().encode_lines
