"""Alerts: an injected drop in purchases reaches a local webhook once; quiet hours send nothing."""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from gaming_pipeline.definitions import defs
from gaming_pipeline.defs.alerts.sensors import alerts_sensor, build_alerts_sensor
from gaming_pipeline.defs.kpis.assets import kpi_tables
from gaming_pipeline.defs.partitions import EVENTS_PER_GAME
from gaming_pipeline.defs.resources import AlertWebhookResource
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.alerts import (
    MIN_EXPECTED_EVENTS,
    USUAL_WINDOW_SECONDS,
    AlertState,
    Arrival,
    check_alert,
    outage_alert,
    run_failure_alert,
    silent_games,
)
from gaming_pipeline.lib.kpis import BOOKINGS_PER_HOUR, HOURLY_SLICES
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.local import ports
from gaming_pipeline_tests.ingest_helpers import ingest_everything, refresh, resources

GAME = GAMES[0]
FIRST_DAY = datetime(2026, 11, 12, tzinfo=UTC)
DROP_DAY = FIRST_DAY + timedelta(days=8)
DROP_HOUR = DROP_DAY.replace(hour=14)
PURCHASES_PER_HOUR = 6


BOOKINGS = dg.AssetKey(BOOKINGS_PER_HOUR)
SLICES = dg.AssetKey(HOURLY_SLICES)


class Receiver:
    """A local webhook endpoint that keeps what it is sent."""

    def __init__(self):
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", ports.free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/live-ops"


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.server.shutdown()


def event(name: str, at: datetime, device: str, platform: str = "ios", app_version: str = "2.0.0") -> dict:
    params = {
        "game_keyword": GAME.keyword,
        "app_name": GAME.app_name,
        "platform": platform,
        "app_version": app_version,
        "device_id": device,
        "amount": 4.99 if name == "purchaseEvent" else None,
    }
    return {
        "event_id": uuid.uuid4().hex,
        "eventName": name,
        "eventTime": int(at.timestamp()),
        "eventParams": params,
    }


def hours_of(day: datetime) -> list[datetime]:
    return [day + timedelta(hours=h) for h in range(24)]


def purchases(day: datetime, drop_at: datetime | None = None) -> list[dict]:
    """PURCHASES_PER_HOUR purchases of 4.99 in every hour of `day`, one only at `drop_at`."""
    return [
        event("purchaseEvent", hour + timedelta(minutes=5 * n + 1), f"d-{n}")
        for hour in hours_of(day)
        for n in range(1 if hour == drop_at else PURCHASES_PER_HOUR)
    ]


def platform_purchases(day: datetime, broken_from: datetime | None = None) -> list[dict]:
    """PURCHASES_PER_HOUR purchases an hour on ios 2.0.0 and as many on android 2.4.1, but from
    `broken_from` on android players only play while iOS buys twice as much: the game's total
    holds up."""
    events = []
    for hour in hours_of(day):
        broken = broken_from is not None and hour >= broken_from
        for n in range(PURCHASES_PER_HOUR):
            at = hour + timedelta(minutes=5 * n + 1)
            events.append(event("purchaseEvent", at, f"ios-{n}"))
            if broken:
                events.append(event("purchaseEvent", at + timedelta(minutes=1), f"ios-{n}"))
            events.append(
                event("levelUp" if broken else "purchaseEvent", at, f"android-{n}", "android", "2.4.1")
            )
    return events


def land(bucket: str, day: datetime, events: list[dict]) -> None:
    body = gzip.compress("".join(json.dumps(event) + "\n" for event in events).encode())
    aws.client("s3").put_object(Bucket=bucket, Key=f"events/{day:%Y/%m/%d}/purchases.ndjson.gz", Body=body)


class AlertsSensor:
    """alerts_sensor evaluated tick after tick, its cursor carried as the daemon would."""

    def __init__(self, instance: dg.DagsterInstance, url: str, sensor: dg.SensorDefinition = alerts_sensor):
        self.instance, self.url, self.cursor, self.sensor = instance, url, None, sensor
        self.repository = defs().get_repository_def()

    def tick(self) -> None:
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            repository_def=self.repository,
            resources={"alert_webhook": AlertWebhookResource(url=self.url)},
        ) as context:
            self.cursor = self.sensor(context).cursor


def test_a_drop_in_purchases_alerts_once_and_quiet_hours_send_nothing(spark, landing, warehouse, receiver):
    with dg.instance_for_test() as instance:
        sensor = AlertsSensor(instance, receiver.url)
        for n in range(8):
            land(landing.bucket, FIRST_DAY + timedelta(days=n), purchases(FIRST_DAY + timedelta(days=n)))
        ingest_everything(landing, warehouse, instance)
        week = (FIRST_DAY.date().isoformat(), (DROP_DAY - timedelta(days=1)).date().isoformat())
        refresh(landing, warehouse, instance, *week, [kpi_tables], [BOOKINGS])
        sensor.tick()
        assert receiver.received == [], "a steady week is quiet"

        land(landing.bucket, DROP_DAY, purchases(DROP_DAY, drop_at=DROP_HOUR))
        ingest_everything(landing, warehouse, instance)
        day = DROP_DAY.date().isoformat()
        result = dg.materialize(
            [kpi_tables],
            selection=[BOOKINGS],
            resources=resources(landing, warehouse),
            instance=instance,
            partition_key=day,
        )
        (evaluation,) = [
            e for e in result.get_asset_check_evaluations() if e.check_name == "bookings_hold_up"
        ]
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
        sensor.tick()
        assert len(receiver.received) == 1, receiver.received
        (message,) = receiver.received
        assert message["text"].startswith(
            ":rotating_light: [ERROR] bookings_hold_up failed on kpi_bookings_per_hour"
        )
        assert (
            f"{GAME.keyword} {DROP_HOUR:%Y-%m-%d %H}:00 UTC: 4.99 against a usual 29.94 (83% down)"
            in message["text"]
        )
        assert message["blocks"][0]["type"] == "section"

        # The same drop seen again by a second refresh of its day is the same incident.
        dg.materialize(
            [kpi_tables],
            selection=[BOOKINGS],
            resources=resources(landing, warehouse),
            instance=instance,
            partition_key=day,
        )
        sensor.tick()
        sensor.tick()
        assert len(receiver.received) == 1


def test_a_patch_breaking_one_platform_alerts_while_the_other_holds_the_total_up(
    spark, landing, warehouse, receiver
):
    with dg.instance_for_test() as instance:
        sensor = AlertsSensor(instance, receiver.url)
        for n in range(8):
            land(
                landing.bucket,
                FIRST_DAY + timedelta(days=n),
                platform_purchases(FIRST_DAY + timedelta(days=n)),
            )
        land(landing.bucket, DROP_DAY, platform_purchases(DROP_DAY, broken_from=DROP_HOUR))
        ingest_everything(landing, warehouse, instance)
        week = (FIRST_DAY.date().isoformat(), (DROP_DAY - timedelta(days=1)).date().isoformat())
        refresh(landing, warehouse, instance, *week, [kpi_tables], [BOOKINGS, SLICES])
        sensor.tick()
        assert receiver.received == [], "a steady week is quiet"

        result = dg.materialize(
            [kpi_tables],
            selection=[BOOKINGS, SLICES],
            resources=resources(landing, warehouse),
            instance=instance,
            partition_key=DROP_DAY.date().isoformat(),
        )
        outcomes = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert outcomes["bookings_hold_up"].passed, "the game's total holds up"
        broken = outcomes["bookings_hold_up_per_slice"]
        assert not broken.passed and broken.severity == dg.AssetCheckSeverity.ERROR
        incidents = broken.metadata["incidents"].value
        hours = [hour for hour in hours_of(DROP_DAY) if hour >= DROP_HOUR]
        assert sorted(incidents) == sorted(
            f"{game} android{version} {hour:%Y-%m-%d %H}:00 UTC"
            for game in (GAME.keyword, "all_games")
            for version in ("", " 2.4.1")
            for hour in hours
        ), "android and its 2.4.1 drop, iOS does not"
        sensor.tick()
        sensor.tick()
        (message,) = receiver.received
        assert message["text"].startswith(
            ":rotating_light: [ERROR] bookings_hold_up_per_slice failed on kpi_hourly_slices"
        )
        assert (
            f"{GAME.keyword} android 2.4.1 {DROP_HOUR:%Y-%m-%d %H}:00 UTC: 0.00 against a usual 29.94"
            in (message["text"])
        )


def test_an_incident_is_said_once_and_survives_the_cursor():
    state = AlertState()
    metadata = {"incidents": ["ninja_run 2026-11-20 14:00 UTC"], "drops": []}
    alert = check_alert(
        "kpi_bookings_per_hour", "bookings_hold_up", "WARN", "", metadata, "2026-11-20", state
    )
    assert alert.lines == ["ninja_run 2026-11-20 14:00 UTC"] and alert.severity == "WARN"
    state.remember(alert)
    again = AlertState.from_cursor(state.to_cursor())
    assert (
        check_alert("kpi_bookings_per_hour", "bookings_hold_up", "WARN", "", metadata, "2026-11-20", again)
        is None
    )
    wider = {"incidents": [*metadata["incidents"], "ninja_run 2026-11-20 15:00 UTC"]}
    assert check_alert(
        "kpi_bookings_per_hour", "bookings_hold_up", "WARN", "", wider, "2026-11-20", again
    ).lines == ["ninja_run 2026-11-20 15:00 UTC"]


def test_other_checks_and_failed_runs_are_one_incident_each():
    state = AlertState()
    consistency = check_alert(
        "kpi_sessions",
        "players_match_raw",
        "ERROR",
        "players equal devices",
        {"checked": 3},
        "2026-11-20",
        state,
    )
    assert consistency.lines == ["2026-11-20: players equal devices", "checked: 3"]
    state.remember(consistency)
    assert check_alert("kpi_sessions", "players_match_raw", "ERROR", "", {}, "2026-11-20", state) is None
    assert check_alert("kpi_sessions", "players_match_raw", "ERROR", "", {}, "2026-11-21", state) is not None
    failed = run_failure_alert("abc", "refresh_days_job", "2026-11-20", "Spark died", state)
    assert (
        failed.slack()["text"]
        == ":rotating_light: [ERROR] run of refresh_days_job failed (2026-11-20)\n• Spark died\n• run abc"
    )


def test_a_game_gone_silent_alerts_once_even_with_nothing_landing_and_a_small_game_does_not(receiver):
    silence = 2.0
    # The pace that makes a usual sender: MIN_EXPECTED_EVENTS in `silence` seconds.
    busy = int(MIN_EXPECTED_EVENTS * USUAL_WINDOW_SECONDS / silence) + 1
    with dg.instance_for_test() as instance:
        sensor = AlertsSensor(instance, receiver.url, build_alerts_sensor(silence))

        def ingested(events: dict[str, int]) -> None:
            """A follower pass's record of the new events it added, as follow_raw writes it."""
            instance.report_runless_asset_event(
                dg.AssetMaterialization(PLAYER_STATE_TABLE, metadata={EVENTS_PER_GAME: events})
            )

        ingested({"galaxy_miners": busy, "ninja_run": 3})
        sensor.tick()
        assert receiver.received == [], "nothing is silent yet"
        # Then nothing lands at all: no object, no run, nothing but time passing.
        time.sleep(silence + 0.5)
        sensor.tick()
        sensor.tick()
        (message,) = receiver.received
        assert message["text"].startswith(":rotating_light: [ERROR] 1 game(s) sent no events for")
        assert "galaxy_miners: no events for" in message["text"] and "ninja_run" not in message["text"]

        # It sends again, then goes silent again: a new incident.
        ingested({"galaxy_miners": busy})
        sensor.tick()
        assert len(receiver.received) == 1
        time.sleep(silence + 0.5)
        sensor.tick()
        assert len(receiver.received) == 2


@pytest.mark.unit
def test_silence_is_judged_against_the_games_usual_pace():
    hour = USUAL_WINDOW_SECONDS
    arrivals = [
        Arrival(1, 1000.0, {"busy": 600, "small": 10}),
        Arrival(2, 1000.0 + hour / 2, {"busy": 600, "small": 5, "back": 900}),
        Arrival(3, 1000.0 + hour + 840, {"back": 900}),
    ]
    now = 1000.0 + hour + 900
    silent = silent_games(arrivals, now, silence_seconds=900)
    # busy: 1200 an hour would have sent 300 in 15 minutes; small: 15 an hour, 3.75.
    assert [(s.game, s.since.storage_id, round(s.seconds), round(s.usual)) for s in silent] == [
        ("busy", 2, 2700, 300)
    ]
    assert silent_games(arrivals, now, silence_seconds=0) == []
    state = AlertState()
    alert = outage_alert(silent, games_seen=3, state=state)
    assert alert.headline == "1 game(s) sent no events for 45 minutes or more"
    state.remember(alert)
    assert outage_alert(silent, games_seen=3, state=state) is None
    everyone = silent_games(arrivals, now + 3 * hour, silence_seconds=900)
    assert outage_alert(everyone, games_seen=2, state=AlertState()).headline.startswith(
        "no events at all for"
    )
