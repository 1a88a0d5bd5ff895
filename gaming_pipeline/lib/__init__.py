"""Pure building blocks: no Dagster imports here, so they run the same in runs, the CLI and tests."""
