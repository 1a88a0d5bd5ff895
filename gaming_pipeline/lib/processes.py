"""Starting and stopping Dagster's own processes (webserver, daemon) on a local instance,
as the demo, the end-to-end tests and the benchmarks do."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from dagster import DagsterInstance

PROJECT = Path(__file__).resolve().parents[2]
WORKSPACE = PROJECT / "workspace.yaml"
INSTANCE_CONFIG = PROJECT / "deploy" / "dagster.yaml"


def prepare_dagster_home(path: Path) -> Path:
    """A Dagster home with the project's instance config (SQLite, run queue, Spark pool), its
    storage created here: a webserver and a daemon started together on an empty home would
    both create the SQLite schema and one of them fails on a doubled migration head."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(INSTANCE_CONFIG, path / "dagster.yaml")
    with DagsterInstance.from_config(str(path)):
        pass
    return path


def start(arguments: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """One of this environment's programs (`gaming-pipeline`, `dagster-daemon`...), its output
    appended to `log`, in its own process group so that stopping it stops its children."""
    program, *rest = arguments
    with open(log, "ab") as output:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / program), *rest],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_dagster(arguments: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`dagster-webserver ...` or `dagster-daemon run` on the project's workspace."""
    return start([*arguments, "-w", str(WORKSPACE)], env, log)


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


def start_daemon_for(work: Path, bucket: str, queue_url: str) -> tuple[subprocess.Popen, dict[str, str]]:
    """Dagster's daemon, sensors on, on a fresh instance and warehouse under `work`, for the
    landing bucket and queue given; with the environment it runs in."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(prepare_dagster_home(work / "dagster")),
        "GAMING_PIPELINE_HOME": str(work / "home"),
        "GAMING_PIPELINE_WAREHOUSE": str(work / "warehouse"),
        "GAMING_PIPELINE_LANDING_BUCKET": bucket,
        "GAMING_PIPELINE_QUEUE_URL": queue_url,
    }
    return start_dagster(["dagster-daemon", "run"], env, work / "daemon.log"), env
