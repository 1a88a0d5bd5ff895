"""The ingest service: game clients post events over HTTP (CONTRACT.md section 2)."""
