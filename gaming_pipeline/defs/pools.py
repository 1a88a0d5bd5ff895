"""The instance's run pools. Spark runs share two cores, so the instance admits one run of
each pool at a time (gaming_pipeline/local/dagster.yaml: `granularity: run`, `default_limit: 1`).

- `ingest` holds every run that writes the raw table's followers (the per-game and activity
  tables): ingestion, which adds each batch to them, and their rebuilds, which must not
  interleave with it.
- `refresh` holds the KPI refreshes, which read the activity tables and run beside ingestion,
  and the dashboard.
- `maintenance` holds compaction, vacuum, rollback and erasure, which run beside both.
"""

INGEST_POOL = "ingest"
REFRESH_POOL = "refresh"
MAINTENANCE_POOL = "maintenance"
POOLS = (INGEST_POOL, REFRESH_POOL, MAINTENANCE_POOL)
