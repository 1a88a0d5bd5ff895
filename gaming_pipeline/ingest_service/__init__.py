"""The ingest service: game clients post events over HTTP (README: The ingest service)."""
