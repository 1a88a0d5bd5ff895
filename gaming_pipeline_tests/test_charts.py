"""The KPI charts and the dashboard page on tiny data: the slice read, the image drawn."""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from PIL import Image

from gaming_pipeline.lib import charts, kpis
from gaming_pipeline_tests.kpi_helpers import colored_pixels

LAST_DAY = date(2026, 11, 20)
HOURLY_SCHEMA = "eventDate date, window_start timestamp, window_end timestamp, game_keyword string"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A chart image rides in metadata on every materialization: it must stay small.
MAX_PNG_BYTES = 60_000


def hour(day: date, at: int) -> datetime:
    return datetime(day.year, day.month, day.day, at, tzinfo=UTC)


def hourly_table(spark, value_ddl: str, rows: list[tuple]):
    """(day, hour, game, value...) rows as a KPI table of hourly windows."""
    return spark.createDataFrame(
        [
            (day, hour(day, at), hour(day, at) + timedelta(hours=1), game, *values)
            for day, at, game, *values in rows
        ],
        f"{HOURLY_SCHEMA}, {value_ddl}",
    )


def test_hourly_points_are_the_all_games_rows_of_the_days_shown_in_utc(spark):
    yesterday, too_early = LAST_DAY - timedelta(days=1), LAST_DAY - timedelta(days=2)
    table = hourly_table(
        spark,
        "events long",
        [
            (LAST_DAY, 9, "all_games", 30),
            (yesterday, 23, "all_games", 20),
            (LAST_DAY, 9, "ninja_run", 7),
            (too_early, 12, "all_games", 99),
            (LAST_DAY + timedelta(days=1), 0, "all_games", 99),
        ],
    )
    spec = charts.CHARTS[kpis.EVENTS_PER_HOUR]
    assert charts.chart_points(spec, table, yesterday, LAST_DAY) == {
        "events": [(hour(yesterday, 23), 20.0), (hour(LAST_DAY, 9), 30.0)]
    }


def test_daily_points_start_at_midnight_utc(spark):
    table = spark.createDataFrame(
        [(LAST_DAY, "all_games", 12), (LAST_DAY, "ninja_run", 5)],
        "eventDate date, game_keyword string, dau long",
    )
    spec = charts.CHARTS[kpis.DAILY_ACTIVE_USERS]
    assert charts.chart_points(spec, table, LAST_DAY - timedelta(days=29), LAST_DAY) == {
        "dau": [(hour(LAST_DAY, 0), 12.0)]
    }


def test_a_cohort_chart_has_a_line_per_return_day_each_ending_where_it_is_not_known(spark):
    table = spark.createDataFrame(
        [
            (LAST_DAY - timedelta(days=1), "all_games", Decimal("0.5"), None, None),
            (LAST_DAY, "all_games", None, None, None),
        ],
        "eventDate date, game_keyword string, d1_retention decimal(5,4), d7_retention decimal(5,4), "
        "d30_retention decimal(5,4)",
    )
    spec = charts.CHARTS[kpis.RETENTION]
    assert charts.chart_points(spec, table, LAST_DAY - timedelta(days=29), LAST_DAY) == {
        "day 1": [(hour(LAST_DAY - timedelta(days=1), 0), 0.5)],
        "day 7": [],
        "day 30": [],
    }


def test_each_charted_table_gets_a_small_png_with_its_series_drawn(spark):
    hours = [(day, at) for day in (LAST_DAY - timedelta(days=1), LAST_DAY) for at in range(24)]
    tables = {
        kpis.EVENTS_PER_HOUR: hourly_table(
            spark, "events long", [(day, at, "all_games", 100 + 10 * at) for day, at in hours]
        ),
        kpis.BOOKINGS_PER_HOUR: hourly_table(
            spark,
            "bookings decimal(18,2), purchases long",
            [(day, at, "all_games", Decimal("4.99") * at, at) for day, at in hours],
        ),
        kpis.DAILY_ACTIVE_USERS: spark.createDataFrame(
            [(LAST_DAY - timedelta(days=n), "all_games", 1000 + 7 * n) for n in range(30)],
            "eventDate date, game_keyword string, dau long",
        ),
        kpis.ACTIVE_USERS: spark.createDataFrame(
            [(LAST_DAY - timedelta(days=n), "all_games", 1000, 3000, 9000) for n in range(30)],
            "eventDate date, game_keyword string, dau long, wau long, mau long",
        ),
        kpis.RETENTION: spark.createDataFrame(
            [
                (LAST_DAY - timedelta(days=n), "all_games", Decimal("0.4"), Decimal("0.2"), None)
                for n in range(30)
            ],
            "eventDate date, game_keyword string, d1_retention decimal(5,4), d7_retention decimal(5,4), "
            "d30_retention decimal(5,4)",
        ),
        kpis.COHORT_REVENUE: spark.createDataFrame(
            [
                (LAST_DAY - timedelta(days=n), "all_games", Decimal("0.5"), Decimal("1.5"), None)
                for n in range(30)
            ],
            "eventDate date, game_keyword string, bookings_per_player_d1 decimal(18,4), "
            "bookings_per_player_d7 decimal(18,4), bookings_per_player_d30 decimal(18,4)",
        ),
        # Levels of a day: drawn as the day's sum.
        kpis.PROGRESSION_FUNNEL: spark.createDataFrame(
            [
                (LAST_DAY - timedelta(days=n), "all_games", level, 100, 60, 30)
                for n in range(30)
                for level in (1, 2)
            ],
            "eventDate date, game_keyword string, level long, started long, completed long, failed long",
        ),
    }
    assert set(tables) == set(charts.CHARTS)
    for name, table in tables.items():
        png = charts.kpi_chart(name, table, LAST_DAY)
        assert png.startswith(PNG_SIGNATURE), name
        assert len(png) < MAX_PNG_BYTES, (name, len(png))
        image = Image.open(io.BytesIO(png))
        assert image.size == (charts.WIDTH_PX, charts.HEIGHT_PX), name
        assert colored_pixels(image) > 1000, name
    funnel = charts.CHARTS[kpis.PROGRESSION_FUNNEL]
    points = charts.chart_points(funnel, tables[kpis.PROGRESSION_FUNNEL], LAST_DAY, LAST_DAY)
    assert [value for _, value in points["started"]] == [200]


def test_a_chart_without_rows_draws_no_series():
    spec = charts.CHARTS[kpis.BOOKINGS_PER_HOUR]
    png = charts.render_chart(spec, {}, LAST_DAY - timedelta(days=1), LAST_DAY)
    assert colored_pixels(Image.open(io.BytesIO(png))) == 0


def test_tables_without_a_chart_get_none(spark):
    table = spark.createDataFrame(
        [(LAST_DAY, "all_games", 3)], "eventDate date, game_keyword string, dau long"
    )
    assert charts.kpi_chart(kpis.DAILY_REVENUE, table, LAST_DAY) is None


def test_latest_day_is_the_last_all_games_day(spark):
    schema = "eventDate date, game_keyword string, dau long"
    table = spark.createDataFrame(
        [(LAST_DAY, "all_games", 3), (LAST_DAY - timedelta(days=3), "all_games", 2)], schema
    )
    assert charts.latest_day(table) == LAST_DAY
    assert charts.latest_day(spark.createDataFrame([], schema)) is None


def test_markdown_embeds_the_png_as_a_data_uri():
    markdown = charts.as_markdown(PNG_SIGNATURE + b"rest", "Events per hour")
    match = re.fullmatch(r"!\[Events per hour\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match and base64.b64decode(match.group(1)) == PNG_SIGNATURE + b"rest"


def test_the_page_is_self_contained_and_places_each_chart_in_its_box():
    pngs = {name: PNG_SIGNATURE + name.encode() for name in charts.CHARTS}
    page = charts.dashboard_page(pngs, LAST_DAY, datetime(2026, 11, 21, 6, 30, tzinfo=UTC))
    assert "http:" not in page and "https:" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources == [charts.data_uri(png) for png in pngs.values()]
    for index, (name, spec) in enumerate(charts.CHARTS.items()):
        left, top, _, _ = charts.chart_box(index)
        assert f'<figure style="top:{top}px;left:{left}px">' in page
        assert spec.caption in page and f"<code>{name}</code>" in page
    assert "20 Nov 2026" in page and "2026-11-21 06:30 UTC" in page
