"""Delivers what needs a person: failed checks, failed runs and tables falling behind.

Each incident is delivered once to the webhook in GAMING_PIPELINE_ALERT_WEBHOOK (Slack's
incoming-webhook JSON). A delivery that fails is tried again on the next tick, so nothing is
dropped while the chat service is down.
"""

import time

import dagster as dg

from gaming_pipeline.defs.partitions import RunDays
from gaming_pipeline.defs.resources import AlertWebhookResource
from gaming_pipeline.lib.alerts import Alert, AlertState, check_alert, run_failure_alert, stale_alert
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


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Delivers failed asset checks (the live-ops drops among them), failed runs and tables behind "
        "their freshness policy to the alert webhook, once per incident."
    ),
)
def alerts_sensor(
    context: dg.SensorEvaluationContext, alert_webhook: AlertWebhookResource
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
        stale = stale_alert(_stale_tables(context, time.time()), state)
        if stale:
            deliver(context, alert_webhook, stale, state)
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
