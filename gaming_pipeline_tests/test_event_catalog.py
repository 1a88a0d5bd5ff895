"""The event catalog: read from the games registry's TOML, every fault named with its line,
game, event and parameter; the ingest service and ingestion judge a game's own parameters
by it alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg
import msgspec
import pytest

from gaming_pipeline import catalog
from gaming_pipeline.catalog import Param
from gaming_pipeline.cli import main
from gaming_pipeline.games import DEFAULT_GAMES, GAMES_BY_KEYWORD, GAMES_FILE_VARIABLE, load_registry
from gaming_pipeline.ingest_service.schema import sort_events

FAULTY = """\
[events.levelStarted]
params.level = "string"

[[game]]
keyword = "kart_kings"
app_name = "Kart Kings"

[game.events.raceFinished]
params.position = { type = "integr", required = true }
params.track = "string"
params.Track = "integer"
params.amount = "money"
"""


def test_the_default_and_the_tests_registries_declare_progression_and_items():
    for games in (DEFAULT_GAMES, tuple(GAMES_BY_KEYWORD.values())):
        for game in games:
            assert game.events["levelStarted"].param("level") == Param("level", "integer", True)
            assert game.events["purchaseEvent"].param("item_id") == Param("item_id", "string")
    racers = next(game for game in DEFAULT_GAMES if game.keyword == "pixel_racers")
    assert [(p.name, p.type) for p in racers.columns][-4:] == [
        ("track", "string"),
        ("position", "integer"),
        ("lap_seconds", "float"),
        ("finished_at", "timestamp"),
    ]


def test_every_fault_of_a_catalog_is_named_with_its_line_game_event_and_parameter(tmp_path, capsys):
    faulty = tmp_path / "games.toml"
    faulty.write_text(FAULTY)
    with pytest.raises(ValueError) as refused:
        load_registry(faulty)
    assert str(refused.value).startswith(f"{GAMES_FILE_VARIABLE}={faulty}: line 2, ")

    assert main(["catalog", "check", str(faulty)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{faulty}: line 2, shared events, event levelStarted, parameter level: "
        "levelStarted declares level as a required integer (the KPIs read it)",
        f"{faulty}: line 9, game kart_kings, event raceFinished, parameter position: "
        "type 'integr' is none of string, integer, float, boolean, timestamp, money",
        f"{faulty}: line 11, game kart_kings, event raceFinished, parameter Track: is integer here "
        "but track is string elsewhere in the game (ignoring case): a parameter is one column of "
        "the game's table",
        f"{faulty}: line 12, game kart_kings, event raceFinished, parameter amount: "
        "the name is the seed's own field or a table column",
    ]
    assert main(["catalog", "check", os.environ[GAMES_FILE_VARIABLE]]) == 0
    assert "questCompleted" in capsys.readouterr().out


A_GAME = '[[ game ]]\nkeyword = "ab"\napp_name = "A"\n'


@pytest.mark.parametrize(
    "text, fault",
    [
        ('[events.foo]\nparams = "x"\n', "line 1, shared events, event foo: `params` is a table"),
        (
            '[events.foo]\nopen = "no"\n',
            "line 1, shared events, event foo: `params` is a table of parameters, `open`",
        ),
        (
            '[events.bar]\nparams.foo = "string"\n[events.foo]\nparams.a = "x"\n',
            "line 4, shared events, event foo, parameter a",
        ),
        (
            A_GAME + '[game.events.x]\nparams = { a = "string", b = "x" }\n',
            "line 5, game ab, event x, parameter b",
        ),
        (A_GAME + '[events.x]\nparams.a = "x"\n', "line 5, shared events, event x, parameter a"),
        (
            '[events.x]\nparams."a\\n" = "string"\n',
            "line 1, shared events, event x, parameter a\n: a parameter name is",
        ),
    ],
)
def test_a_fault_is_found_where_it_is_whatever_the_files_layout(tmp_path, text, fault):
    faulty = tmp_path / "games.toml"
    faulty.write_text(text if A_GAME in text else text + A_GAME)
    with pytest.raises(ValueError) as refused:
        load_registry(faulty, named="F")
    assert str(refused.value).startswith(f"F: {fault}")


@pytest.mark.e2e
def test_a_faulty_catalog_stops_the_code_locations_load_naming_file_game_and_event(tmp_path):
    faulty = tmp_path / "games.toml"
    faulty.write_text(FAULTY)
    loaded = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-m",
            "gaming_pipeline.definitions",
        ],
        env={**os.environ, GAMES_FILE_VARIABLE: str(faulty), "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    said = loaded.stdout + loaded.stderr
    assert loaded.returncode != 0
    assert f"{GAMES_FILE_VARIABLE}={faulty}: line 2" in said
    assert "game kart_kings, event raceFinished, parameter position" in said


AT = datetime(2026, 12, 7, 10).timestamp()
# (event, game, its own parameters, the reason both the door and ingestion give: None, kept)
VERDICTS = [
    ("levelStarted", "ninja_run", {"level": 3}, None),
    ("levelStarted", "ninja_run", {}, catalog.missing("levelStarted", "level")),
    ("levelStarted", "ninja_run", {"level": None}, catalog.missing("levelStarted", "level")),
    ("levelStarted", "ninja_run", {"level": "3"}, catalog.wrong_type(Param("level", "integer"))),
    ("levelStarted", "ninja_run", {"level": 3.5}, catalog.wrong_type(Param("level", "integer"))),
    (
        "levelStarted",
        "ninja_run",
        {"level": 3, "mood": "x", "a": 1},
        catalog.undeclared("levelStarted", "a, mood"),
    ),
    ("boosterUsed", "candy_kingdom", {"booster": "bomb", "colour": {"r": 1}}, None),
    ("boosterUsed", "candy_kingdom", {"level": 2}, catalog.missing("boosterUsed", "booster")),
    ("purchaseEvent", "galaxy_miners", {"item_id": "gems"}, None),
    ("purchaseEvent", "galaxy_miners", {"item_id": 7}, catalog.wrong_type(Param("item_id", "string"))),
    (
        "questCompleted",
        "ninja_run",
        {
            "quest": "q1",
            "reward": 4.99,
            "hard_mode": True,
            "finished_at": "2026-12-07T10:00:00.5Z",
            "seconds": 12,
        },
        None,
    ),
    (
        "questCompleted",
        "ninja_run",
        {"quest": "q1", "reward": 2e6},
        catalog.wrong_type(Param("reward", "money")),
    ),
    (
        "questCompleted",
        "ninja_run",
        {"quest": "q1", "hard_mode": "yes"},
        catalog.wrong_type(Param("hard_mode", "boolean")),
    ),
    (
        "questCompleted",
        "ninja_run",
        {"quest": "q1", "finished_at": "yesterday"},
        catalog.wrong_type(Param("finished_at", "timestamp")),
    ),
    (
        "questCompleted",
        "ninja_run",
        {"quest": "q1", "finished_at": "2300-01-01T00:00:00Z"},
        catalog.wrong_type(Param("finished_at", "timestamp")),
    ),
    ("questCompleted", "ninja_run", {"quest": "q" * 1025}, catalog.wrong_type(Param("quest", "string"))),
    (
        "questCompleted",
        "ninja_run",
        {"quest": "q1", "seconds": 10**400},
        catalog.wrong_type(Param("seconds", "float")),
    ),
    (
        "questCompleted",
        "ninja_run",
        {"quest": "q1", "finished_at": "2026-12-07T10:00:00Z\n"},
        catalog.wrong_type(Param("finished_at", "timestamp")),
    ),
    (
        "questCompleted",
        "ninja_run",
        {"quest": "q1", "seconds": True},
        catalog.wrong_type(Param("seconds", "float")),
    ),
]


def event(name: str, game: str, own: dict) -> dict:
    params = {"game_keyword": game, "device_id": "d-1", **own}
    if name == "purchaseEvent":
        params["amount"] = 0.99
    return {"eventName": name, "eventParams": params}


def door(events: list[dict]) -> list[str | None]:
    result = sort_events([msgspec.json.encode(e) for e in events], int(AT * 1000), lambda _: False, "app")
    reasons = {rejected["index"]: rejected["reason"] for rejected in result.rejected}
    return [reasons.get(index) for index in range(len(events))]


def test_the_door_judges_a_games_own_parameters_by_its_catalog():
    verdicts = door([event(name, game, own) for name, game, own, _ in VERDICTS])
    assert verdicts == [reason for *_, reason in VERDICTS]


def test_the_door_refuses_what_the_catalog_does_not_declare_ingestion_keeps_the_seeds_events():
    assert door(
        [
            event("levelBegun", "ninja_run", {}),
            event("gameStart", "ninja_run", {"platfrom": "ios"}),
            event("levelBegun", "not_in_the_registry", {}),
            event("levelStarted", "not_in_the_registry", {"level": 1}),
        ]
    ) == [
        catalog.unknown_event("levelBegun"),
        catalog.undeclared("gameStart", "platfrom"),
        catalog.unknown_event("levelBegun"),
        None,
    ]


def test_ingestion_quarantines_what_the_door_refuses_and_keeps_the_parameters_typed(spark):
    from gaming_pipeline.lib.derived import game_rows
    from gaming_pipeline.lib.events import REPEATED_PARAMETER, classify_lines

    lines = [json.dumps({**event(name, game, own), "eventTime": int(AT)}) for name, game, own, _ in VERDICTS]
    # Another producer's line may name a parameter twice, which no client's JSON reaches the
    # door with (the service writes each once).
    twice = lines[0].replace('"level": 3', '"level": 3, "level": 4')

    classified = classify_lines(
        spark.createDataFrame(
            [(line, "s3://l/a", None) for line in [*lines, twice]],
            "value string, _source_object string, _source_modified_at timestamp",
        )
    )
    rows = classified.select("reason", "customParams").collect()
    assert [row.reason for row in rows] == [reason for *_, reason in VERDICTS] + [REPEATED_PARAMETER]
    kept = [json.loads(row.customParams.toJson()) for row in rows if row.reason is None]
    assert kept == [own for *_, own, reason in VERDICTS if reason is None]

    quest = GAMES_BY_KEYWORD["ninja_run"]
    (typed,) = game_rows(classified.where("eventName = 'questCompleted' AND reason IS NULL"), quest).collect()
    assert (str(typed.reward), typed.hard_mode, typed.finished_at, typed.seconds, typed.level) == (
        "4.99",
        True,
        datetime(2026, 12, 7, 10, 0, 0, 500000),
        12.0,
        None,
    )


def test_the_seeds_fields_are_one_list_at_the_door_in_the_tables_and_in_the_catalog():
    from gaming_pipeline.event_names import SEED_PARAMS
    from gaming_pipeline.ingest_service.schema import EventParams
    from gaming_pipeline.lib.events import EVENT_PARAMS

    assert tuple(EVENT_PARAMS.names) == SEED_PARAMS
    assert set(EventParams.__struct_fields__) == set(SEED_PARAMS)


def test_a_parameter_added_mid_stream_adds_a_column_without_rewriting_and_one_removed_stays(spark, tmp_path):
    """Added: a column, null in older rows, no file rewritten. Removed: the column stays, and
    a rebuild still fills it from customParams. Retyped: the column keeps its first type."""
    from dataclasses import replace

    from deltalake import DeltaTable

    from gaming_pipeline.defs.games.columns import DROPPED, materialized_columns
    from gaming_pipeline.lib.derived import append_game_rows, game_rows
    from gaming_pipeline.lib.events import classify_lines, raw_events

    game = GAMES_BY_KEYWORD["ninja_run"]
    entry = game.events["questCompleted"]
    with_mood = replace(entry, params=(*entry.params, Param("mood", "string")))
    before, after = game, replace(game, events={**game.events, entry.name: with_mood})

    def batch(n: int, own: dict):
        lines = [
            json.dumps({**event("questCompleted", "ninja_run", {"quest": "q", **own}), "eventTime": int(AT)})
        ]
        df = spark.createDataFrame(
            [(line, f"s3://l/{n}", None) for line in lines],
            "value string, _source_object string, _source_modified_at timestamp",
        )
        return raw_events(classify_lines(df, (after,)), datetime(2026, 12, 7), f"r{n}")

    warehouse = str(tmp_path)
    path = f"{warehouse}/{game.table_name}"
    append_game_rows(batch(1, {}), before, warehouse, {"run_id": "r1"})
    files_before = set(DeltaTable(path).file_uris())
    append_game_rows(batch(2, {"mood": "happy"}), after, warehouse, {"run_id": "r2"})
    table = DeltaTable(path)
    assert files_before < set(table.file_uris()), "the earlier file is untouched, one is added"
    rows = spark.read.format("delta").load(path).select("_ingest_run_id", "mood").collect()
    assert sorted((row._ingest_run_id, row.mood) for row in rows) == [("r1", None), ("r2", "happy")]
    # Removed again from the catalog: the column stays, and a batch without it appends.
    append_game_rows(batch(3, {}), before, warehouse, {"run_id": "r3"})
    written = spark.read.format("delta").load(path)
    assert "mood" in written.columns
    (rebuilt,) = game_rows(batch(4, {"mood": "calm"}), before, written.schema).select("mood").collect()
    assert rebuilt.mood == "calm"
    # A parameter's type changed in the catalog (float to integer): the column keeps double.
    retyped = replace(
        entry, params=tuple(replace(p, type="integer") if p.name == "seconds" else p for p in entry.params)
    )
    append_game_rows(
        batch(5, {"seconds": 7}),
        replace(game, events={**game.events, entry.name: retyped}),
        warehouse,
        {"run_id": "r5"},
    )
    seconds = spark.read.format("delta").load(path).where("_ingest_run_id = 'r5'").select("seconds")
    assert seconds.schema["seconds"].dataType.simpleString() == "double" and seconds.first().seconds == 7.0

    instance = dg.DagsterInstance.ephemeral()
    for version, expected_added in ((before, None), (after, "mood"), (before, None)):
        columns = materialized_columns(instance, version)
        assert columns.get("columns_added") == expected_added
        instance.report_runless_asset_event(dg.AssetMaterialization(game.table_name, metadata=columns))
    kept = {column.name: column.description for column in columns["dagster/column_schema"].columns}
    assert kept["mood"] == DROPPED and "questCompleted" in kept["quest"]
