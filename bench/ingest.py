"""Ingestion throughput and landing-to-commit latency, measured on this machine.

    .venv/bin/python bench/ingest.py [--events 500000]

1. Throughput: N generated events in gzip landing objects on the local S3 endpoint, ingested
   (a) by a fresh process with its own JVM, as every Dagster run does today, and (b) by a
   warm Spark session, which is what a long-lived engine would give.
2. Latency: the real Dagster daemon with the sensors on, a landing object put every few
   seconds; for each, the seconds from its S3 last-modified time to its ledger entry.

Writes bench/results/ingest-<date>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import recording
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.tables import LEDGER_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline.local import generator, processes

PROJECT = Path(__file__).resolve().parent.parent
FRESH_RUN = """
import json, sys, time
started = time.monotonic()
from gaming_pipeline.defs.ingest.assets import objects_in_bucket
from gaming_pipeline.defs.resources import LandingBucketResource
from gaming_pipeline.lib.ingest import ingest_objects
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.spark import start_session
home, warehouse, bucket = sys.argv[1:4]
spark = start_session(Settings.from_env({"GAMING_PIPELINE_HOME": home}))
spark.sparkContext.setLogLevel("ERROR")
session_ready = time.monotonic()
result = ingest_objects(spark, warehouse, objects_in_bucket(LandingBucketResource(bucket=bucket)), "bench")
print(json.dumps({"session_seconds": session_ready - started, "ingest_seconds": result.seconds,
                  "total_seconds": time.monotonic() - started, "rows": result.rows_in}))
"""


def load(bucket: str, seed: int, events: int, end: datetime) -> int:
    s3 = aws.client("s3")
    start, end = generator.history_window(1.0, end)
    totals = generator.write_objects(
        generator.landing_objects(generator.history(seed, events, start, end), seed),
        lambda key, body: s3.put_object(Bucket=bucket, Key=key, Body=body),
        generator.Totals(),
    )
    return totals.objects


def throughput(events: int, work: Path) -> dict:
    bucket = aws.provision("bench-throughput", queue_name="bench-throughput").bucket
    objects = load(bucket, 1, events, datetime(2026, 11, 20, tzinfo=UTC))
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH_RUN, str(work / "home"), str(work / "wh"), bucket],
        capture_output=True,
        text=True,
        check=True,
    )
    cold = json.loads(fresh.stdout.strip().splitlines()[-1])

    from gaming_pipeline.defs.ingest.assets import objects_in_bucket
    from gaming_pipeline.defs.resources import LandingBucketResource
    from gaming_pipeline.lib.ingest import ingest_objects
    from gaming_pipeline.lib.settings import Settings
    from gaming_pipeline.lib.spark import start_session

    spark = start_session(Settings.from_env({"GAMING_PIPELINE_HOME": str(work / "home")}))
    spark.sparkContext.setLogLevel("ERROR")
    warm_wh = str(work / "warm")
    # The first pass warms the JVM; the second, on new objects, is the one measured.
    ingest_objects(spark, warm_wh, objects_in_bucket(LandingBucketResource(bucket=bucket)), "warm-up")
    load(bucket, 2, events, datetime(2026, 11, 21, tzinfo=UTC))
    warm = ingest_objects(spark, warm_wh, objects_in_bucket(LandingBucketResource(bucket=bucket)), "warm")
    spark.stop()
    return {
        "events": events,
        "objects": objects,
        "fresh_process": {**cold, "rows_per_second": round(cold["rows"] / cold["total_seconds"])},
        "warm_session": {
            "rows": warm.rows_in,
            "seconds": round(warm.seconds, 2),
            "rows_per_second": round(warm.rows_in / warm.seconds),
        },
    }


def latency(objects: int, every: float, work: Path) -> dict:
    landing = aws.provision("bench-latency", queue_name="bench-latency")
    daemon, env = processes.start_daemon_for(work / "latency", landing.bucket, landing.queue_url)
    warehouse = env["GAMING_PIPELINE_WAREHOUSE"]
    s3 = aws.client("s3")
    factory = generator.EventFactory(seed=3)
    try:
        for sequence in range(objects):
            events = [factory.event(time.time()) for _ in range(200)]
            key, body, _ = next(generator.landing_objects(events, 3))
            s3.put_object(Bucket=landing.bucket, Key=key.replace("000000", f"{sequence:06d}"), Body=body)
            time.sleep(every)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if DeltaTable(table_path(warehouse, LEDGER_TABLE)).count() >= objects:
                    break
            except TableNotFoundError:
                pass
            time.sleep(2)
    finally:
        processes.stop([daemon])
    ledger = DeltaTable(table_path(warehouse, LEDGER_TABLE)).to_pyarrow_table().to_pylist()
    delays = sorted((row["ingested_at"] - row["source_modified_at"]).total_seconds() for row in ledger)

    def quantile(q: float) -> float:
        return round(delays[min(len(delays) - 1, int(q * len(delays)))], 1)

    return {
        "objects": objects,
        "one_object_every_seconds": every,
        "ingested": len(delays),
        "raw_rows": DeltaTable(table_path(warehouse, RAW_TABLE)).count(),
        "landing_to_commit_seconds": {
            "p50": quantile(0.5),
            "p95": quantile(0.95),
            "max": delays[-1] if delays else None,
            "mean": round(statistics.mean(delays), 1) if delays else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--latency-objects", type=int, default=20)
    parser.add_argument("--every", type=float, default=5.0)
    args = parser.parse_args()
    with recording.workplace() as work:
        results = {
            **recording.context(("dagster", "pyspark", "delta-spark", "moto")),
            "throughput": throughput(args.events, work),
            "latency": latency(args.latency_objects, args.every, work),
        }
    recording.write("ingest", results)


if __name__ == "__main__":
    main()
