import gzip
import json
from datetime import UTC, datetime

from gaming_pipeline.games import GAMES, GAMES_BY_KEYWORD
from gaming_pipeline.local import generator

END = datetime(2026, 11, 23, tzinfo=UTC)


def objects(seed=1, count=3000, days=2.0, object_events=500):
    start, end = generator.history_window(days, END)
    return list(generator.landing_objects(generator.history(seed, count, start, end), seed, object_events))


def test_same_seed_gives_the_same_objects_byte_for_byte():
    first, second = objects(), objects()
    assert [(key, body) for key, body, _ in first] == [(key, body) for key, body, _ in second]
    assert [key for key, _, _ in objects(seed=2)] != [key for key, _, _ in first]


def test_objects_are_gzip_ndjson_within_one_hour_and_size_limit():
    for key, body, events in objects():
        lines = gzip.decompress(body).decode().splitlines()
        assert [json.loads(text) for text in lines] == events
        assert len(events) <= 500
        hours = {event["eventTime"] // 3600 for event in events}
        assert len(hours) == 1
        hour = datetime.fromtimestamp(hours.pop() * 3600, UTC)
        assert key.startswith(f"events/{hour:%Y/%m/%d/%H}/") and key.endswith(".ndjson.gz")


def test_events_follow_the_seed_schema_and_registry():
    names = set()
    for _, _, events in objects():
        for event in events:
            params = event["eventParams"]
            names.add(event["eventName"])
            assert GAMES_BY_KEYWORD[params["game_keyword"]].app_name == params["app_name"]
            assert params["platform"] in ("ios", "android")
            assert params["device_id"].startswith("d-")
            assert ("amount" in params) == (event["eventName"] == "purchaseEvent")
            client = datetime.fromisoformat(params["client_event_time"].replace("Z", "+00:00"))
            assert client.timestamp() <= event["eventTime"] + 1
    assert {"gameStart", "levelUp", "scoreAdjustment", "purchaseEvent"} <= names


def test_totals_count_what_was_written():
    written = {}
    totals = generator.write_objects(
        objects(), lambda key, body: written.update({key: body}), generator.Totals()
    )
    summary = totals.as_dict()
    assert (
        summary["events"]
        == 3000
        == sum(sum(games.values()) for games in summary["events_per_day_and_game"].values())
    )
    assert summary["objects"] == len(written)
    assert summary["purchases"] > 0 and float(summary["purchase_sum"]) > 0
    games_seen = {game for games in summary["events_per_day_and_game"].values() for game in games}
    assert games_seen == {game.keyword for game in GAMES}
