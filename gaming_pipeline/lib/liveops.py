"""Live-ops alarms: an hour that fell far below the same hour of the days before.

A patch that breaks the store shows as bookings far below what that hour usually books; a
service interruption shows as events far below the usual volume. Each game and `all_games`
hour is compared with the median of the same hour of day over the trailing days that have
data (a median, so one whale's purchase does not make an ordinary hour look like a drop);
an hour missing from the table counts as 0, which is exactly what an outage looks like.
Plain Python over the few thousand KPI rows involved, so it is easy to test and to read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from statistics import median

from gaming_pipeline.lib.checks import Outcome

TRAILING_DAYS = 7
MIN_TRAILING_DAYS = 3
WARN_DROP = Decimal("0.5")
ERROR_DROP = Decimal("0.8")
# Events of an hour keep arriving for a few minutes after it ends: judge it only after this.
SETTLE = timedelta(minutes=15)
MAX_LISTED = 20


@dataclass(frozen=True)
class HourlyDrop:
    game: str
    hour: datetime
    value: Decimal
    baseline: Decimal

    @property
    def drop(self) -> Decimal:
        return 1 - self.value / self.baseline

    @property
    def severity(self) -> str:
        return "ERROR" if self.drop >= ERROR_DROP else "WARN"

    @property
    def incident(self) -> str:
        return f"{self.game} {self.hour:%Y-%m-%d %H:00} UTC"

    def describe(self) -> dict:
        return {
            "incident": self.incident,
            "game": self.game,
            "hour": f"{self.hour:%Y-%m-%d %H:00} UTC",
            "value": str(self.value),
            "baseline": str(self.baseline.quantize(Decimal("0.01"))),
            "drop": f"{self.drop:.0%}",
            "severity": self.severity,
        }


def sliced(
    rows: Iterable, sliced_by: tuple[str, ...], value: str
) -> list[tuple[str, datetime, Decimal | int]]:
    """(series, hour start, value) of hourly KPI rows for hourly_drops: each game's own series,
    or with `sliced_by` (columns of the rows) one series per leading part of the slice, so
    `galaxy_miners android` and `galaxy_miners android 2.4.1` are judged each on its own
    (a slice a client left out is `unknown`)."""
    series = []
    for row in rows:
        parts = [row.game_keyword]
        for column in sliced_by:
            parts.append(row[column] or "unknown")
            series.append((" ".join(parts), row.window_start, row[value]))
        if not sliced_by:
            series.append((row.game_keyword, row.window_start, row[value]))
    return series


def hourly_drops(
    rows: Iterable[tuple[str, datetime, Decimal | int]],
    first_day: date,
    end_day: date,
    now: datetime,
    min_baseline: Decimal,
) -> list[HourlyDrop]:
    """The hours of [first_day, end_day) that fell by WARN_DROP or more.

    `rows` are (game, hour start, value) for those days and the TRAILING_DAYS before them;
    `now` is naive UTC like the hours. An hour is judged once it has settled, and only for a
    game whose trailing median for that hour is at least `min_baseline`, so small numbers
    do not raise alarms by chance.
    """
    values: dict[tuple[str, datetime], Decimal] = defaultdict(Decimal)
    days_with_data = set()
    for game, hour, value in rows:
        values[(game, hour)] += Decimal(value)
        days_with_data.add(hour.date())
    games = {game for game, _ in values}
    drops = []
    for day in (first_day + timedelta(days=n) for n in range((end_day - first_day).days)):
        trailing = [
            earlier
            for earlier in (day - timedelta(days=n) for n in range(1, TRAILING_DAYS + 1))
            if earlier in days_with_data
        ]
        if len(trailing) < MIN_TRAILING_DAYS:
            continue
        for hour in (datetime(day.year, day.month, day.day, h) for h in range(24)):
            if hour + timedelta(hours=1) + SETTLE > now:
                break
            for game in sorted(games):
                baseline = median(
                    values.get((game, datetime.combine(earlier, hour.time())), Decimal(0))
                    for earlier in trailing
                )
                value = values.get((game, hour), Decimal(0))
                if baseline >= min_baseline and value <= baseline * (1 - WARN_DROP):
                    drops.append(HourlyDrop(game, hour, value, baseline))
    return drops


def drops_outcome(drops: list[HourlyDrop]) -> Outcome:
    """The live-ops check's outcome: the worst drop sets the severity."""
    worst = max(drops, key=lambda drop: drop.drop, default=None)
    return Outcome(
        not drops,
        {
            "hours_dropped": len(drops),
            "drops": [drop.describe() for drop in sorted(drops, key=lambda d: -d.drop)[:MAX_LISTED]],
            "incidents": [drop.incident for drop in drops],
        },
        worst.severity if worst else "WARN",
    )
