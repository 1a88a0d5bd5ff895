"""Generated game events in the seed's schema, for demos, tests and benchmarks.

Reproducible: the same seed, count and time span give the same events and the same landing
objects (same keys, same bytes), so a second load of them is recognised as the same work.
Events are written as gzip NDJSON objects the way Firehose buffers them: up to a number of
events per object, never spanning an hour, keyed `events/YYYY/MM/DD/HH/...` by the hour.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gaming_pipeline.catalog import SEED_CATALOG, Param
from gaming_pipeline.event_names import ITEM, LEVEL, LEVEL_COMPLETED, LEVEL_FAILED, LEVEL_STARTED, PURCHASE
from gaming_pipeline.games import GAMES, Game

# The seed's events, then the progression and any other event a game's catalog declares: with
# the default catalog a quarter of the events carry parameters of the game's own.
EVENT_MIX = {
    "gameStart": 0.14,
    "levelUp": 0.16,
    "scoreAdjustment": 0.52,
    "itemCollected": 0.10,
    PURCHASE: 0.04,
    "gameEnd": 0.04,
    LEVEL_STARTED: 0.16,
    LEVEL_COMPLETED: 0.10,
    LEVEL_FAILED: 0.04,
}
OTHER_EVENT_SHARE = 0.03
ITEMS = ("gem_pack_small", "gem_pack_large", "starter_bundle", "season_pass", "no_ads", "coin_doubler")
PRICE_POINTS = (0.99, 1.99, 2.99, 4.99, 9.99, 19.99, 49.99, 99.99)
PRICE_WEIGHTS = (30, 20, 12, 15, 10, 7, 4, 2)
PLATFORMS = ("ios", "android")
DEVICES_PER_POPULARITY = 40
OBJECT_EVENTS = 5_000
HOUR_SECONDS, DAY_SECONDS = 3600, 86400
KEY_PREFIX = "events"


@dataclass
class Totals:
    """What a load put into the landing bucket, for comparing with the tables."""

    events: int = 0
    per_day_game: Counter = field(default_factory=Counter)
    devices: set = field(default_factory=set)
    devices_per_day: dict = field(default_factory=lambda: defaultdict(set))
    purchase_cents: int = 0
    purchases: int = 0
    objects: int = 0

    def add(self, event: dict) -> None:
        params = event["eventParams"]
        day = datetime.fromtimestamp(event["eventTime"], UTC).date().isoformat()
        self.events += 1
        self.per_day_game[(day, params["game_keyword"])] += 1
        self.devices.add(params["device_id"])
        self.devices_per_day[day].add(params["device_id"])
        if event["eventName"] == PURCHASE:
            self.purchases += 1
            self.purchase_cents += int(Decimal(str(params["amount"])) * 100)

    def as_dict(self) -> dict:
        per_day: dict[str, dict[str, int]] = defaultdict(dict)
        for (day, game), count in sorted(self.per_day_game.items()):
            per_day[day][game] = count
        return {
            "events": self.events,
            "objects": self.objects,
            "distinct_devices": len(self.devices),
            "distinct_devices_per_day": {
                day: len(devices) for day, devices in sorted(self.devices_per_day.items())
            },
            "purchases": self.purchases,
            "purchase_sum": str(Decimal(self.purchase_cents) / 100),
            "events_per_day_and_game": dict(per_day),
        }


class EventFactory:
    """Draws events for the registry's games, with a stable device pool per game."""

    def __init__(self, seed: int, games: tuple[Game, ...] = GAMES, draws: str = "", own_events: bool = True):
        self.rng = random.Random(seed)
        self.games = games
        self.game_weights = [game.popularity for game in games]
        self.devices = {
            game.keyword: [
                f"d-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:16]}"
                for _ in range(max(3, int(game.popularity * DEVICES_PER_POPULARITY)))
            ]
            for game in games
        }
        self.versions = {
            game.keyword: f"{self.rng.randint(1, 4)}.{self.rng.randint(0, 9)}.{self.rng.randint(0, 20)}"
            for game in games
        }
        # Each game's events (its catalog's, or with `own_events` False only the seed's, none
        # with parameters of the game's own) and their weights.
        self.events = {game.keyword: game.events if own_events else SEED_CATALOG for game in games}
        self.mix = {
            keyword: (list(events), [EVENT_MIX.get(name, OTHER_EVENT_SHARE) for name in events])
            for keyword, events in self.events.items()
        }
        if draws:
            # The same players, events drawn apart. Two factories of one seed drawing from
            # one random stream fall into step within a few thousand events (whatever each
            # drew before), then repeat each other's events, event_ids included.
            self.rng = random.Random(f"{seed}:{draws}")

    def event(self, at: float) -> dict:
        rng = self.rng
        game = rng.choices(self.games, self.game_weights)[0]
        pool = self.devices[game.keyword]
        # A few heavy players and a long tail, as in real games.
        device = pool[min(int(rng.paretovariate(1.2)) - 1, len(pool) - 1)]
        name = rng.choices(*self.mix[game.keyword])[0]
        client_time = datetime.fromtimestamp(at - rng.uniform(0.05, 3.0), UTC)
        client_time_text = client_time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        params = {
            "game_keyword": game.keyword,
            "app_name": game.app_name,
            "scoreAdjustment": rng.randint(-50, 250) if name == "scoreAdjustment" else 0,
            "platform": PLATFORMS[int(device[-1], 16) % 2],
            "app_version": self.versions[game.keyword],
            "device_id": device,
            "client_event_time": client_time_text,
        }
        if name == PURCHASE:
            params["amount"] = rng.choices(PRICE_POINTS, PRICE_WEIGHTS)[0]
        for param in self.events[game.keyword][name].params:
            if param.required or rng.random() < 0.7:
                params[param.name] = self.value(param, client_time_text)
        return {
            "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "eventName": name,
            "eventTime": int(at),
            "eventParams": params,
        }

    def value(self, param: Param, client_time: str):
        """A value of a game's own parameter: levels and items as a game has them (most
        players in the first levels, a few items), anything else drawn by its type."""
        rng = self.rng
        if (param.name, param.type) == (LEVEL, "integer"):
            return min(int(rng.paretovariate(1.3)), 40)
        if (param.name, param.type) == (ITEM, "string"):
            return rng.choice(ITEMS)
        drawn = {
            "string": lambda: f"{param.name}_{rng.randint(1, 5)}",
            "integer": lambda: rng.randint(1, 10),
            "float": lambda: round(rng.uniform(1, 120), 3),
            "money": lambda: rng.choices(PRICE_POINTS, PRICE_WEIGHTS)[0],
            "boolean": lambda: rng.random() < 0.5,
            "timestamp": lambda: client_time,
        }
        return drawn[param.type]()


def player_pii(device_id: str) -> dict[str, str]:
    """Made-up PII of a device's player, the same every time (drawn from the device id, not
    the seed's random stream, so landing objects stay byte for byte as they were)."""
    digest = hashlib.sha256(device_id.encode()).hexdigest()
    octets = ".".join(str(int(digest[i : i + 2], 16)) for i in (16, 18, 20))
    return {
        "email": f"player.{digest[:10]}@example.com",
        "name": f"Player {digest[10:16]}",
        "ip_address": f"10.{octets}",
        "advertising_id": str(uuid.UUID(digest[:32])),
    }


def client_event(event: dict) -> dict:
    """The event as a game client sends it to the ingest service: no `eventTime` (the
    service stamps it), and the player's PII on a session start."""
    sent = {key: value for key, value in event.items() if key != "eventTime"}
    if event["eventName"] == "gameStart":
        sent["pii"] = player_pii(event["eventParams"]["device_id"])
    return sent


def history(
    seed: int, count: int, start: datetime, end: datetime, draws: str = "", own_events: bool = True
) -> Iterator[dict]:
    """`count` events spread over [start, end), in time order; with `draws`, the players of
    `seed` and events of their own; `own_events` as EventFactory takes it."""
    factory = EventFactory(seed, draws=draws, own_events=own_events)
    span = (end - start).total_seconds()
    times = sorted(start.timestamp() + factory.rng.random() * span for _ in range(count))
    for at in times:
        yield factory.event(at)


def stream(seed: int, rate: float, duration: float | None, own_events: bool = True) -> Iterator[dict]:
    """Events at `rate` per second, stamped with the time they are made, for `duration`
    seconds (forever when None)."""
    if not 0 < rate < float("inf"):
        raise ValueError(f"a stream needs a rate of events per second above 0, not {rate}")
    factory = EventFactory(seed, own_events=own_events)
    started = time.time()
    sent = 0
    while duration is None or time.time() - started < duration:
        due = int((time.time() - started) * rate) - sent
        if due <= 0:
            time.sleep(min(0.05, 1 / rate))
            continue
        now = time.time()
        for _ in range(due):
            yield factory.event(now)
        sent += due


def object_key(first_event_time: float, sequence: int, seed: int) -> str:
    hour = datetime.fromtimestamp(first_event_time, UTC)
    stamp = hour.strftime("%Y-%m-%d-%H-%M-%S")
    return f"{KEY_PREFIX}/{hour:%Y/%m/%d/%H}/gaming-pipeline-{seed}-{stamp}-{sequence:06d}.ndjson.gz"


def landing_objects(
    events: Iterable[dict],
    seed: int,
    object_events: int = OBJECT_EVENTS,
    flush_seconds: float | None = None,
    span_seconds: int = HOUR_SECONDS,
) -> Iterator[tuple[str, bytes, list[dict]]]:
    """Buffer events into (key, gzip NDJSON body, events) objects: at most `object_events`
    each, never across a span of `span_seconds` (an hour, as Firehose's objects; a bulk
    load's may span a day), and, when streaming, no older than `flush_seconds`."""
    batch: list[dict] = []
    opened = time.monotonic()
    sequence = 0

    def flush():
        nonlocal batch, sequence
        lines = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in batch)
        # mtime=0 keeps the gzip bytes, and so the ETag, identical for identical events.
        body = gzip.compress(lines.encode(), mtime=0)
        key = object_key(batch[0]["eventTime"], sequence, seed)
        sequence += 1
        done, batch = batch, []
        return key, body, done

    for event in events:
        if batch and (
            len(batch) >= object_events
            or event["eventTime"] // span_seconds != batch[0]["eventTime"] // span_seconds
            or (flush_seconds is not None and time.monotonic() - opened >= flush_seconds)
        ):
            yield flush()
        if not batch:
            opened = time.monotonic()
        batch.append(event)
    if batch:
        yield flush()


def write_objects(
    objects: Iterable[tuple[str, bytes, list[dict]]],
    put: Callable[[str, bytes], None],
    totals: Totals,
    on_object: Callable[[int], None] = lambda events: None,
) -> Totals:
    for key, body, events in objects:
        put(key, body)
        totals.objects += 1
        for event in events:
            totals.add(event)
        on_object(len(events))
    return totals


def history_window(days: float, end: datetime | None = None) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC)
    return end - timedelta(days=days), end


# The demo's history: a month of players coming, returning and paying, for the dashboard's
# daily, cohort and hourly charts, small enough for a 2-core machine to ingest and refresh
# in a few minutes.
DEMO_HISTORY_EVENTS_PER_DAY = 2_000
DEMO_HISTORY_DRAWS = "history"


@dataclass(frozen=True)
class HistoryPlan:
    """Generated history to land before the live stream: `events` events over [start, end)."""

    seed: int
    events: int
    start: datetime
    end: datetime

    def generate(self) -> Iterator[dict]:
        """The plan's events, the same every time: the players of the stream of the same seed
        (so they return in it), with events of their own (not a replay of the stream's)."""
        return history(self.seed, self.events, self.start, self.end, draws=DEMO_HISTORY_DRAWS)

    def objects(self) -> Iterator[tuple[str, bytes, list[dict]]]:
        """The plan's landing objects, a bulk load's: a day's events each (up to OBJECT_EVENTS).
        A month is then tens of objects rather than hundreds of hourly ones, which one
        sensor tick takes whole into one ingestion run."""
        return landing_objects(self.generate(), self.seed, span_seconds=DAY_SECONDS)


def demo_history(days: float, seed: int, now: datetime | None = None) -> HistoryPlan | None:
    """The demo's history: `days` days ending at the start of the current hour (UTC), where the
    live stream takes over, at DEMO_HISTORY_EVENTS_PER_DAY; None for no days."""
    if days <= 0:
        return None
    now = now or datetime.now(UTC)
    start, end = history_window(days, now.astimezone(UTC).replace(minute=0, second=0, microsecond=0))
    return HistoryPlan(seed, max(1, round(days * DEMO_HISTORY_EVENTS_PER_DAY)), start, end)
