"""How long a Dagster run of this project takes to start: from its run worker's process start
to the code location loaded and Spark ready, what a run pays before its first Spark call.

    .venv/bin/python bench/run_start.py [--runs 5] [--job ingest_landed_objects_job]
                                        [--spark-master sc://127.0.0.1:15002]

Each run is a fresh Python process doing what `dagster api execute_run` does before the
first step (an approximation: no run record, no event log): load the Dagster instance
(SQLite under DAGSTER_HOME, the demo's), load the code location (import the definitions,
`defs()`, resolve the job), then build the `pyspark` resource as a run does, attach to a
Spark Connect server and ask it for `spark.version`. The seconds from the launch to each of
those points are the run's phases; run start is the last one. A Spark Connect server is
started on a free port for the measurement and stopped after, unless --spark-master names a
running one. One warm-up run (first session on the server, cold file cache) is not counted.
Writes bench/results/run-start-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import recording

from gaming_pipeline.local import processes

# The run worker: a script of its own in a fresh interpreter, so that each run imports
# everything afresh. Not `python -c`: without a __main__ file, pyspark's Spark Connect client
# takes itself for a doctest run and imports its test utilities too.
_RUN_WORKER = """
import json, sys, time
launched = float(sys.argv[1])
phases = {"python": time.time() - launched}
import dagster as dg
dg.DagsterInstance.get()
phases["instance"] = time.time() - launched
import gaming_pipeline
from gaming_pipeline.definitions import defs
definitions = defs()
definitions.get_repository_def().get_job(sys.argv[2])
phases["code_location"] = time.time() - launched
with dg.build_resources({"pyspark": definitions.resources["pyspark"]}) as resources:
    spark = resources.pyspark.spark_session
    version = spark.version
    phases["spark_ready"] = time.time() - launched
    cpu_seconds = time.process_time()
    spark.stop()
watched = ("dagster_aws", "sqlalchemy", "pandas", "matplotlib", "grpc", "boto3", "cryptography", "requests")
print(json.dumps({
    "phases": phases,
    "cpu_seconds": cpu_seconds,
    "spark_version": version,
    "code": gaming_pipeline.__path__[0],
    "loaded": [name for name in watched if name in sys.modules],
}))
"""
PHASES = ("python", "instance", "code_location", "spark_ready")


def one_run(worker: Path, env: dict[str, str], job: str) -> dict:
    """A run worker's phases, in seconds since its launch."""
    launched = time.time()
    done = subprocess.run(
        [sys.executable, str(worker), str(launched), job], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"the run worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(worker: Path, env: dict[str, str], runs: int, job: str) -> list[dict]:
    one_run(worker, env, job)  # warm-up, not counted
    measured = []
    for index in range(1, runs + 1):
        run = one_run(worker, env, job)
        measured.append(run)
        phases = "  ".join(f"{name} {run['phases'][name]:5.2f}" for name in PHASES)
        print(f"run {index}: {phases}  (s since launch; CPU {run['cpu_seconds']:.2f} s)", flush=True)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--job", default="ingest_landed_objects_job", help="the job the run resolves")
    parser.add_argument("--spark-master", default="", help="a running Spark Connect server (sc://host:port)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gp-run-start-"))
    env = {
        **os.environ,
        "GAMING_PIPELINE_HOME": str(work / "home"),
        "DAGSTER_HOME": str(processes.prepare_dagster_home(work / "dagster")),
    }
    server = None
    try:
        if args.spark_master:
            env["GAMING_PIPELINE_SPARK_MASTER"] = args.spark_master
        else:
            log = work / "spark-server.log"
            server, env["GAMING_PIPELINE_SPARK_MASTER"] = processes.start_spark_server(env, log)
            processes.wait_until_serving(env["GAMING_PIPELINE_SPARK_MASTER"], 180, server, log)
        worker = work / "run_worker.py"
        worker.write_text(_RUN_WORKER)
        measured = measure(worker, env, args.runs, args.job)
    finally:
        if server:
            processes.stop([server])
        shutil.rmtree(work, ignore_errors=True)

    p50 = {name: round(statistics.median(run["phases"][name] for run in measured), 2) for name in PHASES}
    cpu_p50 = round(statistics.median(run["cpu_seconds"] for run in measured), 2)
    print(
        f"p50 over {len(measured)} runs: "
        + "  ".join(f"{name} {p50[name]:.2f}" for name in PHASES)
        + f"  (CPU {cpu_p50:.2f} s; load average {os.getloadavg()[0]:.1f})"
    )
    recording.write(
        "run-start",
        {
            **recording.context(("dagster", "pyspark", "delta-spark")),
            "settings": {
                "runs": args.runs,
                "job": args.job,
                "spark_master": "given" if args.spark_master else "started for the measurement",
                "code": measured[0]["code"],
            },
            "p50_seconds": p50,
            "run_start_p50_seconds": p50["spark_ready"],
            # CPU seconds of the run worker up to Spark ready: what the code costs, whatever
            # else the machine runs meanwhile (the wall-clock phases include waiting for a core).
            "cpu_p50_seconds": cpu_p50,
            "load_average_1min": round(os.getloadavg()[0], 1),
            "runs": [
                {name: round(run["phases"][name], 3) for name in PHASES}
                | {"cpu": round(run["cpu_seconds"], 3), "loaded": run["loaded"]}
                for run in measured
            ],
            "spark_version": measured[0]["spark_version"],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
