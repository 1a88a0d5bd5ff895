"""Delivers what needs a person: failed checks, failed runs, tables falling behind and games
gone silent.

Each incident is delivered once to the webhook in GAMING_PIPELINE_ALERT_WEBHOOK (Slack's
incoming-webhook JSON). A delivery that fails is tried again on the next tick, so nothing is
dropped while the chat service is down.
"""

import time

import dagster as dg

from gaming_pipeline.defs.partitions import EVENTS_PER_GAME, RunDays
from gaming_pipeline.defs.resources import AlertWebhookResource
from gaming_pipeline.lib.alerts import (
    USUAL_WINDOW_SECONDS,
    Alert,
    AlertState,
    Arrival,
    check_alert,
    outage_alert,
    run_failure_alert,
    silent_games,
    stale_alert,
)
from gaming_pipeline.lib.player_state import PLAYER_STATE_TABLE
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.tables import RAW_TABLE

FINISHED = (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE)
RUNS_PER_TICK = 200


def _where(run: dg.DagsterRun) -> str:
    """The days a run covered, as its tags name them."""
    return str(RunDays.of(run.tags) or "unpartitioned")


def _run_alerts(instance: dg.DagsterInstance, run: dg.DagsterRun, state: AlertState) -> list[Alert]:
    alerts = []
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.get_dagster_event().event_specific_data
        if evaluation.passed:
            continue
        metadata = {key: value.value for key, value in evaluation.metadata.items()}
        alert = check_alert(
            evaluation.asset_key.to_user_string(),
            evaluation.check_name,
            evaluation.severity.value,
            evaluation.description or "",
            metadata,
            _where(run),
            state,
        )
        alerts.append(alert)
    if run.status == dg.DagsterRunStatus.FAILURE:
        failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        message = failure[-1].message if failure else ""
        alerts.append(run_failure_alert(run.run_id, run.job_name, _where(run), message, state))
    return [alert for alert in alerts if alert]


def _stale_tables(context: dg.SensorEvaluationContext, now: float) -> dict[str, tuple[str, float]]:
    """Tables with a freshness policy whose raw events have waited longer than its fail window.
    Only waiting events count: a quiet night with nothing to refresh is not an incident."""
    graph = context.repository_def.asset_graph
    stale = {}
    for node in graph.asset_nodes:
        policy = node.freshness_policy
        # Every table with a freshness policy follows the raw table, directly or through the
        # activity tables.
        if policy is None:
            continue
        latest = context.instance.get_latest_materialization_event(node.key)
        waiting = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(RAW_TABLE), after_timestamp=latest.timestamp if latest else None
            ),
            limit=1,
            ascending=True,
        ).records
        if not waiting:
            continue
        behind = now - waiting[0].timestamp
        if behind > policy.fail_window.to_timedelta().total_seconds():
            key = f"stale/{node.key.to_user_string()}/{waiting[0].storage_id}"
            stale[node.key.to_user_string()] = (key, behind / 60)
    return stale


def recent_arrivals(context: dg.SensorEvaluationContext, now: float, silence_seconds: float) -> list[Arrival]:
    """The follower passes' new events per game, as far back as silent_games needs to judge a
    game silent for up to twice `silence_seconds` (a longer silence was said when it began)."""
    found, after = [], None
    while True:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(PLAYER_STATE_TABLE),
                after_timestamp=now - USUAL_WINDOW_SECONDS - 2 * silence_seconds,
                after_storage_id=after,
            ),
            limit=RUNS_PER_TICK,
            ascending=True,
        ).records
        for record in records:
            events = record.asset_materialization.metadata.get(EVENTS_PER_GAME)
            found.append(Arrival(record.storage_id, record.timestamp, dict(events.value) if events else {}))
        if len(records) < RUNS_PER_TICK:
            return found
        after = records[-1].storage_id


def build_alerts_sensor(outage_seconds: float) -> dg.SensorDefinition:
    @dg.sensor(
        name="alerts_sensor",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Delivers failed asset checks (the live-ops drops among them), failed runs, tables behind "
            "their freshness policy and games gone silent (no events for "
            f"{outage_seconds / 60:g} minutes from a game that usually sends them, "
            "GAMING_PIPELINE_OUTAGE_SECONDS) to the alert webhook, once per incident."
        ),
    )
    def alerts_sensor(
        context: dg.SensorEvaluationContext, alert_webhook: AlertWebhookResource
    ) -> dg.SensorResult:
        return deliver_alerts(context, alert_webhook, outage_seconds)

    return alerts_sensor


def deliver_alerts(
    context: dg.SensorEvaluationContext, alert_webhook: AlertWebhookResource, outage_seconds: float
) -> dg.SensorResult:
    # Only this sensor's ticks need requests: runs, which load this module too, skip importing it.
    import requests

    state = AlertState.from_cursor(context.cursor)
    finished = sorted(
        (
            record
            for event_type in FINISHED
            for record in context.instance.fetch_run_status_changes(
                dg.RunStatusChangeRecordsFilter(event_type, after_storage_id=state.after_storage_id),
                limit=RUNS_PER_TICK,
                ascending=True,
            ).records
        ),
        key=lambda record: record.storage_id,
    )
    delivered = 0
    try:
        for record in finished:
            run = context.instance.get_run_by_id(record.run_id)
            for alert in _run_alerts(context.instance, run, state):
                deliver(context, alert_webhook, alert, state)
                delivered += 1
            state.after_storage_id = record.storage_id
        now = time.time()
        stale = stale_alert(_stale_tables(context, now), state)
        arrivals = recent_arrivals(context, now, outage_seconds) if outage_seconds else []
        games_seen = len({game for arrival in arrivals for game, events in arrival.events.items() if events})
        outage = outage_alert(silent_games(arrivals, now, outage_seconds), games_seen, state)
        for alert in (stale, outage):
            if alert:
                deliver(context, alert_webhook, alert, state)
                delivered += 1
    except requests.RequestException as error:  # the webhook is down: keep what is unsaid for the next tick
        context.log.error(f"alert delivery failed, will retry: {error}")
    return dg.SensorResult(
        cursor=state.to_cursor(),
        skip_reason=None if delivered else f"nothing new among {len(finished)} finished run(s)",
    )


def deliver(
    context: dg.SensorEvaluationContext, webhook: AlertWebhookResource, alert: Alert, state: AlertState
) -> None:
    message = alert.slack()
    if webhook.url:
        webhook.post(message)
    else:
        context.log.warning(f"no GAMING_PIPELINE_ALERT_WEBHOOK set; alert: {message['text']}")
    state.remember(alert)


alerts_sensor = build_alerts_sensor(Settings.from_env().outage_seconds)
