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
