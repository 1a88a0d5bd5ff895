"""What the daily OPTIMIZE buys: the KPI queries over one day written as many small files,
before and after compaction, on this machine.

    .venv/bin/python bench/optimize.py [--writes 200] [--rows-per-write 2000] [--repeats 5]

One day of raw events is appended in many small commits (as minute-by-minute ingestion
writes it), then the seed's queries for that day (events per hour, bookings per hour, DAU)
run `repeats` times on a fresh snapshot each; then the day is compacted as the daily pass
does and the queries run again. Writes bench/results/optimize-<date>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, date, datetime

import recording
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import kpis, maintenance
from gaming_pipeline.lib.tables import RAW

DAY = date(2026, 11, 20)


def small_write(spark: SparkSession, rows: int, seed: int):
    """`rows` events of DAY with the raw table's columns, made by Spark itself."""
    games = F.array(*(F.lit(game.keyword) for game in GAMES))
    names = F.array(*(F.lit(name) for name in ("gameStart", "levelUp", "purchaseEvent", "gameEnd")))
    pick = (F.rand(seed) * 1000).cast("int")
    name = F.element_at(names, pick % 4 + 1)
    return spark.range(rows).select(
        F.expr("uuid()").alias("event_id"),
        name.alias("eventName"),
        F.timestamp_seconds(
            F.lit(int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())) + F.col("id") * 86399 / rows
        )
        .cast("timestamp")
        .alias("eventTime"),
        F.struct(
            F.element_at(games, pick % len(GAMES) + 1).alias("game_keyword"),
            F.lit("bench").alias("app_name"),
            (pick % 50).alias("scoreAdjustment"),
            F.when(pick % 2 == 0, "ios").otherwise("android").alias("platform"),
            F.lit("1.0.0").alias("app_version"),
            F.concat(F.lit("d-"), (F.rand(seed + 1) * 20000).cast("int").cast("string")).alias("device_id"),
            F.lit(None).cast("timestamp").alias("client_event_time"),
            F.when(name == "purchaseEvent", F.lit(4.99)).alias("amount"),
        ).alias("eventParams"),
        F.lit(DAY).alias("eventDate"),
        F.lit(f"bench/{seed}.ndjson.gz").alias("_source_object"),
        F.current_timestamp().alias("_source_modified_at"),
        F.current_timestamp().alias("_ingested_at"),
        F.lit("bench").alias("_ingest_run_id"),
    )


def kpi_queries(spark: SparkSession, path: str, repeats: int) -> dict:
    """Seconds for the day's three seed KPIs, each repeat on a fresh snapshot of the table."""
    timings = []
    for _ in range(repeats):
        started = time.monotonic()
        events = spark.read.format("delta").load(path).where(F.col("eventDate") == F.lit(DAY))
        # The seed's three KPIs over the day's raw events, as a rebuild computes them.
        hours = kpis.game_hours(events)
        kpis.events_per_hour(hours).collect()
        kpis.bookings_per_hour(hours).collect()
        kpis.daily_active_users(kpis.player_days(events)).collect()
        timings.append(time.monotonic() - started)
    return {"median_seconds": round(statistics.median(timings), 3), "seconds": [round(t, 3) for t in timings]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--rows-per-write", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with recording.local_spark("gp-bench-optimize-") as (spark, work):
        path = RAW.ensure(spark, str(work))
        started = time.monotonic()
        for n in range(args.writes):
            small_write(spark, args.rows_per_write, n).coalesce(1).write.format("delta").mode("append").save(
                path
            )
        written_seconds = time.monotonic() - started
        kpi_queries(spark, path, 1)  # warm-up: JIT and caches, not measured
        before = {**maintenance.footprint(spark, path).__dict__, **kpi_queries(spark, path, args.repeats)}
        compaction = maintenance.compact(spark, path, maintenance.days_in([DAY]))
        after = {**maintenance.footprint(spark, path).__dict__, **kpi_queries(spark, path, args.repeats)}
    results = {
        **recording.context(("pyspark", "delta-spark")),
        "day": {
            "rows": args.writes * args.rows_per_write,
            "writes": args.writes,
            "seconds_to_write": round(written_seconds, 1),
        },
        "before_optimize": before,
        "optimize": compaction,
        "after_optimize": after,
        "speedup": round(before["median_seconds"] / after["median_seconds"], 2),
    }
    recording.write("optimize", results)


if __name__ == "__main__":
    main()
