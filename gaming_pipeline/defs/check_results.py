"""Check outcomes (lib/checks.py) as Dagster reports them, beside the asset they judge."""

import dagster as dg

from gaming_pipeline.lib.checks import Outcome


def check_result(asset: str, check: str, outcome: Outcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=check,
        passed=outcome.passed,
        metadata=outcome.details,
        severity=dg.AssetCheckSeverity(outcome.severity),
    )
