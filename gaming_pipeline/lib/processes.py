"""Starting and stopping Dagster's own processes (webserver, daemon) on a local instance,
as the demo, the end-to-end tests and the benchmarks do."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from dagster import DagsterInstance

PROJECT = Path(__file__).resolve().parents[2]
WORKSPACE = PROJECT / "workspace.yaml"
INSTANCE_CONFIG = PROJECT / "deploy" / "dagster.yaml"
# The same instance on Postgres (DAGSTER_PG_* from the environment).
PRODUCTION_INSTANCE_CONFIG = PROJECT / "deploy" / "dagster.production.yaml"


def prepare_dagster_home(path: Path, instance_config: Path = INSTANCE_CONFIG) -> Path:
    """A Dagster home with one of the project's instance configs (SQLite by default), its
    storage created here: a webserver and a daemon started together on an empty home would
    both create the SQLite schema and one of them fails on a doubled migration head."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(instance_config, path / "dagster.yaml")
    with DagsterInstance.from_config(str(path)):
        pass
    return path


def start(arguments: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A program (one of this environment's, such as `gaming-pipeline` or `dagster-daemon`,
    before any on PATH), its output appended to `log`, in its own process group so that
    stopping it stops its children."""
    program, *rest = arguments
    ours = Path(sys.executable).parent / program
    with open(log, "ab") as output:
        return subprocess.Popen(
            [str(ours) if ours.exists() else program, *rest],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_dagster(arguments: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`dagster-webserver ...` or `dagster-daemon run` on the project's workspace."""
    return start([*arguments, "-w", str(WORKSPACE)], env, log)


def start_spark_server(
    env: dict[str, str], log: Path, port: int = 0, master: str = ""
) -> tuple[subprocess.Popen, str]:
    """`gaming-pipeline spark-server` on 127.0.0.1 (on `port` if free), its driver on `master`
    (local by default), and the `sc://` address runs attach to; wait_until_serving tells when
    it accepts them."""
    from gaming_pipeline.lib.aws import free_port

    port = free_port(prefer=port)
    arguments = ["gaming-pipeline", "spark-server", "--port", str(port)]
    server = start([*arguments, "--master", master] if master else arguments, env, log)
    return server, f"sc://127.0.0.1:{port}"


def _serving(address: str) -> bool:
    """An HTTP address serves once it answers a GET; any other (`sc://host:port`) once it
    accepts a connection."""
    location = urlparse(address)
    try:
        if location.scheme in ("http", "https"):
            urllib.request.urlopen(address, timeout=2).close()
        else:
            socket.create_connection((location.hostname, location.port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until_serving(address: str, seconds: float, process: subprocess.Popen, log: Path) -> None:
    """Until `address` serves, or fail with the log to read if the process that should
    serve it exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}: see {log}")
        if _serving(address):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{address} did not answer within {seconds:.0f} s: see {log}")


def stop(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_daemon_for(
    work: Path,
    bucket: str,
    queue_url: str,
    spark_master: str = "",
    instance_config: Path = INSTANCE_CONFIG,
) -> tuple[subprocess.Popen, dict[str, str]]:
    """Dagster's daemon, sensors on, on a fresh instance and warehouse under `work`, for the
    landing bucket and queue given, its runs on `spark_master` (a Spark Connect address, say)
    or the default; with the environment it runs in."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(prepare_dagster_home(work / "dagster", instance_config)),
        "GAMING_PIPELINE_HOME": str(work / "home"),
        "GAMING_PIPELINE_WAREHOUSE": str(work / "warehouse"),
        "GAMING_PIPELINE_LANDING_BUCKET": bucket,
        "GAMING_PIPELINE_QUEUE_URL": queue_url,
    }
    if spark_master:
        env["GAMING_PIPELINE_SPARK_MASTER"] = spark_master
    return start_dagster(["dagster-daemon", "run"], env, work / "daemon.log"), env
