"""The Kinesis path (issue 38) on this machine, through the real daemon and a Spark Connect
server, as `make demo` runs them:

    .venv/bin/python bench/kinesis_source.py [--take-records 200000] [--rate 500] [--seconds 600]
        [--shards 4] [--only take|sustained|front-door]

1. take: a four-shard stream holding --take-records records (the seed's Lambda form, one
   event each, random partition keys) before the daemon starts; the seconds of the Kinesis
   sensor's tick that reads them into landing objects, and of the ingestion run that takes
   them to the raw table, and the records per second of each.
2. sustained: the seed's Lambda form put at --rate events/s for --seconds (PutRecords of up
   to 500, each record's eventTime the second it is put, retried until Kinesis takes it)
   into a four-shard stream the daemon reads; per event, the seconds from its put to the
   raw-table commit holding it (p50, p99, and the last window's p50 against the first's,
   as side_by_side.py's latency step times the landing path), and CPU seconds per process.
3. front-door: the same load posted to the ingest service as game clients post it, the
   service putting what it accepts on the stream (`ingest-server --sink kinesis`, a record
   per device and 5-s spool segment): the seed's whole flow, timed the same way from the
   second the service stamps an event.

The local endpoint is moto's server: its Kinesis finds a shard's newest sequence number by
listing the shard's records on every put, so a put costs more as the shard grows, and a long
load at a high rate measures moto's Kinesis, not ours (as moto's S3 limits many tiny objects).
Writes bench/results/kinesis-source-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import psutil
import recording
from idle_cost import cpu_seconds
from side_by_side import (
    RAW_CATCH_UP_SECONDS,
    delay_figures,
    drift_window,
    raw_delays_by_ledger,
    raw_rows,
)

from gaming_pipeline.lib import aws
from gaming_pipeline.lib.kinesis import put_as_the_seed_does
from gaming_pipeline.local import generator, processes

SHARDS = 4
STEPS = ("take", "sustained", "front-door")


def start_daemon(work: Path, name: str, address: str, stream: str):
    landing = aws.provision(f"bench-{name}", queue_name=f"bench-{name}")
    os.environ["GAMING_PIPELINE_KINESIS_STREAM"] = stream
    try:
        return processes.start_daemon_for(work / name, landing.bucket, landing.queue_url, address)
    finally:
        del os.environ["GAMING_PIPELINE_KINESIS_STREAM"]


def wait_for_rows(warehouse: str, rows: int, seconds: float, daemon) -> float | None:
    """When the raw table held `rows` (epoch seconds), or None if not within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if raw_rows(warehouse) >= rows:
            return time.time()
        if daemon.poll() is not None:
            raise RuntimeError("the daemon exited")
        time.sleep(1)
    return None


def take(records: int, address: str, work: Path) -> dict:
    import dagster as dg
    from dagster._core.definitions.run_request import InstigatorType

    kinesis = aws.client("kinesis")
    stream = "bench-take"
    aws.provision_stream(kinesis, stream, SHARDS)
    now = time.time()
    put_as_the_seed_does(
        kinesis, stream, generator.history(5, records, *generator.history_window(1.0)), stamp=lambda: now
    )
    daemon, env = start_daemon(work, "take", address, stream)
    try:
        held_at = wait_for_rows(env["GAMING_PIPELINE_WAREHOUSE"], records, 900, daemon)
    finally:
        processes.stop([daemon])
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        (state,) = [
            s
            for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
            if s.instigator_name == f"kinesis_{stream.replace('-', '_')}_sensor"
        ]
        ticks = [t for t in instance.get_ticks(state.instigator_origin_id, state.selector_id) if t.run_ids]
        runs = [instance.get_run_record_by_id(run_id) for tick in ticks for run_id in tick.run_ids]
    tick_seconds = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]
    run_seconds = [r.end_time - r.start_time for r in runs if r and r.end_time and r.start_time]
    return {
        "records": records,
        "shards": SHARDS,
        "all_in_raw": held_at is not None,
        "reading_ticks": len(ticks),
        "ingestion_runs": len(runs),
        "tick_seconds": [round(s, 1) for s in tick_seconds],
        "run_seconds": [round(s, 1) for s in run_seconds],
        "records_per_second_read": round(records / sum(tick_seconds)) if tick_seconds else None,
        "records_per_second_ingested": round(records / sum(run_seconds)) if run_seconds else None,
    }


def ingestion_runs(dagster_home: Path) -> dict[str, int]:
    """The ingestion runs so far, by status."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="ingest_landed_objects_job"))
    return dict(Counter(run.status.value for run in runs))


def sustained(
    step: str, rate: float, seconds: float, shards: int, address: str, server_pid: int, work: Path
) -> dict:
    """The sustained step, or the front door's: the same load through the ingest service."""
    kinesis = aws.client("kinesis")
    stream = f"bench-{step}"
    aws.provision_stream(kinesis, stream, shards)
    daemon, env = start_daemon(work, step, address, stream)
    warehouse = env["GAMING_PIPELINE_WAREHOUSE"]
    parts = {
        "Spark Connect server": psutil.Process(server_pid),
        "Dagster daemon and its runs": psutil.Process(daemon.pid),
    }
    service = None
    try:
        if step == "front-door":
            service_env = {**env, "GAMING_PIPELINE_KINESIS_STREAM": stream}
            service, url, api_key = recording.start_ingest_service(service_env, work / step, sink="kinesis")
            parts["ingest service"] = psutil.Process(service.pid)
        time.sleep(30)  # the daemon loads the code location and ticks its sensors once
        cpu_before, load_started = cpu_seconds(parts), time.time()
        if service:
            put = recording.post_events(url, api_key, rate, seconds, seed=11)
        else:
            put = put_as_the_seed_does(kinesis, stream, generator.stream(11, rate, seconds))
        load_ended = time.time()
        caught_up = wait_for_rows(warehouse, put, RAW_CATCH_UP_SECONDS, daemon)
        cpu_after = cpu_seconds(parts)
        # The last run's ledger commit comes after its raw commit: its rows are timed by it.
        deadline = time.monotonic() + 120
        while raw_delays_by_ledger(warehouse)[2] and time.monotonic() < deadline:
            time.sleep(2)
        runs = ingestion_runs(Path(env["DAGSTER_HOME"]))
    finally:
        processes.stop([daemon, *([service] if service else [])])
    _, delays, without_version = raw_delays_by_ledger(warehouse)
    return {
        "shards": shards,
        "events_per_second_offered": rate,
        "seconds_of_load": round(load_ended - load_started, 1),
        "events_put": put,
        "raw_rows": raw_rows(warehouse),
        "raw_rows_without_ledger_row": without_version,
        "caught_up_seconds_after_load": round(caught_up - load_ended, 1) if caught_up else None,
        "drift_window_seconds": round(drift_window(load_ended - load_started)),
        **delay_figures("event_to_raw_seconds", delays, load_started, load_ended),
        "cpu_seconds_by_process": {name: round(cpu_after[name] - cpu_before[name], 1) for name in cpu_after},
        "ingestion_runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--take-records", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument(
        "--shards",
        type=int,
        default=SHARDS,
        help="sustained: the stream's shards (moto's put cost grows with a shard)",
    )
    parser.add_argument("--only", choices=STEPS)
    parser.add_argument(
        "--out", type=Path, help="results file (default bench/results/kinesis-source-<date>.json)"
    )
    args = parser.parse_args()
    with recording.workplace() as work:
        server, address = processes.start_spark_server(
            {**os.environ, "GAMING_PIPELINE_HOME": str(work / "home")}, work / "spark-server.log"
        )
        try:
            processes.wait_until_serving(address, 180, server, work / "spark-server.log")
            results = recording.context(("dagster", "pyspark", "delta-spark", "moto", "aws-kinesis-agg"))
            if args.only in (None, "take"):
                results["take"] = take(args.take_records, address, work)
            for step in ("sustained", "front-door"):
                if args.only in (None, step):
                    results[step] = sustained(
                        step, args.rate, args.seconds, args.shards, address, server.pid, work
                    )
        finally:
            processes.stop([server])
    recording.write("kinesis-source", results, args.out)


if __name__ == "__main__":
    main()
