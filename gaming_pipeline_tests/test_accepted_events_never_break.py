"""Whatever the ingest service accepts becomes a raw row and breaks no table built from it.

Random events, many of them at or past the edges of what clients may send (huge and tiny
amounts, impossible calendar times, extreme offsets, odd text, the games' own parameters of
the wrong type), go through the real service; the objects it lands are ingested, and today's
KPI tables are rebuilt from them with every check. The service may turn any event away,
with a reason; what it accepts must all be in the raw table, none of it in quarantine, and
every run must succeed. The games' own parameters reach their per-game table as typed
columns, and the progression funnel and revenue by item equal the same sums in plain
Python. Reproducible: the seed is fixed.
"""

from __future__ import annotations

import random
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal

import dagster as dg

from gaming_pipeline.defs.games.assets import game_tables
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib.tables import QUARANTINE_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests.ingest_helpers import DERIVED, evaluate_reconcile, refresh, run
from gaming_pipeline_tests.service_helpers import IngestService, landed, wait_until

SEED, EVENTS = 20261129, 400

# (ordinary values, values at or past an edge): an event gets an edge value in a field
# now and then, so that most events are accepted and many are not.
AMOUNTS = (
    [0.99, 4.99, 19.99],
    [0, 0.01, 0.005, 999_999.99, 1_000_000, 1_000_000.01, 1e17, 1e308, -0.01, 2.5e-9],
)
TIMES = (
    ["2026-11-23T08:15:02.123Z", "2026-11-23T08:15:02+05:30"],
    [
        "2026-99-99T99:99:99Z",
        "2026-02-29T00:00:00Z",
        "2028-02-29T23:59:59.999999+14:00",
        "2026-11-23T24:00:00Z",
        "2026-11-23T23:59:60Z",
        "1999-12-31T23:59:59Z",
        "2000-01-01T00:00:00Z",
        "2099-12-31T23:59:59-18:00",
        "2000-01-01T00:00:00+18:01",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ],
)
TEXTS = (
    ["Galaxy Miners", "2.4.1"],
    ["", "x" * 256, "x" * 257, "ünïcödé ✓ 🎮", "a\u0000b", "right\u202eleft", "'; --", "\\"],
)
NAMES = (
    [
        "gameStart",
        "levelUp",
        "purchaseEvent",
        "levelStarted",
        "levelCompleted",
        "levelFailed",
        "questCompleted",
    ],
    ["a" * 64, "a" * 65, "9lives", "evt_ok_1", "bad name"],
)
# The games' own parameters (gaming_pipeline_tests/games.toml): ninja_run's quests, every
# game's levels and purchased items.
OWN_PARAMS = {
    "level": ([1, 2, 3], ["3", 2.5, None, -1, 2**63, True]),
    "item_id": (["gems", "bundle"], [7, "", "x" * 1025]),
    "quest": (["q1", "q2"], [5, None]),
    "reward": ([4.99, 0], [2e6, "free"]),
    "finished_at": (["2026-11-23T08:15:02Z"], ["2026-11-23", "2026-11-23T24:00:00Z"]),
}
OWN_OF = {"questCompleted": ("quest", "reward", "finished_at"), "purchaseEvent": ("item_id",)}
SCORES = ([15, -3], [0, -(2**31), 2**31 - 1, 2**31, -(2**31) - 1])
GAME_KEYWORDS = ([game.keyword for game in GAMES[:5]], TEXTS[1])
DEVICES = ([f"d-fuzz-{n}" for n in range(50)], TEXTS[1])
PLATFORMS = (["ios", "android"], TEXTS[1])


def pick(rng: random.Random, values: tuple[list, list]):
    ordinary, edges = values
    return rng.choice(edges if rng.random() < 0.15 else ordinary)


def random_event(rng: random.Random, n: int) -> dict:
    name = pick(rng, NAMES)
    params: dict = {"game_keyword": pick(rng, GAME_KEYWORDS), "device_id": pick(rng, DEVICES)}
    for field, values in (
        ("app_name", TEXTS),
        ("platform", PLATFORMS),
        ("app_version", TEXTS),
        ("client_event_time", TIMES),
        ("scoreAdjustment", SCORES),
    ):
        if rng.random() < 0.6:
            params[field] = pick(rng, values)
    if name == "purchaseEvent" or rng.random() < 0.05:
        params["amount"] = pick(rng, AMOUNTS)
    for param in OWN_OF.get(name, ("level",) if name.startswith("level") else ()):
        if rng.random() < 0.9:
            params[param] = pick(rng, OWN_PARAMS[param])
    return {"event_id": f"fuzz-{n}", "eventName": name, "eventParams": params}


def test_every_accepted_event_is_a_raw_row_and_every_table_builds(
    spark, local_aws, landing, tmp_path, warehouse
):
    rng = random.Random(SEED)
    events = [random_event(rng, n) for n in range(EVENTS)]
    service = IngestService(tmp_path / "home", landing.bucket).start()
    try:
        sender = service.sender(service.new_key()[1])
        answers = [sender.send(events[start : start + 50]) for start in range(0, EVENTS, 50)]
        accepted_ids = {f"fuzz-{n}" for n in range(EVENTS)} - {
            f"fuzz-{start + error['index']}"
            for start, answer in zip(range(0, EVENTS, 50), answers, strict=True)
            for error in answer["errors"]
        }
        parked = sum(answer["unknown_game"] for answer in answers)
        # Both sides of the limits must be met, or the test proves nothing.
        assert 50 < len(accepted_ids) < EVENTS - 50, answers
        wait_until(
            lambda: sum(len(e) for e in landed(landing.bucket).values()) == len(accepted_ids),
            30,
            "every accepted event lands",
        )
    finally:
        service.stop()

    instance = dg.DagsterInstance.ephemeral()
    for request in evaluate_reconcile(landing, warehouse, instance):
        run(request, landing, warehouse, instance)
    raw = spark.read.format("delta").load(table_path(warehouse, RAW_TABLE))
    in_raw = {row.event_id for row in raw.select("event_id").collect()}
    # Events of games the registry does not know are parked apart, not ingested.
    assert len(in_raw) == len(accepted_ids) - parked and in_raw <= accepted_ids
    quarantined = spark.read.format("delta").load(table_path(warehouse, QUARANTINE_TABLE))
    assert quarantined.count() == 0, quarantined.select("reason", "line").collect()

    # The service stamps eventTime on receipt: today, or yesterday too just after midnight.
    days = sorted(row.eventDate.isoformat() for row in raw.select("eventDate").distinct().collect())
    # The KPIs are where a value can break a job (casts, sums, times); the per-game tables
    # copy the raw rows as they are and are left to test_incremental_refresh, to save CI minutes.
    refresh(landing, warehouse, instance, days[0], days[-1], [a for a in DERIVED if a is not game_tables])

    kept = [e for e in events if e["event_id"] in in_raw]
    funnel, items, quests = Counter(), Counter(), {}
    for e in kept:
        name, params = e["eventName"], e["eventParams"]
        if name in ("levelStarted", "levelCompleted", "levelFailed"):
            funnel[(params["game_keyword"], params["level"], name)] += 1
        if name == "purchaseEvent":
            cents = Decimal(str(params["amount"])).quantize(Decimal("0.01"), ROUND_HALF_UP)
            items[(params["game_keyword"], params.get("item_id"))] += cents
        if name == "questCompleted":
            quests[e["event_id"]] = (params["quest"], params.get("reward"), params.get("finished_at"))
    assert len(funnel) > 5 and len(items) > 3 and quests, "too few of the games' own events accepted to judge"

    def read(table: str):
        return spark.read.format("delta").load(table_path(warehouse, table))

    counted = Counter()
    for row in read("kpi_progression_funnel").where("game_keyword != 'all_games'").collect():
        for name, figure in (
            ("levelStarted", row.started),
            ("levelCompleted", row.completed),
            ("levelFailed", row.failed),
        ):
            counted[(row.game_keyword, row.level, name)] += figure
    assert +counted == funnel
    booked = Counter()
    for row in read("kpi_revenue_by_item").where("game_keyword != 'all_games'").collect():
        booked[(row.game_keyword, row.item_id)] += row.bookings
    assert booked == items

    # ninja_run's table has its quests' parameters as columns of their types.
    in_table = {
        row.event_id: (row.quest, row.reward, row.finished_at)
        for row in read("game_ninja_run_events").where("eventName = 'questCompleted'").collect()
    }
    assert in_table.keys() == quests.keys()
    for event_id, (quest, reward, finished_at) in quests.items():
        assert in_table[event_id][0] == quest
        assert in_table[event_id][1] == (
            None if reward is None else Decimal(str(reward)).quantize(Decimal("0.01"))
        )
        assert (in_table[event_id][2] is None) == (finished_at is None)
