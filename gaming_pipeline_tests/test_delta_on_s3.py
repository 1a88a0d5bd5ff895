"""The lake on S3 with several writers: two Spark drivers commit to one s3a table at once,
through the DynamoDB log store on the local endpoint, and no commit is lost or doubled."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pyspark
import pytest

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.jars import runtime_jars
from gaming_pipeline.lib.spark import s3a_config
from gaming_pipeline.lib.warehouse import table_history
from gaming_pipeline.local import processes
from gaming_pipeline_tests.delta_writer import ROWS_PER_BATCH
from gaming_pipeline_tests.ingest_helpers import commit_claims, own_driver_environ, settled_claims
from gaming_pipeline_tests.service_helpers import wait_until

BATCHES = 4
WRITERS = (0, 1)
DEAD_DRIVER = "a driver that died after claiming version 1"


def claim_as_a_dead_driver(bucket: str, table: str, commit_table: str) -> None:
    """What a driver leaves when it dies between winning version 1 and copying it into the log:
    its actions in a temporary object and an incomplete claim that names it."""
    temp_path = ".tmp/00000000000000000001.json.dead-driver"
    commit_info = {
        "commitInfo": {
            "timestamp": 1_700_000_000_000,
            "operation": "WRITE",
            "operationParameters": {"mode": "Append"},
            "isBlindAppend": True,
            "engineInfo": DEAD_DRIVER,
        }
    }
    aws.client("s3").put_object(
        Bucket=bucket,
        Key=f"warehouse/concurrent/_delta_log/{temp_path}",
        Body=json.dumps(commit_info).encode() + b"\n",
    )
    aws.client("dynamodb").put_item(
        TableName=commit_table,
        Item={
            "tablePath": {"S": table},
            "fileName": {"S": "00000000000000000001.json"},
            "tempPath": {"S": temp_path},
            "complete": {"S": "false"},
        },
    )


def wait_for(signal: Path, drivers: list[subprocess.Popen], logs: list[Path]) -> None:
    """Until a driver makes `signal`; a driver that exits first fails the test with its log."""

    def signalled() -> bool:
        for driver, log in zip(drivers, logs, strict=True):
            assert driver.poll() is None, log.read_text()[-3000:]
        return signal.exists()

    wait_until(signalled, 240, what=f"the drivers' signal {signal.name}")


@pytest.mark.slow
def test_two_drivers_commit_to_one_s3a_table_each_commit_exactly_once(local_aws, spark, tmp_path):
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    aws.client("s3").create_bucket(Bucket=bucket)
    table = f"s3a://{bucket}/warehouse/concurrent"
    commit_table = f"delta-commits-{uuid.uuid4().hex[:10]}"
    env = own_driver_environ(
        GAMING_PIPELINE_HOME=str(tmp_path / "home"),
        GAMING_PIPELINE_SPARK_MASTER="local[1]",
        GAMING_PIPELINE_DELTA_COMMIT_TABLE=commit_table,
    )
    signals = tmp_path / "signals"
    signals.mkdir()
    logs = [tmp_path / f"writer-{writer}.log" for writer in WRITERS]
    arguments = ["python", "-m", "gaming_pipeline_tests.delta_writer", table]
    drivers = [
        processes.start([*arguments, str(writer), str(BATCHES), str(signals)], env, log)
        for writer, log in zip(WRITERS, logs, strict=True)
    ]
    try:
        wait_for(signals / "created", drivers, logs)
        claim_as_a_dead_driver(bucket, table, commit_table)
        (signals / "claimed").touch()
        for writer in WRITERS:
            wait_for(signals / f"ready-{writer}", drivers, logs)
        (signals / "go").touch()
        for driver, log in zip(drivers, logs, strict=True):
            assert driver.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        processes.stop(drivers)

    history = table_history(spark, table).collect()
    commits = 1 + 1 + len(WRITERS) * BATCHES
    assert sorted(entry.version for entry in history) == list(range(commits))
    # The dead driver's claim won version 1: the live drivers, reading the table, finished
    # its copy into the log for it.
    assert [entry.engineInfo for entry in history if entry.version == 1] == [DEAD_DRIVER]
    batches = {entry.version: int(entry.userMetadata.split()[-1]) for entry in history if entry.userMetadata}
    assert sorted(batches.values()) == sorted(list(range(BATCHES)) * len(WRITERS))
    # The live drivers raced: some append was refused the version after the one it read,
    # and committed later, after Delta's conflict check.
    assert any(entry.version > entry.readVersion + 1 for entry in history if entry.version in batches)

    rows = spark.read.format("delta").load(table).groupBy("writer", "batch").count().collect()
    assert {(row.writer, row.batch): row["count"] for row in rows} == {
        (writer, batch): ROWS_PER_BATCH for writer in WRITERS for batch in range(BATCHES)
    }

    assert commit_claims(commit_table, table) == settled_claims(range(commits))
    # Settled claims leave no temporary objects behind (a "folder/" key is s3a's marker).
    listing = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix="warehouse/concurrent/_delta_log/.tmp/")
    assert [item["Key"] for item in listing.get("Contents", []) if not item["Key"].endswith("/")] == []


FINISH_RACE = Path(__file__).parent / "jvm" / "FinishRace.java"


@pytest.mark.parametrize("moment", ["first-read", "close"])
def test_a_driver_finishing_a_claim_another_driver_finishes_meanwhile_leaves_its_commit_whole(
    local_aws, tmp_path, moment
):
    """Two drivers recover one claim at once (jvm/FinishRace.java): the other driver copies the
    commit, completes the claim and removes its temporary object while this one is reading it."""
    if not shutil.which("javac"):
        pytest.skip("no javac: the harness (and the log store) are built with the JDK's javac")
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    aws.client("s3").create_bucket(Bucket=bucket)
    classpath = [*runtime_jars(), str(Path(pyspark.__file__).parent / "jars" / "*")]
    classes = tmp_path / "classes"
    javac = ["javac", "--release", "17", "-nowarn", "-d", str(classes), "-cp", ":".join(classpath)]
    subprocess.run([*javac, str(FINISH_RACE)], check=True)
    conf = {key.removeprefix("spark.hadoop."): value for key, value in s3a_config().items()}
    conf.update(
        {
            "gaming_pipeline.commits.table": f"delta-commits-{uuid.uuid4().hex[:10]}",
            "gaming_pipeline.commits.region": aws.region(),
            "gaming_pipeline.commits.endpoint": aws.endpoint("DYNAMODB"),
        }
    )
    race = subprocess.run(
        [
            "java",
            "-cp",
            ":".join([str(classes), *classpath]),
            "gaming_pipeline_tests.jvm.FinishRace",
            moment,
            f"s3a://{bucket}/warehouse/race",
            *(f"{key}={value}" for key, value in conf.items()),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    (tmp_path / "finish-race.log").write_text(race.stdout + race.stderr)
    assert race.returncode == 0, race.stderr[-3000:] + race.stdout[-3000:]
