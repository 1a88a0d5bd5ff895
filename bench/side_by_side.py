"""`make bench`: gaming_pipeline side by side with what users would pick instead, on this
machine, in one run.

    .venv/bin/python bench/side_by_side.py [--events 250000] [--latency-seconds 1200]
        [--day-base 250000] [--day-scales 1 4 8] [--idle-minutes 10]
        [--only STEP ... | --skip STEP ...] [--results FILE] [--benchmarks-md FILE]

Steps (all by default): throughput, latency, day-growth, idle-cost.

1. Throughput and growth: a seeded workload of landing objects (1x, 2x and 4x --events) on
   the local S3 endpoint, taken to the raw table and the 30 per-game tables by
   - ours: the ingestion run through Dagster, then the follower run that adds the batch to
     the per-game tables, both attached to the long-lived Spark Connect server
     (`gaming-pipeline spark-server`), as the demo runs them;
   - the peers of bench/peers.py: plain Structured Streaming with foreachBatch, Polars with
     deltalake, and the bare Spark parse-and-write floor.
   Every peer's 31 row counts must equal ours before any figure is written. Peak memory is
   the largest summed RSS of the processes doing the work, sampled every 0.2 s.
2. Latency: 2,000 events/s through the HTTP ingest service for --latency-seconds, the Dagster
   daemon's sensors driving the runs; per event, the seconds from its receipt (eventTime) to
   the raw-table commit holding it, and to today's kpi_events_per_hour counting it.
3. Overhead: for the ingestion runs of step 2, the seconds from the sensor's run request to
   the run's Spark session being ready, and the share of each run spent outside Spark.
4. Day growth (bench/day_growth.py): one fixed 5,000-event object landed into today's day
   already holding 1x, 4x and 8x --day-base events; the seconds from landing to the raw,
   per-game and KPI tables holding it, through the daemon's sensors.
5. Idle cost (bench/idle_cost.py): the CPU share of the whole demo stack at 50 events/s
   through the HTTP service over --idle-minutes.

Writes bench/results/side-by-side-<date>.json (and .png with the throughput step), and
BENCHMARKS.md. Steps run alone (--only, --skip) add their figures to the newest results
file, keeping its other steps' figures, so BENCHMARKS.md still shows every step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import day_growth
import idle_cost
import psutil
import recording
import report
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.tables import LEDGER_TABLE, RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline.local import generator, processes

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
TABLES = [RAW_TABLE, *(game.table_name for game in GAMES)]
SCALES = (1, 2, 4)
PEERS = ("structured-streaming", "polars", "bare-spark")
STEPS = ("throughput", "latency", "day-growth", "idle-cost")
# The latency load's first and last this many seconds are compared for drift.
DRIFT_WINDOW = 300


class PeakMemory:
    """The largest summed RSS, in MiB, of some processes and all their children."""

    def __init__(self, pids: list[int]):
        self.pids, self.peak, self._stop = pids, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            # By pid: one watched process may be another's child (the server is this one's).
            rss: dict[int, int] = {}
            for pid in self.pids:
                try:
                    root = psutil.Process(pid)
                    for process in [root, *root.children(recursive=True)]:
                        rss[process.pid] = process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, sum(rss.values()) / 2**20)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def row_counts(warehouse: str) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        try:
            counts[table] = DeltaTable(table_path(warehouse, table)).count()
        except TableNotFoundError:
            counts[table] = 0
    return counts


def load_workload(bucket: str, events: int, seed: int) -> int:
    """`events` generated events over one day, in gzip NDJSON objects of 5,000 events."""
    s3 = aws.client("s3")
    start, end = generator.history_window(1.0, datetime(2026, 11, 20, 12, tzinfo=UTC))
    objects = generator.landing_objects(generator.history(seed, events, start, end), seed)
    return generator.write_objects(
        objects, lambda key, body: s3.put_object(Bucket=bucket, Key=key, Body=body), generator.Totals()
    ).objects


def ours(address: str, bucket: str, warehouse: str, server_pid: int) -> dict:
    """The ingestion run through Dagster, which writes the raw table, then the follower run,
    which adds the batch to the 30 per-game tables (and the activity tables)."""
    import dagster as dg

    from gaming_pipeline.defs.followers.runs import follow_raw_job
    from gaming_pipeline.defs.ingest.assets import ingest_landed_objects
    from gaming_pipeline.defs.resources import (
        LandingBucketResource,
        PiiVaultResource,
        SparkResource,
        WarehouseResource,
    )

    resources = {
        "landing": LandingBucketResource(bucket=bucket),
        "warehouse": WarehouseResource(root=warehouse),
        "pii_vault": PiiVaultResource(bucket=f"{bucket}-pii"),
        "pyspark": SparkResource(master=address),
    }
    with dg.DagsterInstance.ephemeral() as instance, PeakMemory([server_pid, os.getpid()]) as memory:
        started = time.monotonic()
        ingested = dg.materialize([ingest_landed_objects], resources=resources, instance=instance)
        assert ingested.success
        assert follow_raw_job.execute_in_process(resources=resources, instance=instance).success
        seconds = time.monotonic() - started
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(memory.peak)}


def peer(name: str, bucket: str, warehouse: str, work: Path, address: str, server_pid: int) -> dict:
    arguments = {
        "structured-streaming": [bucket, warehouse, str(work / "peer-home")],
        "polars": [bucket, warehouse],
        "bare-spark": [bucket, warehouse, address],
    }[name]
    # A peer's own Spark must not find ours: no Spark Connect variables in its environment.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPARK_REMOTE", "SPARK_CONNECT"))
    }
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "peers.py"), name, *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # The bare-spark floor works on our server: its memory counts there.
    watched = [process.pid, server_pid] if name == "bare-spark" else [process.pid]
    with PeakMemory(watched) as memory:
        out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"peer {name} failed with exit code {process.returncode}")
    figures = json.loads(out.strip().splitlines()[-1])
    return {
        "seconds": round(figures["seconds"], 2),
        "startup_seconds": round(figures["startup_seconds"], 2),
        "peak_rss_mib": round(memory.peak),
    }


def warm_up(address: str, server_pid: int, work: Path) -> float:
    """One small pass of ours first: the server is long-lived, so its JIT is warm for every
    run but the first after it starts; that first one is not what users wait on."""
    bucket = aws.provision("bench-warm-up", queue_name="bench-warm-up").bucket
    load_workload(bucket, 20_000, seed=99)
    return ours(address, bucket, str(work / "warm-up"), server_pid)["seconds"]


def throughput(base_events: int, address: str, server_pid: int, work: Path) -> list[dict]:
    results = []
    for scale in SCALES:
        events = base_events * scale
        bucket = aws.provision(f"bench-{scale}x", queue_name=f"bench-{scale}x").bucket
        objects = load_workload(bucket, events, seed=scale)
        print(f"{scale}x: {events:,} events in {objects} objects", flush=True)
        ours_warehouse = str(work / f"ours-{scale}x")
        figures = {"ours": ours(address, bucket, ours_warehouse, server_pid)}
        expected = row_counts(ours_warehouse)
        if expected[RAW_TABLE] != events:
            raise AssertionError(f"ours wrote {expected[RAW_TABLE]} raw rows of {events} events")
        for name in PEERS:
            warehouse = str(work / f"{name}-{scale}x")
            figures[name] = peer(name, bucket, warehouse, work, address, server_pid)
            found = row_counts(warehouse)
            if found != expected:
                differing = {
                    table: (expected[table], found[table])
                    for table in TABLES
                    if found[table] != expected[table]
                }
                raise AssertionError(f"{name} at {scale}x wrote other row counts than ours: {differing}")
        for side in figures.values():
            side["events_per_second"] = round(events / side["seconds"])
        print(f"  {json.dumps(figures)}", flush=True)
        results.append(
            {"scale": scale, "events": events, "objects": objects, "row_counts_equal": True, **figures}
        )
    return results


def quantiles(values: list[float], digits: int = 1) -> dict:
    values = sorted(values)
    if not values:
        return {}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], digits)

    return {
        "p50": at(0.5),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(values[-1], digits),
        "count": len(values),
    }


def latency(rate: float, seconds: float, address: str, server_pid: int, work: Path) -> dict:
    """Events posted at `rate` for `seconds` through the ingest service, the daemon's sensors
    taking them on; visibility per event from the tables' own commit times. The profile: CPU
    seconds per process over the load and until the KPIs count every event, and the seconds
    of each stage of the ingestion and follower runs (their `seconds_by_stage`)."""
    landing = aws.provision("bench-latency", queue_name="bench-latency")
    daemon, env = processes.start_daemon_for(work / "latency", landing.bucket, landing.queue_url, address)
    warehouse = env["GAMING_PIPELINE_WAREHOUSE"]
    polls: list[tuple[float, int]] = []
    stop_polling = threading.Event()
    days = [datetime.now(UTC).date(), (datetime.now(UTC) + timedelta(seconds=seconds + 600)).date()]

    def poll_kpis() -> None:
        while not stop_polling.is_set():
            polls.append((time.time(), recording.kpi_total(warehouse, days)))
            time.sleep(1)

    service = None
    try:
        service, url, api_key = recording.start_ingest_service(env, work / "latency")
        parts = {
            "Spark Connect server": psutil.Process(server_pid),
            "Dagster daemon and its runs": psutil.Process(daemon.pid),
            "ingest service": psutil.Process(service.pid),
        }
        threading.Thread(target=poll_kpis, daemon=True).start()
        cpu_before, load_started = idle_cost.cpu_seconds(parts), time.time()
        accepted = recording.post_events(url, api_key, rate, seconds, seed=11)
        load_ended = time.time()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and (not polls or polls[-1][1] < accepted):
            time.sleep(2)
        cpu_after, profiled_until = idle_cost.cpu_seconds(parts), time.time()
    finally:
        stop_polling.set()
        processes.stop([process for process in (service, daemon) if process])

    raw = DeltaTable(table_path(warehouse, RAW_TABLE))
    committed_at = {entry["version"]: entry["timestamp"] / 1000 for entry in raw.history()}
    ledger = DeltaTable(table_path(warehouse, LEDGER_TABLE)).to_pyarrow_table(
        columns=["object", "raw_version"]
    )
    version_of = dict(zip(ledger["object"].to_pylist(), ledger["raw_version"].to_pylist(), strict=True))
    rows = raw.to_pyarrow_table(columns=["eventTime", "_source_object"])
    received = [moment.replace(tzinfo=UTC).timestamp() for moment in rows["eventTime"].to_pylist()]
    sources = rows["_source_object"].to_pylist()
    # A run stopped with the daemon between its raw commit and its ledger row leaves rows
    # with no version known: counted apart, not timed.
    to_raw = [
        (at, committed_at[version_of[source]] - at)
        for at, source in zip(received, sources, strict=True)
        if source in version_of
    ]
    # The n-th event received is counted in the KPIs once a poll sees more than n events.
    to_kpis, next_poll = [], 0
    for rank, at in enumerate(sorted(received)):
        while next_poll < len(polls) and polls[next_poll][1] <= rank:
            next_poll += 1
        if next_poll < len(polls):
            to_kpis.append((at, polls[next_poll][0] - at))

    def received_between(delays: list[tuple[float, float]], start: float, end: float) -> dict:
        return quantiles([delay for at, delay in delays if start <= at < end])

    # Drift as the day grows: the load's first and last DRIFT_WINDOW seconds side by side.
    first, last = (load_started, load_started + DRIFT_WINDOW), (load_ended - DRIFT_WINDOW, load_ended)
    return {
        "events_per_second_offered": rate,
        "seconds_of_load": round(load_ended - load_started, 1),
        "events_accepted": accepted,
        "raw_rows": len(received),
        "raw_rows_without_ledger_row": sum(source not in version_of for source in sources),
        "event_to_raw_seconds": quantiles([delay for _, delay in to_raw]),
        "event_to_kpi_seconds": quantiles([delay for _, delay in to_kpis]),
        "drift_window_seconds": DRIFT_WINDOW,
        "event_to_raw_seconds_first_window": received_between(to_raw, *first),
        "event_to_raw_seconds_last_window": received_between(to_raw, *last),
        "event_to_kpi_seconds_first_window": received_between(to_kpis, *first),
        "event_to_kpi_seconds_last_window": received_between(to_kpis, *last),
        "kpi_poll_seconds": 1,
        "runs": run_overheads(Path(env["DAGSTER_HOME"])),
        "profile": {
            "wall_seconds": round(profiled_until - load_started, 1),
            "cpu_seconds_by_process": {
                name: round(cpu_after[name] - cpu_before[name], 1) for name in cpu_after
            },
            "run_seconds_by_stage": run_stages(Path(env["DAGSTER_HOME"])),
        },
    }


def run_stages(dagster_home: Path) -> dict:
    """Per job, the seconds of each stage summed over its runs (the `seconds_by_stage` of the
    materialization each run reports it on), biggest first, with the runs counted."""
    import dagster as dg

    reported_on = {"ingest_landed_objects_job": RAW_TABLE, "follow_raw_job": PLAYER_STATE_TABLE}
    stages: dict[str, dict] = {}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for job, asset in reported_on.items():
            totals: Counter = Counter()
            runs = 0
            for record in instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records:
                metadata = record.asset_materialization.metadata
                if record.event_log_entry.job_name != job or "seconds_by_stage" not in metadata:
                    continue
                runs += 1
                totals.update(metadata["seconds_by_stage"].value)
            stages[job] = {
                "runs": runs,
                "seconds": {stage: round(seconds, 1) for stage, seconds in totals.most_common()},
            }
    return stages


def run_overheads(dagster_home: Path) -> dict:
    """Per ingestion run: the sensor's request to the run's Spark session being ready, split
    into the wait in the run queue (its pool busy) and the start overhead from leaving the
    queue (process launch, loading the code, attaching to Spark); the run's own start to
    Spark ready; and the share of the run's own time spent outside Spark."""
    import dagster as dg

    requested_to_spark, queued, dequeued_to_spark, started_to_spark, outside_share = [], [], [], [], []
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for record in instance.get_run_records(dg.RunsFilter(job_name="ingest_landed_objects_job")):
            if record.start_time is None or record.end_time is None:
                continue
            logs = instance.all_logs(record.dagster_run.run_id)
            ready = [
                entry.timestamp for entry in logs if entry.user_message.startswith("Spark session ready")
            ]
            spark_seconds = [
                entry.asset_materialization.metadata["seconds"].value
                for entry in logs
                if entry.is_dagster_event
                and entry.dagster_event.is_step_materialization
                and entry.asset_materialization.asset_key.to_user_string() == RAW_TABLE
            ]
            # Reported as the daemon takes the run off the queue to launch it.
            dequeued = [
                entry.timestamp
                for entry in logs
                if entry.is_dagster_event
                and entry.dagster_event.event_type == dg.DagsterEventType.RUN_STARTING
            ]
            if not ready or not spark_seconds or not dequeued:
                continue
            requested_to_spark.append(ready[0] - record.create_timestamp.timestamp())
            queued.append(dequeued[0] - record.create_timestamp.timestamp())
            dequeued_to_spark.append(ready[0] - dequeued[0])
            started_to_spark.append(ready[0] - record.start_time)
            outside_share.append(1 - spark_seconds[0] / (record.end_time - record.start_time))
    return {
        "ingestion_runs": len(requested_to_spark),
        "request_to_spark_ready_seconds": quantiles(requested_to_spark),
        "queue_wait_seconds": quantiles(queued),
        "dequeue_to_spark_ready_seconds": quantiles(dequeued_to_spark),
        "run_start_to_spark_ready_seconds": quantiles(started_to_spark),
        "share_outside_spark": quantiles(outside_share, digits=2),
    }


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = ("ours", *PEERS)
    scales = [row["scale"] for row in results["throughput"]]
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    for side in sides:
        speed.plot(
            scales, [row[side]["events_per_second"] for row in results["throughput"]], marker="o", label=side
        )
        memory.plot(
            scales, [row[side]["peak_rss_mib"] for row in results["throughput"]], marker="o", label=side
        )
    # Log scale: Polars is 10-30x the Spark sides, which a linear axis would flatten together.
    speed.set_yscale("log")
    for axis, title in (
        (speed, "events per second, log scale (higher is better)"),
        (memory, "peak RSS, MiB"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xticks(scales, [f"{scale}x" for scale in scales])
        axis.set_title(title)
        axis.grid(alpha=0.3)
    speed.legend()
    figure.suptitle(
        f"landing objects to the raw + 30 per-game tables, {results['throughput'][0]['events']:,} events = 1x"
    )
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def close_connect_client() -> None:
    """Close this process's Spark Connect client (ours() runs in it) while the server still
    answers: at exit, an open client sends the server a cleanup call and, the server gone,
    retries it for minutes before the process can end."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    if session := ConnectSession.getActiveSession():
        session.stop()


def attempt(measure: Callable[[], dict]) -> dict:
    """A step's figures or, if it failed, why: a late step failing (a pre-fill that never
    settles, rows counted twice) must not lose the figures of the steps before it."""
    try:
        return measure()
    except Exception as error:
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


def step_key(step: str) -> str:
    """A step's key in the results file."""
    return step.replace("-", "_")


def results_file(steps: list[str]) -> Path:
    """Where this run's figures go: a new file for the day when every step runs; else the
    newest results file, whose other steps' figures are kept."""
    today = recording.RESULTS / f"side-by-side-{datetime.now(UTC):%Y-%m-%d}.json"
    if len(steps) == len(STEPS):
        return today
    return max(recording.RESULTS.glob("side-by-side-*.json"), default=today)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=250_000, help="events at 1x (default 250,000)")
    parser.add_argument("--latency-rate", type=float, default=2000)
    parser.add_argument("--latency-seconds", type=float, default=1200)
    parser.add_argument(
        "--day-base",
        type=int,
        default=day_growth.DAY_BASE,
        help="day growth: events in the day at 1x (default 250,000; smaller for a quick trial)",
    )
    parser.add_argument("--day-scales", type=int, nargs="+", default=list(day_growth.SCALES))
    parser.add_argument("--idle-minutes", type=float, default=idle_cost.MINUTES)
    parser.add_argument("--idle-rate", type=float, default=idle_cost.RATE)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--only", nargs="+", choices=STEPS, help="run these steps alone")
    chosen.add_argument("--skip", nargs="+", choices=STEPS, default=[], help="run all steps but these")
    parser.add_argument(
        "--results",
        type=Path,
        help="results file to write (default: see above); figures of steps not run are kept from it",
    )
    parser.add_argument("--benchmarks-md", type=Path, default=PROJECT / "BENCHMARKS.md")
    args = parser.parse_args()
    steps = args.only or [step for step in STEPS if step not in args.skip]
    out = args.results or results_file(steps)
    results = json.loads(out.read_text()) if out.exists() else {}
    # Which run measured each step: a file may hold steps of several runs (a file written
    # before this was recorded holds one run's, under its top-level date).
    measured = {
        **{
            key: {"date": results["date"], "commit": results.get("commit", "unrecorded")}
            for key in map(step_key, STEPS)
            if key in results
        },
        **results.get("measured", {}),
    }
    with recording.workplace() as work:
        server, address = processes.start_spark_server(
            {**os.environ, "GAMING_PIPELINE_HOME": str(work / "home")}, work / "spark-server.log"
        )
        try:
            processes.wait_until_serving(address, 180, server, work / "spark-server.log")
            context = recording.context(("dagster", "pyspark", "delta-spark", "deltalake", "polars", "moto"))
            results.update(context, spark=f"Spark Connect server, local[*] driver, {address}")
            measures = {
                "throughput": lambda: throughput(args.events, address, server.pid, work),
                "latency": lambda: latency(
                    args.latency_rate, args.latency_seconds, address, server.pid, work
                ),
                "day-growth": lambda: day_growth.run(args.day_base, args.day_scales, address, work),
                "idle-cost": lambda: idle_cost.run(
                    args.idle_rate, args.idle_minutes, address, server.pid, work
                ),
            }
            if "throughput" in steps:
                results["warm_up_seconds"] = warm_up(address, server.pid, work)
            for step in (step for step in STEPS if step in steps):
                results[step_key(step)] = attempt(measures[step])
                measured[step_key(step)] = {"date": context["date"], "commit": context["commit"]}
                results["measured"] = measured
                # Written after each step: a later one going wrong loses none of its figures.
                recording.write("side-by-side", results, out)
        finally:
            close_connect_client()
            processes.stop([server])
    if "throughput" in steps and not report.failed(results, "throughput"):
        plot(results, out.with_suffix(".png"))
    subprocess.run(
        [sys.executable, str(BENCH / "report.py"), str(out), "--out", str(args.benchmarks_md)], check=True
    )


if __name__ == "__main__":
    main()
