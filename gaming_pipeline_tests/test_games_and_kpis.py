"""Per-game and KPI tables from ingested history: equal to a plain-Python count of the
generated events, rebuilt identically, and late events counted on their own day."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import dagster as dg
from pyspark.sql import functions as F

from gaming_pipeline.cli import main
from gaming_pipeline.defs.games.assets import game_tables
from gaming_pipeline.defs.games.sensors import raw_days_sensor
from gaming_pipeline.defs.ingest.sensors import build_reconcile_sensor
from gaming_pipeline.defs.kpis.assets import (
    kpi_bookings_per_hour,
    kpi_daily_active_users,
    kpi_daily_revenue,
    kpi_events_per_hour,
    kpi_revenue_by_platform,
)
from gaming_pipeline.games import ALL_GAMES, GAMES
from gaming_pipeline.lib import aws, generator
from gaming_pipeline.lib.daily import KPI_TABLES
from gaming_pipeline.lib.warehouse import table_path
from gaming_pipeline_tests.ingest_helpers import HISTORY_END, resources, run

SEED, EVENTS = 17, 3000
DERIVED = [
    game_tables,
    kpi_events_per_hour,
    kpi_bookings_per_hour,
    kpi_daily_active_users,
    kpi_daily_revenue,
    kpi_revenue_by_platform,
]


def expected_kpis(events: list[dict]) -> dict:
    """The KPIs computed in plain Python, independently of the Spark code."""
    per_hour, bookings, devices = Counter(), defaultdict(Decimal), defaultdict(set)
    day_bookings, payers, platform_bookings = defaultdict(Decimal), defaultdict(set), defaultdict(Decimal)
    for event in events:
        at = datetime.fromtimestamp(event["eventTime"], UTC)
        hour = at.replace(minute=0, second=0, microsecond=0, tzinfo=None)
        params = event["eventParams"]
        purchase = event["eventName"] == "purchaseEvent"
        amount = Decimal(str(params["amount"])) if purchase else Decimal(0)
        for game in (params["game_keyword"], ALL_GAMES):
            per_hour[(hour, game)] += 1
            bookings[(hour, game)] += amount
            devices[(at.date(), game)].add(params["device_id"])
            day_bookings[(at.date(), game)] += amount
            platform_bookings[(at.date(), game, params["platform"])] += amount
            if purchase:
                payers[(at.date(), game)].add(params["device_id"])
    cents, per_user = Decimal("0.01"), Decimal("0.0001")
    return {
        "events_per_hour": dict(per_hour),
        "bookings_per_hour": {key: value.quantize(cents) for key, value in bookings.items()},
        "dau": {key: len(value) for key, value in devices.items()},
        "daily_revenue": {
            key: (
                len(devices[key]),
                len(payers[key]),
                day_bookings[key].quantize(cents),
                (day_bookings[key] / len(devices[key])).quantize(per_user, ROUND_HALF_UP),
            )
            for key in devices
        },
        "revenue_by_platform": {key: value.quantize(cents) for key, value in platform_bookings.items()},
    }


def actual_kpis(spark, warehouse: str) -> dict:
    def load(table):
        return spark.read.format("delta").load(table_path(warehouse, table)).collect()

    return {
        "events_per_hour": {(r.window_start, r.game_keyword): r.events for r in load("kpi_events_per_hour")},
        "bookings_per_hour": {
            (r.window_start, r.game_keyword): r.bookings for r in load("kpi_bookings_per_hour")
        },
        "dau": {(r.eventDate, r.game_keyword): r.dau for r in load("kpi_daily_active_users")},
        "daily_revenue": {
            (r.eventDate, r.game_keyword): (r.dau, r.paying_users, r.bookings, r.arpdau)
            for r in load("kpi_daily_revenue")
        },
        "revenue_by_platform": {
            (r.eventDate, r.game_keyword, r.platform): r.bookings for r in load("kpi_revenue_by_platform")
        },
    }


def fingerprints(spark, warehouse: str) -> dict:
    tables = [game.table_name for game in GAMES] + [
        "kpi_events_per_hour",
        "kpi_bookings_per_hour",
        "kpi_daily_active_users",
    ]
    result = {}
    for table in tables:
        df = spark.read.format("delta").load(table_path(warehouse, table))
        drop = [c for c in ("_ingested_at", "_ingest_run_id") if c in df.columns]
        df = df.drop(*drop)
        result[table] = (
            df.count(),
            df.select(F.sum(F.xxhash64(*df.columns).cast("decimal(38,0)"))).first()[0],
        )
    return result


def refresh(landing, warehouse, instance, first: str, last: str) -> None:
    result = dg.materialize(
        DERIVED,
        resources=resources(landing, warehouse),
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 3 * len(GAMES) + 2 * len(KPI_TABLES)
    assert [e.check_name for e in evaluations if not e.passed] == []


def ingest_everything(landing, warehouse, instance) -> None:
    for request in _evaluate_reconcile(landing, warehouse, instance):
        run(request, landing, warehouse, instance)


def _evaluate_reconcile(landing, warehouse, instance):
    from gaming_pipeline_tests.ingest_helpers import evaluate

    return evaluate(build_reconcile_sensor(grace_seconds=0), landing, warehouse, instance)


class DaysSensor:
    """raw_days_sensor evaluated tick after tick, its cursor carried as the daemon would."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance, self.cursor = instance, None

    def requested(self) -> list[str]:
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor) as context:
            result = raw_days_sensor(context)
        self.cursor = result.cursor
        return sorted(request.partition_key for request in result.run_requests or [])


def test_kpis_match_python_and_backfills_equal_rebuilds_and_late_events_count_on_their_day(
    spark, landing, warehouse, monkeypatch, capsys
):
    start, end = generator.history_window(3.0, HISTORY_END)
    events = list(generator.history(SEED, EVENTS, start, end))
    s3 = aws.client("s3")
    generator.write_objects(
        generator.landing_objects(iter(events), SEED, 500),
        lambda key, body: s3.put_object(Bucket=landing.bucket, Key=key, Body=body),
        generator.Totals(),
    )
    with dg.instance_for_test() as instance:
        ingest_everything(landing, warehouse, instance)
        days = [(start.date() + timedelta(days=n)).isoformat() for n in range(4)]
        sensor = DaysSensor(instance)
        assert sensor.requested() == days

        refresh(landing, warehouse, instance, days[0], days[-1])
        assert actual_kpis(spark, warehouse) == expected_kpis(events)
        per_game = {
            game.keyword: spark.read.format("delta").load(table_path(warehouse, game.table_name)).count()
            for game in GAMES
        }
        assert per_game == {
            game.keyword: sum(e["eventParams"]["game_keyword"] == game.keyword for e in events)
            for game in GAMES
        }

        # Rebuilding the same range changes no row.
        before = fingerprints(spark, warehouse)
        refresh(landing, warehouse, instance, days[0], days[-1])
        assert fingerprints(spark, warehouse) == before

        # Late events: they happened on the second day and land now.
        late_day = datetime.fromisoformat(days[1]).replace(hour=15, tzinfo=UTC)
        late = [generator.EventFactory(99).event(late_day.timestamp() + n) for n in range(40)]
        late[0]["eventName"], late[0]["eventParams"]["amount"] = "purchaseEvent", 19.99
        body = gzip.compress("".join(json.dumps(event) + "\n" for event in late).encode())
        s3.put_object(Bucket=landing.bucket, Key="events/late/arrivals.ndjson.gz", Body=body)
        ingest_everything(landing, warehouse, instance)
        assert sensor.requested() == [days[1]]
        refresh(landing, warehouse, instance, days[1], days[1])
        assert actual_kpis(spark, warehouse) == expected_kpis(events + late)

        # Every table answers to its name in SQL.
        monkeypatch.setenv("GAMING_PIPELINE_WAREHOUSE", warehouse)
        capsys.readouterr()
        query = "select sum(events) as n from kpi_events_per_hour where game_keyword = 'all_games'"
        assert main(["sql", query, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"n": EVENTS + len(late)}
