"""The demo's command line and its month of history, without starting anything: what
`gaming-pipeline demo` accepts and refuses, the history it lands before the live stream,
and the query line it prints."""

from __future__ import annotations

import gzip
import json
import shlex
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gaming_pipeline import cli
from gaming_pipeline.event_names import PURCHASE
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.local import generator

NOW = datetime(2026, 11, 23, 14, 37, 12, tzinfo=UTC)


def parsed(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def refused(capsys, *argv: str) -> str:
    """What the parser says refusing `argv`; it must exit with 2, as argparse does for any
    wrong argument, and with no traceback."""
    with pytest.raises(SystemExit) as exited:
        parsed(*argv)
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert "Traceback" not in said
    return said


def test_demo_rate_0_means_no_generated_load():
    assert parsed("demo", "--rate", "0").rate == 0
    assert parsed("demo", "--rate", "2.5").rate == 2.5
    assert parsed("demo").rate == 50


@pytest.mark.parametrize(
    ("rate", "says"),
    [
        ("-1", "-1 events per second: give 0 or more (0: no generated load)"),
        ("abc", "'abc' is not a number of events per second"),
        ("nan", "nan events per second: give 0 or more"),
        ("inf", "inf events per second: give 0 or more"),
    ],
)
def test_demo_refuses_a_negative_or_non_numeric_rate(capsys, rate, says):
    said = refused(capsys, "demo", "--rate", rate)
    assert f"argument --rate: {says}" in said


@pytest.mark.parametrize("rate", ["0", "-3", "many"])
def test_generate_refuses_a_rate_that_streams_nothing(capsys, rate):
    said = refused(capsys, "generate", "--rate", rate)
    assert "argument --rate:" in said
    assert "above 0" in said or "is not a number of events per second" in said


def test_a_stream_at_no_rate_is_refused_not_divided_by():
    with pytest.raises(ValueError, match="above 0"):
        next(generator.stream(7, 0, None))


def test_history_days_default_to_a_month_and_0_turns_the_history_off(capsys):
    assert parsed("demo").history_days == 30
    assert parsed("demo", "--history-days", "0").history_days == 0
    assert generator.demo_history(0, 7, NOW) is None
    assert "argument --history-days: -2 days: give 0 or more (0: no history)" in refused(
        capsys, "demo", "--history-days", "-2"
    )


def history_plan(days: float | None = None) -> generator.HistoryPlan:
    """The history `gaming-pipeline demo` lands (`days` of it: its default, a month)."""
    args = parsed("demo") if days is None else parsed("demo", "--history-days", str(days))
    return generator.demo_history(args.history_days, args.seed, NOW)


@pytest.fixture(scope="module")
def month() -> tuple[generator.HistoryPlan, list[tuple[str, bytes, list[dict]]]]:
    """The demo's default history and its landing objects (made once: 60,000 events)."""
    plan = history_plan()
    return plan, list(plan.objects())


def test_the_history_covers_the_month_before_now_for_every_chart(month):
    plan, objects = month
    assert plan.end <= NOW < plan.end + timedelta(hours=1)
    assert plan.end - plan.start == timedelta(days=30)
    events = [event for _, _, landed in objects for event in landed]
    assert len(events) == plan.events == 30 * generator.DEMO_HISTORY_EVENTS_PER_DAY
    times = [event["eventTime"] for event in events]
    assert plan.start.timestamp() <= min(times) and max(times) < plan.end.timestamp()

    players = defaultdict(set)
    purchases = defaultdict(int)
    hours = set()
    for event in events:
        at = datetime.fromtimestamp(event["eventTime"], UTC)
        players[at.date()].add(event["eventParams"]["device_id"])
        purchases[at.date()] += event["eventName"] == PURCHASE
        hours.add(at.replace(minute=0, second=0))
    seen: set[str] = set()
    new = {}
    for day in sorted(players):
        new[day] = players[day] - seen
        seen |= players[day]
    # The dashboard's daily charts show the 30 days up to the last day with data: each has
    # players, new players (the retention and cohort revenue charts' cohorts) and purchases,
    # and cohorts come back (the retention lines are not flat at 0).
    days = [plan.end.date() - timedelta(days=n) for n in range(30)]
    for day in days:
        assert players[day] and new[day] and purchases[day], day
    back_next_day = [day for day in days[1:] if new[day] & players[day + timedelta(days=1)]]
    back_a_week_later = [day for day in days[7:] if new[day] & players[day + timedelta(days=7)]]
    assert len(back_next_day) >= 15 and len(back_a_week_later) >= 10
    # The hourly charts show the last two days: every hour has events.
    last_hours = {plan.end - timedelta(hours=n) for n in range(1, 48)}
    assert last_hours <= hours


def test_the_history_is_seeded_and_lands_as_a_bulk_load_of_daily_objects(month):
    _, objects = month
    first, second = list(history_plan(3).objects()), list(history_plan(3).objects())
    assert [(key, body) for key, body, _ in first] == [(key, body) for key, body, _ in second]
    # A day's events per object: one sensor tick takes the month into one ingestion run.
    assert len(objects) == 31
    for key, body, events in objects:
        assert [json.loads(line) for line in gzip.decompress(body).decode().splitlines()] == events
        assert len({event["eventTime"] // 86400 for event in events}) == 1
        assert key.startswith(f"{generator.KEY_PREFIX}/") and key.endswith(".ndjson.gz")


def test_the_live_stream_brings_back_the_history_players_not_its_events(month):
    """The live stream of the same seed draws from the same players (they return), and never
    repeats the history's events: two factories of one seed on one random stream fell into
    step and sent the history's events again, event_ids included, within minutes."""
    history = [event for _, _, events in month[1] for event in events]
    live = generator.EventFactory(7)
    streamed = [live.event(NOW.timestamp()) for _ in range(20_000)]
    assert not {event["event_id"] for event in history} & {event["event_id"] for event in streamed}
    devices = {event["eventParams"]["device_id"] for event in history}
    assert len(devices & {event["eventParams"]["device_id"] for event in streamed}) > len(devices) / 2


def test_the_printed_query_line_runs_as_typed_in_a_new_shell(tmp_path, monkeypatch):
    monkeypatch.delenv("GAMING_PIPELINE_WAREHOUSE", raising=False)
    home = tmp_path / "my home"
    line = cli._query_line(Settings.from_env({"GAMING_PIPELINE_HOME": str(home)}), "select 1")
    words = shlex.split(line)
    assert words[0] == f"GAMING_PIPELINE_HOME={home}"
    program = Path(words[1])
    assert program.is_absolute() and program.name == "gaming-pipeline" and program.is_file()
    assert words[2:] == ["sql", "select 1"]

    default = cli._query_line(Settings.from_env({}), "select 1")
    assert shlex.split(default)[0] == str(program)

    monkeypatch.setenv("GAMING_PIPELINE_WAREHOUSE", "s3a://lake/warehouse")
    assert shlex.split(cli._query_line(Settings.from_env({}), "select 1"))[0] == (
        "GAMING_PIPELINE_WAREHOUSE=s3a://lake/warehouse"
    )
