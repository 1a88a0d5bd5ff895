"""The gaming-pipeline command as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

import boto3
import pytest

from gaming_pipeline import cli
from gaming_pipeline.cli import main
from gaming_pipeline.defs.ingest.assets import objects_in_bucket
from gaming_pipeline.defs.resources import LandingBucketResource
from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.follow import follow
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.pii import LocalKeys, PiiVault, keys_from, new_master_key
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.tables import tables_named_in
from gaming_pipeline.local import ports, processes
from gaming_pipeline_tests.service_helpers import wait_until

SEED_DAU_QUERY = (
    "select count (distinct eventParams.device_id) as DAU from mobile_events_delta_raw "
    "where to_date(eventTime) = current_date;"
)


@pytest.fixture
def pipeline_env(monkeypatch, tmp_path, landing, warehouse):
    monkeypatch.setenv("GAMING_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GAMING_PIPELINE_WAREHOUSE", warehouse)
    monkeypatch.setenv("GAMING_PIPELINE_LANDING_BUCKET", landing.bucket)
    return landing


def generate_today(capsys, seed: int = 3, events: int = 800) -> dict:
    now = datetime.now(UTC)
    hours_today = max(
        (now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds() / 86400, 0.0001
    )
    assert (
        main(
            [
                "generate",
                "--events",
                str(events),
                "--days",
                str(hours_today),
                "--end",
                now.isoformat(),
                "--seed",
                str(seed),
                "--totals",
                "--quiet",
            ]
        )
        == 0
    )
    return json.loads(capsys.readouterr().out)


def test_generate_writes_what_its_totals_say(pipeline_env, capsys):
    totals = generate_today(capsys)
    listed = objects_in_bucket(LandingBucketResource(bucket=pipeline_env.bucket))
    assert len(listed) == totals["objects"] > 0
    assert totals["events"] == 800


def test_seed_dau_query_runs_unchanged_and_tables_lists_the_tables(spark, pipeline_env, warehouse, capsys):
    totals = generate_today(capsys)
    ingest_objects(
        spark, warehouse, objects_in_bucket(LandingBucketResource(bucket=pipeline_env.bucket)), "r1"
    )
    follow(spark, warehouse, "r1-follower")
    today = datetime.now(UTC).date().isoformat()

    # Over the raw table as it is now: the games' own parameters beside the seed's struct.
    assert main(["sql", SEED_DAU_QUERY, "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row == {"DAU": totals["distinct_devices_per_day"][today]}
    own = "select count(customParams:level) as levels from mobile_events_delta_raw where eventName = 'levelStarted'"
    assert main(["sql", own, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["levels"] > 0

    assert main(["tables", "--json"]) == 0
    tables = {table["table"]: table for table in json.loads(capsys.readouterr().out)}
    # The follower pass adds the batch to the per-game tables of the games it has events of,
    # to the activity tables and to the player state.
    games = {name for name in tables if name.startswith("game_")}
    assert games <= {game.table_name for game in GAMES} and games
    assert set(tables) - games == {
        "mobile_events_delta_raw",
        "quarantine_events",
        "ingest_ledger",
        "ingest_intents",
        "activity_game_hours",
        "activity_player_days",
        "activity_game_params",
        "player_state",
    }
    assert sum(tables[name]["rows"] for name in games) == 800
    assert tables["mobile_events_delta_raw"]["rows"] == 800
    assert tables["mobile_events_delta_raw"]["location"] == f"{warehouse}/mobile_events_delta_raw"
    assert tables["mobile_events_delta_raw"]["version"] >= 1
    assert tables["ingest_ledger"]["rows"] == totals["objects"]


def test_sql_opens_only_the_tables_its_query_names():
    assert tables_named_in(SEED_DAU_QUERY) == ["mobile_events_delta_raw"]
    game = GAMES[0].table_name
    query = f"SELECT g.* FROM {game.upper()} g JOIN `kpi_daily_active_users` d USING (eventDate)"
    assert tables_named_in(query) == [game, "kpi_daily_active_users"]
    # A whole word only: a name inside a longer identifier is not the table.
    assert tables_named_in("select * from my_mobile_events_delta_raw_copy") == []


def test_sql_reports_a_bad_query_clearly(spark, pipeline_env, capsys):
    with pytest.raises(Exception, match="TABLE_OR_VIEW_NOT_FOUND"):
        main(["sql", "select * from no_such_table"])


@pytest.mark.e2e
def test_local_aws_starts_provisions_and_stops_on_ctrl_c(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["GAMING_PIPELINE_LANDING_BUCKET"] = "cli-landing"
    # Ctrl-C reaches it however this suite was started (nohup passes SIGINT on ignored).
    process = subprocess.Popen(
        [*processes.DEFAULT_SIGNALS, sys.executable, "-m", "gaming_pipeline.cli", "local-aws", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        exports = {}
        while "GAMING_PIPELINE_QUEUE_URL" not in exports:
            line = process.stdout.readline()
            assert line, "local-aws exited before printing its settings"
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").strip().partition("=")
                exports[key] = value
        assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        session = boto3.session.Session(
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
            region_name=exports["AWS_REGION"],
        )
        s3 = session.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"])
        sqs = session.client("sqs", endpoint_url=exports["AWS_ENDPOINT_URL"])
        s3.put_object(Bucket="cli-landing", Key="events/x.ndjson", Body=b"{}\n")

        def notified() -> bool:
            messages = sqs.receive_message(QueueUrl=exports["GAMING_PIPELINE_QUEUE_URL"], WaitTimeSeconds=1)
            return any("events%2Fx.ndjson" in message["Body"] for message in messages.get("Messages", []))

        wait_until(notified, 20, "the object's notification on the queue")
        attributes = sqs.get_queue_attributes(
            QueueUrl=exports["GAMING_PIPELINE_QUEUE_URL"], AttributeNames=["RedrivePolicy"]
        )["Attributes"]
        assert "-dlq" in json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=20) == 0
        finally:
            process.kill()
            process.wait()


def test_provisioning_twice_changes_nothing(local_aws):
    first = aws.provision("twice-bucket", queue_name="twice")
    assert aws.provision("twice-bucket", queue_name="twice") == first
    subscriptions = aws.client("sns").list_subscriptions_by_topic(TopicArn=first.topic_arn)["Subscriptions"]
    assert len(subscriptions) == 1


def test_pii_player_id_prints_the_pseudonym_erasure_takes(pipeline_env, capsys):
    assert main(["pii", "player-id", "d-8c1f"]) == 0
    printed = capsys.readouterr().out.strip()
    vault = PiiVault(aws.client("s3"), "unused", keys_from(Settings.from_env()))
    assert printed == vault.player_id("d-8c1f") and len(printed) == 64


def test_the_vault_keys_stay_in_kms_unless_the_local_fallback_is_chosen():
    assert Settings.from_env({}).pii_keys == "kms"
    with pytest.raises(ValueError, match="GAMING_PIPELINE_PII_KEYS=local"):
        Settings.from_env({"GAMING_PIPELINE_PII_MASTER_KEY": new_master_key()})
    local = Settings.from_env(
        {"GAMING_PIPELINE_PII_KEYS": "local", "GAMING_PIPELINE_PII_MASTER_KEY": new_master_key()}
    )
    assert isinstance(keys_from(local), LocalKeys)
    with pytest.raises(ValueError, match="one of kms, local"):
        Settings.from_env({"GAMING_PIPELINE_PII_KEYS": "file"})


def test_sql_attaches_to_the_spark_a_running_demo_wrote_down(
    spark, spark_server, pipeline_env, monkeypatch, capsys
):
    """With no Spark configured, the CLI uses the running demo's (warm) Spark Connect server
    instead of starting a JVM of its own; a stale address (a demo killed) is passed over."""
    monkeypatch.delenv("GAMING_PIPELINE_SPARK_MASTER", raising=False)
    settings = Settings.from_env()
    settings.spark_connect_file.parent.mkdir(parents=True, exist_ok=True)
    settings.spark_connect_file.write_text(spark_server)
    assert main(["sql", "--json", "select 1 as one"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"one": 1}
    assert f"attached to the running Spark at {spark_server}" in captured.err
    settings.spark_connect_file.write_text(f"sc://127.0.0.1:{ports.free_port()}")
    assert cli._running_spark(settings) == ""
