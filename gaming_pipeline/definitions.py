"""The Dagster code location: every definition under defs/, plus the global policies."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        # One Spark session per run, not one per step, and no subprocess per step: the
        # in-process executor starts a run in half a second instead of six.
        dg.Definitions(executor=dg.in_process_executor),
    )
