"""A Delta commit that loses to a concurrent writer is retried, a bounded number of times;
any other error is not. Conflicts are raised as Spark Connect raises them (the classic
client's classes share the same bases), with no Spark needed."""

from __future__ import annotations

import pytest
from delta.connect import exceptions as conflicts
from pyspark.errors import AnalysisException

from gaming_pipeline.lib.warehouse import retry_on_conflict

EVERY_CONFLICT = [
    conflicts.DeltaConcurrentModificationException,
    conflicts.ConcurrentWriteException,
    conflicts.MetadataChangedException,
    conflicts.ProtocolChangedException,
    conflicts.ConcurrentAppendException,
    conflicts.ConcurrentDeleteReadException,
    conflicts.ConcurrentDeleteDeleteException,
    conflicts.ConcurrentTransactionException,
]


class Commit:
    """Loses `losses` races, then commits."""

    def __init__(self, error: Exception, losses: int):
        self.error, self.losses, self.calls = error, losses, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.losses:
            raise self.error
        return "committed"


@pytest.mark.parametrize("conflict", EVERY_CONFLICT, ids=lambda conflict: conflict.__name__)
def test_every_kind_of_commit_conflict_is_retried_until_the_commit_wins(conflict):
    commit = Commit(conflict("a concurrent OPTIMIZE won"), losses=2)
    assert retry_on_conflict(commit, attempts=5, backoff_seconds=0) == "committed"
    assert commit.calls == 3


def test_a_commit_that_keeps_losing_fails_after_its_attempts_never_retrying_forever():
    commit = Commit(conflicts.ConcurrentAppendException("files added"), losses=10)
    with pytest.raises(conflicts.ConcurrentAppendException):
        retry_on_conflict(commit, attempts=3, backoff_seconds=0)
    assert commit.calls == 3


def test_an_error_that_is_not_a_conflict_is_not_retried():
    commit = Commit(AnalysisException("no such column"), losses=1)
    with pytest.raises(AnalysisException):
        retry_on_conflict(commit, attempts=5, backoff_seconds=0)
    assert commit.calls == 1
