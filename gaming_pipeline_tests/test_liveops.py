"""The live-ops alarm: which hours count as a drop, and how severe."""

from datetime import date, datetime, timedelta
from decimal import Decimal

from gaming_pipeline.lib import liveops
from gaming_pipeline.lib.checks import Outcome

DAY = date(2026, 11, 20)
LATER = datetime(2026, 11, 23)


def steady(days: int, per_hour: int, game: str = "ninja_run", skip: tuple = ()) -> list:
    """`per_hour` every hour of the `days` days up to and including DAY, but the hours in `skip`."""
    rows = []
    for n in range(days):
        day = DAY - timedelta(days=n)
        for hour in range(24):
            at = datetime(day.year, day.month, day.day, hour)
            if at not in skip:
                rows.append((game, at, per_hour))
    return rows


def drops(rows, now=LATER, min_baseline=Decimal(20)):
    return liveops.hourly_drops(rows, DAY, DAY + timedelta(days=1), now, min_baseline)


def test_a_steady_game_raises_nothing():
    assert drops(steady(8, 40)) == []


def test_a_collapsed_hour_is_an_error_and_a_halved_one_a_warning():
    two_pm, three_pm = datetime(2026, 11, 20, 14), datetime(2026, 11, 20, 15)
    rows = [row for row in steady(8, 40) if row[1] not in (two_pm, three_pm)]
    rows += [("ninja_run", two_pm, 2), ("ninja_run", three_pm, 20)]
    found = drops(rows)
    assert [(drop.hour, drop.value, drop.baseline, drop.severity) for drop in found] == [
        (two_pm, 2, 40, "ERROR"),
        (three_pm, 20, 40, "WARN"),
    ]
    outcome = liveops.drops_outcome(found)
    assert (outcome.passed, outcome.severity, outcome.details["hours_dropped"]) == (False, "ERROR", 2)
    assert outcome.details["incidents"] == [
        "ninja_run 2026-11-20 14:00 UTC",
        "ninja_run 2026-11-20 15:00 UTC",
    ]
    assert outcome.details["drops"][0] == {
        "incident": "ninja_run 2026-11-20 14:00 UTC",
        "game": "ninja_run",
        "hour": "2026-11-20 14:00 UTC",
        "value": "2",
        "baseline": "40.00",
        "drop": "95%",
        "severity": "ERROR",
    }


def test_an_hour_with_no_row_at_all_counts_as_zero():
    outage = datetime(2026, 11, 20, 9)
    assert [(drop.hour, drop.value) for drop in drops(steady(8, 40, skip=(outage,)))] == [(outage, 0)]


def test_one_big_purchase_in_the_trailing_days_does_not_make_a_baseline():
    # Its average over the week (199.99 / 7) would pass the minimum; the median (0) does not.
    rows = steady(8, 0) + [("ninja_run", datetime(2026, 11, 18, 10), Decimal("199.99"))]
    assert drops(rows) == []


def test_small_numbers_too_few_trailing_days_and_unsettled_hours_are_not_judged():
    assert drops(steady(8, 5), min_baseline=Decimal(20)) == [], "baseline below the minimum"
    assert drops(steady(3, 40, skip=[datetime(2026, 11, 20, 9)])) == [], "two trailing days only"
    unsettled = datetime(2026, 11, 20, 9)
    rows = steady(8, 40, skip=(unsettled,))
    assert drops(rows, now=unsettled + timedelta(hours=1, minutes=5)) == []
    assert len(drops(rows, now=unsettled + timedelta(hours=1, minutes=20))) == 1


def test_a_quiet_check_passes():
    assert liveops.drops_outcome([]) == Outcome(
        True, {"hours_dropped": 0, "drops": [], "incidents": []}, "WARN"
    )
