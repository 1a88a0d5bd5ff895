"""Day growth: the seconds one fixed batch takes to reach the raw, per-game and KPI tables as
the day it lands in grows, measured through the Dagster daemon and its sensors as traffic
arrives (no refresh asked for by hand). A step of `make bench` (bench/side_by_side.py).

For each scale S (1x, 4x and 8x by default), on a fresh warehouse, bucket and daemon:
1. today's UTC day is filled with S x --day-base generated events (250,000 by default),
   spread over the whole day in landing objects of 5,000, and ingested by the daemon; the
   benchmark waits until the raw, per-game and KPI tables hold them all and no run has been
   waiting or running for QUIET_SECONDS;
2. one fixed object of 5,000 events in the current hour lands (put_object), and the tables
   are watched: the seconds from landing to the commit of (a) the raw table version holding
   the batch, (b) the last per-game table whose day rows equal the generated ones of its
   game, (c) the kpi_events_per_hour version whose all-games count of the day includes it;
   and, once quiet again, the runs the batch led to and the end of the last one.

Tables are read with delta-rs (read-only), each again only when it has a new version,
every POLL_SECONDS; a stage's time is the commit timestamp of the version first seen holding
the batch, so polling adds nothing to it unless two commits of a table fall within one poll.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow.dataset as ds
import recording
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from gaming_pipeline.games import GAMES
from gaming_pipeline.lib import aws
from gaming_pipeline.lib.kpis import EVENTS_PER_HOUR
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.tables import RAW_TABLE
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline.local import generator, processes

DAY_BASE = 250_000
SCALES = (1, 4, 8)
BATCH_EVENTS = generator.OBJECT_EVENTS
BATCH_SEED = 5
POLL_SECONDS = 1.0
# Two ticks of the slowest sensor that starts derived-table work (15 s): quiet that long, no
# more work will start for the pre-fill. And at least the batch interval: the batch then lands
# on a quiet stack, whose next ingestion run starts at once rather than at the interval's end.
QUIET_SECONDS = max(30, Settings.from_env().batch_interval_seconds)
SETTLE_SECONDS_PER_SCALE = 1800
FRESH_TIMEOUT_SECONDS = 900
ACTIVE = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
TARGET_KPI_SECONDS_AT_1X = 45
TARGET_GROWTH_AT_8X = 1.3
STAGES = ("raw", "games", "kpis")


class DayFigure:
    """One figure of a Delta table for the measured day (its rows there, or the events its
    KPI counts), read again only when the table has a new version, with the commit time of
    the version it was read from."""

    def __init__(self, path: str, measure: Callable[[DeltaTable], int]):
        self.path, self.measure = path, measure
        self.table: DeltaTable | None = None
        self.value, self.committed_at = 0, 0.0

    def read(self) -> int:
        if self.table is None:
            try:
                self.table = DeltaTable(self.path)
            except TableNotFoundError:
                return 0
            seen = None
        else:
            seen = self.table.version()
            self.table.update_incremental()
        if self.table.version() != seen:
            self.value = self.measure(self.table)
            self.committed_at = self.table.history(1)[0]["timestamp"] / 1000
        return self.value


@dataclass
class Watched:
    stage: str
    table: str
    figure: DayFigure


def watch(warehouse: str, day: date) -> list[Watched]:
    """The day in the raw table, each per-game table and kpi_events_per_hour."""

    def rows(table: DeltaTable) -> int:
        return table.to_pyarrow_dataset().count_rows(filter=ds.field("eventDate") == day)

    def counted(table: DeltaTable) -> int:
        return recording.kpi_events(table, [day])

    return [
        Watched(stage, name, DayFigure(table_path(warehouse, name), measure))
        for stage, name, measure in [
            ("raw", RAW_TABLE, rows),
            *(("games", game.table_name, rows) for game in GAMES),
            ("kpis", EVENTS_PER_HOUR, counted),
        ]
    ]


def expected_figures(day: date, totals: generator.Totals) -> dict[str, int]:
    """What each watched table shows for the day once it holds every event in `totals`."""
    return {
        RAW_TABLE: totals.events,
        **{game.table_name: totals.per_day_game[(day.isoformat(), game.keyword)] for game in GAMES},
        EVENTS_PER_HOUR: totals.events,
    }


def behind(watched: list[Watched], expected: dict[str, int]) -> list[Watched]:
    """The tables not yet showing what they should; an error if one shows more."""
    late = []
    for each in watched:
        found = each.figure.read()
        if found > expected[each.table]:
            raise AssertionError(
                f"{each.table} shows {found} for the day, more than the {expected[each.table]} sent"
            )
        if found < expected[each.table]:
            late.append(each)
    return late


def settle(
    watched: list[Watched], expected: dict[str, int], instance: dg.DagsterInstance, timeout: float
) -> None:
    """Until every table shows what was sent and no run has waited or run for QUIET_SECONDS."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        late = behind(watched, expected)
        if late or instance.get_runs_count(dg.RunsFilter(statuses=ACTIVE)):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the pre-fill did not settle in {timeout:.0f} s; behind: {[each.table for each in late]}"
            )
        time.sleep(POLL_SECONDS)


def freshness(watched: list[Watched], expected: dict[str, int], landed_at: float) -> dict[str, float]:
    """Per stage, the seconds from landing to the commit that made its last table hold the
    batch (a table the batch has no rows for was fresh before it landed)."""
    deadline = time.monotonic() + FRESH_TIMEOUT_SECONDS
    while late := behind(watched, expected):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"not fresh {FRESH_TIMEOUT_SECONDS} s after landing: {[each.table for each in late]}"
            )
        time.sleep(POLL_SECONDS)
    return {
        stage: round(max(each.figure.committed_at for each in watched if each.stage == stage) - landed_at, 1)
        for stage in STAGES
    }


def the_batch(hour: datetime) -> tuple[str, bytes, list[dict]]:
    """The one 5,000-event object landed at every scale, its events in `hour`."""
    events = generator.history(BATCH_SEED, BATCH_EVENTS, hour, hour + timedelta(hours=1))
    [batch] = generator.landing_objects(events, BATCH_SEED)
    return batch


def one_scale(
    scale: int, base: int, day: date, batch: tuple[str, bytes, list[dict]], address: str, work: Path
) -> dict:
    name = f"bench-day-growth-{scale}x"
    landing = aws.provision(name, queue_name=name)
    daemon, env = processes.start_daemon_for(work / name, landing.bucket, landing.queue_url, address)
    s3 = aws.client("s3")

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=landing.bucket, Key=key, Body=body)

    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            started = time.monotonic()
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            events = generator.history(100 + scale, scale * base, start, start + timedelta(days=1))
            totals = generator.write_objects(
                generator.landing_objects(events, 100 + scale), put, generator.Totals()
            )
            prefill = {"events_before": totals.events, "objects_before": totals.objects}
            print(
                f"day growth {scale}x: {totals.events:,} events in {totals.objects} objects landed",
                flush=True,
            )
            # Read before the batch lands: after it, only tables with new versions are read.
            watched = watch(env["GAMING_PIPELINE_WAREHOUSE"], day)
            settle(watched, expected_figures(day, totals), instance, SETTLE_SECONDS_PER_SCALE * scale)
            prefill["seconds_to_settle"] = round(time.monotonic() - started, 1)

            key, body, batch_events = batch
            for event in batch_events:
                totals.add(event)
            put(key, body)
            landed_at = time.time()
            seconds = freshness(watched, expected_figures(day, totals), landed_at)
            # The batch's whole cost: every run it led to, to the end of the last.
            settle(watched, expected_figures(day, totals), instance, FRESH_TIMEOUT_SECONDS)
            after = instance.get_run_records(
                dg.RunsFilter(created_after=datetime.fromtimestamp(landed_at, UTC))
            )
            runs = Counter(record.dagster_run.job_name for record in after)
            busy = max((record.end_time for record in after if record.end_time), default=landed_at)
            failed = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    finally:
        processes.stop([daemon])
    figures = {
        "scale": scale,
        **prefill,
        **{f"landing_to_{stage}_seconds": value for stage, value in seconds.items()},
        "landing_to_last_run_end_seconds": round(busy - landed_at, 1),
        "runs_after_landing": dict(runs),
        "failed_runs": failed,
    }
    print(f"  {figures}", flush=True)
    return figures


def targets(scales: list[dict]) -> list[dict]:
    """The issue's two targets, each met, missed or not measured (None)."""
    kpis = {row["scale"]: row["landing_to_kpis_seconds"] for row in scales}
    one, eight, largest = kpis.get(1), kpis.get(8), max(kpis)
    if one is None:
        growth, growth_figure = None, "1x not run"
    elif eight is None:
        growth, growth_figure = None, f"8x not run; {largest}x took {kpis[largest] / one:.2f}x the 1x figure"
    else:
        growth, growth_figure = eight <= TARGET_GROWTH_AT_8X * one, f"{eight / one:.2f}x ({eight} s)"
    return [
        {
            "target": f"Landing to fresh KPIs at 1x at most {TARGET_KPI_SECONDS_AT_1X} s",
            "met": None if one is None else one <= TARGET_KPI_SECONDS_AT_1X,
            "figure": "1x not run" if one is None else f"{one} s",
        },
        {
            "target": f"Landing to fresh KPIs at 8x at most {TARGET_GROWTH_AT_8X} times the 1x figure",
            "met": growth,
            "figure": growth_figure,
        },
    ]


def run(base: int, scales: list[int], address: str, work: Path) -> dict:
    # Traffic arrives in the current hour; the day is that hour's, even if the run outlasts it.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    day, batch = hour.date(), the_batch(hour)
    rows = [one_scale(scale, base, day, batch, address, work) for scale in scales]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "day": day.isoformat(),
        "events_at_1x": base,
        "batch_events": BATCH_EVENTS,
        "scales": rows,
        "targets": targets(rows),
    }
