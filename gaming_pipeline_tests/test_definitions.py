"""Pins the Dagster graph, so a change to assets, sensors, jobs or checks shows up here."""

import dagster as dg

from gaming_pipeline.definitions import defs
from gaming_pipeline.defs.partitions import DAILY, DERIVED_FRESHNESS
from gaming_pipeline.games import GAMES
from gaming_pipeline.local.processes import prepare_dagster_home


def test_graph_is_pinned():
    definitions = defs()
    repo = definitions.get_repository_def()
    game_tables = {f"game_{game.keyword}_events" for game in GAMES}
    kpis = {
        "kpi_events_per_hour",
        "kpi_bookings_per_hour",
        "kpi_daily_active_users",
        "kpi_daily_revenue",
        "kpi_revenue_by_platform",
        "kpi_sessions",
        "kpi_retention",
        "kpi_active_users",
        "kpi_payers",
        "kpi_cohort_revenue",
        "kpi_concurrent_players",
        "kpi_hourly_slices",
        "kpi_progression_funnel",
        "kpi_revenue_by_item",
    }
    activity = {"activity_game_hours", "activity_player_days", "activity_game_params"}
    assert {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()} == {
        "mobile_events_delta_raw",
        "quarantine_events",
        "ingest_ledger",
        "ingest_intents",
        *game_tables,
        *activity,
        *kpis,
        "kpi_dashboard",
        "gdpr_erasure_audit",
        "player_state",
    }
    assert {sensor.name for sensor in repo.sensor_defs} == {
        "landing_queue_sensor",
        "landing_reconcile_sensor",
        "follow_raw_sensor",
        "raw_days_sensor",
        "alerts_sensor",
        "kpi_dashboard_automation",
    }
    assert all(sensor.default_status == dg.DefaultSensorStatus.RUNNING for sensor in repo.sensor_defs)
    assert {job.name for job in repo.get_all_jobs() if not job.name.startswith("__")} == {
        "ingest_landed_objects_job",
        "follow_raw_job",
        "refresh_days_job",
        "daily_compaction_job",
        "weekly_maintenance_job",
        "vacuum_job",
        "rollback_job",
        "erase_player_job",
    }
    schedules = {schedule.name: schedule for schedule in repo.schedule_defs}
    assert {name: (s.job_name, s.cron_schedule, s.execution_timezone) for name, s in schedules.items()} == {
        "daily_compaction_job_schedule": ("daily_compaction_job", "30 1 * * *", "UTC"),
        "weekly_maintenance_job_schedule": ("weekly_maintenance_job", "0 3 * * 1", "UTC"),
    }
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in schedules.values())
    maintenance_ops = (
        "compact_closed_days",
        "zorder_last_week",
        "vacuum_tables",
        "restore_tables",
        "erase_player",
    )
    for job in (
        "daily_compaction_job",
        "weekly_maintenance_job",
        "vacuum_job",
        "rollback_job",
        "erase_player_job",
    ):
        for node in repo.get_job(job).nodes:
            assert node.name in maintenance_ops and node.definition.pool == "maintenance", (job, node.name)
    for name in game_tables | activity | kpis:
        node = repo.asset_graph.get(dg.AssetKey(name))
        assert node.partitions_def == DAILY, name
        assert node.backfill_policy == dg.BackfillPolicy.single_run(), name
        # The per-game and activity tables follow the raw table; the KPIs, the activity.
        source = activity if name in kpis else {"mobile_events_delta_raw"}
        assert {key.to_user_string() for key in node.parent_keys} <= source, name
        assert node.parent_keys, name
        assert node.freshness_policy == DERIVED_FRESHNESS, name
    assert repo.assets_defs_by_key[dg.AssetKey("game_galaxy_miners_events")].can_subset
    expected_checks = {
        (table, name)
        for table in game_tables
        for name in ("schema_matches_raw", "no_null_keys", "rows_match_raw")
    } | {
        ("kpi_events_per_hour", "no_null_keys"),
        ("kpi_events_per_hour", "hours_add_up_to_activity"),
        ("kpi_events_per_hour", "volume_holds_up"),
        ("kpi_bookings_per_hour", "no_null_keys"),
        ("kpi_bookings_per_hour", "bookings_add_up_to_activity"),
        ("kpi_bookings_per_hour", "bookings_hold_up"),
        ("kpi_daily_active_users", "no_null_keys"),
        ("kpi_daily_active_users", "all_games_within_bounds"),
        ("kpi_daily_revenue", "no_null_keys"),
        ("kpi_daily_revenue", "bookings_add_up_to_activity"),
        ("kpi_revenue_by_platform", "no_null_keys"),
        ("kpi_revenue_by_platform", "bookings_add_up_to_activity"),
        ("kpi_sessions", "no_null_keys"),
        ("kpi_sessions", "players_match_activity"),
        ("kpi_retention", "no_null_keys"),
        ("kpi_retention", "cohorts_within_activity"),
        ("kpi_active_users", "no_null_keys"),
        ("kpi_active_users", "active_users_add_up"),
        ("kpi_payers", "no_null_keys"),
        ("kpi_payers", "payers_within_players"),
        ("kpi_payers", "bookings_add_up_to_activity"),
        ("kpi_cohort_revenue", "no_null_keys"),
        ("kpi_cohort_revenue", "cohort_bookings_accumulate"),
        ("kpi_concurrent_players", "no_null_keys"),
        ("kpi_concurrent_players", "windows_within_players"),
        ("kpi_hourly_slices", "no_null_keys"),
        ("kpi_hourly_slices", "hours_add_up_to_activity"),
        ("kpi_hourly_slices", "bookings_add_up_to_activity"),
        ("kpi_hourly_slices", "volume_holds_up_per_slice"),
        ("kpi_hourly_slices", "bookings_hold_up_per_slice"),
        ("kpi_progression_funnel", "no_null_keys"),
        ("kpi_progression_funnel", "all_games_add_up"),
        ("kpi_revenue_by_item", "no_null_keys"),
        ("kpi_revenue_by_item", "bookings_add_up_to_activity"),
        ("kpi_revenue_by_item", "all_games_add_up"),
        ("activity_game_hours", "events_match_raw"),
        ("activity_player_days", "events_match_raw"),
        ("activity_game_params", "events_match_raw"),
    }
    assert {
        (key.asset_key.to_user_string(), key.name) for key in repo.asset_graph.asset_check_keys
    } == expected_checks
    # Ingestion writes the raw table alone; its followers are written by one run at a time,
    # a follower run or a rebuild; KPIs, read from the activity tables, refresh beside both.
    pools = {
        key: repo.assets_defs_by_key[dg.AssetKey(key)].op.pool
        for key in (
            "mobile_events_delta_raw",
            "game_galaxy_miners_events",
            "activity_player_days",
            "kpi_events_per_hour",
            "kpi_dashboard",
            "player_state",
        )
    }
    assert pools == {
        "mobile_events_delta_raw": "ingest",
        "game_galaxy_miners_events": "followers",
        "activity_player_days": "followers",
        "kpi_events_per_hour": "refresh",
        "kpi_dashboard": "refresh",
        "player_state": "followers",
    }
    assert repo.get_job("follow_raw_job").nodes[0].definition.pool == "followers"
    assert set(repo.get_top_level_resources()) == {
        "landing",
        "warehouse",
        "pyspark",
        "alert_webhook",
        "pii_vault",
    }
    assert repo.get_job("ingest_landed_objects_job").executor_def.name == "in_process"


def test_every_asset_is_described_for_analysts():
    repo = defs().get_repository_def()
    for key in repo.asset_graph.get_all_asset_keys():
        description = repo.asset_graph.get(key).description or ""
        assert len(description) > 80, key


def test_every_pool_is_limited_before_its_first_run(tmp_path):
    """On a new home, the run queue would let the first runs of a pool it has not met yet
    start together: every pool an op uses has its limit from the moment the home exists."""
    repo = defs().get_repository_def()
    used = {node.definition.pool for job in repo.get_all_jobs() for node in job.nodes} - {None}
    assert used == {"ingest", "followers", "refresh", "maintenance"}
    with dg.DagsterInstance.from_config(str(prepare_dagster_home(tmp_path / "dagster"))) as instance:
        limits = {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}
    assert limits == dict.fromkeys(used, 1)
