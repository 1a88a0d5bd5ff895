"""Charts of the KPI tables as PNG images, and the dashboard page that shows them together.

Every chart plots the `all_games` rows (the portfolio) over the last days that have data,
in UTC. Images are drawn with matplotlib's Agg renderer on a `Figure` of their own (no
pyplot state), small enough to travel in Dagster metadata.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from gaming_pipeline.games import ALL_GAMES
from gaming_pipeline.lib import kpis

WIDTH_PX, HEIGHT_PX, DPI = 900, 300, 100
# ConciseDateFormatter's labels where a larger unit starts (a new day reads "20 Nov", not "Nov-20").
ZERO_FORMATS = ["", "%Y", "%b", "%d %b", "%H:%M", "%H:%M"]


@dataclass(frozen=True)
class Period:
    """The time unit of a KPI table's rows, how to read a row's start, and where in its
    period a value is drawn."""

    length: timedelta
    # Seconds since the epoch as Spark SQL, so no time zone of Spark or Python shifts them.
    start_seconds_sql: str
    axis_label: str
    drawn_at: timedelta


# An hour's bar covers its hour between the hour ticks; a day's point sits on its day's tick.
HOUR = Period(timedelta(hours=1), "unix_seconds(window_start)", "hour (UTC)", drawn_at=timedelta(minutes=30))
DAY = Period(timedelta(days=1), "unix_date(eventDate) * 86400", "day (UTC)", drawn_at=timedelta())


@dataclass(frozen=True)
class Series:
    """One line (or the bars) of a chart: a column of the KPI table, its legend and colour."""

    column: str
    label: str
    color: str


@dataclass(frozen=True)
class ChartSpec:
    title: str
    series: tuple[Series, ...]
    value_label: str
    period: Period
    days: int
    bars: bool
    caption: str
    # How the value axis reads: "count" (whole numbers), "money" (two decimals) or "share"
    # (a fraction drawn as a percentage).
    scale: str = "count"


def _one(column: str, color: str) -> tuple[Series, ...]:
    return (Series(column, column, color),)


def _at_days(prefix: str, label: str) -> tuple[Series, ...]:
    """A cohort KPI's series at D1, D7 and D30, darker further out."""
    colors = ("#9ecae1", "#4292c6", "#08519c")
    return tuple(
        Series(prefix.format(n=n), label.format(n=n), color)
        for n, color in zip(kpis.RETURN_DAYS, colors, strict=True)
    )


CHARTS: dict[str, ChartSpec] = {
    kpis.EVENTS_PER_HOUR: ChartSpec(
        title="Events per hour",
        series=_one("events", "#1f77b4"),
        value_label="events",
        period=HOUR,
        days=2,
        bars=True,
        caption="Events received per hour over the last two days, all games together. A sudden "
        "drop is the first sign of a service or client problem.",
    ),
    kpis.BOOKINGS_PER_HOUR: ChartSpec(
        title="Bookings per hour",
        series=_one("bookings", "#2ca02c"),
        value_label="bookings (sum of purchases)",
        period=HOUR,
        days=2,
        bars=False,
        caption="Sum of purchase amounts per hour over the last two days, all games together. An "
        "hour with play but no purchase shows 0.",
        scale="money",
    ),
    kpis.DAILY_ACTIVE_USERS: ChartSpec(
        title="Daily active users",
        series=_one("dau", "#d62728"),
        value_label="distinct devices",
        period=DAY,
        days=30,
        bars=False,
        caption="Distinct devices per day over the last 30 days; a player of two games counts once.",
    ),
    kpis.ACTIVE_USERS: ChartSpec(
        title="DAU, WAU and MAU",
        series=(
            Series("dau", "DAU", "#d62728"),
            Series("wau", "WAU (7 days)", "#ff7f0e"),
            Series("mau", "MAU (30 days)", "#9467bd"),
        ),
        value_label="distinct devices",
        period=DAY,
        days=30,
        bars=False,
        caption="Distinct devices over the day, the trailing 7 days and the trailing 30 days; "
        "DAU / MAU is the stickiness.",
    ),
    kpis.RETENTION: ChartSpec(
        title="Retention by cohort day",
        series=_at_days("d{n}_retention", "day {n}"),
        value_label="share of new players back",
        period=DAY,
        days=30,
        bars=False,
        caption="Of the players first seen each day, the share playing again 1, 7 and 30 days "
        "later; a line ends where its return day has not come yet.",
        scale="share",
    ),
    kpis.COHORT_REVENUE: ChartSpec(
        title="Cohort revenue per player",
        series=_at_days("bookings_per_player_d{n}", "by day {n}"),
        value_label="bookings per new player",
        period=DAY,
        days=30,
        bars=False,
        caption="What the players first seen each day spent by 1, 7 and 30 days later, per "
        "player: the start of the LTV curve of each cohort.",
        scale="money",
    ),
    kpis.PROGRESSION_FUNNEL: ChartSpec(
        title="Levels started, completed and failed",
        series=(
            Series("started", "started", "#1f77b4"),
            Series("completed", "completed", "#2ca02c"),
            Series("failed", "failed", "#d62728"),
        ),
        value_label="levels",
        period=DAY,
        days=30,
        bars=False,
        caption="Levels started, completed and failed per day over the last 30 days, all games and "
        "levels together; kpi_progression_funnel has them per game and level.",
    ),
}


def latest_day(table: DataFrame) -> date | None:
    """The last day with all-games rows in a KPI table, None when it has none."""
    return table.where(F.col("game_keyword") == ALL_GAMES).agg(F.max("eventDate")).first()[0]


def kpi_chart(table_name: str, table: DataFrame, last_day: date) -> bytes | None:
    """The PNG chart of a KPI table's all-games rows over its days up to `last_day` (the last
    2 for hourly tables, 30 for daily ones), or None for a table that has no chart.

    Only the rows of those days are read (`eventDate` is the tables' partition column).
    """
    spec = CHARTS.get(table_name)
    if spec is None:
        return None
    first_day = last_day - timedelta(days=spec.days - 1)
    return render_chart(spec, chart_points(spec, table, first_day, last_day), first_day, last_day)


def chart_points(
    spec: ChartSpec, table: DataFrame, first_day: date, last_day: date
) -> dict[str, list[tuple[datetime, float]]]:
    """Per series (by its label), the all-games (period start in UTC, value) pairs of a KPI
    table's days (summed over the period's rows) from `first_day` to `last_day` that have a value, in time order."""
    rows = (
        table.where((F.col("game_keyword") == ALL_GAMES) & F.col("eventDate").between(first_day, last_day))
        # A KPI sliced further (by level) is drawn as its period's sum.
        .groupBy(F.expr(spec.period.start_seconds_sql).alias("start"))
        .agg(*(F.sum(F.col(series.column).cast("double")).alias(series.column) for series in spec.series))
        .orderBy("start")
        .collect()
    )
    return {
        series.label: [
            (datetime.fromtimestamp(row.start, UTC), row[series.column])
            for row in rows
            if row[series.column] is not None
        ]
        for series in spec.series
    }


def render_chart(
    spec: ChartSpec, points: dict[str, list[tuple[datetime, float]]], first_day: date, last_day: date
) -> bytes:
    """The PNG of each series' `points` (period start in UTC, value) drawn as `spec` says,
    over whole days."""
    # Here, not at the top: matplotlib, Pillow and numpy take half a second to import, and
    # only a run that draws a chart needs them, not every run that loads the code location.
    import numpy
    from matplotlib import dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter, StrMethodFormatter
    from PIL import Image

    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    period = spec.period
    highest = 0.0
    for series in spec.series:
        drawn = points.get(series.label, [])
        positions = [start + period.drawn_at for start, _ in drawn]
        values = [value for _, value in drawn]
        highest = max(highest, *values) if values else highest
        if spec.bars:
            axes.bar(positions, values, width=period.length * 0.8, color=series.color, label=series.label)
        else:
            axes.plot(
                positions,
                values,
                color=series.color,
                linewidth=2,
                marker="o",
                markersize=3,
                label=series.label,
            )
    if not any(points.values()):
        axes.text(0.5, 0.5, "no data for these days", transform=axes.transAxes, ha="center", color="0.4")
    elif len(spec.series) > 1:
        axes.legend(loc="upper left", ncols=len(spec.series), fontsize="small", frameon=False)
    # Exactly the periods of the days shown, so an hour or day without rows shows as a gap.
    margin = period.drawn_at - period.length / 2
    axes.set_xlim(_midnight(first_day) + margin, _midnight(last_day + timedelta(days=1)) + margin)
    locator = mdates.AutoDateLocator(tz=UTC)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(locator, tz=UTC, zero_formats=ZERO_FORMATS, show_offset=False)
    )
    # From 0 with headroom above the highest value (room for the legend too), and at least to
    # a readable unit so an empty or all-zero chart still has an axis.
    axes.set_ylim(
        0, max(highest * (1.35 if len(spec.series) > 1 else 1.1), 0.1 if spec.scale == "share" else 1)
    )
    if spec.scale == "share":
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    else:
        axes.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=spec.scale == "count"))
        axes.yaxis.set_major_formatter(
            StrMethodFormatter("{x:,.0f}" if spec.scale == "count" else "{x:,.2f}")
        )
    axes.grid(axis="y", color="0.9")
    axes.set_axisbelow(True)
    axes.set_title(f"{spec.title}, all games, {_day_range(first_day, last_day)} (UTC)", loc="left")
    axes.set_xlabel(period.axis_label)
    axes.set_ylabel(spec.value_label)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    image = Image.fromarray(numpy.asarray(canvas.buffer_rgba())).convert("RGB")
    png = io.BytesIO()
    # A chart has few colours: a 64-colour palette looks the same at a third of the bytes,
    # which matters for images carried in every materialization's metadata.
    image.quantize(colors=64).save(png, format="PNG", optimize=True)
    return png.getvalue()


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _day_range(first_day: date, last_day: date) -> str:
    return f"{first_day:%d %b} to {last_day:%d %b %Y}" if first_day != last_day else f"{last_day:%d %b %Y}"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def as_markdown(png: bytes, title: str) -> str:
    """The image as markdown the Dagster UI renders inline in metadata."""
    return f"![{title}]({data_uri(png)})"


# The page puts each chart at a fixed place, so what a browser draws can be checked by region.
PAGE_WIDTH_PX, PAGE_MARGIN_PX, HEADER_PX, CAPTION_PX = 1000, 50, 110, 50


def chart_box(index: int) -> tuple[int, int, int, int]:
    """Left, top, right and bottom pixel of the page's `index`-th chart."""
    top = HEADER_PX + index * (HEIGHT_PX + CAPTION_PX)
    return PAGE_MARGIN_PX, top, PAGE_MARGIN_PX + WIDTH_PX, top + HEIGHT_PX


def dashboard_page(charts: Mapping[str, bytes], last_day: date, generated_at: datetime) -> str:
    """One self-contained HTML page (images inline, nothing fetched) with the PNG of each KPI
    table in `charts`, in the order given, each under its caption."""
    figures = []
    for index, (table_name, png) in enumerate(charts.items()):
        spec = CHARTS[table_name]
        left, top, _, _ = chart_box(index)
        figures.append(
            f'<figure style="top:{top}px;left:{left}px">'
            f'<img src="{data_uri(png)}" alt="{html.escape(spec.title)}" width="{WIDTH_PX}" height="{HEIGHT_PX}">'
            f"<figcaption>{html.escape(spec.caption)} Table <code>{html.escape(table_name)}</code>."
            "</figcaption></figure>"
        )
    height = chart_box(len(charts))[1]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Game KPIs, all games</title>
<style>
body {{ margin: 0; font-family: sans-serif; color: #222; background: #fff; }}
main {{ position: relative; width: {PAGE_WIDTH_PX}px; height: {height}px; }}
header {{ position: absolute; top: 0; left: {PAGE_MARGIN_PX}px; height: {HEADER_PX}px; }}
h1 {{ margin: 24px 0 8px; font-size: 26px; }}
header p {{ margin: 0; color: #555; font-size: 14px; }}
figure {{ position: absolute; margin: 0; width: {WIDTH_PX}px; }}
img {{ display: block; }}
figcaption {{ height: {CAPTION_PX}px; padding-top: 6px; box-sizing: border-box; font-size: 13px; color: #444; }}
</style>
</head>
<body>
<main>
<header>
<h1>Game KPIs, all games</h1>
<p>Up to {last_day:%d %b %Y}, the last day with data. Generated {generated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC.</p>
</header>
{"".join(figures)}
</main>
</body>
</html>
"""
