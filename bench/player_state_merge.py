"""What a batch's merge into player_state costs as the table grows: a 5,000-event batch merged
into a table of 10,000 players and into one of 1,000,000, on this machine.

    .venv/bin/python bench/player_state_merge.py [--players 10000,1000000] [--batches 4]

For each size, player_state is filled with that many players (spread over the games by their
popularity, as the generator spreads devices), then `batches` batches of generated events
are merged in with the follower pass's own MERGE (lib/player_state.py's keys and rules,
warehouse.merge_into). A batch's players are drawn as the generator draws them, a few heavy
players and a long tail, over the table's players, plus a few new ones. Each merge records
its seconds and Delta's own metrics of it: the time spent finding the files its players are
in (scan) and rewriting them (rewrite), and the files and rows it touched.
Writes bench/results/player-state-merge-<date>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import recording
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import player_state
from gaming_pipeline.lib.tables import PLAYER_STATE
from gaming_pipeline.lib.warehouse import merge_into
from gaming_pipeline.local import generator

BATCH_EVENTS = generator.OBJECT_EVENTS
# Of a batch's events, those of players the table does not hold yet.
NEW_PLAYER_SHARE = 0.02
EVENT_SCHEMA = T.StructType(
    [
        T.StructField("eventName", T.StringType()),
        T.StructField("eventTime", T.TimestampType()),
        T.StructField(
            "eventParams",
            T.StructType(
                [
                    T.StructField(name, T.StringType())
                    for name in ("game_keyword", "device_id", "platform", "app_version", "amount")
                ]
            ),
        ),
    ]
)
MERGE_METRICS = (
    "executionTimeMs",
    "scanTimeMs",
    "rewriteTimeMs",
    "numTargetFilesAdded",
    "numTargetDeletionVectorsAdded",
    "numTargetDeletionVectorsUpdated",
    "numTargetRowsUpdated",
    "numTargetRowsInserted",
)


def device(index: int) -> str:
    """The device id of the table's `index`-th player: the same in Python and in Spark (fill)."""
    return "d-" + hashlib.sha256(str(index).encode()).hexdigest()[:16]


def player_ranges(players: int) -> dict[str, range]:
    """Each game's players, as ranges of player indexes, by the games' popularity."""
    total = sum(game.popularity for game in GAMES)
    ranges, start = {}, 0
    for number, game in enumerate(GAMES):
        end = players if number == len(GAMES) - 1 else start + round(players * game.popularity / total)
        ranges[game.keyword] = range(start, end)
        start = end
    return ranges


def fill(spark: SparkSession, path: str, ranges: dict[str, range]) -> None:
    """player_state with one row per player of `ranges`, seen once, a year ago."""
    seen = F.lit(datetime(2025, 12, 1, tzinfo=UTC)).cast("timestamp")
    for game, indexes in ranges.items():
        spark.range(indexes.start, indexes.stop).select(
            F.lit(game).alias("game_keyword"),
            F.concat(F.lit("d-"), F.sha2(F.col("id").cast("string"), 256).substr(1, 16)).alias("device_id"),
            seen.alias("first_seen"),
            seen.alias("last_seen"),
            F.lit(1).alias("days_active"),
            F.lit(1).alias("sessions"),
            F.lit(0).alias("purchases"),
            F.lit(0).alias("bookings"),
            F.lit(None).alias("last_purchase_at"),
            F.lit(None).alias("last_purchase_amount"),
            F.lit("ios").alias("platform"),
            F.lit("1.0.0").alias("app_version"),
        ).select(
            *(F.col(field.name).cast(field.dataType) for field in player_state.SCHEMA.fields)
        ).write.format("delta").mode("append").save(path)


def batch(spark: SparkSession, ranges: dict[str, range], seed: int) -> DataFrame:
    """A batch of generated events over the table's players (and a few new ones), as the
    follower pass's merge takes it: its players' facts, days and sessions unchanged."""
    factory = generator.EventFactory(seed)
    rng = random.Random(seed)
    now = time.time()
    events = []
    for _ in range(BATCH_EVENTS):
        event = factory.event(now)
        params = event["eventParams"]
        indexes = ranges[params["game_keyword"]]
        if rng.random() < NEW_PLAYER_SHARE:
            params["device_id"] = f"new-{seed}-{rng.getrandbits(64):016x}"
        else:
            # The generator's heavy players and long tail, over the table's players.
            rank = min(int(rng.paretovariate(1.2)) - 1, len(indexes) - 1)
            params["device_id"] = device(indexes[rank])
        events.append(
            (
                event["eventName"],
                datetime.fromtimestamp(event["eventTime"], UTC),
                {**{name: params.get(name) for name in EVENT_SCHEMA["eventParams"].dataType.names}},
            )
        )
    facts = player_state.event_facts(spark.createDataFrame(events, EVENT_SCHEMA))
    return facts.select("*", F.lit(0).alias("days_active"), F.lit(0).alias("sessions")).select(
        *(F.col(field.name).cast(field.dataType) for field in player_state.SCHEMA.fields)
    )


def merges(spark: SparkSession, work: Path, players: int, batches: int) -> dict:
    path = PLAYER_STATE.ensure(spark, str(work / f"players-{players}"))
    ranges = player_ranges(players)
    started = time.monotonic()
    fill(spark, path, ranges)
    filled_seconds = time.monotonic() - started
    runs = []
    for seed in range(batches):
        changes = batch(spark, ranges, seed).cache()
        batch_players = changes.count()
        started = time.monotonic()
        merge_into(changes, path, player_state.KEYS, player_state.MERGED, {"bench": str(seed)})
        seconds = time.monotonic() - started
        changes.unpersist()
        metrics = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").first().operationMetrics
        runs.append(
            {"players_in_batch": batch_players, "seconds": round(seconds, 2)}
            | {name: int(metrics[name]) for name in MERGE_METRICS if name in metrics}
        )
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()
    # The first merge warms the JVM and Delta's caches: left out of the median.
    measured = runs[1:] or runs
    return {
        "players": players,
        "seconds_to_fill": round(filled_seconds, 1),
        "files": detail.numFiles,
        "bytes": detail.sizeInBytes,
        "median_seconds": round(statistics.median(run["seconds"] for run in measured), 2),
        "median_scan_seconds": round(statistics.median(run["scanTimeMs"] for run in measured) / 1000, 2),
        "median_rewrite_seconds": round(
            statistics.median(run["rewriteTimeMs"] for run in measured) / 1000, 2
        ),
        "merges": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--players", default="10000,1000000", help="table sizes, comma-separated")
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    with recording.local_spark("gp-bench-player-state-") as (spark, work):
        sizes = [merges(spark, work, int(players), args.batches) for players in args.players.split(",")]
    smallest, largest = sizes[0], sizes[-1]
    recording.write(
        "player-state-merge",
        {
            **recording.context(("pyspark", "delta-spark")),
            "batch_events": BATCH_EVENTS,
            "sizes": sizes,
            "largest_over_smallest": round(largest["median_seconds"] / smallest["median_seconds"], 2),
        },
    )


if __name__ == "__main__":
    main()
