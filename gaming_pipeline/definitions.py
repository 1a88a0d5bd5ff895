"""The Dagster code location: every definition under defs/, plus the global policies."""

import warnings
from pathlib import Path

import dagster as dg

import gaming_pipeline.defs


@dg.definitions
def defs() -> dg.Definitions:
    # What dg.load_from_defs_folder loads, less the catalog of installed component types it
    # adds for the UI's Docs tab: that catalog imports every component library (dagster_aws's
    # bring SQLAlchemy, Alembic and Dagster's test utilities) and snapshots each type, most of
    # a second of every run's start, for a project that uses no components. From the module,
    # not a dg.toml, so that a plain `pip install` (the image's) loads the same way a clone does.
    tree = dg.ComponentTree.from_module(gaming_pipeline.defs, project_root=Path(__file__).parent)
    with warnings.catch_warnings():
        # As quiet as dg.load_from_defs_folder about Dagster's beta, preview and deprecation notices.
        for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning, DeprecationWarning):
            warnings.simplefilter("ignore", category)
        project = tree.build_defs(tree.defs_module_path)
    return dg.Definitions.merge(
        project,
        # One Spark session per run, not one per step, and no subprocess per step: the
        # in-process executor starts a run in half a second instead of six.
        dg.Definitions(executor=dg.in_process_executor, component_tree=tree),
    )
