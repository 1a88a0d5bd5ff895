"""Alerts for people: what counts as one incident, what has been said, and the message.

An incident is said once. A check that keeps failing for the same hours (a day refreshed
again and again while its drop persists) says nothing new; a new hour that drops, a new
failed run or a table newly behind is a new incident. The message is Slack's incoming-webhook
JSON (`text`, plus `blocks` for layout), which Mattermost, Rocket.Chat, Teams' Slack
connector and most chat tools accept too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# Enough to remember every incident of a long bad day without the cursor growing forever.
REMEMBERED = 2000
MAX_LINES = 15
ICON = {"ERROR": ":rotating_light:", "WARN": ":warning:"}


@dataclass(frozen=True)
class Alert:
    severity: str  # "ERROR" or "WARN", as Dagster names check severities
    headline: str
    lines: list[str]
    incidents: list[str]  # the keys this alert speaks for

    def slack(self) -> dict:
        shown = self.lines[:MAX_LINES]
        more = len(self.lines) - len(shown)
        body = "\n".join(f"• {line}" for line in shown) + (f"\n…and {more} more" if more else "")
        text = f"{ICON.get(self.severity, '')} [{self.severity}] {self.headline}".strip()
        blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*\n{body}"}}]
        return {"text": f"{text}\n{body}", "blocks": blocks}


@dataclass
class AlertState:
    """The sensor's memory between ticks: the last run-status event read and the incidents said."""

    after_storage_id: int | None = None
    said: list[str] = field(default_factory=list)

    @classmethod
    def from_cursor(cls, cursor: str | None) -> AlertState:
        return cls(**json.loads(cursor)) if cursor else cls()

    def to_cursor(self) -> str:
        return json.dumps({"after_storage_id": self.after_storage_id, "said": self.said[-REMEMBERED:]})

    def new(self, incidents: list[str]) -> list[str]:
        said = set(self.said)
        return [incident for incident in dict.fromkeys(incidents) if incident not in said]

    def remember(self, alert: Alert) -> None:
        self.said.extend(self.new(alert.incidents))


def check_alert(
    asset: str, check: str, severity: str, description: str, metadata: dict, where: str, state: AlertState
) -> Alert | None:
    """The alert for a failed check, or None when it says nothing new. A check that names its
    incidents (the live-ops checks name game and hour) is new for each new one; any other is
    one incident per asset, check and days."""
    named = metadata.get("incidents")
    incidents = [f"{asset}/{check}/{name}" for name in named] if named else [f"{asset}/{check}/{where}"]
    fresh = state.new(incidents)
    if not fresh:
        return None
    if named:
        # Details of the worst hours come with the check; any others are named only.
        drops = {drop["incident"]: drop for drop in metadata.get("drops", [])}
        lines = [
            _drop_line(drops[name]) if name in drops else name
            for name in (key.split("/", 2)[2] for key in fresh)
        ]
    else:
        lines = [f"{where}: {description}", *(f"{key}: {value}" for key, value in metadata.items())]
    return Alert(severity, f"{check} failed on {asset}", lines, fresh)


def _drop_line(drop: dict) -> str:
    return f"{drop['game']} {drop['hour']}: {drop['value']} against a usual {drop['baseline']} ({drop['drop']} down)"


def run_failure_alert(run_id: str, job: str, where: str, error: str, state: AlertState) -> Alert | None:
    incident = f"run/{run_id}"
    if not state.new([incident]):
        return None
    return Alert(
        "ERROR", f"run of {job} failed ({where})", [error or "no error message", f"run {run_id}"], [incident]
    )


def stale_alert(stale: dict[str, tuple[str, float]], state: AlertState) -> Alert | None:
    """`stale`: asset -> (incident key, minutes behind). One alert for all newly stale tables."""
    fresh = set(state.new([key for key, _ in stale.values()]))
    lines = [
        f"{asset}: new events waiting {minutes:.0f} minutes"
        for asset, (key, minutes) in sorted(stale.items())
        if key in fresh
    ]
    if not lines:
        return None
    return Alert("ERROR", f"{len(lines)} table(s) behind the raw events", lines, sorted(fresh))


# A game's usual arrivals are judged over the hour before it went quiet...
USUAL_WINDOW_SECONDS = 3600
# ...and it usually sends events when that pace would have put at least this many in the
# silence: a small game's or a night's lull between two batches is no outage.
MIN_EXPECTED_EVENTS = 20


@dataclass(frozen=True)
class Arrival:
    """One follower pass's new events, per game (the events it added to the per-game tables,
    which follow the raw table within a batch interval), and when it recorded them."""

    storage_id: int
    at: float  # seconds since the epoch
    events: dict[str, int]


@dataclass(frozen=True)
class Silence:
    game: str
    since: Arrival  # the game's last arrival
    seconds: float
    usual: float  # the events the game's usual pace would have sent in `seconds`

    @property
    def incident(self) -> str:
        return f"outage/{self.game}/{self.since.storage_id}"


def silent_games(arrivals: list[Arrival], now: float, silence_seconds: float) -> list[Silence]:
    """The games that usually send events and have sent none for `silence_seconds` or more:
    their last arrival is that old, and over the USUAL_WINDOW_SECONDS before it they sent at a
    pace that would have put MIN_EXPECTED_EVENTS or more in that time. `arrivals` must reach
    back USUAL_WINDOW_SECONDS before the last arrival of any game that matters; nothing
    landing at all is exactly what this sees as silence."""
    last: dict[str, Arrival] = {}
    for arrival in sorted(arrivals, key=lambda arrival: arrival.at):
        for game, events in arrival.events.items():
            if events:
                last[game] = arrival
    silent = []
    for game, since in sorted(last.items()):
        quiet = now - since.at
        if not silence_seconds or quiet < silence_seconds:
            continue
        sent = sum(
            arrival.events.get(game, 0)
            for arrival in arrivals
            if since.at - USUAL_WINDOW_SECONDS <= arrival.at <= since.at
        )
        usual = sent * silence_seconds / USUAL_WINDOW_SECONDS
        if usual >= MIN_EXPECTED_EVENTS:
            silent.append(Silence(game, since, quiet, usual))
    return silent


def outage_alert(silent: list[Silence], games_seen: int, state: AlertState) -> Alert | None:
    """One alert for the games newly gone silent; when every game seen sending is silent,
    it says so: nothing arrives at all (the ingest service, the landing bucket or ingestion
    is down, rather than one game's clients)."""
    fresh = set(state.new([silence.incident for silence in silent]))
    new = [silence for silence in silent if silence.incident in fresh]
    if not new:
        return None
    lines = [
        f"{s.game}: no events for {s.seconds / 60:.0f} minutes (its usual pace: about {s.usual:.0f} in that time)"
        for s in new
    ]
    minutes = min(s.seconds for s in new) / 60
    headline = (
        f"no events at all for {minutes:.0f} minutes: every game is silent"
        if len(silent) == games_seen
        else f"{len(new)} game(s) sent no events for {minutes:.0f} minutes or more"
    )
    return Alert("ERROR", headline, lines, sorted(fresh))


def kinesis_alerts(
    stream: str,
    gaps: list,
    behind: dict[str, tuple[float, float]],
    alert_age_seconds: float,
    state: AlertState,
) -> list[Alert]:
    """A stream's new incidents: records trimmed before they were read (`gaps`, lib/kinesis.py
    Gap: an error, each said once), and shards whose iterator age passed `alert_age_seconds`
    (`behind`: shard -> (since when, seconds behind), said once per spell)."""
    alerts = []
    new_gaps = [gap for gap in gaps if state.new([gap.incident])]
    if new_gaps:
        alerts.append(
            Alert(
                "ERROR",
                f"Kinesis stream {stream}: records lost to retention before they were read",
                [str(gap) for gap in new_gaps],
                [gap.incident for gap in new_gaps],
            )
        )
    spells = {shard: f"kinesis-behind/{stream}/{shard}/{since:.0f}" for shard, (since, _) in behind.items()}
    fresh = set(state.new(list(spells.values())))
    lines = [
        f"{shard}: {seconds / 60:.1f} minutes behind the stream's newest record"
        for shard, (_, seconds) in sorted(behind.items())
        if spells[shard] in fresh
    ]
    if lines:
        alerts.append(
            Alert(
                "WARN",
                f"Kinesis stream {stream}: {len(lines)} shard(s) more than {alert_age_seconds:.0f} s behind",
                lines,
                sorted(fresh),
            )
        )
    return alerts
