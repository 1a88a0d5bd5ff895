"""The instance's run pools. Spark runs share two cores, so the instance admits one run of
each pool at a time (gaming_pipeline/local/dagster.yaml: `granularity: run`, `default_limit: 1`).

- `ingest` holds ingestion, which writes the raw table and nothing else: a batch never waits
  for derived work.
- `followers` holds every run that writes the raw table's followers (the per-game, activity
  and player tables): the follower runs, which add the batches ingested since the last, and
  the rebuilds of days, which must not interleave with them.
- `refresh` holds the KPI refreshes, which read the activity tables and run beside both,
  and the dashboard.
- `maintenance` holds compaction, vacuum, rollback and erasure, which run beside all three.
"""

INGEST_POOL = "ingest"
FOLLOWERS_POOL = "followers"
REFRESH_POOL = "refresh"
MAINTENANCE_POOL = "maintenance"
POOLS = (INGEST_POOL, FOLLOWERS_POOL, REFRESH_POOL, MAINTENANCE_POOL)
