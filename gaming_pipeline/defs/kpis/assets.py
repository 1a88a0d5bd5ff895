"""KPI tables, per day and per game (and all games), recomputed exactly for each day."""

from collections.abc import Callable

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pyspark.sql import DataFrame

from gaming_pipeline.defs.games.assets import game_tables
from gaming_pipeline.defs.ingest.assets import SPARK_POOL
from gaming_pipeline.defs.partitions import DAILY, window_predicate
from gaming_pipeline.defs.resources import WarehouseResource
from gaming_pipeline.lib import checks, daily
from gaming_pipeline.lib.warehouse import RAW_TABLE, ensure_table, replace_rows, table_path

KPI_GROUP = "kpis"


Consistency = Callable[[DataFrame, DataFrame], tuple[bool, dict]]


def kpi_asset(
    name: str,
    transform: Callable[[DataFrame], DataFrame],
    consistency: tuple[str, str, Consistency],
    description: str,
) -> dg.AssetsDefinition:
    """A daily KPI table computed by `transform` from the raw events of its days, checked for
    null keys and by `consistency` (check name, description, function of the KPI rows and
    the raw events)."""
    consistency_name, consistency_description, consistent = consistency

    @dg.asset(
        name=name,
        group_name=KPI_GROUP,
        kinds={"spark", "delta"},
        deps=[RAW_TABLE, *game_tables.keys],
        partitions_def=DAILY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=SPARK_POOL,
        description=description,
        check_specs=[
            dg.AssetCheckSpec("no_null_keys", asset=name, description="No row lacks its day or game."),
            dg.AssetCheckSpec(consistency_name, asset=name, description=consistency_description),
        ],
    )
    def kpi(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: LazyPySparkResource
    ) -> dg.MaterializeResult:
        spark = pyspark.spark_session
        days = window_predicate(context)
        events = spark.read.format("delta").load(table_path(warehouse.root, RAW_TABLE)).where(days)
        result = transform(events).persist()
        path = table_path(warehouse.root, name)
        try:
            ensure_table(spark, path, result.schema, partition_by=("eventDate",))
            version = replace_rows(result, path, days, {"run_id": context.run.run_id})
            written = spark.read.format("delta").load(path).where(days)
            no_null_keys = checks.null_keys(written, checks.KPI_KEYS)
            outcomes = {"no_null_keys": no_null_keys, consistency_name: consistent(written, events)}
            rows = no_null_keys[1]["rows"]
        finally:
            result.unpersist()
        return dg.MaterializeResult(
            metadata={"rows": rows, "delta_version": version, "days": days, "dagster/uri": path},
            check_results=[
                dg.AssetCheckResult(check_name=check, passed=passed, metadata=details)
                for check, (passed, details) in outcomes.items()
            ],
        )

    return kpi


kpi_events_per_hour = kpi_asset(
    daily.EVENTS_PER_HOUR,
    daily.events_per_hour,
    (
        "hours_add_up_to_raw",
        "Each day's hourly counts, per game and for all games, add up to that day's raw events.",
        checks.hours_add_up_to_days,
    ),
    "Events per hour (`window_start`, `window_end`: the seed's 60-minute windows of `eventTime`) "
    "per game and for `all_games`. A sudden fall in a game's count is the first sign of a "
    "service interruption.",
)
kpi_bookings_per_hour = kpi_asset(
    daily.BOOKINGS_PER_HOUR,
    daily.bookings_per_hour,
    (
        "bookings_add_up_to_raw",
        "Each day's hourly bookings, per game and for all games, add up to that day's raw purchases.",
        checks.bookings_add_up_to_days,
    ),
    "Bookings per hour: the sum of `purchaseEvent` amounts (`bookings`, exact to the cent) and "
    "the number of `purchases`, per game and for `all_games`. An hour with play but no "
    "purchase shows 0, so a drop after a patch is visible.",
)
kpi_daily_active_users = kpi_asset(
    daily.DAILY_ACTIVE_USERS,
    daily.daily_active_users,
    (
        "all_games_within_bounds",
        "Each day's all-games DAU is at least its largest game's and at most the sum of all games'.",
        lambda kpi, events: checks.all_games_dau_is_bounded(kpi),
    ),
    "Daily active users: distinct `device_id`s per day (`dau`), per game and for `all_games` "
    "(a player of two games counts once there). The seed's DAU query, kept for every day.",
)
kpi_daily_revenue = kpi_asset(
    daily.DAILY_REVENUE,
    daily.daily_revenue,
    (
        "bookings_add_up_to_raw",
        "Each day's bookings, per game and for all games, equal that day's raw purchases.",
        checks.bookings_add_up_to_days,
    ),
    "Revenue per day, per game and for `all_games`: `dau`, `paying_users` (distinct devices "
    "with a purchase that day), `bookings` (exact to the cent) and `arpdau` (bookings per daily "
    "active user, to 4 decimals).",
)
kpi_revenue_by_platform = kpi_asset(
    daily.REVENUE_BY_PLATFORM,
    daily.revenue_by_platform,
    (
        "bookings_add_up_to_raw",
        "Each day's bookings over its platforms, per game and for all games, equal that day's raw purchases.",
        checks.bookings_add_up_to_days,
    ),
    "Bookings and purchases per day and `platform` (ios, android), per game and for `all_games`: "
    "where a store or a client release changes what players spend.",
)
