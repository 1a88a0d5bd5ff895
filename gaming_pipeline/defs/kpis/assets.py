"""KPI tables, per day and per game (and all games), recomputed exactly for each day from
the activity tables: a refresh reads a day's activity sums, never its raw events."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql import types as T

from gaming_pipeline.defs.check_results import check_result
from gaming_pipeline.defs.partitions import DAILY, DERIVED_FRESHNESS, days_predicate, run_days
from gaming_pipeline.defs.pools import REFRESH_POOL
from gaming_pipeline.defs.resources import SparkResource, WarehouseResource
from gaming_pipeline.lib import charts, checks, kpis, liveops, tables
from gaming_pipeline.lib.derived import PARALLEL_WRITES
from gaming_pipeline.lib.warehouse import append_rows, at_version, latest_version, replace_rows, table_path

KPI_GROUP = "kpis"


@dataclass(frozen=True)
class KpiRun:
    """What a KPI check looks at: the rows of the run's days as written (a few per day and
    game), the players' totals of those days, the whole KPI table (for trailing baselines)
    and the days [first, end)."""

    written: list[Row]
    totals: checks.Totals
    table: DataFrame
    first: date
    end: date


def reached_back(first: date, days: int) -> date:
    """The first day a KPI reaching `days` back rewrites when a run's days start on `first`;
    never before the first partition."""
    return max(first - timedelta(days=days), DAILY.start.date())


@dataclass(frozen=True)
class ActivityRead:
    """The activity tables as a run's KPIs read them, opened once for all of them: the
    transforms pick their days from `activity`, and the checks compare with `totals`, the
    players' totals of the run's days and of those the KPIs reach back to, summed once for
    the run."""

    activity: kpis.Activity
    totals: checks.Totals
    first: date
    end: date

    @classmethod
    def of(cls, spark, warehouse: WarehouseResource, first: date, end: date) -> "ActivityRead":
        # One version of each activity table for the whole run, so that the transforms and the
        # totals their checks compare with see the same rows while follower runs merge batches
        # in. A pass merges into the hourly and the parameters' tables, then the players'
        # (derived.add_batch): the players' version taken first, the others taken after hold
        # all its batches.
        paths = {t: table_path(warehouse.root, t) for t in kpis.ACTIVITY_TABLES}
        versions = {
            t: latest_version(paths[t]) for t in (kpis.PLAYER_DAYS, kpis.GAME_PARAMS, kpis.GAME_HOURS)
        }
        activity = kpis.Activity(*(at_version(spark, paths[t], versions[t]) for t in kpis.ACTIVITY_TABLES))
        reach = max(kpis.REACHES_BACK.values())
        totals = checks.activity_totals(
            activity.players.where(days_predicate(reached_back(first, reach), end))
        )
        return cls(activity, totals, first, end)


@dataclass(frozen=True)
class KpiCheck:
    name: str
    description: str
    evaluate: Callable[[KpiRun], checks.Outcome]


RESTATED = (
    "A figure of a past day that changes after it was reported (late events, a rebuild) is "
    "listed on the materialization that changed it (`restatements`) and kept in `kpi_restatements`."
)
# Which activity table each KPI is computed from.
SOURCE = {
    kpis.EVENTS_PER_HOUR: kpis.GAME_HOURS,
    kpis.BOOKINGS_PER_HOUR: kpis.GAME_HOURS,
    kpis.REVENUE_BY_PLATFORM: kpis.GAME_HOURS,
    kpis.DAILY_ACTIVE_USERS: kpis.PLAYER_DAYS,
    kpis.DAILY_REVENUE: kpis.PLAYER_DAYS,
    kpis.SESSIONS: kpis.PLAYER_DAYS,
    kpis.RETENTION: kpis.PLAYER_DAYS,
    kpis.ACTIVE_USERS: kpis.PLAYER_DAYS,
    kpis.PAYERS: kpis.PLAYER_DAYS,
    kpis.COHORT_REVENUE: kpis.PLAYER_DAYS,
    kpis.CONCURRENT_PLAYERS: kpis.PLAYER_DAYS,
    kpis.HOURLY_SLICES: kpis.GAME_HOURS,
    kpis.PROGRESSION_FUNNEL: kpis.GAME_PARAMS,
    kpis.REVENUE_BY_ITEM: kpis.GAME_PARAMS,
}


@dataclass(frozen=True)
class Kpi:
    name: str
    kpi_checks: list[KpiCheck]
    description: str

    def spec(self) -> dg.AssetSpec:
        return dg.AssetSpec(
            self.name,
            group_name=KPI_GROUP,
            kinds={"spark", "delta"},
            deps=[SOURCE[self.name]],
            partitions_def=DAILY,
            freshness_policy=DERIVED_FRESHNESS,
            description=f"{self.description} {RESTATED}",
        )

    def check_specs(self) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec("no_null_keys", asset=self.name, description="No row lacks its day or game."),
            *(
                dg.AssetCheckSpec(check.name, asset=self.name, description=check.description)
                for check in self.kpi_checks
            ),
        ]

    def refresh(self, warehouse: WarehouseResource, read: ActivityRead, run_id: str):
        """Compute the KPI of the run's days from the activity tables, replace those days of
        its table, and check what was written.

        A KPI is a few rows per day and game: the days written are read back in one Spark
        job and checked on the driver, rather than with a Spark job per check."""
        first, end = reached_back(read.first, kpis.REACHES_BACK.get(self.name, 0)), read.end
        days = days_predicate(first, end)
        result = kpis.TRANSFORMS[self.name](read.activity, first, end)
        spark = result.sparkSession
        path = tables.KPIS[self.name].ensure(spark, warehouse.root)
        # Only a past day's figures can be restated: a refresh of today alone (the steady
        # path) reads nothing more.
        today = datetime.now(UTC).date()
        reported = (
            spark.read.format("delta").load(path).where(days_predicate(first, min(end, today))).collect()
            if first < today
            else []
        )
        version = replace_rows(result, path, days, {"run_id": run_id}).version
        # What this run wrote, even if a rollback or a later refresh commits meanwhile.
        table = at_version(spark, path, version)
        rows = table.where(days).collect()
        restated = record_restatements(
            spark, warehouse, kpis.restatements(self.name, reported, rows, today), run_id
        )
        run = KpiRun(rows, checks.within(read.totals, first, end), table, first, end)
        outcomes = {"no_null_keys": checks.null_keys_in(rows, checks.KPI_KEYS)} | {
            check.name: check.evaluate(run) for check in self.kpi_checks
        }
        # The chart runs up to the run's last day, with the days before it for context.
        chart = charts.kpi_chart(self.name, table, end - timedelta(days=1))
        pictures = (
            {"chart": dg.MetadataValue.md(charts.as_markdown(chart, charts.CHARTS[self.name].title))}
            if chart
            else {}
        )
        return dg.MaterializeResult(
            asset_key=self.name,
            metadata={
                "rows": len(rows),
                "delta_version": version,
                "days": days,
                "dagster/uri": path,
                **restated,
                **pictures,
            },
            check_results=[check_result(self.name, check, outcome) for check, outcome in outcomes.items()],
        )


# Restated figures listed on the asset; all of them are in the restatements table.
RESTATEMENTS_SHOWN = 20
_MAKING_RESTATEMENTS = threading.Lock()


def record_restatements(spark, warehouse: WarehouseResource, changed: list[dict], run_id: str) -> dict:
    """Append a refresh's restated figures (kpis.restatements) to the restatements table, and
    return the asset metadata that shows them: how many, and the first few, old value to new."""
    if not changed:
        return {}
    # Made when first needed, not by every refresh; the lock keeps the KPIs of one run, in
    # threads, from making it at once (two creations of one table conflict).
    with _MAKING_RESTATEMENTS:
        path = tables.RESTATEMENTS.ensure(spark, warehouse.root)
    schema = tables.RESTATEMENTS_SCHEMA
    given = T.StructType([field for field in schema.fields if field.name != "restated_at"])
    rows = spark.createDataFrame([{**change, "run_id": run_id} for change in changed], given)
    append_rows(
        rows.withColumn("restated_at", F.current_timestamp()).select(*schema.names), path, {"run_id": run_id}
    )
    shown = [
        f"| {c['eventDate']} | {c['game_keyword']} | {c['slice']} | {c['figure']} | {c['reported']} | {c['restated']} |"
        for c in changed[:RESTATEMENTS_SHOWN]
    ]
    more = len(changed) - len(shown)
    table = "| day | game | slice | figure | reported | now |\n|---|---|---|---|---|---|\n" + "\n".join(shown)
    return {
        "restated_figures": len(changed),
        "restatements": dg.MetadataValue.md(
            table + (f"\n\n...and {more} more in kpi_restatements" if more else "")
        ),
    }


def adds_up(
    name: str, description: str, consistent: Callable[[list[Row], checks.Totals], checks.Outcome]
) -> KpiCheck:
    """A check of the run's KPI rows against the players' activity of the same days."""
    return KpiCheck(name, description, lambda run: consistent(run.written, run.totals))


def holds_up(
    name: str, what: str, value: str, min_baseline: Decimal, sliced_by: tuple[str, ...] = ()
) -> KpiCheck:
    """The live-ops alarm on an hourly KPI: no settled hour of the run's days fell by half or
    more against the same hour over the trailing days, per game (and all games) or, with
    `sliced_by`, per each game's slices by those columns (platform, then platform and app
    version): a patch that breaks one platform drops its slice while the others hold the
    game's total up."""

    def evaluate(run: KpiRun) -> checks.Outcome:
        trailing = run.table.where(days_predicate(run.first - timedelta(days=liveops.TRAILING_DAYS), run.end))
        rows = trailing.select("game_keyword", *sliced_by, "window_start", value).collect()
        now = datetime.now(UTC).replace(tzinfo=None)
        series = liveops.sliced(rows, sliced_by, value)
        return liveops.drops_outcome(liveops.hourly_drops(series, run.first, run.end, now, min_baseline))

    per = f"per game and {' and '.join(sliced_by)}" if sliced_by else "per game"
    return KpiCheck(
        name,
        f"No {what} in an hour ({per}) fell by {liveops.WARN_DROP:.0%} or more against the median of the "
        f"same hour over the previous {liveops.TRAILING_DAYS} days (WARN; ERROR from {liveops.ERROR_DROP:.0%}). "
        f"Judged for hours whose median is at least {min_baseline} {what}, {liveops.SETTLE.seconds // 60} "
        "minutes after they end.",
        evaluate,
    )


# The columns the hourly slices are judged by, coarser first.
SLICES = ("platform", "app_version")
KPIS = [
    Kpi(
        kpis.EVENTS_PER_HOUR,
        [
            adds_up(
                "hours_add_up_to_activity",
                "Each day's hourly counts, per game and for all games, add up to the events of that "
                "day's players in activity_player_days.",
                checks.hours_add_up_to_days,
            ),
            holds_up("volume_holds_up", "events", "events", min_baseline=Decimal(100)),
        ],
        "Events per hour (`window_start`, `window_end`: the seed's 60-minute windows of `eventTime`) "
        "per game and for `all_games`. A sudden fall in a game's count is the first sign of a "
        "service interruption: the `volume_holds_up` check flags it.",
    ),
    Kpi(
        kpis.BOOKINGS_PER_HOUR,
        [
            adds_up(
                "bookings_add_up_to_activity",
                "Each day's hourly bookings, per game and for all games, add up to what that day's "
                "players spent in activity_player_days.",
                checks.bookings_add_up_to_days,
            ),
            holds_up("bookings_hold_up", "bookings", "bookings", min_baseline=Decimal(20)),
        ],
        "Bookings per hour: the sum of `purchaseEvent` amounts (`bookings`, exact to the cent) and "
        "the number of `purchases`, per game and for `all_games`. An hour with play but no "
        "purchase shows 0, so a drop after a patch is visible, and the `bookings_hold_up` check "
        "flags it.",
    ),
    Kpi(
        kpis.DAILY_ACTIVE_USERS,
        [
            KpiCheck(
                "all_games_within_bounds",
                "Each day's all-games DAU is at least its largest game's and at most the sum of all games'.",
                lambda run: checks.all_games_dau_is_bounded(run.written),
            )
        ],
        "Daily active users: distinct `device_id`s per day (`dau`), per game and for `all_games` "
        "(a player of two games counts once there). The seed's DAU query, kept for every day.",
    ),
    Kpi(
        kpis.DAILY_REVENUE,
        [
            adds_up(
                "bookings_add_up_to_activity",
                "Each day's bookings, per game and for all games, equal what that day's players spent "
                "in activity_player_days.",
                checks.bookings_add_up_to_days,
            )
        ],
        "Revenue per day, per game and for `all_games`: `dau`, `paying_users` (distinct devices "
        "with a purchase that day), `bookings` (exact to the cent) and `arpdau` (bookings per daily "
        "active user, to 4 decimals).",
    ),
    Kpi(
        kpis.REVENUE_BY_PLATFORM,
        [
            adds_up(
                "bookings_add_up_to_activity",
                "Each day's bookings over its platforms, per game and for all games, equal what that "
                "day's players spent in activity_player_days.",
                checks.bookings_add_up_to_days,
            )
        ],
        "Bookings and purchases per day and `platform` (ios, android), per game and for `all_games`: "
        "where a store or a client release changes what players spend.",
    ),
    Kpi(
        kpis.SESSIONS,
        [
            adds_up(
                "players_match_activity",
                "Each day's players equal its active devices in activity_player_days, per game and for "
                "all games, and no day has fewer sessions than players.",
                checks.sessions_cover_players,
            )
        ],
        "Play sessions per day, per game and for `all_games`: a device's events in a game with no "
        "pause over 30 minutes make one session, cut at midnight UTC. `sessions`, `players`, "
        "`session_seconds` (first to last event of each session, summed) and `avg_session_seconds`.",
    ),
    Kpi(
        kpis.RETENTION,
        [
            adds_up(
                "cohorts_within_activity",
                "Each cohort is at most that day's active devices, and no more of it come back than it has.",
                checks.cohorts_are_bounded,
            )
        ],
        "Day-1, day-7 and day-30 retention of new players. `eventDate` is the cohort's day: the "
        "devices first seen in a game that day (`new_players`; for `all_games`, first seen in any "
        "game). `retained_d1` / `retained_d7` / `retained_d30` count those that play again exactly "
        "1 / 7 / 30 days later, and `d1_retention` / `d7_retention` / `d30_retention` are the "
        "shares. Null until the return day has events. A refresh of a day rewrites the cohorts of "
        "the 30 days before it too (the day's events are their returns); a cohort also refreshes "
        "when an earlier day gets its players' first events.",
    ),
    Kpi(
        kpis.ACTIVE_USERS,
        [
            adds_up(
                "active_users_add_up",
                "Each day's DAU equals its active devices in activity_player_days; DAU <= WAU <= MAU; "
                "new and returning players make up the DAU.",
                checks.active_users_add_up,
            )
        ],
        "Daily, weekly and monthly active users per day with events: `dau`, `wau` and `mau` "
        "(distinct devices over the 1, 7 and 30 days ending that day; for `all_games` a player of "
        "two games counts once), `stickiness` (DAU / MAU: how much of the month's audience plays "
        "each day), `new_players` (first seen that day, as in kpi_retention) and "
        "`returning_players` (the rest of the DAU). Late events of a day refresh every later day "
        "too (their WAU, MAU and new players follow from it).",
    ),
    Kpi(
        kpis.PAYERS,
        [
            adds_up(
                "payers_within_players",
                "Each day's DAU equals its active devices, and first-time payers <= paying users <= DAU.",
                checks.payers_within_players,
            ),
            adds_up(
                "bookings_add_up_to_activity",
                "Each day's bookings, per game and for all games, equal what that day's players spent "
                "in activity_player_days.",
                checks.bookings_add_up_to_days,
            ),
        ],
        "Who pays, per day: `dau`, `paying_users` (devices with a purchase that day), "
        "`payer_conversion` (paying users / DAU), `bookings`, `arppu` (bookings per paying user; "
        "null on a day without payers), `first_time_payers` (devices whose first purchase in the "
        "game, or in any game for `all_games`, was that day) and `avg_days_to_first_purchase` "
        "(their days from first seen to first purchase). Late events of a day refresh every "
        "later day too (a first purchase may move to it).",
    ),
    Kpi(
        kpis.COHORT_REVENUE,
        [
            adds_up(
                "cohort_bookings_accumulate",
                "Each cohort is at most its day's active devices, and what it spent by day 1, 7 and 30 "
                "never shrinks.",
                checks.cohort_bookings_accumulate,
            )
        ],
        "The start of each cohort's LTV curve. `eventDate` is the cohort's day (players first seen "
        "then, as in kpi_retention; `new_players`); `bookings_d1` / `bookings_d7` / `bookings_d30` "
        "are what they spent from that day through 1 / 7 / 30 days later, and "
        "`bookings_per_player_d1` / `_d7` / `_d30` the same per new player. Null until that day "
        "has events. Refreshed with the 30 days after each cohort, like retention.",
    ),
    Kpi(
        kpis.CONCURRENT_PLAYERS,
        [
            adds_up(
                "windows_within_players",
                "No 5-minute window has more players online than its day has active devices.",
                checks.windows_within_players,
            )
        ],
        "Players online in each 5-minute window (`window_start`, `window_end`) of the day: devices "
        "with a session (events at most 30 minutes apart) overlapping the window, per game and "
        "for `all_games` (a player of two games at once counts once). A window with nobody online "
        "has no row. The day's peak is `max(players)`; its average over the day "
        "`sum(players) / 288`.",
    ),
    Kpi(
        kpis.HOURLY_SLICES,
        [
            adds_up(
                "hours_add_up_to_activity",
                "Each day's slices, per game and for all games, add up to the events of that day's "
                "players in activity_player_days.",
                checks.hours_add_up_to_days,
            ),
            adds_up(
                "bookings_add_up_to_activity",
                "Each day's slices' bookings add up to what that day's players spent.",
                checks.bookings_add_up_to_days,
            ),
            holds_up(
                "volume_holds_up_per_slice",
                "events",
                "events",
                min_baseline=Decimal(100),
                sliced_by=SLICES,
            ),
            holds_up(
                "bookings_hold_up_per_slice",
                "bookings",
                "bookings",
                min_baseline=Decimal(20),
                sliced_by=SLICES,
            ),
        ],
        "Events, purchases and bookings per hour, game, `platform` and `app_version`, and for "
        "`all_games`: where a bad patch shows as what it is. The drop checks judge each platform "
        "and each platform's app version on its own, so a release that breaks purchases on "
        "android 2.4.1 alerts even while iOS holds the game's total up. Hours ingested before "
        "this table existed have a null `app_version` until their day is rebuilt.",
    ),
    Kpi(
        kpis.PROGRESSION_FUNNEL,
        [
            KpiCheck(
                "all_games_add_up",
                "Each day's all-games row of a level is the sum of the games' rows of that level.",
                lambda run: checks.all_games_add_up(
                    run.written, (kpis.LEVEL,), ("started", "completed", "failed")
                ),
            )
        ],
        "The progression funnel per day, game (and `all_games`) and `level`: levels `started`, "
        "`completed` and `failed` (the games' `levelStarted`, `levelCompleted` and `levelFailed` "
        "events, their catalog's `level`), and the `completion_rate` of the attempts that ended "
        "that day (completed / (completed + failed)). A level many start and few complete is "
        "where players leave.",
    ),
    Kpi(
        kpis.REVENUE_BY_ITEM,
        [
            adds_up(
                "bookings_add_up_to_activity",
                "Each day's bookings over its items, per game and for all games, equal what that "
                "day's players spent in activity_player_days.",
                checks.bookings_add_up_to_days,
            ),
            KpiCheck(
                "all_games_add_up",
                "Each day's all-games row of an item is the sum of the games' rows of that item.",
                lambda run: checks.all_games_add_up(run.written, (kpis.ITEM,), ("purchases", "bookings")),
            ),
        ],
        "Revenue per day, game (and `all_games`) and `item_id`, the item a `purchaseEvent` "
        "names (its game's catalog declares it): `purchases` and `bookings` (exact to the cent). "
        "Purchases that name no item are the row with a null `item_id`, so the items add up to "
        "the day's bookings.",
    ),
]


@dg.multi_asset(
    name="kpi_tables",
    specs=[kpi.spec() for kpi in KPIS],
    check_specs=[check for kpi in KPIS for check in kpi.check_specs()],
    can_subset=True,
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=REFRESH_POOL,
)
def kpi_tables(context: dg.AssetExecutionContext, warehouse: WarehouseResource, pyspark: SparkResource):
    """Each selected KPI of the run's days, from the activity tables: a few at once, since
    each costs mostly Delta's fixed commit work and small Spark jobs."""
    spark = pyspark.spark_session
    first, end = run_days(context)
    selected = [kpi for kpi in KPIS if dg.AssetKey(kpi.name) in context.selected_asset_keys]
    read = ActivityRead.of(spark, warehouse, first, end)
    with ThreadPoolExecutor(max_workers=PARALLEL_WRITES) as pool:
        yield from pool.map(lambda kpi: kpi.refresh(warehouse, read, context.run.run_id), selected)
