"""Pins the Dagster graph, so a change to assets, sensors, jobs or checks shows up here."""

import dagster as dg

from gaming_pipeline.definitions import defs


def test_graph_is_pinned():
    definitions = defs()
    repo = definitions.get_repository_def()
    assert {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()} == {
        "mobile_events_delta_raw",
        "quarantine_events",
        "ingest_ledger",
    }
    assert {sensor.name for sensor in repo.sensor_defs} == {
        "landing_queue_sensor",
        "landing_reconcile_sensor",
    }
    assert all(sensor.default_status == dg.DefaultSensorStatus.RUNNING for sensor in repo.sensor_defs)
    assert {job.name for job in repo.get_all_jobs() if not job.name.startswith("__")} == {
        "ingest_landed_objects_job"
    }
    assert set(repo.asset_graph.asset_check_keys) == set()
    ingest = repo.assets_defs_by_key[dg.AssetKey("mobile_events_delta_raw")]
    assert ingest.op.pool == "spark"
    assert set(repo.get_top_level_resources()) == {"landing", "warehouse", "pyspark"}
    assert repo.get_job("ingest_landed_objects_job").executor_def.name == "in_process"


def test_every_asset_is_described_for_analysts():
    repo = defs().get_repository_def()
    for key in repo.asset_graph.get_all_asset_keys():
        description = repo.asset_graph.get(key).description or ""
        assert len(description) > 80, key
