"""Idle cost: the CPU the whole demo stack uses at the demo's rate. A step of `make bench`
(bench/side_by_side.py).

The pieces `gaming-pipeline demo` runs, on a fresh warehouse: the Spark Connect server, the
Dagster daemon (and the runs it launches) and webserver, the ingest service, local AWS and
an event client posting --idle-rate events per second (50, the demo's) over HTTP; local AWS
and the client are in this process, as they are in the demo's. Once the first events reach
today's KPIs (the stack has gone round once), the CPU seconds all these processes use over
--idle-minutes (10 by default), children included, divided by the wall seconds and the
machine's cores: the share of the machine the demo keeps busy.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psutil
import recording

from gaming_pipeline.lib import aws
from gaming_pipeline.local import ports, processes

RATE = 50
MINUTES = 10
TARGET_PERCENT = 50
WARM_UP_TIMEOUT_SECONDS = 900
THIS_PROCESS = "local AWS (moto) and the event client (this process)"


def tree_cpu_seconds(root: psutil.Process) -> float:
    """CPU seconds of a process and all its descendants so far, each counted once: a live
    process's own time and its reaped children's (which holds their reaped children's)."""
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # ended and reaped since listed: in its parent's now
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def cpu_seconds(parts: dict[str, psutil.Process]) -> dict[str, float]:
    """Per part of the stack, its CPU seconds so far; this process's own time only (what it
    reaped before is no part of the stack)."""
    mine = psutil.Process().cpu_times()
    return {
        **{name: tree_cpu_seconds(process) for name, process in parts.items()},
        THIS_PROCESS: mine.user + mine.system,
    }


def first_kpis(warehouse: str) -> float:
    """Seconds until today's KPIs count the first events: the stack has gone round once."""
    started = time.monotonic()
    today = datetime.now(UTC).date()
    while not recording.kpi_total(warehouse, [today, today + timedelta(days=1)]):
        if time.monotonic() - started > WARM_UP_TIMEOUT_SECONDS:
            raise TimeoutError(f"no events in today's KPIs after {WARM_UP_TIMEOUT_SECONDS} s")
        time.sleep(1)
    return time.monotonic() - started


def measure(parts: dict[str, psutil.Process], minutes: float) -> tuple[dict[str, float], float, list[float]]:
    """CPU seconds per part over `minutes`, the wall seconds, and the share of the cores
    each minute."""
    opened = time.monotonic()
    first = last = cpu_seconds(parts)
    by_minute, last_at = [], opened
    while (elapsed := time.monotonic() - opened) < minutes * 60:
        time.sleep(min(60.0, minutes * 60 - elapsed))
        now, now_at = cpu_seconds(parts), time.monotonic()
        by_minute.append(percent(sum(now.values()) - sum(last.values()), now_at - last_at))
        last, last_at = now, now_at
    return {name: round(last[name] - first[name], 1) for name in first}, last_at - opened, by_minute


def run(rate: float, minutes: float, address: str, spark_server_pid: int, work: Path) -> dict:
    landing = aws.provision("bench-idle-cost", queue_name="bench-idle-cost")
    daemon, env = processes.start_daemon_for(work / "idle", landing.bucket, landing.queue_url, address)
    started = [daemon]
    stop_sending = threading.Event()
    sent: list[int] = []
    try:
        ui_port, ui_log = ports.free_port(), work / "idle" / "webserver.log"
        webserver = processes.start_dagster(
            ["dagster-webserver", "-h", "127.0.0.1", "-p", str(ui_port)], env, ui_log
        )
        started.append(webserver)
        service, url, api_key = recording.start_ingest_service(env, work / "idle")
        started.append(service)
        processes.wait_until_serving(f"http://127.0.0.1:{ui_port}/server_info", 180, webserver, ui_log)
        parts = {
            "Spark Connect server": psutil.Process(spark_server_pid),
            "Dagster daemon and its runs": psutil.Process(daemon.pid),
            "Dagster webserver": psutil.Process(webserver.pid),
            "ingest service": psutil.Process(service.pid),
        }
        sender = threading.Thread(
            target=lambda: sent.append(
                recording.post_events(url, api_key, rate, None, seed=13, until=stop_sending)
            ),
            daemon=True,
        )
        sender.start()
        warm_up = first_kpis(env["GAMING_PIPELINE_WAREHOUSE"])
        print(f"idle cost: first events in the KPIs after {warm_up:.0f} s; measuring", flush=True)
        window_opened = datetime.now(UTC)
        used, wall, by_minute = measure(parts, minutes)
        stop_sending.set()
        sender.join()
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            runs = Counter(
                record.dagster_run.job_name
                for record in instance.get_run_records(dg.RunsFilter(created_after=window_opened))
            )
    finally:
        stop_sending.set()
        processes.stop(started)
    share = percent(sum(used.values()), wall)
    figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "events_per_second_offered": rate,
        "events_accepted": sum(sent),
        "warm_up_seconds": round(warm_up),
        "wall_seconds": round(wall, 1),
        "cores": os.cpu_count(),
        "cpu_seconds": round(sum(used.values()), 1),
        "cpu_percent_of_cores": share,
        "cpu_seconds_by_part": used,
        "cpu_percent_by_minute": by_minute,
        "runs_in_window": dict(runs),
        "targets": [
            {
                "target": f"The demo stack at {rate:g} events/s under {TARGET_PERCENT}% of the cores",
                "met": share < TARGET_PERCENT,
                "figure": f"{share}% of {os.cpu_count()} cores over {wall / 60:.1f} minutes",
            }
        ],
    }
    print(f"  {figures}", flush=True)
    return figures


def percent(cpu: float, wall: float) -> float:
    return round(cpu / wall / os.cpu_count() * 100, 1)
