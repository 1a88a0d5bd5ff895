"""KPI tables, per day and per game (and all games), recomputed exactly for each day."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame

from gaming_pipeline.defs.games.assets import game_tables
from gaming_pipeline.defs.ingest.assets import REFRESH_POOL
from gaming_pipeline.defs.partitions import DAILY, DERIVED_FRESHNESS, days_predicate, run_days
from gaming_pipeline.defs.resources import WarehouseResource
from gaming_pipeline.lib import charts, checks, daily, liveops
from gaming_pipeline.lib.warehouse import RAW_TABLE, ensure_table, replace_rows, table_path

KPI_GROUP = "kpis"


@dataclass(frozen=True)
class KpiRun:
    """What a KPI check looks at: the run's rows as written, the raw events of its days, the
    whole KPI table (for trailing baselines) and the days [first, end)."""

    written: DataFrame
    events: DataFrame
    table: DataFrame
    first: date
    end: date


@dataclass(frozen=True)
class KpiCheck:
    name: str
    description: str
    # (passed, details) or (passed, details, severity): severity "ERROR" (the default) or "WARN".
    evaluate: Callable[[KpiRun], tuple]


Transform = Callable[[DataFrame, date, date], DataFrame]


def of_days(transform: Callable[[DataFrame], DataFrame]) -> Transform:
    """A transform of one day's events, given the raw table and the run's days."""
    return lambda raw, first, end: transform(raw.where(days_predicate(first, end)))


def kpi_asset(
    name: str, transform: Transform, kpi_checks: list[KpiCheck], description: str
) -> dg.AssetsDefinition:
    """A daily KPI table computed by `transform` from the raw table for the run's days,
    checked for null keys and by `kpi_checks`."""

    @dg.asset(
        name=name,
        group_name=KPI_GROUP,
        kinds={"spark", "delta"},
        deps=[RAW_TABLE, *game_tables.keys],
        partitions_def=DAILY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=REFRESH_POOL,
        freshness_policy=DERIVED_FRESHNESS,
        description=description,
        check_specs=[
            dg.AssetCheckSpec("no_null_keys", asset=name, description="No row lacks its day or game."),
            *(
                dg.AssetCheckSpec(check.name, asset=name, description=check.description)
                for check in kpi_checks
            ),
        ],
    )
    def kpi(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: LazyPySparkResource
    ) -> dg.MaterializeResult:
        spark = pyspark.spark_session
        first, end = run_days(context)
        days = days_predicate(first, end)
        raw = spark.read.format("delta").load(table_path(warehouse.root, RAW_TABLE))
        result = transform(raw, first, end).persist()
        path = table_path(warehouse.root, name)
        try:
            ensure_table(spark, path, result.schema, partition_by=("eventDate",))
            version = replace_rows(result, path, days, {"run_id": context.run.run_id}).version
            table = spark.read.format("delta").load(path)
            run = KpiRun(table.where(days), raw.where(days), table, first, end)
            no_null_keys = checks.null_keys(run.written, checks.KPI_KEYS)
            outcomes = {"no_null_keys": no_null_keys} | {
                check.name: check.evaluate(run) for check in kpi_checks
            }
            rows = no_null_keys[1]["rows"]
            # The chart runs up to the run's last day, with the days before it for context.
            chart = charts.kpi_chart(name, table, end - timedelta(days=1))
        finally:
            result.unpersist()
        pictures = (
            {"chart": dg.MetadataValue.md(charts.as_markdown(chart, charts.CHARTS[name].title))}
            if chart
            else {}
        )
        return dg.MaterializeResult(
            metadata={"rows": rows, "delta_version": version, "days": days, "dagster/uri": path, **pictures},
            check_results=[
                dg.AssetCheckResult(
                    check_name=check,
                    passed=passed,
                    metadata=details,
                    severity=dg.AssetCheckSeverity(severity[0] if severity else "ERROR"),
                )
                for check, (passed, details, *severity) in outcomes.items()
            ],
        )

    return kpi


def adds_up(name: str, description: str, consistent: Callable[[DataFrame, DataFrame], tuple]) -> KpiCheck:
    """A check of the run's KPI rows against the raw events of the same days."""
    return KpiCheck(name, description, lambda run: consistent(run.written, run.events))


def holds_up(name: str, what: str, value: str, min_baseline: Decimal) -> KpiCheck:
    """The live-ops alarm on an hourly KPI: no settled hour of the run's days fell by half or
    more against the same hour over the trailing days."""

    def evaluate(run: KpiRun) -> tuple:
        trailing = run.table.where(days_predicate(run.first - timedelta(days=liveops.TRAILING_DAYS), run.end))
        rows = trailing.select("game_keyword", "window_start", value).collect()
        now = datetime.now(UTC).replace(tzinfo=None)
        return liveops.drops_outcome(liveops.hourly_drops(rows, run.first, run.end, now, min_baseline))

    return KpiCheck(
        name,
        f"No game's {what} in an hour fell by {liveops.WARN_DROP:.0%} or more against the median of the same "
        f"hour over the previous {liveops.TRAILING_DAYS} days (WARN; ERROR from {liveops.ERROR_DROP:.0%}). "
        f"Judged for hours whose median is at least {min_baseline} {what}, {liveops.SETTLE.seconds // 60} "
        "minutes after they end.",
        evaluate,
    )


kpi_events_per_hour = kpi_asset(
    daily.EVENTS_PER_HOUR,
    of_days(daily.events_per_hour),
    [
        adds_up(
            "hours_add_up_to_raw",
            "Each day's hourly counts, per game and for all games, add up to that day's raw events.",
            checks.hours_add_up_to_days,
        ),
        holds_up("volume_holds_up", "events", "events", min_baseline=Decimal(100)),
    ],
    "Events per hour (`window_start`, `window_end`: the seed's 60-minute windows of `eventTime`) "
    "per game and for `all_games`. A sudden fall in a game's count is the first sign of a "
    "service interruption: the `volume_holds_up` check flags it.",
)
kpi_bookings_per_hour = kpi_asset(
    daily.BOOKINGS_PER_HOUR,
    of_days(daily.bookings_per_hour),
    [
        adds_up(
            "bookings_add_up_to_raw",
            "Each day's hourly bookings, per game and for all games, add up to that day's raw purchases.",
            checks.bookings_add_up_to_days,
        ),
        holds_up("bookings_hold_up", "bookings", "bookings", min_baseline=Decimal(20)),
    ],
    "Bookings per hour: the sum of `purchaseEvent` amounts (`bookings`, exact to the cent) and "
    "the number of `purchases`, per game and for `all_games`. An hour with play but no "
    "purchase shows 0, so a drop after a patch is visible, and the `bookings_hold_up` check "
    "flags it.",
)
kpi_daily_active_users = kpi_asset(
    daily.DAILY_ACTIVE_USERS,
    of_days(daily.daily_active_users),
    [
        KpiCheck(
            "all_games_within_bounds",
            "Each day's all-games DAU is at least its largest game's and at most the sum of all games'.",
            lambda run: checks.all_games_dau_is_bounded(run.written),
        )
    ],
    "Daily active users: distinct `device_id`s per day (`dau`), per game and for `all_games` "
    "(a player of two games counts once there). The seed's DAU query, kept for every day.",
)
kpi_daily_revenue = kpi_asset(
    daily.DAILY_REVENUE,
    of_days(daily.daily_revenue),
    [
        adds_up(
            "bookings_add_up_to_raw",
            "Each day's bookings, per game and for all games, equal that day's raw purchases.",
            checks.bookings_add_up_to_days,
        )
    ],
    "Revenue per day, per game and for `all_games`: `dau`, `paying_users` (distinct devices "
    "with a purchase that day), `bookings` (exact to the cent) and `arpdau` (bookings per daily "
    "active user, to 4 decimals).",
)
kpi_revenue_by_platform = kpi_asset(
    daily.REVENUE_BY_PLATFORM,
    of_days(daily.revenue_by_platform),
    [
        adds_up(
            "bookings_add_up_to_raw",
            "Each day's bookings over its platforms, per game and for all games, equal that day's raw purchases.",
            checks.bookings_add_up_to_days,
        )
    ],
    "Bookings and purchases per day and `platform` (ios, android), per game and for `all_games`: "
    "where a store or a client release changes what players spend.",
)
kpi_sessions = kpi_asset(
    daily.SESSIONS,
    of_days(daily.sessions),
    [
        adds_up(
            "players_match_raw",
            "Each day's players equal its distinct raw devices, per game and for all games, and no "
            "day has fewer sessions than players.",
            checks.sessions_cover_players,
        )
    ],
    "Play sessions per day, per game and for `all_games`: a device's events in a game with no "
    "pause over 30 minutes make one session, cut at midnight UTC. `sessions`, `players`, "
    "`session_seconds` (first to last event of each session, summed) and `avg_session_seconds`.",
)
kpi_retention = kpi_asset(
    daily.RETENTION,
    lambda raw, first, end: daily.retention(raw.where(daily.retention_source(first, end)), first, end),
    [
        adds_up(
            "cohorts_within_raw",
            "Each cohort is at most that day's distinct raw devices, and no more of it come back than it has.",
            checks.cohorts_are_bounded,
        )
    ],
    "Day-1 and day-7 retention of new players. `eventDate` is the cohort's day: the devices first "
    "seen in a game that day (`new_players`; for `all_games`, first seen in any game). "
    "`retained_d1` / `retained_d7` count those that play again exactly 1 / 7 days later, and "
    "`d1_retention` / `d7_retention` are the shares. Null until the return day has events. "
    "Refreshed when the cohort's day or its return days get events.",
)
