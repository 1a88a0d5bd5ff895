"""The reconciler's retry rules for objects whose ingestion runs failed."""

from __future__ import annotations

import pytest

from gaming_pipeline.defs.ingest.sensors import (
    MAX_RETRY_BACKOFF_SECONDS,
    Failures,
    run_requests,
)
from gaming_pipeline.lib.s3_events import LandedObject

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("count, wait", [(1, 100), (2, 200), (3, 400), (30, MAX_RETRY_BACKOFF_SECONDS)])
def test_the_wait_doubles_with_each_failure_up_to_a_cap(count, wait):
    failed = Failures(count=count, last_failed_at=1_000.0)
    assert not failed.retry_due(now=1_000.0 + wait - 1, backoff_seconds=100)
    assert failed.retry_due(now=1_000.0 + wait, backoff_seconds=100)


def test_a_batch_asked_for_after_a_failure_has_a_new_run_key():
    batch = [LandedObject("b", f"k{i}", "e") for i in range(3)]
    (first,) = run_requests(batch, "reconcile")
    # Objects that never failed keep the key they always had.
    assert run_requests(batch, "reconcile", failed={}) == [first]
    (retry,) = run_requests(batch, "reconcile", failed={batch[1]: 1})
    (second_retry,) = run_requests(batch, "reconcile", failed={batch[1]: 2})
    assert len({first.run_key, retry.run_key, second_retry.run_key}) == 3
    assert retry.run_config == first.run_config
