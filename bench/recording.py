"""What every benchmark writes down (when, on which machine, code and versions, and its
figures), and the pieces more than one benchmark starts or reads: the ingest service with a
key of its own, a steady stream of events into it, today's KPI count."""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from importlib.metadata import version
from pathlib import Path

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from pyspark.sql import SparkSession

from gaming_pipeline.games import ALL_GAMES
from gaming_pipeline.ingest_service import keys
from gaming_pipeline.ingest_service.client import EventSender, send_in_batches
from gaming_pipeline.lib.kpis import EVENTS_PER_HOUR
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.spark import start_session
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline.local import generator, ports, processes
from gaming_pipeline.local.endpoint import LocalAws

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def context(packages: tuple[str, ...]) -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "commit": code_version(),
        "versions": {name: version(name) for name in packages},
    }


def code_version() -> str:
    """The commit measured, marked `+changes` when the working tree differs from it."""

    def git(*arguments: str) -> str:
        return subprocess.run(
            ["git", "-C", str(BENCH), *arguments], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{commit}+changes" if git("status", "--porcelain", "--untracked-files=no") else commit


@contextmanager
def workplace() -> Iterator[Path]:
    """A local AWS endpoint in this process's environment and a scratch folder, both gone
    when the benchmark ends."""
    local = LocalAws().start()
    os.environ.update(local.environment())
    work = Path(tempfile.mkdtemp(prefix="gp-bench-"))
    try:
        yield work
    finally:
        local.stop()
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def local_spark(prefix: str) -> Iterator[tuple[SparkSession, Path]]:
    """A Spark driver of this process's own, with its home in a scratch folder; both gone
    when the benchmark ends."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        spark = start_session(Settings.from_env({"GAMING_PIPELINE_HOME": str(work)}))
        spark.sparkContext.setLogLevel("ERROR")
        yield spark, work
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write(benchmark: str, results: dict, out: Path | None = None) -> Path:
    """`out`, by default bench/results/<benchmark>-<date>.json, printed too."""
    out = out or RESULTS / f"{benchmark}-{results['date'][:10]}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}")
    return out


def start_ingest_service(
    env: dict[str, str], work: Path, sink: str = "s3"
) -> tuple[subprocess.Popen, str, str]:
    """`gaming-pipeline ingest-server` on a free port at the demo's flush age (5 s, the
    embedded default a new user runs), delivering to `sink` (`--sink`), with an API key of
    its own in `work`: the process, its URL and the key, once it serves. `env` gets the keys
    file the service reads."""
    env["GAMING_PIPELINE_API_KEYS"] = str(work / "api-keys.json")
    _, api_key = keys.create(Path(env["GAMING_PIPELINE_API_KEYS"]), "bench")
    port = ports.free_port()
    log = work / "ingest.log"
    service = processes.start(
        ["gaming-pipeline", "ingest-server", "--port", str(port), "--flush-seconds", "5", "--sink", sink],
        env,
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_until_serving(f"{url}/healthz", 60, service, log)
    except BaseException:
        processes.stop([service])
        raise
    return service, url, api_key


def post_events(
    url: str,
    api_key: str,
    rate: float,
    seconds: float | None,
    seed: int,
    until: threading.Event | None = None,
    own_events: bool = True,
) -> int:
    """Generated events posted at `rate` per second as game clients send them, for `seconds`
    or, when None, until `until` is set (`own_events`: as generator.EventFactory takes it);
    how many the service accepted."""
    events = generator.stream(seed, rate, seconds, own_events)
    if until is not None:
        events = itertools.takewhile(lambda _: not until.is_set(), events)
    accepted = 0

    def counted(batch: list[dict], answer: dict) -> None:
        nonlocal accepted
        accepted += answer["accepted"]

    send_in_batches(
        (generator.client_event(event) for event in events), EventSender(url, api_key), on_batch=counted
    )
    return accepted


def kpi_events(table: DeltaTable, days: list[date]) -> int:
    """The events `kpi_events_per_hour` counts for all games on `days`."""
    rows = table.to_pyarrow_table(columns=["eventDate", "events"], filters=[("game_keyword", "=", ALL_GAMES)])
    return sum(
        events
        for day, events in zip(rows["eventDate"].to_pylist(), rows["events"].to_pylist(), strict=True)
        if day in days
    )


def kpi_total(warehouse: str, days: list[date]) -> int:
    """kpi_events of the warehouse's table; 0 before the table exists."""
    try:
        return kpi_events(DeltaTable(table_path(warehouse, EVENTS_PER_HOUR)), days)
    except TableNotFoundError:
        return 0
