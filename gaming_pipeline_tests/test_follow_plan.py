"""How a follower pass reads the raw table's log (lib/follow.py), on a fake history: every
commit after the last pass is seen however many came meanwhile, a log past its retention
stops the pass with a clear error, and only ingestion appends are batches to add."""

import json
from types import SimpleNamespace

import pytest

from gaming_pipeline.lib import follow
from gaming_pipeline.lib.derived import FOLLOWED_BY

pytestmark = pytest.mark.unit


def commit(version: int, operation: str = "WRITE", mode: str = "Append", marker: dict | None = None):
    metadata = {"run_id": f"run-{version}", "objects": 1, FOLLOWED_BY: "follower passes"}
    return SimpleNamespace(
        version=version,
        operation=operation,
        operationParameters={"mode": mode},
        userMetadata=json.dumps(metadata if marker is None else marker),
    )


class FakeHistory:
    """DESCRIBE HISTORY over a log whose oldest kept version is `oldest`, newest first."""

    def __init__(self, commits: list, oldest: int = 0):
        self.commits = [c for c in commits if c.version >= oldest]

    def __call__(self, spark, path, limit=None):
        rows = sorted(self.commits, key=lambda c: -c.version)[:limit]
        return SimpleNamespace(select=lambda *columns: SimpleNamespace(collect=lambda: rows))


def test_every_commit_after_the_last_pass_is_read_however_many_came(monkeypatch):
    monkeypatch.setattr(follow, "table_history", FakeHistory([commit(v) for v in range(1000)]))
    latest, later = follow._raw_commits(None, "raw", after=10)
    assert latest == 999
    assert [c.version for c in sorted(later, key=lambda c: c.version)] == list(range(11, 1000))


def test_a_log_past_its_retention_stops_the_pass_with_what_to_do(monkeypatch):
    monkeypatch.setattr(follow, "table_history", FakeHistory([commit(v) for v in range(300)], oldest=120))
    with pytest.raises(RuntimeError, match="no longer holds version 11.*rebuild every day"):
        follow._raw_commits(None, "raw", after=10)


def test_only_ingestion_appends_are_batches_and_untagged_ones_are_an_earlier_releases():
    commits = [
        commit(1, marker={"run_id": "old-run", "objects": 2}),
        commit(2),
        commit(3, mode="Overwrite"),
        commit(4, operation="DELETE", mode=None),
        commit(5, marker={"run_id": "bulk"}),
        commit(6, operation="OPTIMIZE", mode=None),
    ]
    assert follow._ingestion_appends(commits) == {1: "old-run", 2: "run-2"}
    assert follow._ingestion_appends(commits, tag=FOLLOWED_BY) == {1: "old-run"}
