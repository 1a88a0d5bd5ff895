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

from gaming_pipeline.defs.pools import POOLS
from gaming_pipeline.local.ports import free_port

# The local instance (SQLite under the Dagster home), shipped in the package so that it is
# found the same way from a clone and from a plain `pip install`.
INSTANCE_CONFIG = Path(__file__).with_name("dagster.yaml")
# Dagster's processes load the code location by its module, as the production code server does.
WORKSPACE = """load_from:
  - python_module:
      module_name: gaming_pipeline.definitions
      location_name: gaming_pipeline
"""


def prepare_dagster_home(path: Path, instance_config: Path = INSTANCE_CONFIG) -> Path:
    """A Dagster home with one of the project's instance configs (SQLite by default), its
    storage created here: a webserver and a daemon started together on an empty home would
    both create the SQLite schema and one of them fails on a doubled migration head.

    Its run pools get their limit here too. The run queue reads the pools it knows before
    it creates one it meets for the first time, so the first runs of a pool would all start
    together (dagster 1.13), however small its limit."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(instance_config, path / "dagster.yaml")
    (path / "workspace.yaml").write_text(WORKSPACE)
    with DagsterInstance.from_config(str(path)) as instance:
        for pool in POOLS:
            instance.event_log_storage.initialize_concurrency_limit_to_default(pool)
    return path


def start(arguments: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A program (one of this environment's, such as `gaming-pipeline` or `dagster-daemon`,
    before any on PATH), its output appended to `log`, in its own process group so that
    stopping it stops its children. It carries this process's identity in its environment
    (stop_orphans finds it by that if this process dies without stopping it) and, on Linux,
    gets SIGTERM when the thread that started it exits, even by SIGKILL: start it from the
    main thread. Every signal has its default handling in it, whatever this process ignores."""
    program, *rest = arguments
    ours = Path(sys.executable).parent / program
    command = [str(ours) if ours.exists() else program, *rest]
    owner = identity(os.getpid())
    with open(log, "ab") as output:
        return subprocess.Popen(
            [*_LAUNCHER, *command],
            env={**env, OWNER_VARIABLE: owner} if owner else env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def described(process: subprocess.Popen) -> str:
    """The program a process of start() runs, with its first arguments."""
    return " ".join(map(str, process.args[len(_LAUNCHER) :][:3]))


def start_dagster(arguments: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`dagster-webserver ...` or `dagster-daemon run` on the workspace of the Dagster home in
    `env` (prepare_dagster_home)."""
    return start([*arguments, "-w", str(Path(env["DAGSTER_HOME"]) / "workspace.yaml")], env, log)


def start_spark_server(
    env: dict[str, str], log: Path, port: int = 0, master: str = ""
) -> tuple[subprocess.Popen, str]:
    """`gaming-pipeline spark-server` on 127.0.0.1 (on `port` if free), its driver on `master`
    (local by default), and the `sc://` address runs attach to; wait_until_serving tells when
    it accepts them."""
    port = free_port(prefer=port)
    arguments = ["gaming-pipeline", "spark-server", "--port", str(port)]
    server = start([*arguments, "--master", master] if master else arguments, env, log)
    return server, f"sc://127.0.0.1:{port}"


def serving(address: str) -> bool:
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
            raise RuntimeError(f"{described(process)} exited with {process.returncode}: see {log}")
        if serving(address):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{address} did not answer within {seconds:.0f} s: see {log}")


def signal_groups(processes: list[subprocess.Popen], signum: int) -> None:
    """`signum` to each process's group: the process and whatever it started."""
    for process in processes:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:  # the whole group has exited already
            pass


def stop(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    """Stop the processes with their groups: SIGTERM, and SIGKILL to any group still there
    after `timeout` seconds. Their children get the time to stop too, not only them."""
    deadline = time.monotonic() + timeout
    signal_groups(processes, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    while time.monotonic() < deadline and any(_group_alive(process.pid) for process in processes):
        time.sleep(0.1)
    signal_groups(processes, signal.SIGKILL)
    for process in processes:
        process.wait()


def stop_orphans(timeout: float = 10) -> list[int]:
    """Stop what start() launched for a process that then died without stopping it (kill -9,
    a crash) and that is still running, children included; their pids. A new demo clears
    them before it takes the same ports and home."""
    orphans = [
        pid for pid, owner in _marked().items() if identity(_pid_of(owner)) != owner and pid != os.getpid()
    ]
    return _terminate(orphans, timeout)


def stop_descendants(timeout: float = 10) -> list[int]:
    """Stop whatever start() launched from this process, and their children, still running
    (one started as an interrupt came, one that left its group); their pids."""
    mine = identity(os.getpid())
    return _terminate([pid for pid, owner in _marked().items() if owner == mine], timeout)


# The variable, in the environment of what start() launches, naming the process that
# launched it; their children inherit it, so it marks every process the launch led to.
OWNER_VARIABLE = "GAMING_PIPELINE_OWNER"
PROC = Path("/proc")


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat from its third field (state) on; empty if there is no such process."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def identity(pid: int) -> str:
    """`pid@start-time`, which a later process reusing the pid does not share; empty where
    there is no /proc or no such process."""
    stat = _stat(pid)
    return f"{pid}@{stat[19]}" if stat and stat[0] != "Z" else ""


def _pid_of(owner: str) -> int:
    return int(owner.partition("@")[0])


def _marked() -> dict[int, str]:
    """Each running process start() launched, or launched by one of those: its owner."""
    prefix = f"{OWNER_VARIABLE}=".encode()
    marked = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        for variable in environ.split(b"\0"):
            if variable.startswith(prefix) and identity(int(entry.name)):
                marked[int(entry.name)] = variable[len(prefix) :].decode()
    return marked


def _terminate(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM, and SIGKILL to those still running after `timeout` seconds (each checked to
    be the same process still, not a later one with its pid)."""
    identities = {pid: identity(pid) for pid in pids}

    def running() -> list[int]:
        return [pid for pid, known in identities.items() if known and identity(pid) == known]

    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in running():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and running():
            time.sleep(0.1)
    return pids


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# The parent-death signal is asked for by util-linux's setpriv, which execs the program,
# rather than by a preexec_fn: Python code between fork and exec runs the at-fork handlers of
# a process with threads (a test process's gRPC client to Spark Connect), which aborted a
# child that way, and without a preexec_fn the child is started by vfork, running nothing.
_SETPRIV = shutil.which("setpriv")
# What we start we stop by signals, so it gets every signal's default handling whoever
# started us: a shell's background job or nohup passes SIGINT, SIGHUP (and some wrappers
# SIGTERM) on ignored, and a child ignoring SIGTERM outlives its parent-death signal and our
# stop (uvicorn even stops on it, then re-raises it into the inherited SIG_IGN: exit 0).
DEFAULT_SIGNALS = [shutil.which("env") or "/usr/bin/env", "--default-signal"]
_LAUNCHER = [*([_SETPRIV, "--pdeathsig", "TERM", "--"] if _SETPRIV else []), *DEFAULT_SIGNALS]


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
